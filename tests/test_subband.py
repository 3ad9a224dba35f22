"""Sub-band model and sub-band KD: band independence of the elite teachers, sizing, the KD loss."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps, build_kd_method
from kdlib.losses import CompressedSpectralLoss
from kdlib.models import build_model, count_params, size_student
from kdlib.sweep.plan import load_plan
from tests.kd_helpers import kd_inputs

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "subband_kd.yaml"
ELITE = {"n_bands": 4, "hidden": 16, "shared": False}


def test_elite_band_networks_only_see_their_own_band():
    torch.manual_seed(0)
    model = build_model("subband", ELITE).eval()
    x = torch.randn(1, 8000)
    taps = FeatureTaps(model, ["mask"])
    with torch.no_grad():
        model(x)
        before = taps.features["mask"].clone()
        for p in model.bands[1].parameters():  # change the band-1 teacher only
            p.add_(torch.randn_like(p))
        model(x)
        after = taps.features["mask"]
    w = model.width
    changed = (before - after).abs().amax(dim=(0, 1, 2)) > 0  # per frequency bin
    assert changed[w:2 * w].all()
    assert not changed[:w].any() and not changed[2 * w:].any()


def test_band_loss_gradients_stay_in_their_band_network():
    model = build_model("subband", ELITE)
    x, y = torch.randn(2, 8000), torch.randn(2, 8000)
    loss = CompressedSpectralLoss(**model.task_loss_kwargs)(model(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for net in model.bands for p in net.parameters()
               if p.requires_grad and p.dim() > 1)
    assert model.task_loss_kwargs == {"wav_weight": 0.0}  # no waveform term coupling the bands


def test_shared_student_is_sized_against_the_elite_teachers():
    teacher_params = count_params(build_model("subband", ELITE))
    for base in ({**ELITE, "shared": True}, {**ELITE, "shared": True, "n_bands": 1}):
        sized = size_student("subband", ELITE, 0.25, base_args=base)
        assert abs(sized.params / teacher_params - 0.25) <= 0.025
        assert sized.model_args["shared"] is True and sized.model_args["n_bands"] == base["n_bands"]


def test_subband_kd_zero_at_equality_and_gradient_to_student_only():
    teacher = build_model("subband", ELITE).eval()
    same = copy.deepcopy(teacher)
    method = build_kd_method("subband_kd", same, teacher, {"hidden_weight": 0.5})
    assert float(method(kd_inputs(method, same, teacher, torch.randn(1, 4000)))) == pytest.approx(0.0, abs=1e-9)
    student = build_model("subband", {**ELITE, "shared": True})
    method = build_kd_method("subband_kd", student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 4000)))
    loss.backward()
    assert float(loss) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert method.extra_params() == 0


def test_subband_kd_refuses_models_it_cannot_pair():
    teacher = build_model("subband", ELITE)
    with pytest.raises(ConfigError, match="n_bands"):
        build_kd_method("subband_kd", build_model("subband", {"n_bands": 1}), teacher)
    with pytest.raises(ConfigError, match="n_bands"):
        build_kd_method("subband_kd", build_model("dpcrn_lite", {"channels": [4, 4], "rnn_hidden": 4}), teacher)
    with pytest.raises(ConfigError, match="hidden sizes"):
        build_kd_method("subband_kd", build_model("subband", {**ELITE, "hidden": 8}), teacher, {"hidden_weight": 1})


def test_subband_sweep_grid_has_the_full_band_baseline_and_no_invalid_cell():
    cfg = load_plan(SWEEP).cfg
    cells = {(p["method"], p["student"]) for p in cfg.search.points()}
    assert cells == {("none", "subband"), ("none", "fullband"), ("subband_kd", "subband")}
    assert cfg.student_base("fullband", cfg.teacher.model.kwargs) == (
        "subband", {**cfg.teacher.model.kwargs, "n_bands": 1, "shared": True})
