"""i2rf_tfckd (arXiv 2506.13127).

Variant ``authors`` (default, the authors' demo GitHub JMCheng-SEU/I2RF-TFCKD-SE ``I2S_TFCKD_demo.py``
@ 0949953525576453e8902342cf37ce80ff4a8276): naive loop re-derivations of both streams' similarity
matrices, of the calibration weights and of the group loss (the demo's reduction, written out), the
distance's properties, calibration shapes, gradient isolation with the teacher under autograd, every
ablation switch, fusion order, the mask in the decoder set, B = 1, one training step, dpdcrn.

Variant ``reconstruction`` (methods.md §1.2): the pre-2026-12 method, unchanged — regression pins
(tests/fixtures/kd_tfckd.json, and values hard-coded from ``git show HEAD:kdlib/kd/tfckd.py`` before
the authors' variant was added), the written group equations, equality behaviour, gradients,
invariances, parameter count, kwargs validation and ablation switches.

The loss-value fixture was written by the reconstruction code before the change and must not be
regenerated unless the reconstruction's maths changes on purpose:
    python -m tests.test_kd_tfckd > tests/fixtures/kd_tfckd.json
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps, KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.kd.similarity import freq_self_similarity, row_distance, similarity_distance, time_self_similarity
from kdlib.kd.tfckd import I2RFTFCKD, VARIANT_DEFAULTS, _Sim
from kdlib.models import MODELS, build_model, size_student
from tests.kd_helpers import kd_inputs

FIXTURE_PATH = Path(__file__).parent / "fixtures" / "kd_tfckd.json"
# 3 encoder levels → 2 decoder taps per set; n_fft 64 keeps F small (33/17/9/5 bins)
TEACHER_ARGS = {"n_fft": 64, "hop_length": 32, "channels": [4, 6, 8], "rnn_hidden": 6, "n_dilated": 2,
                "n_dualpath": 1}
RECON = {"variant": "reconstruction"}
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
#: ablations of the authors' default (the reconstruction's CASES switches plus the new knobs)
AUTHORS_CASES: dict[str, dict] = {
    "full": {},
    "no_intra": {"intra_set": False},
    "no_inter": {"inter_set_fusion": False},
    "time_only": {"calibration": "time"},
    "frequency_only": {"calibration": "frequency"},
    "uncalibrated": {"calibration": "none"},
    "cross": {"cross_weighting": "cross"},
    "product": {"cross_weighting": "product"},
    "softmax_weights": {"weights": "softmax"},
    "learned_weights": {"weights": "learned"},
    "last_teacher": {"teacher_representative": "last"},
    "mean_teacher": {"teacher_representative": "mean"},
    "residual_fusion": {"fusion": "residual"},
    "reviewkd_block": {"fusion_block": "reviewkd", "fusion_channels": 8},
    "bins_stream": {"frequency_stream": "bins", "weights": "softmax"},
    "mse": {"distance": "mse"},
    "no_mask": {"mask_in_decoder": False},
    "lambdas": {"lambda_intra": 0.5, "lambda_inter": 2.0},
}


@functools.cache
def _student_args(ratio: float) -> dict:
    return size_student("dpcrn_lite", TEACHER_ARGS, ratio).model_args


def _pair(ratio: float = 0.25):
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", _student_args(ratio))
    return student, teacher


def _build(student, teacher, **kwargs) -> I2RFTFCKD:
    torch.manual_seed(0)  # ABF / query-key init
    return build_kd_method("i2rf_tfckd", student, teacher, kwargs)


def _method(student, teacher, **kwargs) -> I2RFTFCKD:
    """The reconstruction variant (the pre-2026-12 method) with ``kwargs``."""
    return _build(student, teacher, **{**RECON, **kwargs})


def fixture_inputs(method: I2RFTFCKD, batch: int = 2) -> KDInputs:
    """Seeded waveforms ``(B, 800)`` and per-tap features ``(B, C, 5, F)`` with each tap's real C and F."""
    g = torch.Generator().manual_seed(2506)
    s_shapes = probe_feature_shapes(method.student, method.student_taps())
    t_shapes = probe_feature_shapes(method.teacher, method.teacher_taps())
    wavs = [torch.randn(batch, 800, generator=g) for _ in range(4)]
    s_feats = {n: torch.randn(batch, s[1], 5, s[3], generator=g) for n, s in s_shapes.items()}
    t_feats = {n: torch.randn(batch, s[1], 5, s[3], generator=g) for n, s in t_shapes.items()}
    return KDInputs(*wavs, s_feats, t_feats)


def compute_fixtures() -> dict[str, float]:
    torch.manual_seed(0)
    student, teacher = _pair()
    out = {}
    for case, kwargs in CASES.items():
        method = _method(student, teacher, **kwargs)
        out[case] = method(fixture_inputs(method)).item()
    return out


