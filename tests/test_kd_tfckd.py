"""i2rf_tfckd (arXiv 2506.13127, reconstruction): fixture values, equality behaviour, gradients,
invariances, parameter count, kwargs validation, ablation switches and one real training step.

Regenerate the loss-value fixtures only when the maths changes on purpose:
    python -m tests.test_kd_tfckd > tests/fixtures/kd_tfckd.json
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps, KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.kd.similarity import freq_self_similarity, similarity_distance, time_self_similarity
from kdlib.kd.tfckd import I2RFTFCKD
from kdlib.models import build_model, size_student
from tests.kd_helpers import kd_inputs

FIXTURE_PATH = Path(__file__).parent / "fixtures" / "kd_tfckd.json"
# 3 encoder levels → 2 decoder taps per set; n_fft 64 keeps F small (33/17/9/5 bins)
TEACHER_ARGS = {"n_fft": 64, "hop_length": 32, "channels": [4, 6, 8], "rnn_hidden": 6, "n_dilated": 2,
                "n_dualpath": 1}
CASES: dict[str, dict] = {
    "full": {},
    "no_intra": {"intra_set": False},
    "no_inter": {"inter_set_fusion": False},
    "time_only": {"calibration": "time"},
    "frequency_only": {"calibration": "frequency"},
    "uncalibrated": {"calibration": "none"},
    "no_cross": {"cross_weighting": "none"},
    "product": {"cross_weighting": "product"},
    "learned": {"weights": "learned", "embed_dim": 4, "pool_size": 2},
    "recursive_mean_teacher": {"fusion": "recursive", "teacher_representative": "mean"},
    "kl_rescale": {"distance": "kl", "kl_temperature": 0.5, "rescale": True, "temperature": 0.05},
    "lambdas": {"lambda_intra": 0.5, "lambda_inter": 2.0, "sets": ["encoder", "decoder"]},
}


@functools.cache
def _student_args(ratio: float) -> dict:
    return size_student("dpcrn_lite", TEACHER_ARGS, ratio).model_args


def _pair(ratio: float = 0.25):
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", _student_args(ratio))
    return student, teacher


def _method(student, teacher, **kwargs) -> I2RFTFCKD:
    torch.manual_seed(0)  # ABF / query-key init
    return build_kd_method("i2rf_tfckd", student, teacher, kwargs)


def fixture_inputs(method: I2RFTFCKD) -> KDInputs:
    """Seeded waveforms ``(2, 800)`` and per-tap features ``(2, C, 5, F)`` with each tap's real C and F."""
    g = torch.Generator().manual_seed(2506)
    s_shapes = probe_feature_shapes(method.student, method.student_taps())
    t_shapes = probe_feature_shapes(method.teacher, method.teacher_taps())
    wavs = [torch.randn(2, 800, generator=g) for _ in range(4)]
    s_feats = {n: torch.randn(2, s[1], 5, s[3], generator=g) for n, s in s_shapes.items()}
    t_feats = {n: torch.randn(2, s[1], 5, s[3], generator=g) for n, s in t_shapes.items()}
    return KDInputs(*wavs, s_feats, t_feats)


def compute_fixtures() -> dict[str, float]:
    torch.manual_seed(0)
    student, teacher = _pair()
    out = {}
    for case, kwargs in CASES.items():
        method = _method(student, teacher, **kwargs)
        out[case] = method(fixture_inputs(method)).item()
    return out


# ---- 1. loss values ----------------------------------------------------------------------------
FIXTURES = json.loads(FIXTURE_PATH.read_text()) if FIXTURE_PATH.exists() else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_precomputed_fixtures(case):
    torch.manual_seed(0)
    student, teacher = _pair()
    method = _method(student, teacher, **CASES[case])
    assert method(fixture_inputs(method)).item() == pytest.approx(FIXTURES[case], rel=1e-5, abs=1e-7)


