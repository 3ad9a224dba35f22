"""FitNets, SPKD and ReviewKD (kdlib.kd.baselines): values against naive re-derivations, regression
pins, zero at equality, gradient isolation (teacher run with autograd on), invariances, extra
params, kwargs validation, ablation switches and one real training step.

Regenerate the regression pins only when a method's maths changes on purpose:
    python -m tests.test_kd_baselines > tests/fixtures/kd_baselines.json
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlib.errors import ConfigError
from kdlib.kd import KD_METHODS, FeatureTaps, KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.baselines import FitNetsKD, spkd_gram
from kdlib.kd.fusion import hcl_loss
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.models import build_model, size_student
from tests.kd_helpers import assert_gradient_isolated, gradient_flow, naive_conv2d, naive_review

FIXTURE_PATH = Path(__file__).parent / "fixtures" / "kd_baselines.json"

# fixture models: fixed args (not size_student) so the fixture does not move with the size builder
FIX_TEACHER = {"channels": [6, 8], "rnn_hidden": 8, "n_dilated": 1, "n_dualpath": 1}
FIX_STUDENTS = {
    "narrow": {"channels": [3, 4], "rnn_hidden": 4, "n_dilated": 1, "n_dualpath": 1},
    # n_fft 1024: same T (same hop), twice the teacher's F at every tap → exercises the resizing
    "finer": {"channels": [3, 4], "rnn_hidden": 4, "n_dilated": 1, "n_dualpath": 1, "n_fft": 1024},
}
CASES = {
    "fitnets": ("fitnets", {}, "narrow"),
    "fitnets_conv3x3_l1_two_layers": ("fitnets", {"adapter": "conv3x3", "loss": "l1",
                                                  "layers": ["encoder", "decoder"]}, "narrow"),
    "fitnets_pair_finer_f": ("fitnets", {"layers": [["encoder.0", "encoder.1"], "middle"]}, "finer"),
    "spkd_batch": ("spkd", {}, "narrow"),
    "spkd_time": ("spkd", {"axis": "time"}, "narrow"),
    "spkd_frequency": ("spkd", {"axis": "frequency"}, "narrow"),
    "spkd_frequency_finer_f": ("spkd", {"axis": "frequency"}, "finer"),
    "reviewkd": ("reviewkd", {}, "narrow"),
    "reviewkd_mid5_no_fuse_mse": ("reviewkd", {"mid_channels": 5, "fuse": False, "hcl_levels": []}, "narrow"),
    "reviewkd_finer_f": ("reviewkd", {}, "finer"),
}


def fixture_method(case: str):
    """The case's method on fixed tiny models; seeded so adapter / ABF init is deterministic."""
    name, kwargs, student_kind = CASES[case]
    student, teacher = _fixture_models(student_kind)
    torch.manual_seed(0)
    return build_kd_method(name, student, teacher, kwargs)


@functools.cache
def _fixture_models(student_kind: str):
    # the fixture features are synthetic: model weights do not enter the values, only tap shapes
    torch.manual_seed(0)
    return build_model("dpcrn_lite", FIX_STUDENTS[student_kind]), build_model("dpcrn_lite", FIX_TEACHER)


_SHAPES: dict[tuple[str, tuple[str, ...]], dict[str, torch.Size]] = {}


def _shapes(model, taps) -> dict[str, torch.Size]:
    """:func:`probe_feature_shapes` with a 2000-sample probe (T = 8), memoised per architecture."""
    key = (json.dumps(model.get_model_args(), sort_keys=True, default=str), tuple(dict.fromkeys(taps)))
    if key not in _SHAPES:
        _SHAPES[key] = probe_feature_shapes(model, key[1], n_samples=2000)
    return _SHAPES[key]


def fixture_inputs(method) -> KDInputs:
    """Seeded waveforms ``(2, 2000)`` and features ``(2, C, 8, F)`` of each tap's probed shape."""
    g = torch.Generator().manual_seed(1234)
    wavs = [torch.randn(2, 2000, generator=g) for _ in range(4)]
    feats = []
    for model, taps in ((method.student, method.student_taps()), (method.teacher, method.teacher_taps())):
        shapes = _shapes(model, taps)
        feats.append({n: torch.randn(2, *shapes[n][1:], generator=g) for n in dict.fromkeys(taps)})
    return KDInputs(*wavs, *feats)