# ================================================================================================
# variant knob
# ================================================================================================
def test_default_variant_is_the_authors_and_reconstruction_restores_todays_defaults():
    authors = validate_kd_kwargs("i2rf_tfckd", {})
    assert authors.variant == "authors"
    assert {k: getattr(authors, k) for k in VARIANT_DEFAULTS["authors"]} == VARIANT_DEFAULTS["authors"]
    recon = validate_kd_kwargs("i2rf_tfckd", RECON)
    # the pre-2026-12 defaults, written out (not read from VARIANT_DEFAULTS)
    assert (recon.frequency_stream, recon.distance, recon.rescale, recon.row_normalise, recon.weights,
            recon.cross_weighting, recon.fusion, recon.fusion_block, recon.fusion_channels,
            recon.teacher_representative, recon.mask_in_decoder) == (
        "bins", "mse", False, False, "softmax", "cross", "residual", "reviewkd", 16, "last", False)
    assert (recon.temperature, recon.kl_temperature, recon.embed_dim, recon.pool_size) == (0.1, 1.0, 8, 4)


def test_explicit_knobs_override_the_variant_defaults():
    cfg = validate_kd_kwargs("i2rf_tfckd", {"variant": "reconstruction", "distance": "kl", "fusion_channels": 7})
    assert (cfg.distance, cfg.fusion_channels, cfg.weights) == ("kl", 7, "softmax")
    cfg = validate_kd_kwargs("i2rf_tfckd", {"cross_weighting": "cross", "fusion": "residual"})
    assert (cfg.cross_weighting, cfg.fusion, cfg.weights, cfg.distance) == ("cross", "residual", "gram_mlp", "sym_kl")


# ================================================================================================
# authors variant: naive re-derivations
# ================================================================================================
def _frames(feat: torch.Tensor) -> list[list[torch.Tensor]]:
    """x[b][t]: frame t of item b flattened over (C, F), channel-major, float64."""
    b_, _, t_, _ = feat.shape
    return [[feat[b, :, t, :].reshape(-1).double() for t in range(t_)] for b in range(b_)]


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v) / (max(float(u.norm()), 1e-8) * max(float(v.norm()), 1e-8))


def _rescaled_rows(mat: list[list[float]]) -> list[list[float]]:
    rows = [[(v + 1) / 2 for v in row] for row in mat]
    return [[v / sum(row) for v in row] for row in rows]


def naive_time_matrix(feat: torch.Tensor) -> list[list[list[float]]]:
    """M[b][t][t'] = rescaled cosine between frames t, t' of item b, rows normalised to sum 1."""
    x = _frames(feat)
    return [_rescaled_rows([[_cos(x[b][t], x[b][u]) for u in range(len(x[b]))] for t in range(len(x[b]))])
            for b in range(len(x))]


def naive_batch_matrix(feat: torch.Tensor) -> list[list[list[float]]]:
    """M[t][b][b'] = rescaled cosine between items b, b' at frame t, rows normalised to sum 1."""
    x = _frames(feat)
    n_b, n_t = len(x), len(x[0])
    return [_rescaled_rows([[_cos(x[b][t], x[c][t]) for c in range(n_b)] for b in range(n_b)]) for t in range(n_t)]


def _pool(row: list[float], size: int) -> list[float]:
    """Mean of ``len(row) / size`` consecutive entries (len(row) a multiple of size)."""
    k = len(row) // size
    return [sum(row[n * k:(n + 1) * k]) / k for n in range(size)]


def _mlp(embed, row: list[float]) -> list[float]:
    """Linear → ReLU → Linear with the module's own parameters, scalar by scalar."""
    (w1, b1), (w2, b2) = [(m.weight.detach().tolist(), m.bias.detach().tolist()) for m in (embed.mlp[0], embed.mlp[2])]
    h = [max(0.0, b1[o] + sum(w1[o][i] * row[i] for i in range(len(row)))) for o in range(len(b1))]
    return [b2[o] + sum(w2[o][i] * h[i] for i in range(len(h))) for o in range(len(b2))]


def naive_embedding(embed, gram: list[list[list[float]]], size: int) -> list[list[list[float]]]:
    """E[b][t] = MLP(pooled Gram row (b, t)), each dimension L2-normalised over the frames t."""
    e = [[_mlp(embed, _pool(row, size)) for row in rows_b] for rows_b in gram]
    for b in range(len(e)):
        for d in range(len(e[b][0])):
            norm = math.sqrt(sum(e[b][t][d] ** 2 for t in range(len(e[b]))))
            for t in range(len(e[b])):
                e[b][t][d] /= norm
    return e


def naive_weights(calib, s_grams, t_grams, size: int, scale: float) -> list:
    """w[b][t][i][j] = softmax_j(scale · q_i(b, t) · k_j(b, t))."""
    q = [naive_embedding(m, g, size) for m, g in zip(calib.query, s_grams, strict=True)]
    k = [naive_embedding(m, g, size) for m, g in zip(calib.key, t_grams, strict=True)]
    n_b, n_t = len(q[0]), len(q[0][0])
    w = [[[[0.0] * len(k) for _ in q] for _ in range(n_t)] for _ in range(n_b)]
    for b in range(n_b):
        for t in range(n_t):
            for i in range(len(q)):
                energy = [scale * sum(a * c for a, c in zip(q[i][b][t], k[j][b][t], strict=True))
                          for j in range(len(k))]
                z = sum(math.exp(e) for e in energy)
                for j in range(len(k)):
                    w[b][t][i][j] = math.exp(energy[j]) / z
    return w


def _time_gram(feat):
    x = _frames(feat)
    return [[[float(x[b][t] @ x[b][u]) for u in range(len(x[b]))] for t in range(len(x[b]))] for b in range(len(x))]


