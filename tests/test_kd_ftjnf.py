"""The FT-JNF study's five KD methods (arXiv 2507.19208 reconstruction): values against naive
re-derivations, regression pins, zero at equality, gradient isolation (teacher run with autograd
on: student and ABF get gradient, never the teacher), channel independence, resizing, extra params,
kwargs validation, ablation switches, one real training step.

Regenerate the regression pins only when the maths changes on purpose:
    python -m tests.test_kd_ftjnf
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.ftjnf import MaskMatching, narrowband_self_similarity, wideband_self_similarity
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.kd.similarity import freq_self_similarity
from kdlib.models import build_model, size_student
from tests.kd_helpers import (
    assert_gradient_isolated,
    gradient_flow,
    kd_inputs,
    naive_cosine_matrix,
    naive_review,
    naive_row_kl,
    naive_stft,
)

FIXTURE = Path(__file__).parent / "fixtures" / "kd_ftjnf.json"
TEACHER_ARGS = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}
STUDENT_ARGS = size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args
NAMES = ["mask_matching", "signal_matching", "ss_wideband", "ss_narrowband", "fused_multilayer"]
FEATURE_METHODS = ["mask_matching", "ss_wideband", "ss_narrowband"]
CASES = {
    "mask_matching": ("mask_matching", {}),
    "mask_matching_mse": ("mask_matching", {"loss": "mse"}),
    "signal_matching": ("signal_matching", {}),
    "signal_matching_noise_hann": ("signal_matching", {"noise_term": True, "window": "hann", "alpha": 3.0}),
    "signal_matching_no_noise": ("signal_matching", {"noise_term": False}),
    "ss_wideband": ("ss_wideband", {}),
    "ss_wideband_kl_encoder": ("ss_wideband", {"distance": "kl", "temperature": 0.5, "layer": "encoder"}),
    "ss_narrowband": ("ss_narrowband", {}),
    "ss_narrowband_rescale_stride": ("ss_narrowband", {"rescale": True, "stride": 3}),
    "fused_multilayer": ("fused_multilayer", {}),
    "fused_multilayer_mse_mid5": ("fused_multilayer", {"loss": "mse", "mid_channels": 5}),
    "fused_multilayer_nofuse": ("fused_multilayer", {"fuse": False}),
}


def _models():
    return build_model("dpcrn_lite", STUDENT_ARGS), build_model("dpcrn_lite", TEACHER_ARGS)


def _build(name, kwargs=None, student=None, teacher=None, seed=0):
    if student is None:
        student, teacher = _models()
    torch.manual_seed(seed)  # deterministic adapter (ABF) init
    return build_kd_method(name, student, teacher, kwargs or {})


def fixture_inputs(method) -> KDInputs:
    """Seeded waveforms ``(2, 4000)`` and per-tap features ``(2, C, 5, F)`` with each tap's real
    (C, F) from the tiny student/teacher (student widths are ~half the teacher's)."""
    g = torch.Generator().manual_seed(2507)
    noisy, clean, s_out, t_out = (torch.randn(2, 4000, generator=g) for _ in range(4))
    s_shapes = probe_feature_shapes(method.student, method.student_taps())
    t_shapes = probe_feature_shapes(method.teacher, method.teacher_taps())
    s_feats = {n: torch.randn(2, s[1], 5, s[3], generator=g).tanh() for n, s in s_shapes.items()}
    t_feats = {n: torch.randn(2, s[1], 5, s[3], generator=g).tanh() for n, s in t_shapes.items()}
    return KDInputs(noisy, clean, s_out, t_out, s_feats, t_feats)


def _case_value(case: str) -> float:
    name, kwargs = CASES[case]
    method = _build(name, kwargs)
    return float(method(fixture_inputs(method)).detach())


def compute_fixtures() -> dict[str, float]:
    return {case: _case_value(case) for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_regression_pins(case):
    """Regression pin only: tests/fixtures/kd_ftjnf.json was written by this code, so it catches an
    unintended change of value, not wrong maths (the naive re-derivations below check that)."""
    expected = json.loads(FIXTURE.read_text())[case]
    assert _case_value(case) == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "fused_multilayer"])