def test_fixture_cases_are_all_different():
    values = sorted(FIXTURES.values())
    assert all(b - a > 1e-6 for a, b in zip(values, values[1:], strict=False))


# ---- the group equations, by hand ---------------------------------------------------------------
def _toy_mats(n, seed):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 3 + k, 6, 5 + 2 * k, generator=g) for k in range(n)]
    return [(time_self_similarity(f), freq_self_similarity(f)) for f in feats]


@pytest.mark.parametrize("calibration", ["dual", "time", "frequency", "none"])
@pytest.mark.parametrize("cross", ["cross", "product", "none"])
def test_pair_loss_matches_the_written_equations(calibration, cross):
    student, teacher = _pair()
    tau = 0.05
    method = _method(student, teacher, calibration=calibration, cross_weighting=cross, temperature=tau)
    s, t = _toy_mats(2, 1), _toy_mats(3, 2)
    d_t = torch.tensor([[float(similarity_distance(a[0], b[0])) for b in t] for a in s])
    d_f = torch.tensor([[float(similarity_distance(a[1], b[1])) for b in t] for a in s])
    a_t, a_f = torch.softmax(-d_t.flatten() / tau, 0).view(2, 3), torch.softmax(-d_f.flatten() / tau, 0).view(2, 3)
    if calibration == "time":
        expected = (a_t * d_t).sum()
    elif calibration == "frequency":
        expected = (a_f * d_f).sum()
    elif calibration == "none":
        expected = (d_t + d_f).mean()
    elif cross == "cross":
        expected = (a_f * d_t + a_t * d_f).sum()
    elif cross == "product":
        w = a_t * a_f
        expected = (w / w.sum() * (d_t + d_f)).sum()
    else:
        expected = (a_t * d_t + a_f * d_f).sum()
    assert method.pair_loss("encoder", s, t).item() == pytest.approx(float(expected), rel=1e-5)


def test_softmax_weights_favour_the_closer_pairs_and_carry_no_gradient():
    student, teacher = _pair()
    tau = 0.1
    method = _method(student, teacher, calibration="time", temperature=tau)
    target = torch.randn(2, 3, 6, 5)
    near = (target + 0.3 * torch.randn(2, 3, 6, 5)).requires_grad_(True)
    far = torch.randn(2, 3, 6, 5).requires_grad_(True)
    t = [(time_self_similarity(target), None)]
    s = [(time_self_similarity(near), None), (time_self_similarity(far), None)]
    loss = method.pair_loss("encoder", s, t)
    loss.backward()
    # expected: Σ α_i d_i with α = softmax(−d/τ) treated as a constant
    near2, far2 = near.detach().clone().requires_grad_(True), far.detach().clone().requires_grad_(True)
    d = torch.stack([similarity_distance(time_self_similarity(x), t[0][0]) for x in (near2, far2)])
    alpha = torch.softmax(-d.detach() / tau, 0)
    assert alpha[0] > alpha[1]  # the closer pair gets the larger weight
    expected = (alpha * d).sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(near.grad, near2.grad)
    torch.testing.assert_close(far.grad, far2.grad)


# ---- 2. student == teacher -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"calibration": "time"}, {"calibration": "frequency"},
                                    {"cross_weighting": "product"}, {"cross_weighting": "none"},
                                    {"distance": "kl"}])
def test_intra_set_loss_vanishes_when_student_equals_teacher_at_low_temperature(kwargs):
    """Minimal, not zero, at the default τ: every diagonal pair (i, i) has distance 0, off-diagonal
    pairs keep weight ∝ exp(−d/τ), which vanishes as τ → 0."""
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    x = torch.randn(2, 1600)
    cold = _method(student, teacher, inter_set_fusion=False, temperature=1e-4, **kwargs)
    warm = _method(student, teacher, inter_set_fusion=False, temperature=1.0, **kwargs)
    cold_loss = cold(kd_inputs(cold, student, teacher, x)).item()
    warm_loss = warm(kd_inputs(warm, student, teacher, x)).item()
    assert cold_loss < 1e-6
    assert warm_loss > 1e-4  # off-diagonal pairs are real distances: the test can fail