def _batch_gram(feat):
    """G[b][t][b'] = ⟨x_bt, x_b't⟩ (the demo's (B, T, B) layout)."""
    x = _frames(feat)
    return [[[float(x[b][t] @ x[c][t]) for c in range(len(x))] for t in range(len(x[b]))] for b in range(len(x))]


def _div(t: float, s: float) -> float:
    return (t - s) * (math.log(t) - math.log(s))


def naive_authors_group_loss(method, group, s_feats, t_feats) -> float:
    """The demo's TF_SemCosineLoss with its TF_calibration_block weights, loop by loop: per pair (i, j),
    time: tmp[b][t'] = Σ_t w_T[b][t] · div(T_j[b][t][t'], S_i[b][t][t']), mean over (b, t');
    frequency, values in (B, T, B) layout V[b][t][b'] = M[t][b][b']: tmp[b][b'] = Σ_t w_F[b][t] ·
    div(...), mean over (b, b'); loss = (Σ_ij time + Σ_ij frequency) / Ns."""
    c = method.cfg
    n_s, n_t = len(s_feats), len(t_feats)
    n_b, _, n_fr, _ = s_feats[0].shape  # items, frames
    w_t = naive_weights(method.calibration[f"{group}/time"], [_time_gram(f) for f in s_feats],
                        [_time_gram(f) for f in t_feats], c.time_embed_size, n_fr / c.time_embed_size)
    w_f = naive_weights(method.calibration[f"{group}/frequency"], [_batch_gram(f) for f in s_feats],
                        [_batch_gram(f) for f in t_feats], c.batch_embed_size, 1.0)
    s_time, t_time = [naive_time_matrix(f) for f in s_feats], [naive_time_matrix(f) for f in t_feats]
    s_batch, t_batch = [naive_batch_matrix(f) for f in s_feats], [naive_batch_matrix(f) for f in t_feats]
    time_loss = freq_loss = 0.0
    for i in range(n_s):
        for j in range(n_t):
            tmp = [[sum(w_t[b][t][i][j] * _div(t_time[j][b][t][u], s_time[i][b][t][u]) for t in range(n_fr))
                    for u in range(n_fr)] for b in range(n_b)]
            time_loss += sum(map(sum, tmp)) / (n_b * n_fr)
            tmp = [[sum(w_f[b][t][i][j] * _div(t_batch[j][t][b][e], s_batch[i][t][b][e]) for t in range(n_fr))
                    for e in range(n_b)] for b in range(n_b)]
            freq_loss += sum(map(sum, tmp)) / (n_b * n_b)
    return (time_loss + freq_loss) / n_s