def compute_fixtures() -> dict[str, float]:
    out = {}
    for case in CASES:
        method = fixture_method(case)
        with torch.no_grad():
            out[case] = float(method(fixture_inputs(method)))
    return out


# ---------------------------------------------------------------------------------------- helpers

TEACHER_ARGS = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}
NAMES = ["fitnets", "spkd", "reviewkd"]


@functools.cache
def _cached_pair():
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
    return student, teacher


def _pair():
    """Fresh copies (gradients and optimiser steps never leak between tests) of a 25 % student and its teacher."""
    return copy.deepcopy(_cached_pair())


def _all_taps(model) -> list[str]:
    return [n for names in model.feature_sets.values() for n in names]


def _inputs(student, teacher, x):
    """Real forward passes: teacher under no_grad, student with its graph; every feature-set tap is
    recorded, so one KDInputs serves any method on this pair."""
    st, tt = FeatureTaps(student, _all_taps(student)), FeatureTaps(teacher, _all_taps(teacher))
    try:
        with torch.no_grad():
            t_out = teacher(x)
        s_out = student(x)
        return KDInputs(x, x, s_out, t_out, dict(st.features), dict(tt.features))
    finally:
        st.remove()
        tt.remove()


@functools.cache
def _frozen_inputs():
    """Graph-free inputs of the cached pair for value-only tests (computed once)."""
    student, teacher = _cached_pair()
    with torch.no_grad():
        return _inputs(student, teacher, _x())