def test_full_method_at_equality_is_only_the_inter_set_term():
    """With student == teacher the full loss (τ → 0) equals the inter-set term alone: the intra-set
    term vanishes, the fused ABF representative is a learned transform and is not the teacher's layer."""
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    x = torch.randn(2, 1600)
    full = _method(student, teacher, temperature=1e-4)
    inter = _method(student, teacher, temperature=1e-4, intra_set=False)
    full_loss = full(kd_inputs(full, student, teacher, x)).item()
    inter_loss = inter(kd_inputs(inter, student, teacher, x)).item()
    assert full_loss == pytest.approx(inter_loss, rel=1e-5, abs=1e-7)
    assert inter_loss > 0
    # the inter-set machinery itself is zero when the fused student set equals the teacher's
    with torch.no_grad():
        t_in = kd_inputs(full, student, teacher, x)
        reps = [full._teacher_representative([full._mats(t_in.teacher_features[n]) for n in full.t_sets[s]])
                for s in full.cfg.sets]
    assert full.pair_loss("inter", reps, reps).item() < 1e-6


# ---- 3. gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"weights": "learned"},
                                    {"fusion": "recursive", "teacher_representative": "mean"}])
def test_gradient_reaches_student_fusion_and_learned_weights_never_teacher(kwargs):
    torch.manual_seed(0)
    student, teacher = _pair()
    teacher.requires_grad_(True)  # the method itself must detach the teacher's features
    method = _method(student, teacher, **kwargs)
    inputs = kd_inputs(method, student, teacher, torch.randn(2, 1600), teacher_grad=True)
    method(inputs).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.decoder.parameters())
    own = dict(method.named_parameters())
    assert own and all(p.grad is not None and torch.isfinite(p.grad).all() for p in own.values())
    assert all(own[n].grad.abs().sum() > 0 for n in own if ".conv1.0." in n or ".att.0." in n or "query" in n)
    if kwargs.get("weights") == "learned":
        assert any(n.startswith("attention.") for n in own)


# ---- 4. invariances -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"teacher_representative": "mean"}, {"weights": "learned"},
                                    {"distance": "kl"}])
def test_loss_does_not_depend_on_teacher_channel_count(kwargs):
    student, teacher = _pair()
    method = _method(student, teacher, **kwargs)
    inputs = fixture_inputs(method)
    wider = copy.copy(inputs)
    wider.teacher_features = {n: torch.cat([f, f, f], dim=1) for n, f in inputs.teacher_features.items()}
    torch.testing.assert_close(method(wider), method(inputs))


def test_intra_set_loss_does_not_depend_on_student_channel_count():
    student, teacher = _pair()
    method = _method(student, teacher, inter_set_fusion=False)
    inputs = fixture_inputs(method)
    wider = copy.copy(inputs)
    wider.student_features = {n: torch.cat([f, f], dim=1) for n, f in inputs.student_features.items()}
    torch.testing.assert_close(method(wider), method(inputs))


@pytest.mark.parametrize("fusion", ["residual", "recursive"])
@pytest.mark.parametrize("kwargs", [{}, {"weights": "learned"}, {"teacher_representative": "mean"}])
def test_student_and_teacher_may_differ_in_depth_and_width(fusion, kwargs):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", {"n_fft": 64, "hop_length": 32, "channels": [3, 5], "rnn_hidden": 4,
                                     "n_dilated": 1, "n_dualpath": 1})
    method = _method(student, teacher, fusion=fusion, **kwargs)
    assert len(method.s_sets["encoder"]) == 2 and len(method.t_sets["encoder"]) == 3
    assert len(method.s_sets["middle"]) == 2 and len(method.t_sets["middle"]) == 3
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 1600)))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0