@pytest.mark.parametrize("shape", [(3, 2, 4, 3), (2, 3, 6, 1), (4, 1, 3, 5)])
def test_authors_similarity_matrices_match_a_naive_loop(shape):
    student, teacher = _pair()
    method = _build(student, teacher)
    feat = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    sim = method._sim(feat)
    got_t, got_f = sim.value["time"], sim.value["frequency"]
    b, _, t, _ = shape
    assert got_t.shape == (b, t, t) and got_f.shape == (t, b, b)
    torch.testing.assert_close(got_t.double(), torch.tensor(naive_time_matrix(feat), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_f.double(), torch.tensor(naive_batch_matrix(feat), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    # the path without Grams (weights softmax) gives the same matrices
    plain = _build(student, teacher, weights="softmax")._sim(feat)
    torch.testing.assert_close(plain.value["time"], got_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain.value["frequency"], got_f, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_frames,n_items", [(4, 3), (8, 3), (4, 6)])
def test_authors_group_loss_matches_the_demo_written_out_loop_by_loop(n_frames, n_items):
    """time_embed_size 4, batch_embed_size 3: (4, 3) is the demo's own network (no resampling, scale 1);
    (8, 3) pools time-Gram rows by pairs and scales the time energies by T/4 = 2; (4, 6) pools batch rows."""
    student, teacher = _pair()
    method = _build(student, teacher, time_embed_size=4, batch_embed_size=3, embed_factor=2)
    with torch.no_grad():  # larger random init, so the weights are far from uniform and the check can fail
        for p in method.calibration.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(n_frames * 10 + n_items)
    s_feats = [torch.randn(n_items, 2 + k, n_frames, 3, generator=g) for k in range(3)]
    t_feats = [torch.randn(n_items, 3, n_frames, 2 + k, generator=g) for k in range(3)]
    got = method.pair_loss("encoder", [method._sim(f) for f in s_feats], [method._sim(f) for f in t_feats])
    expected = naive_authors_group_loss(method, "encoder", s_feats, t_feats)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # and the weights matter: uniform weights give another value
    uniform = _build(student, teacher, calibration="none")
    other = uniform.pair_loss("encoder", [uniform._sim(f) for f in s_feats], [uniform._sim(f) for f in t_feats])
    assert abs(other.item() - expected) > 1e-4 * abs(expected)


def test_sym_kl_is_nonnegative_symmetric_and_zero_iff_equal():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(4, 5, 5, generator=g) + 0.01
    a = a / a.sum(-1, keepdim=True)
    b = torch.rand(4, 5, 5, generator=g) + 0.01
    b = b / b.sum(-1, keepdim=True)
    d = row_distance(a, b, "sym_kl")
    assert d.shape == (4, 5) and (d > 0).all()
    torch.testing.assert_close(d, row_distance(b, a, "sym_kl"))
    assert torch.equal(row_distance(a, a, "sym_kl"), torch.zeros(4, 5))
    # hand case: rows (1/2, 1/2) vs (1/4, 3/4): (1/4)·ln 2 + (−1/4)·ln(2/3)
    got = row_distance(torch.tensor([[0.25, 0.75]]), torch.tensor([[0.5, 0.5]]), "sym_kl")
    assert got.item() == pytest.approx(0.25 * math.log(2) - 0.25 * math.log(2 / 3), rel=1e-6)
    # a rescaled cosine of exactly −1 is 0: finite, not NaN
    assert torch.isfinite(row_distance(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), "sym_kl")).all()


def test_authors_intra_loss_is_zero_iff_student_equals_teacher():
    """One layer per side (a set given as a module path): identical models → 0 whatever the weights, up to the
    float32 rounding of their two passes (the student's runs with autograd, the teacher's without, and some
    CPUs' kernels round them differently: 8e-15 seen, exactly 0 on others); a changed student → > 1e-4."""
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = _build(student, teacher, sets=["encoder.1", "dualpath.0"], inter_set_fusion=False)
    x = torch.randn(3, 1600)
    assert 0 <= method(kd_inputs(method, student, teacher, x)).item() < 1e-10
    with torch.no_grad():
        student.encoder[1].conv.weight.add_(torch.randn_like(student.encoder[1].conv.weight))
    assert method(kd_inputs(method, student, teacher, x)).item() > 1e-4


# ---- calibration shapes ---------------------------------------------------------------------------
def test_authors_calibration_weights_are_per_frame_and_sum_to_one_over_teacher_layers():
    student, teacher = _pair()
    method = _build(student, teacher)
    inputs = kd_inputs(method, student, teacher, torch.randn(3, 1600))
    s = [method._sim(inputs.student_features[n]) for n in method.s_sets["middle"]]
    t = [method._sim(inputs.teacher_features[n].detach()) for n in method.t_sets["middle"]]
    n_s, n_t = len(s), len(t)
    n_frames = inputs.student_features[method.s_sets["middle"][0]].shape[2]
    for stream in ("time", "frequency"):
        calib = method.calibration[f"middle/{stream}"]
        w = calib([x.gram[stream] for x in s], [x.gram[stream] for x in t])
        assert w.shape == (3, n_frames, n_s, n_t)  # per utterance and frame, student × teacher layers
        torch.testing.assert_close(w.sum(-1), torch.ones(3, n_frames, n_s))
        alpha = method._weights("middle", stream, s, t, [[None]], [0])
        assert alpha.shape == (n_s, n_t, 3, n_frames)
        torch.testing.assert_close(alpha.sum((0, 1)), torch.ones(3, n_frames))  # 1/Ns per student layer
        torch.testing.assert_close(alpha.sum(1), torch.full((n_s, 3, n_frames), 1.0 / n_s))
    grams = s[0].gram
    assert grams["time"].shape == (3, n_frames, n_frames) and grams["frequency"].shape == (3, n_frames, 3)


def test_authors_teacher_keys_and_student_queries_are_one_network_per_layer():
    student, teacher = _pair()
    method = _build(student, teacher)
    for name in ("encoder", "middle", "decoder"):
        for stream in ("time", "frequency"):
            calib = method.calibration[f"{name}/{stream}"]
            assert len(calib.query) == len(method.s_sets[name]) and len(calib.key) == len(method.t_sets[name])
    assert len(method.calibration["inter/time"].query) == len(method.calibration["inter/time"].key) == 3


# ---- gradient isolation with the teacher under autograd ---------------------------------------------
def _backward_with_teacher_autograd(method, student, teacher, x):
    teacher.requires_grad_(True)
    for module in (student, teacher, method):
        module.zero_grad(set_to_none=True)
    inputs = kd_inputs(method, student, teacher, x, teacher_grad=True)
    assert all(f.requires_grad for f in inputs.teacher_features.values())  # else the check is vacuous
    loss = method(inputs)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    return loss


@pytest.mark.parametrize("kwargs", [{}, {"cross_weighting": "cross"}, {"cross_weighting": "product"},
                                    {"calibration": "time"}, {"calibration": "frequency"},
                                    {"teacher_representative": "mean"}, {"fusion_block": "reviewkd"}])
def test_authors_no_gradient_reaches_the_teacher_but_every_learned_part_gets_one(kwargs):
    torch.manual_seed(0)
    student, teacher = _pair()
    method = _build(student, teacher, **kwargs)
    _backward_with_teacher_autograd(method, student, teacher, torch.randn(3, 1600))
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.decoder.parameters())
    own = dict(method.named_parameters())
    assert any(n.startswith("calibration.") for n in own) and any(n.startswith("fusion.") for n in own)
    if kwargs.get("teacher_representative", "fused") == "fused":
        assert any(n.startswith("teacher_fusion.") for n in own)
    missing = [n for n, p in own.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing  # student and teacher fusion chains, every query / key network
    assert all(torch.isfinite(p.grad).all() for p in own.values())


def test_authors_teacher_fusion_learns_only_through_the_calibration_keys():
    """With weights that are not learned, the teacher-side chain gets no gradient (documented)."""
    torch.manual_seed(0)
    student, teacher = _pair()
    method = _build(student, teacher, weights="softmax")
    _backward_with_teacher_autograd(method, student, teacher, torch.randn(2, 1600))
    assert all(p.grad is None for p in method.teacher_fusion.parameters())
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())


# ---- ablation switches on the authors' default --------------------------------------------------------
def test_every_ablation_switch_works_on_the_authors_default_and_the_terms_add_up():
    torch.manual_seed(0)
    student, teacher = _pair()
    full = _build(student, teacher)
    inputs = kd_inputs(full, student, teacher, torch.randn(3, 1600))
    state = full.state_dict()
    values = {}
    for case, kwargs in AUTHORS_CASES.items():
        method = _build(student, teacher, **kwargs)
        own = method.state_dict()
        # the same networks wherever the modules coincide (no_intra / no_inter / lambdas: all of them)
        method.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape},
                               strict=False)
        if case == "no_mask":
            method = _build(student, teacher, **kwargs)
            inputs_case = kd_inputs(method, student, teacher, inputs.noisy)
        else:
            assert method.student_taps() == full.student_taps()
            inputs_case = inputs
        values[case] = method(inputs_case).item()
        assert math.isfinite(values[case]) and values[case] > 0, case
    for case, value in values.items():
        if case != "full":
            assert abs(value - values["full"]) > 1e-6 * values["full"], case
    assert values["full"] == pytest.approx(values["no_intra"] + values["no_inter"], rel=1e-5)
    assert values["lambdas"] == pytest.approx(0.5 * values["no_inter"] + 2.0 * values["no_intra"], rel=1e-5)