def _x(seed=0, n=2):
    return torch.randn(n, 2000, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ tests

def _fixtures() -> dict[str, float]:
    return json.loads(FIXTURE_PATH.read_text())


def test_fixture_file_covers_every_case():
    assert set(_fixtures()) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_regression_pins(case):
    """Regression pin only: tests/fixtures/kd_baselines.json was written by this code, so it catches
    an unintended change of value, not wrong maths (the naive re-derivations below check that)."""
    method = fixture_method(case)
    with torch.no_grad():
        value = float(method(fixture_inputs(method)))
    assert value == pytest.approx(_fixtures()[case], rel=1e-5, abs=1e-7)


def test_registered_with_a_source_and_needing_a_teacher():
    for name in NAMES:
        cls = KD_METHODS.get(name)
        assert cls.needs_teacher and "arXiv" in cls.source
    with pytest.raises(ValueError, match="teacher"):
        build_kd_method("spkd", *_pair()[:1], None)


# --- zero at equality

def test_spkd_is_zero_when_the_student_equals_the_teacher():
    _, teacher = _pair()
    student = copy.deepcopy(teacher)
    inputs = _inputs(student, teacher, _x())
    for axis in ("batch", "time", "frequency"):
        method = build_kd_method("spkd", student, teacher, {"axis": axis})
        assert method(inputs).item() == pytest.approx(0.0, abs=1e-10), axis
    # and not zero for a different student (so the check above can fail)
    assert float(build_kd_method("spkd", *_cached_pair())(_frozen_inputs())) > 1e-6


@pytest.mark.parametrize("adapter", ["conv1x1", "conv3x3"])
def test_fitnets_with_identity_init_is_zero_when_the_student_equals_the_teacher(adapter):
    _, teacher = _pair()
    student = copy.deepcopy(teacher)
    kwargs = {"adapter": adapter, "layers": ["encoder", "middle", "decoder"]}
    inputs = _inputs(student, teacher, _x())
    method = build_kd_method("fitnets", student, teacher, {**kwargs, "init": "identity"})
    assert method(inputs).item() == pytest.approx(0.0, abs=1e-10)
    # the default init is a random regressor: not zero (so the test above can fail)
    method = build_kd_method("fitnets", student, teacher, kwargs)
    assert method(inputs).item() > 1e-4


def test_fitnets_identity_init_falls_back_with_a_warning_when_widths_differ():
    student, teacher = _pair()
    with pytest.warns(UserWarning, match="equal channel counts"):
        build_kd_method("fitnets", student, teacher, {"init": "identity"})


def test_reviewkd_is_minimal_not_zero_at_equality_and_its_abfs_can_reach_it():
    """ReviewKD's ABFs are random projections: at student == teacher the loss is not zero, but
    training only the ABFs on fixed features drives it towards zero. (A student equal to the
    teacher has the teacher's features, used directly here.)"""
    _, teacher = _cached_pair()
    torch.manual_seed(0)
    method = build_kd_method("reviewkd", teacher, teacher)
    frozen = _frozen_inputs()
    inputs = KDInputs(frozen.noisy, frozen.clean, frozen.teacher_out, frozen.teacher_out,
                      dict(frozen.teacher_features), dict(frozen.teacher_features))
    opt = torch.optim.Adam(method.parameters(), lr=0.05)
    with torch.no_grad():
        start = float(method(inputs))
    for _ in range(40):
        opt.zero_grad()
        loss = method(inputs)
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert start > 1e-3 and float(method(inputs)) < 0.1 * start


# --- gradients

@pytest.mark.parametrize("name,kwargs", [
    ("fitnets", {}), ("fitnets", {"adapter": "conv3x3", "layers": ["encoder", "decoder"]}),
    ("spkd", {}), ("spkd", {"axis": "time"}), ("spkd", {"axis": "frequency"}),
    ("reviewkd", {}),
])
def test_gradient_reaches_the_student_and_the_method_never_the_teacher(name, kwargs):
    """The teacher runs with autograd on, so a missing detach would reach its parameters."""
    student, teacher = _pair()
    method = build_kd_method(name, student, teacher, kwargs)
    flow = assert_gradient_isolated(method, student, teacher, _x())  # every adapter / ABF weight learns too
    assert flow.loss > 0
    assert all(p.grad is not None for p in method.parameters())


class _LeakyFitNets(FitNetsKD):
    """Deliberately broken: the hint is compared with the teacher feature without detaching it."""

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        (s_name, t_name), adapter = self.pairs[0], self.adapters[0]
        return F.mse_loss(adapter(inputs.student_features[s_name]), inputs.teacher_features[t_name])


def test_gradient_isolation_check_fails_for_a_method_that_does_not_detach():
    student, teacher = _pair()
    leaky = _LeakyFitNets(student, teacher)
    assert gradient_flow(leaky, student, teacher, _x()).teacher
    with pytest.raises(AssertionError, match="into the teacher"):
        assert_gradient_isolated(leaky, student, teacher, _x())


@pytest.mark.parametrize("case", ["fitnets_pair_finer_f", "spkd_batch", "spkd_time", "reviewkd"])
def test_teacher_features_are_detached_even_when_they_carry_a_graph(case):
    method = fixture_method(case)
    inputs = fixture_inputs(method)
    for f in [*inputs.student_features.values(), *inputs.teacher_features.values()]:
        f.requires_grad_()
    method(inputs).backward()
    assert all(f.grad is not None for f in inputs.student_features.values())
    assert all(f.grad is None for f in inputs.teacher_features.values())


# --- invariances and references

def _naive_spkd_batch(fs: np.ndarray, ft: np.ndarray) -> float:
    """Tung & Mori eq. (1)-(3) with explicit loops."""
    def g(f):
        q = f.reshape(f.shape[0], -1)
        gram = np.array([[q[i] @ q[j] for j in range(len(q))] for i in range(len(q))])
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)
    b = fs.shape[0]
    return float(((g(fs) - g(ft)) ** 2).sum() / b**2)


def _naive_spkd_time(fs: np.ndarray, ft: np.ndarray) -> float:
    """Per utterance, items = frames (flattened over C·F); averaged over the batch."""
    total = 0.0
    for n in range(fs.shape[0]):
        per = []
        for f in (fs[n], ft[n]):  # (C, T, F)
            frames = [f[:, i, :].reshape(-1) for i in range(f.shape[1])]
            gram = np.array([[a @ b for b in frames] for a in frames])
            per.append(gram / np.linalg.norm(gram, axis=1, keepdims=True))
        total += ((per[0] - per[1]) ** 2).sum() / fs.shape[2] ** 2
    return total / fs.shape[0]


def test_spkd_matches_a_naive_implementation_and_sums_over_layers():
    method = fixture_method("spkd_batch")
    inputs = fixture_inputs(method)
    per_layer = []
    for s, t in method.pairs:
        fs, ft = inputs.student_features[s].double(), inputs.teacher_features[t].double()
        per_layer.append(_naive_spkd_batch(fs.numpy(), ft.numpy()))
        assert float(method.layer_loss(fs, ft)) == pytest.approx(per_layer[-1], rel=1e-9)
    assert float(method(inputs)) == pytest.approx(sum(per_layer), rel=1e-5)  # Σ_layers, not mean

    method = fixture_method("spkd_time")
    inputs = fixture_inputs(method)
    s, t = method.pairs[0]
    fs, ft = inputs.student_features[s].double(), inputs.teacher_features[t].double()
    assert float(method.layer_loss(fs, ft)) == pytest.approx(_naive_spkd_time(fs.numpy(), ft.numpy()), rel=1e-9)


