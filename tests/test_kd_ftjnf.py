"""The FT-JNF study's five KD methods (arXiv 2507.19208 reconstruction): fixture values, zero at
equality, gradients (student, ABF; never the teacher), channel independence, resizing, extra
params, kwargs validation, ablation switches, one real training step.

Regenerate the loss-value fixture only when the maths changes on purpose:
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
from kdlib.kd.ftjnf import narrowband_self_similarity, wideband_self_similarity
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.kd.similarity import freq_self_similarity
from kdlib.models import build_model, size_student
from tests.kd_helpers import kd_inputs

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
def test_loss_values_match_precomputed_fixtures(case):
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
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", STUDENT_ARGS)
    method = _build(name, {}, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert float(loss.detach()) > 0
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    own = list(method.parameters())
    if name == "fused_multilayer":
        assert own and all(p.grad is not None for p in own)
        assert any(p.grad.abs().sum() > 0 for p in own)
    else:
        assert own == []


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
    assert value("signal_matching", {"noise_term": True}) > value("signal_matching", {})
    assert value("signal_matching", {"window": "hann"}) != pytest.approx(value("signal_matching", {}))
    assert value("mask_matching", {"loss": "mse"}) != pytest.approx(value("mask_matching", {}))
    assert value("ss_wideband", {"distance": "kl"}) != pytest.approx(value("ss_wideband", {}))
    assert value("ss_narrowband", {"layer": "decoder"}) != pytest.approx(value("ss_narrowband", {}))
    assert value("fused_multilayer", {"fuse": False}) != pytest.approx(value("fused_multilayer", {}))
    assert value("fused_multilayer", {"loss": "mse"}) != pytest.approx(value("fused_multilayer", {}))
    assert value("fused_multilayer", {"sets": ["middle"]}) != pytest.approx(value("fused_multilayer", {}))


def test_signal_matching_is_the_ftjnf_loss_with_the_teacher_as_target():
    method = _build("signal_matching", {"alpha": 2.0, "window": "hann", "n_fft": 256, "hop_length": 64})
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