def test_loss_is_zero_when_the_student_equals_the_teacher(name):
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = _build(name, {}, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)


def test_fused_multilayer_learns_to_match_an_identical_student():
    """ABF projections make the loss non-zero at student == teacher; optimising only the ABF
    parameters on identical features must drive it down."""
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = _build("fused_multilayer", {}, student, teacher)
    inputs = kd_inputs(method, student, teacher, torch.randn(2, 8000))
    inputs.student_features = {k: v.detach() for k, v in inputs.student_features.items()}
    assert inputs.student_features.keys() == inputs.teacher_features.keys()
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = method(inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in student.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_student_and_method_and_never_the_teacher(name):
    """The teacher runs with autograd on, so a missing detach would reach its parameters."""
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", STUDENT_ARGS)
    method = _build(name, {}, student, teacher)
    flow = assert_gradient_isolated(method, student, teacher, torch.randn(2, 8000))
    assert flow.loss > 0
    own = list(method.parameters())
    if name == "fused_multilayer":
        assert own and all(p.grad is not None for p in own) and flow.method
    else:
        assert own == []


class _LeakyMaskMatching(MaskMatching):
    """Deliberately broken: compares with the teacher's mask without detaching it."""

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        return (inputs.student_features[self.s_tap] - inputs.teacher_features[self.t_tap]).abs().mean()


def test_gradient_isolation_check_fails_for_a_method_that_does_not_detach():
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", TEACHER_ARGS)  # same widths: the leaky loss needs equal shapes
    leaky = _LeakyMaskMatching(student, teacher)
    assert gradient_flow(leaky, student, teacher, torch.randn(2, 8000)).teacher
    with pytest.raises(AssertionError, match="into the teacher"):
        assert_gradient_isolated(leaky, student, teacher, torch.randn(2, 8000))


# --- independent re-derivations of the loss values (formulas of the docstrings, plain numpy)

def _np(t):
    return t.detach().double().numpy()


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_mask_matching_matches_a_naive_rederivation(loss):
    method = _build("mask_matching", {"loss": loss})
    x = fixture_inputs(method)
    ms, mt = _np(x.student_features[method.s_tap]), _np(x.teacher_features[method.t_tap])
    assert ms.shape == mt.shape
    diffs = [ms[b, c, t, f] - mt[b, c, t, f] for b, c, t, f in np.ndindex(ms.shape)]
    expected = np.mean(np.abs(diffs)) if loss == "l1" else np.mean(np.square(diffs))
    assert float(method(x)) == pytest.approx(float(expected), rel=1e-5)


def _naive_signal(s_out, t_out, noisy, alpha, n_fft, hop, sqrt_window, noise) -> float:
    """FT-JNF's loss with the teacher as target: α·L1_time + L1_|STFT| on ŝ, plus the same on the
    noise estimates n̂ = y_ref − ŝ when ``noise``; L1 means over samples / (F, T) bins and the batch."""
    def terms(est, ref):
        time = np.abs(est - ref).mean()
        mag = np.mean([np.abs(np.abs(naive_stft(e, n_fft, hop, sqrt_window)) - np.abs(naive_stft(r, n_fft, hop,
                                                                                               sqrt_window)))
                       for e, r in zip(est, ref, strict=True)])
        return alpha * time + mag
    y = noisy if noisy.ndim == 2 else noisy[:, 0]  # reference mic 0
    return float(terms(s_out, t_out) + (terms(y - s_out, y - t_out) if noise else 0.0))


@pytest.mark.parametrize("kwargs,mics", [
    ({}, 1),  # the default: FT-JNF's speech and noise terms, √Hann
    ({"noise_term": False}, 1),
    ({"alpha": 2.0, "window": "hann", "n_fft": 256, "hop_length": 64}, 1),
    ({}, 3),  # array input: noise estimates from the reference mic
])
def test_signal_matching_matches_a_naive_rederivation(kwargs, mics):
    method = _build("signal_matching", kwargs)
    x = fixture_inputs(method)
    if mics > 1:
        x.noisy = torch.stack([x.noisy, torch.randn_like(x.noisy), torch.randn_like(x.noisy)], dim=1)
    c = method.cfg
    expected = _naive_signal(_np(x.student_out), _np(x.teacher_out), _np(x.noisy), c.alpha, c.n_fft,
                             c.hop_length, c.window == "sqrt_hann", c.noise_term)
    assert float(method(x)) == pytest.approx(expected, rel=1e-4)


def test_signal_matching_default_follows_the_ftjnf_loss_with_noise_terms():
    assert _build("signal_matching").cfg.noise_term is True
    with_noise, without = _case_value("signal_matching"), _case_value("signal_matching_no_noise")
    assert with_noise > without  # the noise magnitude term (and the doubled time term) are there


def _naive_band_similarity(fs, ft, band: str, stride: int, rescale: bool, distance: str, tau: float) -> float:
    """Wide-band: per item and frame t, A_t[f, g] = cos over C of (x[:, t, f], x[:, t, g]); narrow-band:
    per item and bin f, A_f[t, u] = cos over C of (x[:, t, f], x[:, u, f]); every ``stride``-th frame /
    bin; D = MSE over all matrices or row-softmax KL."""
    mats = []
    for feat in (fs, ft):
        per = []
        for item in feat:  # (C, T, F)
            c, t, f = item.shape
            if band == "wide":
                per += [naive_cosine_matrix([item[:, i, j] for j in range(f)]) for i in range(0, t, stride)]
            else:
                per += [naive_cosine_matrix([item[:, i, j] for i in range(t)]) for j in range(0, f, stride)]
        m = np.stack(per)
        mats.append((m + 1) / 2 if rescale else m)
    if distance == "mse":
        return float(((mats[0] - mats[1]) ** 2).mean())
    return naive_row_kl(mats[0], mats[1], tau)


@pytest.mark.parametrize("name", ["ss_wideband", "ss_narrowband"])
@pytest.mark.parametrize("kwargs", [{}, {"distance": "kl", "temperature": 0.5, "layer": "encoder"},
                                    {"rescale": True, "stride": 2}])
def test_band_self_similarity_losses_match_a_naive_rederivation(name, kwargs):
    method = _build(name, kwargs)
    x = fixture_inputs(method)
    fs, ft = _np(x.student_features[method.s_tap]), _np(x.teacher_features[method.t_tap])
    assert fs.shape[2:] == ft.shape[2:] and fs.shape[1] != ft.shape[1]  # same (T, F), other C
    c = method.cfg
    expected = _naive_band_similarity(fs, ft, "wide" if name == "ss_wideband" else "narrow", c.stride,
                                      c.rescale, c.distance, c.temperature)
    assert expected > 0
    assert float(method(x)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("kwargs", [{}, {"loss": "mse", "mid_channels": 5}, {"fuse": False}])
def test_fused_multilayer_matches_a_naive_rederivation(kwargs):
    """ABF (1×1 conv + BN, sigmoid attention with the nearest-resized deeper residual, 3×3 conv + BN)
    and HCL re-derived in numpy from methods.md §5.4, with the method's own ABF weights."""
    method = _build("fused_multilayer", kwargs)
    x = fixture_inputs(method)
    fs = [_np(x.student_features[s]) for s, _ in method.pairs]
    ft = [_np(x.teacher_features[t]) for _, t in method.pairs]
    assert all(a.shape[2:] == b.shape[2:] for a, b in zip(fs, ft, strict=True))
    assert len({a.shape[-1] for a in fs}) > 1  # stages of different F: the residual is resized
    c = method.cfg
    expected = naive_review(method.abfs, fs, ft, c.fuse, tuple(c.hcl_levels), c.loss)
    assert float(method(x).detach()) == pytest.approx(expected, rel=1e-4)


def _naive_wideband(feat: np.ndarray) -> np.ndarray:
    b, c, t, f = feat.shape
    out = np.zeros((b * t, f, f))
    for n in range(b):
        for i in range(t):
            vecs = feat[n, :, i, :].T  # (F, C)
            unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            out[n * t + i] = unit @ unit.T
    return out


def test_band_similarities_match_a_naive_implementation():
    feat = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    wide = wideband_self_similarity(feat)
    assert wide.shape == (2 * 6, 5, 5)
    np.testing.assert_allclose(wide.numpy(), _naive_wideband(feat.numpy()), atol=1e-10)
    narrow = narrowband_self_similarity(feat)
    assert narrow.shape == (2 * 5, 6, 6)
    np.testing.assert_allclose(narrow.numpy(), _naive_wideband(feat.transpose(2, 3).numpy()), atol=1e-10)
    # per-frame matrices, not freq_self_similarity's single matrix over C·T
    assert not torch.allclose(wide.view(2, 6, 5, 5).mean(1), freq_self_similarity(feat))
    assert wideband_self_similarity(feat, stride=2).shape == (2 * 3, 5, 5)
    assert narrowband_self_similarity(feat, stride=2).shape == (2 * 3, 6, 6)


@pytest.mark.parametrize("name", ["ss_wideband", "ss_narrowband"])
def test_self_similarity_losses_do_not_depend_on_channel_count(name):
    method = _build(name)
    x = fixture_inputs(method)
    (s_name,), (t_name,) = method.student_taps(), method.teacher_taps()
    base = float(method(x))
    feat = x.student_features[s_name]
    x.student_features[s_name] = torch.cat([feat, feat, feat], dim=1)  # same directions, 3× the channels
    assert float(method(x)) == pytest.approx(base, rel=1e-5)
    # the teacher's own feature read by a narrower student: zero
    x.student_features[s_name] = x.teacher_features[t_name][:, :].repeat(1, 2, 1, 1)
    assert float(method(x)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,student_args", [
    ("mask_matching", {"n_fft": 256, "hop_length": 128}),  # other STFT: mask (T, F) (63, 129) vs (32, 257)
    ("ss_wideband", {"channels": [3]}),  # one fewer stride-2 layer: middle F 129 vs 65
    ("ss_narrowband", {"channels": [3]}),
    ("ss_narrowband", {"channels": [3], "n_fft": 256, "hop_length": 128}),  # and other T
])
def test_different_resolutions_are_resized_not_refused(name, student_args):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", {**STUDENT_ARGS, **student_args})
    method = _build(name, {}, student, teacher)
    inputs = kd_inputs(method, student, teacher, torch.randn(2, 8000))
    (s_name,), (t_name,) = method.student_taps(), method.teacher_taps()
    assert inputs.student_features[s_name].shape[-2:] != inputs.teacher_features[t_name].shape[-2:]
    loss = method(inputs)
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert any(p.grad is not None for p in student.parameters())


def test_fused_multilayer_handles_different_depths():
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", {**STUDENT_ARGS, "channels": [3], "n_dilated": 0})
    method = _build("fused_multilayer", {}, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_extra_params_count_the_method_own_parameters():
    for name in ["mask_matching", "signal_matching", "ss_wideband", "ss_narrowband"]:
        assert _build(name).extra_params() == 0
    method = _build("fused_multilayer")
    own = sum(p.numel() for p in method.parameters())
    assert method.extra_params() == own > 0
    assert len(method.abfs) == 3
    assert all(not k.startswith(("student", "teacher")) for k, _ in method.named_parameters())
    assert _build("fused_multilayer", {"mid_channels": 16}).extra_params() > own
    assert _build("fused_multilayer", {"fuse": False}).extra_params() < own  # no attention convs


def test_taps_resolve_by_set_name_and_accept_pairs():
    assert _build("mask_matching").student_taps() == ["mask"]
    assert _build("ss_wideband").teacher_taps() == ["dualpath.0"]  # "middle": its last layer
    method = _build("ss_narrowband", {"layer": ["encoder", "dilated.0"]})
    assert (method.student_taps(), method.teacher_taps()) == (["encoder.1"], ["dilated.0"])
    assert _build("fused_multilayer").student_taps() == ["encoder.1", "dualpath.0", "decoder.0"]


def test_ablation_switches_change_the_value():
    def value(name, kwargs):
        method = _build(name, kwargs)
        return float(method(fixture_inputs(method)).detach())

    assert value("signal_matching", {"alpha": 0.0}) < value("signal_matching", {})
    assert value("signal_matching", {"noise_term": False}) < value("signal_matching", {})
    assert value("signal_matching", {"window": "hann"}) != pytest.approx(value("signal_matching", {}))
    assert value("mask_matching", {"loss": "mse"}) != pytest.approx(value("mask_matching", {}))
    assert value("ss_wideband", {"distance": "kl"}) != pytest.approx(value("ss_wideband", {}))
    assert value("ss_narrowband", {"layer": "decoder"}) != pytest.approx(value("ss_narrowband", {}))
    assert value("fused_multilayer", {"fuse": False}) != pytest.approx(value("fused_multilayer", {}))
    assert value("fused_multilayer", {"loss": "mse"}) != pytest.approx(value("fused_multilayer", {}))
    assert value("fused_multilayer", {"sets": ["middle"]}) != pytest.approx(value("fused_multilayer", {}))


def test_signal_matching_is_the_ftjnf_loss_with_the_teacher_as_target():
    method = _build("signal_matching", {"alpha": 2.0, "window": "hann", "n_fft": 256, "hop_length": 64,
                                        "noise_term": False})
    x = fixture_inputs(method)
    win = torch.hann_window(256)
    mag = [torch.stft(w, 256, 64, window=win, return_complex=True).abs() for w in (x.student_out, x.teacher_out)]
    expected = 2.0 * (x.student_out - x.teacher_out).abs().mean() + (mag[0] - mag[1]).abs().mean()
    assert float(method(x)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("name,kwargs,key", [
    ("mask_matching", {"loss": "l2"}, "loss"),
    ("mask_matching", {"tapp": "mask"}, "tapp"),
    ("signal_matching", {"alpha": -1}, "alpha"),
    ("signal_matching", {"window": "hamming"}, "window"),
    ("ss_wideband", {"distance": "cos"}, "distance"),
    ("ss_narrowband", {"stride": 0}, "stride"),
    ("ss_narrowband", {"temperature": 0}, "temperature"),
    ("fused_multilayer", {"sets": []}, "sets"),
    ("fused_multilayer", {"hcl_levels": [0]}, "hcl_levels"),
    ("fused_multilayer", {"loss": "kl"}, "loss"),
    ("fused_multilayer", {"mid_channels": 0}, "mid_channels"),
])
def test_bad_kwargs_are_refused_naming_the_key(name, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs(name, kwargs)


@pytest.mark.parametrize("name,kwargs,match", [
    ("ss_wideband", {"layer": "nowhere"}, "nowhere"),
    ("fused_multilayer", {"sets": ["encoder", "bottleneck"]}, "bottleneck"),
    ("mask_matching", {"tap": ["mask", "encoder.0"]}, "channels"),
])
def test_impossible_taps_are_config_errors(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _build(name, kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_one_real_training_step_updates_student_and_method(name):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", STUDENT_ARGS)
    method = _build(name, {}, student, teacher)
    assert method.needs_teacher and "2507.19208" in method.source
    params = [*student.parameters(), *method.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    x = torch.randn(2, 8000)
    inputs = kd_inputs(method, student, teacher, x)
    loss = (inputs.student_out - x).abs().mean() + method(inputs)  # task loss + KD
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]
    assert any(changed[: len(list(student.parameters()))])
    if name == "fused_multilayer":
        assert any(changed[len(list(student.parameters())):])


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compute_fixtures(), indent=2, sort_keys=True) + "\n")
    print(FIXTURE.read_text())
