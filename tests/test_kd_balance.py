"""Issue 10, balanced KD weights: ``training.kd_weight: auto`` sets λ per trial so that ‖λ∇KD‖ / ‖∇task‖ on
the first batches equals ``kd_balance``, for every KD method that runs on the quickstart's family. The ratio
after calibration is re-derived here with the test's own gradient code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdlib.errors import KdlibError
from kdlib.kd import KD_METHODS, KDInputs, build_kd_method
from kdlib.losses import task_loss_for
from kdlib.models import build_model, size_student
from kdlib.sweep.plan import load_plan
from kdlib.train import Trainer, TrainSettings

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
TARGET = 1.0


@pytest.fixture(scope="module")
def setup(data_root):
    torch.set_num_threads(1)
    plan = load_plan(QUICKSTART, smoke=True, overrides=["data.train.segments_per_epoch=8"])
    data = plan.data_source().build(seed=0)
    kwargs = plan.cfg.teacher.model.kwargs
    torch.manual_seed(0)
    teacher = build_model(plan.cfg.teacher.model.name, kwargs).eval().requires_grad_(False)
    student_args = size_student(plan.cfg.teacher.model.name, teacher.get_model_args(), 0.1).model_args
    return plan, data, teacher, student_args


def _trainer(setup, method: str) -> Trainer:
    plan, data, teacher, student_args = setup
    torch.manual_seed(1)
    student = build_model(plan.cfg.teacher.model.name, student_args)
    try:
        kd = build_kd_method(method, student, teacher, {})
    except (KdlibError, ValueError, TypeError) as exc:
        pytest.skip(f"{method} does not run on {plan.cfg.teacher.model.name}: {exc}")
    settings = TrainSettings(epochs=1, batch_size=2, lr=1e-3, grad_clip=5.0, selection_metric="val_si_sdr",
                             kd_weight=1.0, shuffle_seed=0)
    return Trainer(student, teacher, kd, task_loss_for(student), data, settings, "cpu")


def _naive_ratio(trainer: Trainer, weight: float, batches: int) -> float:
    """Mean over the first batches of ‖∇(λ·KD)‖ / ‖∇task‖, each gradient from its own backward pass."""
    params = list(trainer.student.parameters())
    ratios = []
    trainer.data.train.set_epoch(0)
    trainer.sampler.set_epoch(0)
    for i, (noisy, clean, _index) in enumerate(trainer.loader):
        if i >= batches:
            break
        norms = []
        for part in ("task", "kd"):
            for p in params:
                p.grad = None
            with torch.no_grad():
                teacher_out = trainer.teacher(noisy)
            out = trainer.student(noisy)
            if part == "task":
                loss = trainer.task_loss(out, clean)
            else:
                loss = weight * trainer.kd(KDInputs(noisy, clean, out, teacher_out, trainer.student_taps.features,
                                                    trainer.teacher_taps.features))
            loss.backward()
            norms.append(sum(float((p.grad ** 2).sum()) for p in params if p.grad is not None) ** 0.5)
        ratios.append(norms[1] / norms[0])
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("method", sorted(name for name, _ in KD_METHODS.items() if name != "none"))
def test_auto_weight_balances_the_gradients_of_every_method(setup, method):
    trainer = _trainer(setup, method)
    ratio = trainer.gradient_ratio(batches=2)
    assert ratio > 0
    weight = TARGET / ratio
    trainer.settings = replace(trainer.settings, kd_weight=weight)
    assert _naive_ratio(trainer, trainer.loss_weights()[1], batches=2) == pytest.approx(TARGET, rel=0.10)


def test_the_student_is_not_changed_by_calibration(setup):
    trainer = _trainer(setup, "output")
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.gradient_ratio(batches=2)
    after = trainer.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in trainer.student.parameters())


def test_none_has_no_kd_gradient(setup):
    assert _trainer(setup, "none").gradient_ratio(batches=1) == 0.0


def test_auto_is_accepted_and_numbers_are_still_bounded(tmp_path):
    from kdlib.errors import ConfigError

    assert load_plan(QUICKSTART, overrides=["training.kd_weight=auto"]).cfg.training.kd_weight == "auto"
    assert load_plan(QUICKSTART, overrides=["search.grid={kd_weight: [auto, 0.5]}"]).cfg.search.grid["kd_weight"]
    with pytest.raises(ConfigError, match="training.kd_weight"):
        load_plan(QUICKSTART, overrides=["training.kd_weight=-1"])
    with pytest.raises(ConfigError, match="training.kd_balance"):
        load_plan(QUICKSTART, overrides=["training.kd_balance=0"])