def test_fusion_order_sets_the_representative_resolution():
    student, teacher = _pair()
    inputs = fixture_inputs(_method(student, teacher))
    feats = [inputs.student_features[n] for n in ("encoder.0", "encoder.1", "encoder.2")]
    residual = _method(student, teacher, fusion_channels=5).fusion["encoder"](feats)
    recursive = _method(student, teacher, fusion="recursive", fusion_channels=5).fusion["encoder"](feats)
    assert residual.shape == (2, 5, 5, feats[0].shape[-1])  # deep → shallow ends at the shallowest F
    assert recursive.shape == (2, 5, 5, feats[-1].shape[-1])  # shallow → deep ends at the deepest F


# ---- 5. extra params ---------------------------------------------------------------------------
def _abf_params(c_in, m, fuse, last):
    """conv1 + BN, attention conv (not on the chain's first ABF), 3×3 output conv + BN (last ABF only)."""
    return c_in * m + 2 * m + (2 * m * 2 + 2 if fuse else 0) + (9 * m * m + 2 * m if last else 0)


def test_extra_params_count_the_fusion_and_learned_weights_only():
    student, teacher = _pair()
    shapes = probe_feature_shapes(student, _method(student, teacher).student_taps())
    m = 7
    abf = rec = 0
    for name, taps in student.feature_sets.items():
        if name in ("encoder", "middle", "decoder"):
            chain = [shapes[t][1] for t in reversed(taps)]  # residual: deep → shallow
            abf += sum(_abf_params(c, m, fuse=k > 0, last=k == len(chain) - 1) for k, c in enumerate(chain))
            chain.reverse()  # recursive: shallow → deep
            rec += sum(_abf_params(c, m, fuse=k > 0, last=k == len(chain) - 1) for k, c in enumerate(chain))
    assert _method(student, teacher, fusion_channels=m).extra_params() == abf
    assert _method(student, teacher, fusion_channels=m, fusion="recursive").extra_params() == rec
    assert _method(student, teacher, inter_set_fusion=False).extra_params() == 0
    p, d = 3, 5
    attention = 2 * (p * p * d + d)  # query + key linear maps; LayerNorm has no affine params
    learned = _method(student, teacher, fusion_channels=m, weights="learned", pool_size=p, embed_dim=d)
    assert learned.extra_params() == abf + attention * 2 * 4  # 2 streams × (3 sets + inter)
    assert _method(student, teacher, inter_set_fusion=False, weights="learned", calibration="time",
                   pool_size=p, embed_dim=d).extra_params() == attention * 3
    assert _method(student, teacher, fusion_channels=m, weights="learned",
                   calibration="none").extra_params() == abf
    # the models are plain references, never counted
    method = _method(student, teacher)
    ids = {id(q) for q in method.parameters()}
    assert not ids & {id(q) for q in [*student.parameters(), *teacher.parameters()]}


# ---- 6. kwargs and ablation switches ---------------------------------------------------------
@pytest.mark.parametrize("kwargs,key", [
    ({"intra_set": False, "inter_set_fusion": False}, "inter_set_fusion"),
    ({"temperature": 0.0}, "temperature"),
    ({"lambda_intra": -1.0}, "lambda_intra"),
    ({"lambda_inter": -0.1}, "lambda_inter"),
    ({"calibration": "both"}, "calibration"),
    ({"weights": "attention"}, "weights"),
    ({"cross_weighting": "sum"}, "cross_weighting"),
    ({"fusion": "deep"}, "fusion"),
    ({"teacher_representative": "first"}, "teacher_representative"),
    ({"distance": "l1"}, "distance"),
    ({"sets": []}, "sets"),
    ({"sets": ["encoder", "encoder"]}, "sets"),
    ({"fusion_channels": 0}, "fusion_channels"),
    ({"embed_dim": 0}, "embed_dim"),
    ({"intra": True}, "intra"),
])
def test_bad_kwargs_are_refused_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs("i2rf_tfckd", kwargs)
    student, teacher = _pair()
    with pytest.raises(ConfigError, match=key):
        build_kd_method("i2rf_tfckd", student, teacher, kwargs)