def test_authors_ablations_remove_what_they_switch_off():
    student, teacher = _pair()
    assert not _build(student, teacher, inter_set_fusion=False).fusion
    assert not _build(student, teacher, inter_set_fusion=False).teacher_fusion
    assert not _build(student, teacher, teacher_representative="last").teacher_fusion
    assert {k.split("/")[0] for k in _build(student, teacher, intra_set=False).calibration} == {"inter"}
    assert {k.split("/")[1] for k in _build(student, teacher, calibration="time").calibration} == {"time"}
    assert not _build(student, teacher, calibration="none").calibration
    assert not _build(student, teacher, weights="softmax").calibration


# ---- sets, fusion order, B = 1 ------------------------------------------------------------------------
def test_authors_decoder_set_ends_with_the_mask_output():
    student, teacher = _pair()
    method = _build(student, teacher)
    for model, sets in ((student, method.s_sets), (teacher, method.t_sets)):
        assert sets["decoder"] == [*model.feature_sets["decoder"], "mask"]
        assert sets["encoder"] == model.feature_sets["encoder"]
    assert "mask" not in _build(student, teacher, mask_in_decoder=False).student_taps()
    shapes = probe_feature_shapes(student, ["mask"])
    assert shapes["mask"][1] == 2  # the 2-channel (real, imaginary) mask
    with pytest.raises(ConfigError, match="mask_in_decoder"):
        _build(student, teacher, sets=["decoder", "mask"])


def test_authors_fusion_runs_towards_the_bottleneck_with_the_authors_block():
    """Encoder and middle in forward order, the decoder from the mask back to its first layer: every
    representative is at the set's coarsest F, with the chain's last layer's channels."""
    student, teacher = _pair()
    method = _build(student, teacher, fusion_channels=5)
    s_shapes = probe_feature_shapes(student, method.student_taps())
    t_shapes = probe_feature_shapes(teacher, method.teacher_taps())
    inputs = fixture_inputs(method, batch=3)
    for name, expected_last in (("encoder", -1), ("middle", -1), ("decoder", 0)):
        for chains, taps, shapes, feats in ((method.fusion, method.s_sets, s_shapes, inputs.student_features),
                                            (method.teacher_fusion, method.t_sets, t_shapes,
                                             inputs.teacher_features)):
            chain = chains[name]
            n = len(taps[name])
            assert chain.order == (list(range(n)) if expected_last == -1 else list(reversed(range(n))))
            end = shapes[taps[name][expected_last]]
            rep = chain([feats[t] for t in taps[name]])
            assert rep.shape == (3, end[1], 5, end[3])
            assert min(shapes[t][3] for t in taps[name]) == end[3]
            first = chain.abfs[0]
            assert isinstance(first.conv1[1], torch.nn.InstanceNorm2d) and isinstance(first.conv1[2], torch.nn.PReLU)
            assert first.conv1[0].out_channels == 5 and first.att is None


def test_authors_frequency_stream_needs_two_items():
    student, teacher = _pair()
    method = _build(student, teacher)
    with pytest.raises(ConfigError, match="frequency_stream.*batch size >= 2"):
        method(fixture_inputs(method, batch=1))
    for kwargs in ({"calibration": "time"}, {"frequency_stream": "bins", "weights": "softmax"}):
        single = _build(student, teacher, **kwargs)
        assert torch.isfinite(single(fixture_inputs(single, batch=1)))


