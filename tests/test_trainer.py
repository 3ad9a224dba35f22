"""The training loop on synthetic signals made here (no shared corpus, no config schema): resume
equivalence, NaN handling, the frozen teacher, best-validation selection, schedules, fit()."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from kdlib.evaluation import enhance, evaluate_model
from kdlib.kd import build_kd_method
from kdlib.losses import CompressedSpectralLoss, task_loss_for
from kdlib.metrics import MetricSummary, si_sdr
from kdlib.models import build_model, count_params, size_student
from kdlib.train import Trainer, TrainSettings
from kdlib.train import trainer as trainer_module

SR = 16000
LENGTH = SR // 4  # 0.25 s
TINY = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}  # the smallest dpcrn_lite teacher
STUDENT = size_student("dpcrn_lite", TINY, 0.5).model_args
SETTINGS = TrainSettings(epochs=2, batch_size=2, lr=1e-3, grad_clip=5.0, selection_metric="val_si_sdr",
                         label="unit r=0.5 seed=3")


def _speech_like(rng: np.random.Generator, length: int = LENGTH) -> np.ndarray:
    """A vowel-like tone (random pitch, 3 harmonics) with a slow amplitude envelope, float32 (L,)."""
    t = np.arange(length) / SR
    f0 = rng.uniform(120, 300)
    tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    return (0.3 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


class SyntheticMixes(torch.utils.data.Dataset):
    """Training items ``(noisy (L,), clean (L,))``: new, deterministic mixtures per (epoch, index).

    Records every ``set_epoch`` call and item read.
    """

    def __init__(self, n: int = 4, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.epochs_set: list[int] = []
        self.reads = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clean = _speech_like(rng)
        noisy = clean + 0.1 * rng.standard_normal(LENGTH).astype(np.float32)
        return torch.from_numpy(noisy), torch.from_numpy(clean)


class SyntheticMixes8k(SyntheticMixes):
    """The same items declared as 8 kHz audio (the trainer's throughput must use this rate)."""

    sample_rate = 8000


class SyntheticCorpus:
    """A paired corpus in memory: ``load(i)`` → numpy ``(noisy (L,), clean (L,))``; records reads."""

    def __init__(self, n: int = 2, seed: int = 100, pesq_mode_hint: str = "wb") -> None:
        self.sample_rate, self.pesq_mode_hint = SR, pesq_mode_hint
        rng = np.random.default_rng(seed)
        self.pairs = []
        for _ in range(n):
            clean = _speech_like(rng)
            self.pairs.append((clean + 0.1 * rng.standard_normal(LENGTH).astype(np.float32), clean))
        self.loads: list[int] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.loads.append(index)
        noisy, clean = self.pairs[index]
        return noisy.copy(), clean.copy()


@dataclass
class Data:
    train: SyntheticMixes
    valid: SyntheticCorpus
    test: SyntheticCorpus


def _data(train: SyntheticMixes | None = None) -> Data:
    return Data(train or SyntheticMixes(), SyntheticCorpus(seed=100), SyntheticCorpus(seed=200))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("dpcrn_lite", TINY).eval()


def _trainer(method: str = "output", *, teacher: torch.nn.Module | None = None, data: Data | None = None,
             settings: TrainSettings = SETTINGS, seed: int = 3, log=None) -> Trainer:
    """Seed, then student, then KD method: the order that makes runs bit-identical."""
    torch.manual_seed(seed)
    student = build_model("dpcrn_lite", STUDENT)
    kd = build_kd_method(method, student, teacher)
    return Trainer(student, teacher, kd, task_loss_for(student), data or _data(), settings, "cpu",
                   log=log or (lambda _: None))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_training_equals_uninterrupted_training():
    teacher = _teacher()
    straight = _trainer(teacher=teacher)
    straight.fit()

    first = _trainer(teacher=teacher)
    first.train_epoch()
    first.validate()
    buffer = io.BytesIO()  # the trial saves the state with torch.save and loads it with weights_only=True
    torch.save(first.state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    data = _data()
    resumed = _trainer(teacher=teacher, data=data)
    resumed.load_state(state)
    assert resumed.epoch == 1
    history = resumed.fit()
    assert len(history) == 1 and resumed.epoch == 2
    assert data.train.epochs_set == [1]  # continued with the second epoch's mixtures, not the first's
    assert _same(_state(resumed.student), _state(straight.student))
    assert _same(resumed.kd.state_dict(), straight.kd.state_dict())
    assert resumed.best_val == straight.best_val
    assert _same(resumed.best_state, straight.best_state)


def test_epoch_reports_losses_and_throughput():
    lines: list[str] = []
    settings = replace(SETTINGS, selection_metric="score")
    trainer = _trainer("none", settings=settings, log=lines.append)
    stats = trainer.train_epoch()
    assert set(stats) == {"train_loss", "task_loss", "kd_loss", "epoch_seconds", "audio_seconds_per_second"}
    assert stats["kd_loss"] == 0.0 and stats["train_loss"] == pytest.approx(stats["task_loss"])
    assert stats["train_loss"] > 0
    # 4 items of 0.25 s at the student's 16 kHz = 1 s of audio in epoch_seconds
    assert stats["audio_seconds_per_second"] * stats["epoch_seconds"] == pytest.approx(1.0)
    # progress line after the first of two batches, with the epoch's ETA
    assert len(lines) == 1 and re.fullmatch(r"\[unit r=0.5 seed=3\] epoch 1/2 batch 1/2 loss \d+\.\d{4} "
                                            r"eta\(epoch\) \d+s", lines[0]), lines
    val = trainer.validate()
    assert set(val) == {"score", "best_score"}  # keys named by settings.selection_metric
    assert math.isfinite(val["score"]) and val["score"] < 50 and val["best_score"] == val["score"]


def test_throughput_counts_audio_at_the_training_data_rate():
    trainer = _trainer("none", data=_data(SyntheticMixes8k()))
    stats = trainer.train_epoch()
    # the same 4 × 4000 samples declared as 8 kHz are 2 s of audio
    assert stats["audio_seconds_per_second"] * stats["epoch_seconds"] == pytest.approx(2.0)


def test_nan_loss_stops_the_trial_with_a_clear_error():
    trainer = _trainer("none")
    before = {k: p.detach().clone() for k, p in trainer.student.named_parameters()}
    trainer.task_loss = lambda est, ref: (est - ref).mean() * float("nan")
    with pytest.raises(FloatingPointError, match=r"^unit r=0.5 seed=3: loss became nan at epoch 1, batch 1$"):
        trainer.train_epoch()
    # no optimiser step on the NaN loss (BatchNorm statistics do move in the forward pass)
    assert _same({k: p.detach() for k, p in trainer.student.named_parameters()}, before)

    trainer = _trainer("none")
    trainer.train_epoch()
    trainer.task_loss = lambda est, ref: (est - ref).mean() * float("inf")
    with pytest.raises(FloatingPointError, match="loss became inf at epoch 2, batch 1"):
        trainer.fit()


def test_a_method_that_needs_a_teacher_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="needs a teacher"):
        _trainer("self_similarity", teacher=None)
    # a KD method built with a teacher, handed to a Trainer without one
    student, teacher = build_model("dpcrn_lite", STUDENT), _teacher()
    kd = build_kd_method("output", student, teacher)
    with pytest.raises(ValueError, match="KD method 'output' needs a teacher"):
        Trainer(student, None, kd, task_loss_for(student), _data(), SETTINGS)


def test_two_step_schedule_trains_kd_only_then_supervised():
    teacher = _teacher()
    settings = replace(SETTINGS, kd_weight=0.5, schedule="two_step", kd_only_epochs=1)
    trainer = _trainer(teacher=teacher, settings=settings)
    assert trainer.loss_weights() == (0.0, 0.5)
    first = trainer.train_epoch()
    assert first["kd_loss"] > 0 and first["train_loss"] == pytest.approx(0.5 * first["kd_loss"])
    assert trainer.loss_weights() == (1.0, 0.0)
    second = trainer.train_epoch()
    assert second["kd_loss"] > 0 and second["train_loss"] == pytest.approx(second["task_loss"])
    # joint: task + λ·KD every epoch
    joint = _trainer(teacher=teacher, settings=replace(SETTINGS, kd_weight=0.5))
    assert joint.loss_weights() == (1.0, 0.5)
    stats = joint.train_epoch()
    assert stats["train_loss"] == pytest.approx(stats["task_loss"] + 0.5 * stats["kd_loss"])
    # the student alone has nothing to pre-train on: it stays supervised
    alone = _trainer("none", settings=settings)
    assert alone.loss_weights() == (1.0, 0.5)


def test_the_teacher_stays_frozen_while_the_student_trains():
    teacher = build_model("dpcrn_lite", TINY).train().requires_grad_(True)
    assert torch.is_grad_enabled()
    before = _state(teacher)  # weights and BatchNorm running statistics
    trainer = _trainer("output", teacher=teacher)
    student_before = _state(trainer.student)
    stats = trainer.train_epoch()
    assert stats["kd_loss"] > 0  # the teacher's output was used
    assert not _same(_state(trainer.student), student_before)
    assert _same(_state(teacher), before)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.filterwarnings("ignore::kdlib.metrics.MetricWarning")  # 0.25 s is too short for STOI
def test_test_scores_the_best_validation_weights_not_the_last(monkeypatch):
    scores = iter([5.0, 7.0, 3.0])  # validation peaks at epoch 2, then gets worse
    snapshots: list[dict[str, torch.Tensor]] = []

    def scripted_validation(model, corpus, device):
        snapshots.append(_state(model))
        return next(scores)

    monkeypatch.setattr(trainer_module, "mean_si_sdr", scripted_validation)
    scored: list[torch.nn.Module] = []

    def spy_evaluate(model, corpus, pesq_mode, **kwargs):
        scored.append(model)
        return evaluate_model(model, corpus, pesq_mode, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", spy_evaluate)
    data = _data()
    trainer = _trainer("none", data=data, settings=replace(SETTINGS, epochs=3))
    history = trainer.fit()
    assert [h["val_si_sdr"] for h in history] == [5.0, 7.0, 3.0]
    assert [h["best_val_si_sdr"] for h in history] == [5.0, 7.0, 7.0]
    assert trainer.best_val == 7.0
    best, final = snapshots[1], _state(trainer.student)
    assert not _same(best, final)
    assert _same(trainer.best_state, best)
    assert _same(_state(trainer.best_model()), best)

    summary = trainer.test()
    assert isinstance(summary, MetricSummary) and summary.count == len(data.test)
    assert len(scored) == 1 and _same(_state(scored[0]), best)
    # the SI-SDR mean is the best weights' score, not the final weights'
    refs = [data.test.pairs[i][1] for i in range(len(data.test))]
    best_sdr = np.mean([si_sdr(enhance(scored[0], n), c) for (n, _), c in zip(data.test.pairs, refs, strict=True)])
    last_sdr = np.mean([si_sdr(enhance(trainer.student, n), c) for (n, _), c in zip(data.test.pairs, refs,
                                                                                       strict=True)])
    assert summary.means["si_sdr"] == pytest.approx(best_sdr, abs=1e-4)
    assert best_sdr != pytest.approx(last_sdr, abs=1e-4)


def test_test_resolves_the_pesq_mode_against_the_test_corpus(monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(trainer_module, "evaluate_model",
                        lambda model, corpus, mode, **kwargs: calls.append((corpus, mode, kwargs)) or "summary")
    data = Data(SyntheticMixes(), SyntheticCorpus(), SyntheticCorpus(pesq_mode_hint="nb"))
    assert _trainer("none", data=data).test(num_workers=3) == "summary"  # returned as is, not flattened
    _trainer("none", data=data, settings=replace(SETTINGS, pesq_mode="wb")).test()
    assert [(c is data.test, m, k["num_workers"]) for c, m, k in calls] == [(True, "nb", 3), (True, "wb", 1)]


def test_fit_runs_the_remaining_epochs_and_stops():
    lines: list[str] = []
    data = _data()
    trainer = _trainer("none", data=data, settings=replace(SETTINGS, epochs=3, label="teacher"), log=lines.append)
    history = trainer.fit()
    assert len(history) == 3 and trainer.epoch == 3
    assert data.train.epochs_set == [0, 1, 2]
    for entry in history:
        assert set(entry) == {"train_loss", "task_loss", "kd_loss", "epoch_seconds", "audio_seconds_per_second",
                              "val_si_sdr", "best_val_si_sdr"}
    assert history[-1]["best_val_si_sdr"] == trainer.best_val == max(h["val_si_sdr"] for h in history)
    epoch_lines = [line for line in lines if " batch " not in line]
    assert len(epoch_lines) == 3
    for k, line in enumerate(epoch_lines, start=1):
        assert re.fullmatch(rf"\[teacher\] epoch {k}/3 loss \d+\.\d{{4}} val SI-SDR -?\d+\.\d{{2}} dB, "
                            r"\d+\.\d audio s/s, eta \d+s", line), line
    assert epoch_lines[-1].endswith(", eta 0s")
    assert trainer.fit() == [] and trainer.epoch == 3 and data.train.epochs_set == [0, 1, 2]


@pytest.mark.filterwarnings("ignore::kdlib.metrics.MetricWarning")  # 0.25 s is too short for STOI
def test_held_out_corpora_never_reach_training():
    data = _data()
    trainer = _trainer("none", data=data)
    trainer.train_epoch()
    assert data.train.reads == len(data.train) and data.valid.loads == [] and data.test.loads == []
    trainer.validate()
    assert data.valid.loads == [0, 1] and data.test.loads == [] and data.train.reads == len(data.train)
    trainer.test()
    assert data.test.loads == [0, 1] and data.valid.loads == [0, 1]


def test_kd_parameters_are_trained_and_the_student_gradient_clipped(monkeypatch):
    clips: list[tuple[int, float]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        clips.append((len(params), max_norm))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    teacher = _teacher()
    trainer = _trainer("fitnets", teacher=teacher, settings=replace(SETTINGS, grad_clip=0.5))
    kd_before = _state(trainer.kd)
    assert kd_before and trainer.complexity()["kd_extra_params"] == trainer.kd.extra_params() > 0
    trainer.train_epoch()
    assert not _same(_state(trainer.kd), kd_before)  # the adapters are in the optimiser
    assert clips == [(len(list(trainer.student.parameters())), 0.5)] * 2  # once per batch, student only
    figures = trainer.complexity()
    assert figures["params"] == count_params(trainer.student)
    assert figures["params_pct"] == pytest.approx(100 * count_params(trainer.student) / count_params(teacher))


def test_task_loss_for_uses_the_family_default():
    est, ref = torch.randn(2, LENGTH), torch.randn(2, LENGTH)
    default = task_loss_for(build_model("dpcrn_lite", TINY))
    assert isinstance(default, CompressedSpectralLoss) and default.wav_weight == 10.0
    torch.testing.assert_close(default(est, ref), CompressedSpectralLoss()(est, ref))

    class NoWaveformTerm(torch.nn.Module):
        task_loss = {"name": "compressed_spectral", "kwargs": {"wav_weight": 0.0, "compress": 0.5}}

    custom = task_loss_for(NoWaveformTerm())
    assert custom.wav_weight == 0.0 and custom.compress == 0.5
    torch.testing.assert_close(custom(est, ref), CompressedSpectralLoss(compress=0.5, wav_weight=0.0)(est, ref))


@pytest.mark.parametrize(("field", "value"), [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("grad_clip", -1.0),
                                              ("kd_weight", -0.1), ("kd_only_epochs", -1), ("schedule", "both")])
def test_train_settings_refuse_impossible_values(field, value):
    with pytest.raises(ValueError, match=rf"TrainSettings: {field} must be"):
        replace(SETTINGS, **{field: value})


def test_too_few_items_for_one_batch_is_refused():
    with pytest.raises(ValueError, match=r"segments_per_epoch \(1\) < batch_size \(2\)"):
        _trainer("none", data=_data(SyntheticMixes(n=1)))