@pytest.mark.parametrize("axis", ["batch", "time", "frequency"])
def test_spkd_does_not_depend_on_channel_count_or_scale(axis):
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(3, 4, 7, 9, generator=g, dtype=torch.float64), torch.randn(3, 6, 7, 9, generator=g,
                                                                                    dtype=torch.float64)
    wider = torch.cat([fs, fs], dim=1)  # duplicated channels: G doubles, row normalisation removes it
    torch.testing.assert_close(spkd_gram(wider, axis), 2 * spkd_gram(fs, axis))
    method = build_kd_method("spkd", *_pair(), {"axis": axis})
    base = method.layer_loss(fs, ft)
    assert float(base) > 0
    torch.testing.assert_close(method.layer_loss(wider, ft), base)
    torch.testing.assert_close(method.layer_loss(3.0 * fs, ft), base)
    torch.testing.assert_close(method.layer_loss(fs, torch.cat([ft, ft, ft], dim=1)), base)


def test_spkd_resizes_a_different_frequency_resolution():
    method = build_kd_method("spkd", *_pair(), {"axis": "frequency"})
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 5, 5, 5, generator=g)  # smooth along F after upsampling
    ft = F.interpolate(base, size=(5, 33), mode="bilinear", align_corners=True)
    same = F.interpolate(base, size=(5, 17), mode="bilinear", align_corners=True)  # same structure, half the F
    other = F.interpolate(torch.randn(2, 3, 5, 5, generator=g), size=(5, 17), mode="bilinear", align_corners=True)
    assert method.layer_loss(other, ft).ndim == 0
    assert float(method.layer_loss(same, ft)) < 0.1 * float(method.layer_loss(other, ft))


def test_fitnets_with_identity_adapters_is_the_plain_hint_distance():
    _, teacher = _pair()
    student = copy.deepcopy(teacher)
    method = build_kd_method("fitnets", student, teacher, {"init": "identity", "loss": "l1"})
    g = torch.Generator().manual_seed(5)
    (s_name, t_name), = method.pairs
    shape = probe_feature_shapes(teacher, [t_name])[t_name]
    fs, ft = torch.randn(2, *shape[1:], generator=g), torch.randn(2, *shape[1:], generator=g)
    loss = method(KDInputs(*(torch.zeros(2, 10),) * 4, {s_name: fs}, {t_name: ft}))
    assert loss.item() == pytest.approx(float(F.l1_loss(fs, ft)), rel=1e-6)


def test_reviewkd_runs_deep_to_shallow_with_fusion_except_at_the_deepest_stage():
    method = fixture_method("reviewkd")
    method.eval()  # BatchNorm running stats: the two passes below see the same normalisation
    assert [abf.att is None for abf in method.abfs] == [False, False, True]
    assert method.mid_channels == min(s[1] for s in probe_feature_shapes(method.teacher,
                                                                         method.teacher_taps()).values())
    inputs = fixture_inputs(method)
    residual, terms = None, []
    for i in (2, 1, 0):
        s, t = method.pairs[i]
        out, residual = method.abfs[i](inputs.student_features[s], residual)
        ft = inputs.teacher_features[t]
        terms.append(hcl_loss(F.interpolate(out, size=ft.shape[-2:], mode="bilinear"), ft))
    assert method(inputs).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)


def test_reviewkd_deep_student_features_reach_shallow_terms_only_when_fusing():
    def grad_of_deepest(fuse):
        torch.manual_seed(0)
        method = build_kd_method("reviewkd", *_pair(), {"fuse": fuse, "sets": ["encoder", "decoder"]})
        inputs = fixture_inputs(method)
        deep = inputs.student_features[method.pairs[1][0]].requires_grad_()
        # isolate the shallow stage's term: the deepest teacher feature is set to its own output
        method.eval()
        with torch.no_grad():
            inputs.teacher_features[method.pairs[1][1]] = method.abfs[1](deep)[0]
        method(inputs).backward()
        return deep.grad.abs().sum()

    assert float(grad_of_deepest(True)) > 0
    assert float(grad_of_deepest(False)) == 0.0