@pytest.mark.parametrize("kwargs,key", [
    ({"variant": "paper"}, "variant"),
    ({"distance": "sym_kl", "rescale": False}, "rescale"),
    ({"frequency_stream": "bins"}, "gram_mlp"),
    ({"frequency_stream": "fft"}, "frequency_stream"),
    ({"fusion": "top_down"}, "fusion"),
    ({"fusion_block": "se"}, "fusion_block"),
    ({"teacher_representative": "first"}, "teacher_representative"),
    ({"time_embed_size": 0}, "time_embed_size"),
    ({"batch_embed_size": 0}, "batch_embed_size"),
    ({"embed_factor": 0}, "embed_factor"),
    ({"mask_in_decoder": "maybe"}, "mask_in_decoder"),
])
def test_authors_bad_kwargs_are_refused_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs("i2rf_tfckd", kwargs)


def test_frequency_bins_with_per_frame_weights_is_allowed_where_no_frequency_weight_is_used():
    for kwargs in ({"frequency_stream": "bins", "calibration": "time"},
                   {"frequency_stream": "bins", "calibration": "none"}):
        validate_kd_kwargs("i2rf_tfckd", kwargs)


# ---- extra params, cache, training step, other family -------------------------------------------------
def _gram_mlp_params(size_in, hidden, out):
    return size_in * hidden + hidden + hidden * out + out


def _authors_abf(c_in, mid, fuse, out):
    """conv1 (no bias) + affine InstanceNorm + PReLU; attention conv (not first); output conv + IN + PReLU
    (last ABF only, out = 0 otherwise)."""
    n = c_in * mid + 2 * mid + 1 + (2 * mid * 2 + 2 if fuse else 0)
    return n + (9 * mid * out + 2 * out + 1 if out else 0)


def test_authors_extra_params_are_counted_by_hand():
    student, teacher = _pair()
    mid, p_t, p_b, f = 6, 5, 3, 2
    method = _build(student, teacher, fusion_channels=mid, time_embed_size=p_t, batch_embed_size=p_b,
                     embed_factor=f)
    expected = 0
    for model, sets in ((student, method.s_sets), (teacher, method.t_sets)):
        shapes = probe_feature_shapes(model, [t for taps in sets.values() for t in taps])
        for taps in sets.values():
            chain = [shapes[t] for t in taps]
            if chain[-1][3] > chain[0][3]:
                chain.reverse()
            expected += sum(_authors_abf(s[1], mid, k > 0, chain[-1][1] if k == len(chain) - 1 else 0)
                            for k, s in enumerate(chain))
    per_layer = _gram_mlp_params(p_t, 2 * p_t, p_t) + _gram_mlp_params(p_b, p_b * f, p_b * f)
    layers = sum(len(method.s_sets[n]) + len(method.t_sets[n]) for n in method.cfg.sets) + 2 * 3
    expected += per_layer * layers
    assert method.extra_params() == expected


def test_authors_has_no_item_wise_teacher_targets_for_the_cache():
    student, teacher = _pair()
    method = _build(student, teacher)
    inputs = fixture_inputs(method, batch=3)
    assert method.teacher_targets(inputs.teacher_out, inputs.teacher_features) == {}
    assert method.target_taps() == []
    assert set(method.teacher_taps()) == set(inputs.teacher_features)
    # the cache stores taps in float16: the loss stays finite and close on rounded teacher features
    rounded = copy.copy(inputs)
    rounded.teacher_features = {n: f.half().float() for n, f in inputs.teacher_features.items()}
    assert method(rounded).item() == pytest.approx(method(inputs).item(), rel=1e-2)


def test_authors_trains_the_same_from_the_teacher_output_cache(data_root, tmp_path):
    """One epoch of the quickstart pair (8 one-second items, batch 4) with and without
    kdlib/train/teacher_cache.py: the cache hands the teacher taps (the mask included) in float16."""
    from kdlib.losses import task_loss_for
    from kdlib.sweep.plan import load_plan
    from kdlib.train import Trainer, TrainSettings
    from kdlib.train.teacher_cache import TeacherCache

    plan = load_plan(Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml",
                     overrides=["data.train.segments_per_epoch=8", "data.train.segment_seconds=1.0"])
    data = plan.data_source().build(seed=plan.cfg.data.seed)
    torch.manual_seed(0)
    model = plan.cfg.teacher.model
    teacher = build_model(model.name, model.kwargs).eval().requires_grad_(False)
    student_args = size_student(model.name, teacher.get_model_args(), 0.25).model_args

    def trainer(cache):
        torch.manual_seed(1)
        student = build_model(model.name, student_args)
        kd = build_kd_method("i2rf_tfckd", student, teacher, {})
        settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, grad_clip=5.0, selection_metric="val_si_sdr",
                                 kd_weight=1.0, shuffle_seed=3)
        return Trainer(student, teacher, kd, task_loss_for(student), data, settings, "cpu", log=lambda _: None,
                       teacher_cache=cache)

    plain, cached = trainer(None), trainer(TeacherCache(tmp_path, "k", [], log=lambda _: None))
    assert "mask" in cached.kd.teacher_taps() and cached.teacher_taps is None  # the teacher does not run
    a, b = plain.train_epoch(), cached.train_epoch()
    for key in ("train_loss", "task_loss", "kd_loss"):
        assert b[key] == pytest.approx(a[key], rel=5e-3), key