def test_both_terms_off_names_both_switches():
    with pytest.raises(ConfigError, match="intra_set and inter_set_fusion"):
        validate_kd_kwargs("i2rf_tfckd", {"intra_set": False, "inter_set_fusion": False})


def test_unknown_set_is_refused_in_one_line():
    student, teacher = _pair()
    with pytest.raises(ConfigError, match="bottleneck"):
        build_kd_method("i2rf_tfckd", student, teacher, {"sets": ["encoder", "bottleneck"]})


def test_ablation_switches_change_the_value_and_the_terms_add_up():
    student, teacher = _pair()
    base = _method(student, teacher)
    inputs = fixture_inputs(base)
    values = {case: _method(student, teacher, **kw)(inputs).item() for case, kw in CASES.items() if "sets" not in kw}
    for case, value in values.items():
        if case != "full":
            assert abs(value - values["full"]) > 1e-6, case
    # same seed → same ABF init: full = λ_intra·intra + λ_inter·inter
    assert values["full"] == pytest.approx(values["no_intra"] + values["no_inter"], rel=1e-5)
    scaled = _method(student, teacher, lambda_intra=2.0, lambda_inter=0.5)(inputs).item()
    assert scaled == pytest.approx(2.0 * values["no_inter"] + 0.5 * values["no_intra"], rel=1e-5)
    assert _method(student, teacher, lambda_intra=0.0, lambda_inter=0.0)(inputs).item() == 0.0


# ---- one real training step ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"weights": "learned", "fusion": "recursive"}])
def test_one_training_step_updates_student_and_method(kwargs):
    torch.manual_seed(0)
    student, teacher = _pair()
    teacher.requires_grad_(False)
    method = _method(student, teacher, **kwargs).train()
    student.train()
    s_taps, t_taps = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    opt = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=1e-2)
    before_s = [p.detach().clone() for p in student.parameters()]
    before_m = [p.detach().clone() for p in method.parameters()]
    before_t = [p.detach().clone() for p in teacher.parameters()]
    noisy, clean = torch.randn(2, 1600), torch.randn(2, 1600)
    with torch.no_grad():
        t_out = teacher(noisy)
    s_out = student(noisy)
    kd = method(KDInputs(noisy, clean, s_out, t_out, dict(s_taps.features), dict(t_taps.features)))
    loss = torch.nn.functional.l1_loss(s_out, clean) + kd
    opt.zero_grad()
    loss.backward()
    opt.step()
    s_taps.remove()
    t_taps.remove()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before_s, student.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(before_m, method.parameters(), strict=True)
               if a.ndim > 1)  # every conv / linear weight of the method moved
    assert all(torch.equal(a, b) for a, b in zip(before_t, teacher.parameters(), strict=True))


def test_a_set_may_be_a_module_path():
    student, teacher = _pair()
    method = _method(student, teacher, sets=["encoder.1", "middle"], weights="learned")
    assert method.student_taps()[0] == "encoder.1" and method.teacher_taps()[0] == "encoder.1"
    assert torch.isfinite(method(fixture_inputs(method)))


def test_registered_with_source_and_taps_by_set_name():
    student, teacher = _pair()
    method = _method(student, teacher)
    assert method.needs_teacher and "2506.13127" in method.source
    assert method.student_taps() == [t for s in ("encoder", "middle", "decoder") for t in student.feature_sets[s]]
    assert method.teacher_taps() == [t for s in ("encoder", "middle", "decoder") for t in teacher.feature_sets[s]]


if __name__ == "__main__":
    print(json.dumps(compute_fixtures(), indent=2, sort_keys=True))
