"""Sub-band model and sub-band KD: band independence of the elite teachers, sizing, the KD loss
(naive per-band re-derivation, zero at equality, gradient isolation with the teacher run with
autograd on)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps, KDInputs, build_kd_method
from kdlib.kd.subband import SubbandKD
from kdlib.losses import BandSpectralLoss, task_loss_for
from kdlib.models import build_model, count_params, size_student
from kdlib.sweep.plan import load_plan
from tests.kd_helpers import assert_gradient_isolated, gradient_flow, kd_inputs

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
    loss_fn = task_loss_for(model)
    assert isinstance(loss_fn, BandSpectralLoss)  # the model's own bins: no iSTFT → STFT path couples the bands
    loss_fn(model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for net in model.bands for p in net.parameters()
               if p.requires_grad and p.dim() > 1)


def test_shared_student_is_sized_against_the_elite_teachers():
    teacher_params = count_params(build_model("subband", ELITE))
    for base in ({**ELITE, "shared": True}, {**ELITE, "shared": True, "n_bands": 1}):
        sized = size_student("subband", ELITE, 0.25, base_args=base)
        assert abs(sized.params / teacher_params - 0.25) <= 0.025
        assert sized.model_args["shared"] is True and sized.model_args["n_bands"] == base["n_bands"]


def test_subband_kd_is_zero_at_equality():
    teacher = build_model("subband", ELITE).eval()
    same = copy.deepcopy(teacher)
    method = build_kd_method("subband_kd", same, teacher, {"hidden_weight": 0.5})
    loss = method(kd_inputs(method, same, teacher, torch.randn(1, 4000)))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kwargs", [{}, {"hidden_weight": 0.5, "loss": "l1"}])
def test_subband_kd_gradient_reaches_the_student_and_never_the_teacher(kwargs):
    """The elite teachers run with autograd on, so a missing detach would reach their parameters."""
    torch.manual_seed(0)
    teacher = build_model("subband", ELITE).eval()
    student = build_model("subband", {**ELITE, "shared": True})
    method = build_kd_method("subband_kd", student, teacher, kwargs)
    flow = assert_gradient_isolated(method, student, teacher, torch.randn(2, 4000))
    assert flow.loss > 0
    assert method.extra_params() == 0


class _LeakySubbandKD(SubbandKD):
    """Deliberately broken: compares with the teachers' masks without detaching them."""

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        s, t = self.mask_taps
        return (inputs.student_features[s] - inputs.teacher_features[t]).pow(2).mean()


def test_gradient_isolation_check_fails_for_a_method_that_does_not_detach():
    torch.manual_seed(0)
    teacher = build_model("subband", ELITE).eval()
    student = build_model("subband", {**ELITE, "shared": True})
    leaky = _LeakySubbandKD(student, teacher)
    assert gradient_flow(leaky, student, teacher, torch.randn(2, 4000)).teacher
    with pytest.raises(AssertionError, match="into the teacher"):
        assert_gradient_isolated(leaky, student, teacher, torch.randn(2, 4000))


@pytest.mark.parametrize("loss,hidden_weight", [("mse", 0.0), ("l1", 0.0), ("mse", 0.7)])
def test_subband_kd_matches_a_per_band_rederivation(loss, hidden_weight):
    """The paper's per-band loss written band by band: Σ_k (W_k / F) · D(M_s^k, M_t^k), bands of
    W = ceil(F / K) bins cut from bin 0 (the last one shorter), plus ``hidden_weight`` · D of the
    ``(B, H, T, K)`` band LSTM outputs."""
    teacher = build_model("subband", ELITE)
    student = build_model("subband", {**ELITE, "shared": True})
    method = build_kd_method("subband_kd", student, teacher, {"loss": loss, "hidden_weight": hidden_weight})
    g = torch.Generator().manual_seed(7)
    n_freqs, k, width = 257, ELITE["n_bands"], teacher.width
    ms, mt = torch.rand(2, 1, 5, n_freqs, generator=g), torch.rand(2, 1, 5, n_freqs, generator=g)
    hs, ht = torch.randn(2, 16, 5, k, generator=g), torch.randn(2, 16, 5, k, generator=g)
    (s_mask, s_hid), (t_mask, t_hid) = ((method.mask_taps[0], method.hidden_taps[0]),
                                        (method.mask_taps[1], method.hidden_taps[1]))
    x = KDInputs(*(torch.zeros(2, 10),) * 4, {s_mask: ms, s_hid: hs}, {t_mask: mt, t_hid: ht})

    def dist(a, b):
        d = (a - b).double().numpy()
        return float(np.mean(d**2) if loss == "mse" else np.mean(np.abs(d)))

    bands = [(i * width, min((i + 1) * width, n_freqs)) for i in range(k)]
    assert [hi - lo for lo, hi in bands] == [65, 65, 65, 62]
    expected = sum((hi - lo) / n_freqs * dist(ms[..., lo:hi], mt[..., lo:hi]) for lo, hi in bands)
    expected += hidden_weight * dist(hs, ht)
    assert float(method(x)) == pytest.approx(expected, rel=1e-5)


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
