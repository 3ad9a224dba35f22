"""The training loop on real mixtures: resume equivalence, NaN handling, speaker-disjoint data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlib.config import load_config
from kdlib.data import speaker_matches
from kdlib.models import build_model
from kdlib.train.datasets import build_sweep_data
from kdlib.train.trainer import Trainer, TrialSpec

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
TINY = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}


@pytest.fixture(scope="module")
def setup(data_root):
    cfg = load_config(QUICKSTART, smoke=True)
    cfg.teacher.model.kwargs = TINY
    cfg.training.epochs = 2
    cfg.training.batch_size = 2
    cfg.data.train.segments_per_epoch = 4
    cfg.data.train.segment_seconds = 0.5
    torch.set_num_threads(1)
    return cfg, build_sweep_data(cfg, seed=0)


def test_validation_and_test_speakers_never_train(setup):
    cfg, data = setup
    held_out = set(data.valid.speakers()) | set(data.test.speakers())
    assert held_out == {"p232", "p257"}
    assert "vctk_p232" not in data.train_speakers  # the same VCTK talker under another folder name
    assert not any(speaker_matches(s, h) for s in data.train_speakers for h in held_out)
    assert len(data.train_speakers) > 100


def _trainer(cfg, data, method="output", teacher=None):
    return Trainer(cfg, TrialSpec(method, 0.5, seed=3, lr=1e-3), TINY, data, teacher, "cpu", log=lambda _: None)


def test_resumed_training_equals_uninterrupted_training(setup):
    cfg, data = setup
    teacher = build_model("dpdcrn", TINY).eval()
    straight = _trainer(cfg, data, teacher=teacher)
    for _ in range(2):
        straight.train_epoch()
        straight.validate()

    first = _trainer(cfg, data, teacher=teacher)
    first.train_epoch()
    first.validate()
    state = first.state()
    resumed = _trainer(cfg, data, teacher=teacher)
    resumed.load_state(state)
    assert resumed.epoch == 1
    resumed.train_epoch()
    resumed.validate()
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed.best_val == pytest.approx(straight.best_val)


def test_epoch_reports_losses_and_throughput(setup):
    cfg, data = setup
    trainer = _trainer(cfg, data, method="none")
    stats = trainer.train_epoch()
    assert stats["kd_loss"] == 0.0 and stats["train_loss"] == pytest.approx(stats["task_loss"])
    assert stats["audio_seconds_per_second"] > 0
    assert trainer.validate()["val_si_sdr"] < 50


def test_nan_loss_stops_the_trial_with_a_clear_error(setup):
    cfg, data = setup
    trainer = _trainer(cfg, data, method="none")
    trainer.task_loss = lambda est, ref: (est - ref).mean() * float("nan")
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 1"):
        trainer.train_epoch()


def test_a_method_that_needs_a_teacher_refuses_to_run_without_one(setup):
    cfg, data = setup
    with pytest.raises(ValueError, match="needs a teacher"):
        _trainer(cfg, data, method="self_similarity", teacher=None)


def test_two_step_schedule_trains_kd_only_then_supervised(setup):
    cfg, data = setup
    cfg = cfg.model_copy(deep=True)
    cfg.training.kd_only_epochs = 1
    teacher = build_model("dpdcrn", TINY).eval()
    spec = TrialSpec("output", 0.5, seed=3, lr=1e-3, kd_weight=0.5, schedule="two_step")
    trainer = Trainer(cfg, spec, TINY, data, teacher, "cpu", log=lambda _: None)
    assert trainer.loss_weights() == (0.0, 0.5)
    first = trainer.train_epoch()
    assert first["train_loss"] == pytest.approx(0.5 * first["kd_loss"])
    assert trainer.loss_weights() == (1.0, 0.0)
    second = trainer.train_epoch()
    assert second["train_loss"] == pytest.approx(second["task_loss"])
    # the student alone has nothing to pre-train on: it stays supervised
    alone = Trainer(cfg, TrialSpec("none", 0.5, schedule="two_step"), TINY, data, None, "cpu", log=lambda _: None)
    assert alone.loss_weights()[0] == 1.0