def test_authors_layers_with_different_frame_counts_share_one_frame_grid():
    """DPTNet's middle taps are chunked (T = chunk size), its encoder / decoder taps are not: the inter
    group mixes frame counts, resampled onto one grid; the loss runs and the teacher stays isolated."""
    torch.manual_seed(0)
    args = {"n_filters": 16, "ff_hid": 16, "n_repeats": 1, "chunk_size": 20, "hop_size": 10}
    teacher = build_model("dptnet", args).eval()
    student = build_model("dptnet", {**args, "n_filters": 8, "ff_hid": 8})
    method = _build(student, teacher, fusion_channels=8)
    shapes = probe_feature_shapes(student, method.student_taps())
    frames = {shapes[method.s_sets[s][0]][2] for s in method.cfg.sets}
    assert len(frames) > 1  # the case under test
    _backward_with_teacher_autograd(method, student, teacher, torch.randn(2, 4000))
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters() if p.ndim > 1)
    grams = [torch.rand(2, n, n) for n in (6, 4, 4)]
    w = method.calibration["inter/time"](grams, grams[::-1])  # weights on the largest frame grid
    assert w.shape == (2, 6, 3, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6, 3))


@pytest.mark.skipif("dpdcrn" not in MODELS.names(), reason="dpdcrn not registered")
def test_authors_default_on_small_dpdcrn():
    """The authors' own backbone, small: teacher 16 channels / 2 AIA blocks, student 16 / 1."""
    torch.manual_seed(0)
    teacher = build_model("dpdcrn", {"channels": 16, "n_aia_blocks": 2}).eval()
    student = build_model("dpdcrn", {"channels": 16, "n_aia_blocks": 1})
    method = _build(student, teacher, fusion_channels=8)
    assert method.s_sets["decoder"][-1] == method.t_sets["decoder"][-1] == "mask"
    assert (len(method.s_sets["middle"]), len(method.t_sets["middle"])) == (1, 2)
    assert method.fusion["encoder"].order == [0, 1, 2] and method.fusion["decoder"].order == [2, 1, 0]
    teacher.requires_grad_(True)
    inputs = kd_inputs(method, student, teacher, torch.randn(2, 2000), teacher_grad=True)
    loss = method(inputs)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())
    assert all(p.grad is not None for p in method.parameters() if p.ndim > 1)


# ================================================================================================
# reconstruction variant: today's method, unchanged
# ================================================================================================
def test_reconstruction_reproduces_the_values_of_the_code_before_the_authors_variant():
    """Values printed by the unmodified code (``git show HEAD:kdlib/kd/tfckd.py`` at b94b48a, registered
    under another name) for this exact input: teacher/student built after ``torch.manual_seed(11)``,
    method after ``torch.manual_seed(0)``, x = randn(3, 1600) from a generator seeded 7."""
    expected = {
        "default": 1.155570387840271,
        "learned_recursive_mean_kl": 0.05348700284957886,
    }
    kwargs = {"default": {}, "learned_recursive_mean_kl": {"weights": "learned", "fusion": "recursive",
                                                           "teacher_representative": "mean", "distance": "kl",
                                                           "rescale": True}}
    for case, kw in kwargs.items():
        torch.manual_seed(11)
        teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
        student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
        method = _method(student, teacher, **kw)
        x = torch.randn(3, 1600, generator=torch.Generator().manual_seed(7))
        # rel 1e-5 as the fixture pins below: CPUs whose kernels round differently moved the second case by 2e-6
        assert method(kd_inputs(method, student, teacher, x)).item() == pytest.approx(expected[case], rel=1e-5)


FIXTURES = json.loads(FIXTURE_PATH.read_text()) if FIXTURE_PATH.exists() else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reconstruction_values_match_precomputed_fixtures(case):
    """Regression pins written by the reconstruction code before the authors' variant existed."""
    torch.manual_seed(0)
    student, teacher = _pair()
    method = _method(student, teacher, **CASES[case])
    assert method(fixture_inputs(method)).item() == pytest.approx(FIXTURES[case], rel=1e-5, abs=1e-7)


def test_fixture_cases_are_all_different():
    values = sorted(FIXTURES.values())
    assert all(b - a > 1e-6 for a, b in zip(values, values[1:], strict=False))


# ---- the group equations, by hand ---------------------------------------------------------------
def _toy_sims(n, seed):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 3 + k, 6, 5 + 2 * k, generator=g) for k in range(n)]
    return [_Sim(2, {"time": time_self_similarity(f), "frequency": freq_self_similarity(f)}, {}) for f in feats]