def _naive_spkd_frequency(fs: np.ndarray, ft: np.ndarray) -> float:
    """Per utterance, items = frequency bins (flattened over C·T); averaged over the batch."""
    return _naive_spkd_time(fs.transpose(0, 1, 3, 2), ft.transpose(0, 1, 3, 2))


@pytest.mark.parametrize("case", ["spkd_batch", "spkd_time", "spkd_frequency"])
def test_spkd_forward_matches_a_naive_rederivation(case):
    naive = {"spkd_batch": _naive_spkd_batch, "spkd_time": _naive_spkd_time,
             "spkd_frequency": _naive_spkd_frequency}[case]
    method = fixture_method(case)
    inputs = fixture_inputs(method)
    expected = sum(naive(inputs.student_features[s].double().numpy(), inputs.teacher_features[t].double().numpy())
                   for s, t in method.pairs)  # Σ over layers (Tung & Mori)
    assert float(method(inputs)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", ["fitnets", "fitnets_conv3x3_l1_two_layers"])
def test_fitnets_matches_a_naive_rederivation(case):
    """Mean over hinted layers of D(r(F_s), F_t), r = the method's conv (bias included) applied as a
    sum over kernel offsets with zero padding, D = mean squared or absolute error."""
    method = fixture_method(case)
    inputs = fixture_inputs(method)
    terms = []
    for (s, t), conv in zip(method.pairs, method.adapters, strict=True):
        fs, ft = inputs.student_features[s].double().numpy(), inputs.teacher_features[t].double().numpy()
        assert fs.shape[2:] == ft.shape[2:] and fs.shape[1] != ft.shape[1]
        hint = naive_conv2d(fs, conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy())
        d = hint - ft
        terms.append(np.mean(d**2) if method.cfg.loss == "mse" else np.mean(np.abs(d)))
    with torch.no_grad():
        assert float(method(inputs)) == pytest.approx(float(np.mean(terms)), rel=1e-5)


@pytest.mark.parametrize("case", ["reviewkd", "reviewkd_mid5_no_fuse_mse"])
def test_reviewkd_matches_a_naive_rederivation(case):
    """ABF and HCL re-derived in numpy from methods.md §5.4 (training-mode batch norm), with the
    method's own ABF weights; mean over stages."""
    method = fixture_method(case)
    inputs = fixture_inputs(method)
    fs = [inputs.student_features[s].double().numpy() for s, _ in method.pairs]
    ft = [inputs.teacher_features[t].double().numpy() for _, t in method.pairs]
    assert all(a.shape[2:] == b.shape[2:] for a, b in zip(fs, ft, strict=True))
    assert len({a.shape[-1] for a in fs}) > 1  # stages of different F: the residual is resized
    c = method.cfg
    expected = naive_review(method.abfs, fs, ft, c.fuse, tuple(c.hcl_levels))
    with torch.no_grad():
        assert float(method(inputs)) == pytest.approx(expected, rel=1e-4)


# --- extra params

def test_extra_params_count_only_the_methods_own_parts():
    student, teacher = _pair()
    layers = ["encoder", "middle", "decoder"]
    s_sh = probe_feature_shapes(student, [student.feature_sets[n][-1] for n in layers])
    t_sh = probe_feature_shapes(teacher, [teacher.feature_sets[n][-1] for n in layers])
    cs = [s_sh[student.feature_sets[n][-1]][1] for n in layers]
    ct = [t_sh[teacher.feature_sets[n][-1]][1] for n in layers]
    assert cs != ct  # widths differ, so the counts below are not trivially symmetric

    for adapter, k in (("conv1x1", 1), ("conv3x3", 9)):
        method = build_kd_method("fitnets", student, teacher, {"adapter": adapter, "layers": layers})
        assert method.extra_params() == sum(k * a * b + b for a, b in zip(cs, ct, strict=True))

    assert build_kd_method("spkd", student, teacher).extra_params() == 0
    assert list(build_kd_method("spkd", student, teacher).parameters()) == []

    mid = 3
    method = build_kd_method("reviewkd", student, teacher, {"mid_channels": mid})
    expected = 0
    for i, (a, b) in enumerate(zip(cs, ct, strict=True)):
        expected += a * mid + 2 * mid  # 1×1 conv (no bias) + BN
        expected += (2 * mid * 2 + 2) if i < len(cs) - 1 else 0  # attention conv, not at the deepest
        expected += 9 * mid * b + 2 * b  # 3×3 conv (no bias) + BN
    assert method.extra_params() == expected
    ids = {id(p) for p in method.parameters()}
    assert not ids & {id(p) for p in [*student.parameters(), *teacher.parameters()]}


# --- kwargs and taps

@pytest.mark.parametrize("name,kwargs,key", [
    ("fitnets", {"adapter": "mlp"}, "adapter"),
    ("fitnets", {"loss": "huber"}, "loss"),
    ("fitnets", {"init": "zeros"}, "init"),
    ("fitnets", {"layers": []}, "layers"),
    ("fitnets", {"layer": ["middle"]}, "layer"),
    ("spkd", {"axis": "channel"}, "axis"),
    ("spkd", {"layers": "middle"}, "layers"),
    ("spkd", {"temperature": 2.0}, "temperature"),
    ("reviewkd", {"mid_channels": 0}, "mid_channels"),
    ("reviewkd", {"hcl_levels": [0]}, "hcl_levels"),
    ("reviewkd", {"sets": []}, "sets"),
    ("reviewkd", {"fuse": "sometimes"}, "fuse"),
])
def test_bad_kwargs_are_refused_naming_the_key(name, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs(name, kwargs)
    with pytest.raises(ConfigError, match=key):
        build_kd_method(name, *_pair(), kwargs)


@pytest.mark.parametrize("name,kwargs", [
    ("fitnets", {"layers": ["nowhere"]}), ("spkd", {"layers": [["middle", "nowhere"]]}),
    ("reviewkd", {"sets": ["encoder", "nowhere"]}),
])
def test_bad_tap_is_a_config_error(name, kwargs):
    with pytest.raises(ConfigError, match="nowhere"):
        build_kd_method(name, *_pair(), kwargs)


def test_taps_by_set_name_resolve_to_the_sets_last_layer():
    student, teacher = _pair()
    method = build_kd_method("reviewkd", student, teacher)
    assert method.student_taps() == [student.feature_sets[n][-1] for n in ("encoder", "middle", "decoder")]
    assert method.teacher_taps() == [teacher.feature_sets[n][-1] for n in ("encoder", "middle", "decoder")]


# --- ablation switches change the value

@pytest.mark.parametrize("name,base,variant", [
    ("fitnets", {}, {"loss": "l1"}),
    ("fitnets", {}, {"adapter": "conv3x3"}),
    ("spkd", {}, {"axis": "time"}),
    ("spkd", {"axis": "time"}, {"axis": "frequency"}),
    ("reviewkd", {}, {"fuse": False}),
    ("reviewkd", {}, {"hcl_levels": []}),
    ("reviewkd", {}, {"mid_channels": 2}),
])
def test_ablation_switches_change_the_value(name, base, variant):
    student, teacher = _cached_pair()
    values = []
    for kwargs in (base, {**base, **variant}):
        torch.manual_seed(0)
        method = build_kd_method(name, student, teacher, kwargs)
        with torch.no_grad():
            values.append(float(method(_frozen_inputs())))
    assert values[0] != pytest.approx(values[1], rel=1e-4)


# --- one real training step, trainer-free

@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_updates_student_and_method_not_teacher(name):
    student, teacher = _pair()
    torch.manual_seed(0)
    method = build_kd_method(name, student, teacher)
    s_taps, t_taps = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    opt = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=1e-3)
    before = {k: v.clone() for k, v in [*student.state_dict().items(), *method.state_dict().items()]}
    teacher_before = copy.deepcopy(teacher.state_dict())
    noisy, clean = _x(1), _x(2)
    with torch.no_grad():
        t_out = teacher(noisy)
    s_out = student(noisy)
    kd = method(KDInputs(noisy, clean, s_out, t_out, dict(s_taps.features), dict(t_taps.features)))
    loss = F.l1_loss(s_out, clean) + 0.5 * kd
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    s_taps.remove()
    t_taps.remove()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    for k, v in method.named_parameters():
        assert not torch.equal(before[k], v), k
    for k, v in teacher.state_dict().items():
        assert torch.equal(teacher_before[k], v)


def test_no_warnings_in_the_default_constructions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in NAMES:
            build_kd_method(name, *_pair())


if __name__ == "__main__":
    print(json.dumps(compute_fixtures(), indent=2, sort_keys=True))