@pytest.mark.parametrize("calibration", ["dual", "time", "frequency", "none"])
@pytest.mark.parametrize("cross", ["cross", "product", "none"])
def test_pair_loss_matches_the_written_equations(calibration, cross):
    student, teacher = _pair()
    tau = 0.05
    method = _method(student, teacher, calibration=calibration, cross_weighting=cross, temperature=tau)
    s, t = _toy_sims(2, 1), _toy_sims(3, 2)
    d_t = torch.tensor([[float(similarity_distance(a.value["time"], b.value["time"])) for b in t] for a in s])
    d_f = torch.tensor([[float(similarity_distance(a.value["frequency"], b.value["frequency"])) for b in t]
                        for a in s])
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
    t = [_Sim(2, {"time": time_self_similarity(target)}, {})]
    s = [_Sim(2, {"time": time_self_similarity(near)}, {}), _Sim(2, {"time": time_self_similarity(far)}, {})]
    loss = method.pair_loss("encoder", s, t)
    loss.backward()
    # expected: Σ α_i d_i with α = softmax(−d/τ) treated as a constant
    near2, far2 = near.detach().clone().requires_grad_(True), far.detach().clone().requires_grad_(True)
    d = torch.stack([similarity_distance(time_self_similarity(x), t[0].value["time"]) for x in (near2, far2)])
    alpha = torch.softmax(-d.detach() / tau, 0)
    assert alpha[0] > alpha[1]  # the closer pair gets the larger weight
    expected = (alpha * d).sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(near.grad, near2.grad)
    torch.testing.assert_close(far.grad, far2.grad)


# ---- student == teacher -------------------------------------------------------------------------
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
        reps = []
        for s in full.cfg.sets:
            feats = [t_in.teacher_features[n] for n in full.t_sets[s]]
            reps.append(full._teacher_representative(s, feats, [full._sim(f) for f in feats]))
    assert full.pair_loss("inter", reps, reps).item() < 1e-6


# ---- gradients ---------------------------------------------------------------------------------
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


# ---- invariances --------------------------------------------------------------------------------
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


@pytest.mark.parametrize("variant", ["reconstruction", "authors"])
@pytest.mark.parametrize("fusion", ["residual", "recursive"])
@pytest.mark.parametrize("kwargs", [{}, {"weights": "learned"}, {"teacher_representative": "mean"}])
def test_student_and_teacher_may_differ_in_depth_and_width(variant, fusion, kwargs):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", {"n_fft": 64, "hop_length": 32, "channels": [3, 5], "rnn_hidden": 4,
                                     "n_dilated": 1, "n_dualpath": 1})
    method = _build(student, teacher, variant=variant, fusion=fusion, **kwargs)
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


# ---- extra params ---------------------------------------------------------------------------------
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


# ---- kwargs and ablation switches -----------------------------------------------------------------
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
@pytest.mark.parametrize("variant", [{}, RECON])
def test_bad_kwargs_are_refused_naming_the_key(kwargs, key, variant):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs("i2rf_tfckd", {**variant, **kwargs})
    student, teacher = _pair()
    with pytest.raises(ConfigError, match=key):
        build_kd_method("i2rf_tfckd", student, teacher, {**variant, **kwargs})


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
def _one_step(student, teacher, method, batch):
    """One Adam step of L1 task + KD on random audio ``(batch, 1600)``, the teacher under no_grad; returns the
    loss and the student / method (by name) / teacher parameters from before the step."""
    student.train()
    s_taps, t_taps = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    opt = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=1e-2)
    before_s = [p.detach().clone() for p in student.parameters()]
    before_m = {n: p.detach().clone() for n, p in method.named_parameters()}
    before_t = [p.detach().clone() for p in teacher.parameters()]
    noisy, clean = torch.randn(batch, 1600), torch.randn(batch, 1600)
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
    return loss, before_s, before_m, before_t


@pytest.mark.parametrize(("kwargs", "batch"), [
    ({}, 3), ({"calibration": "time", "teacher_representative": "mean"}, 3),  # the authors' variant
    (RECON, 2), ({**RECON, "weights": "learned", "fusion": "recursive"}, 2),  # the reconstruction
])
def test_one_training_step_updates_student_and_method(kwargs, batch):
    torch.manual_seed(0)
    student, teacher = _pair()
    teacher.requires_grad_(False)
    method = _build(student, teacher, **kwargs).train()
    loss, before_s, before_m, before_t = _one_step(student, teacher, method, batch=batch)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before_s, student.parameters(), strict=True))
    # every conv / linear weight of the method moved
    unmoved = [n for n, p in method.named_parameters() if p.ndim > 1 and torch.equal(before_m[n], p)]
    assert not unmoved, unmoved
    assert all(torch.equal(a, b) for a, b in zip(before_t, teacher.parameters(), strict=True))


@pytest.mark.parametrize("variant", [{}, RECON])
def test_a_set_may_be_a_module_path(variant):
    student, teacher = _pair()
    method = _build(student, teacher, sets=["encoder.1", "middle"], weights="learned", **variant)
    assert method.student_taps()[0] == "encoder.1" and method.teacher_taps()[0] == "encoder.1"
    assert torch.isfinite(method(fixture_inputs(method)))


@pytest.mark.parametrize("variant", [{}, RECON])
def test_registered_with_source_and_taps_by_set_name(variant):
    student, teacher = _pair()
    method = _build(student, teacher, **variant)
    assert method.needs_teacher and "2506.13127" in method.source and "JMCheng-SEU" in method.source
    mask = ["mask"] if not variant else []
    assert method.student_taps() == [t for s in ("encoder", "middle", "decoder")
                                     for t in student.feature_sets[s]] + mask
    assert method.teacher_taps() == [t for s in ("encoder", "middle", "decoder")
                                     for t in teacher.feature_sets[s]] + mask


if __name__ == "__main__":
    print(json.dumps(compute_fixtures(), indent=2, sort_keys=True))
