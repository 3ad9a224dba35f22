"""KD losses ``none``, ``output``, ``self_similarity``: values against naive re-derivations,
regression pins, zero at equality, gradient isolation (teacher run with autograd on), invariances,
kwargs validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError, RegistryError
from kdlib.kd import KD_METHODS, KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.methods import OutputKD
from kdlib.kd.similarity import freq_self_similarity, similarity_distance, time_self_similarity
from kdlib.models import build_model, size_student
from tests.kd_fixture_inputs import CASES, TINY, fixture_inputs, method_for
from tests.kd_helpers import (
    assert_gradient_isolated,
    gradient_flow,
    kd_inputs,
    naive_cosine_matrix,
    naive_row_kl,
    naive_stft,
)

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "kd_losses.json").read_text())
TEACHER_ARGS = {"channels": [8, 12], "rnn_hidden": 12, "n_dilated": 1, "n_dualpath": 1}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_regression_pins(case):
    """Regression pin only: tests/fixtures/kd_losses.json was written by this code, so it catches an
    unintended change of value, not wrong maths (the naive re-derivations below check that)."""
    method = method_for(case)
    assert float(method(fixture_inputs(method))) == pytest.approx(FIXTURES[case], rel=1e-5, abs=1e-7)


def _naive_time_sim(feat: np.ndarray) -> np.ndarray:
    b, c, t, f = feat.shape
    out = np.zeros((b, t, t))
    for n in range(b):
        frames = [feat[n, :, i, :].reshape(-1) for i in range(t)]
        for i in range(t):
            for j in range(t):
                out[n, i, j] = frames[i] @ frames[j] / (np.linalg.norm(frames[i]) * np.linalg.norm(frames[j]))
    return out


def test_self_similarity_matrices_match_a_naive_implementation():
    feat = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    np.testing.assert_allclose(time_self_similarity(feat).numpy(), _naive_time_sim(feat.numpy()), atol=1e-10)
    # the frequency matrix is the time matrix of the T/F-swapped feature
    np.testing.assert_allclose(freq_self_similarity(feat).numpy(),
                               _naive_time_sim(feat.transpose(2, 3).numpy()), atol=1e-10)


def test_similarity_does_not_depend_on_channel_count():
    feat = torch.randn(2, 4, 7, 9)
    wider = torch.cat([feat, feat, feat], dim=1)  # same directions, 3× the channels
    torch.testing.assert_close(time_self_similarity(wider), time_self_similarity(feat))
    torch.testing.assert_close(freq_self_similarity(wider), freq_self_similarity(feat))
    assert time_self_similarity(feat).shape == (2, 7, 7)
    assert freq_self_similarity(feat).shape == (2, 9, 9)


def test_frequency_matrices_of_different_size_are_resized_not_refused():
    s, t = freq_self_similarity(torch.randn(1, 3, 4, 17)), freq_self_similarity(torch.randn(1, 5, 4, 33))
    assert similarity_distance(s, t).ndim == 0


def _pair(ratio=0.25):
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, ratio).model_args)
    return student, teacher


@pytest.mark.parametrize("name", ["output", "self_similarity"])
def test_loss_is_zero_when_the_student_equals_the_teacher(name):
    """Zero up to float32 rounding: the student runs with autograd and the teacher without, and the CPU's
    kernels may round the two passes differently (about 1e-6 of the loss on some CPUs, exactly 0 on others);
    the same student with perturbed weights scores at least 10^4 times more."""
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = build_kd_method(name, student, teacher)
    x = torch.randn(2, 8000)
    same = float(method(kd_inputs(method, student, teacher, x)).detach())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    moved = float(method(kd_inputs(method, student, teacher, x)).detach())
    assert moved > 0
    assert 0 <= same <= 1e-4 * moved


@pytest.mark.parametrize("name,cached", [("output", False), ("self_similarity", False), ("self_similarity", True)])
def test_gradient_reaches_the_student_and_never_the_teacher(name, cached):
    """The teacher runs with autograd on, so a missing detach would reach its parameters;
    ``cached`` derives the teacher's similarity matrices through ``teacher_targets`` (cache path)."""
    student, teacher = _pair()
    method = build_kd_method(name, student, teacher)
    flow = assert_gradient_isolated(method, student, teacher, torch.randn(2, 8000), cached_targets=cached)
    assert flow.loss > 0


class _LeakyOutputKD(OutputKD):
    """Deliberately broken: matches the teacher's output without detaching it."""

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        return self.loss(inputs.student_out, inputs.teacher_out)


def test_gradient_isolation_check_fails_for_a_method_that_does_not_detach():
    student, teacher = _pair()
    leaky = _LeakyOutputKD(student, teacher)
    assert gradient_flow(leaky, student, teacher, torch.randn(2, 8000)).teacher  # the teacher got gradient
    with pytest.raises(AssertionError, match="into the teacher"):
        assert_gradient_isolated(leaky, student, teacher, torch.randn(2, 8000))
    # and the old way of testing (teacher under no_grad) cannot see the leak
    loss = leaky(kd_inputs(leaky, student, teacher, torch.randn(2, 8000)))
    teacher.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


# --- independent re-derivations of the loss values (formulas of the docstrings, plain numpy)

def _naive_output(est: np.ndarray, ref: np.ndarray, n_fft=512, hop=256, c=0.3, w_wav=10.0) -> float:
    """L = mean| |S_e|^c − |S_r|^c | + mean|S_e,c − S_r,c| + w·mean|e − r|, S_c = |S|^c·e^{j∠S},
    means over (B, F, T) and (B, L)."""
    mag_terms, cplx_terms = [], []
    for e, r in zip(est, ref, strict=True):
        se, sr = naive_stft(e, n_fft, hop), naive_stft(r, n_fft, hop)
        ce, cr = np.abs(se) ** c, np.abs(sr) ** c
        mag_terms.append(np.abs(ce - cr))
        cplx_terms.append(np.abs(ce * np.exp(1j * np.angle(se)) - cr * np.exp(1j * np.angle(sr))))
    return float(np.mean(mag_terms) + np.mean(cplx_terms) + w_wav * np.abs(est - ref).mean())


@pytest.mark.parametrize("kwargs", [{}, {"wav_weight": 0.0}, {"n_fft": 256, "hop_length": 64, "compress": 0.5}])
def test_output_loss_matches_a_naive_rederivation(kwargs):
    model = build_model("dpcrn_lite", TINY)
    method = build_kd_method("output", model, model, kwargs)
    x = fixture_inputs(method)
    c = method.cfg
    expected = _naive_output(x.student_out.double().numpy(), x.teacher_out.double().numpy(),
                             c.n_fft, c.hop_length, c.compress, c.wav_weight)
    assert float(method(x)) == pytest.approx(expected, rel=1e-4)


def _naive_self_similarity(s_feats, t_feats, pairs, streams, distance, tau, rescale) -> float:
    """Mean over layer pairs × streams of D(A_s, A_t); A_T[i, j] = cos(frame i, frame j) with each
    frame flattened over C·F, A_F the same over frequency bins flattened over C·T."""
    terms = []
    for s_name, t_name in pairs:
        fs, ft = s_feats[s_name].double().numpy(), t_feats[t_name].double().numpy()
        for stream in streams:
            mats = []
            for feat in (fs, ft):
                per_item = []
                for item in feat:  # (C, T, F)
                    axis = 1 if stream == "time" else 2
                    per_item.append(naive_cosine_matrix(
                        [np.take(item, i, axis=axis).reshape(-1) for i in range(item.shape[axis])]))
                m = np.stack(per_item)
                mats.append((m + 1) / 2 if rescale else m)
            if distance == "mse":
                terms.append(float(((mats[0] - mats[1]) ** 2).mean()))
            else:
                terms.append(naive_row_kl(mats[0], mats[1], tau))
    return float(np.mean(terms))


@pytest.mark.parametrize("kwargs", [
    {}, {"distance": "kl", "temperature": 0.5}, {"streams": ["frequency"], "rescale": True},
    {"layers": ["middle", ["encoder", "decoder"]], "distance": "kl", "rescale": True},
])
def test_self_similarity_loss_matches_a_naive_rederivation(kwargs):
    model = build_model("dpcrn_lite", TINY)
    method = build_kd_method("self_similarity", model, model, kwargs)
    x = fixture_inputs(method)  # student C = 3, teacher C = 5, same (T, F)
    c = method.cfg
    expected = _naive_self_similarity(x.student_features, x.teacher_features, method.pairs, c.streams,
                                      c.distance, c.temperature, c.rescale)
    assert expected > 0
    assert float(method(x)) == pytest.approx(expected, rel=1e-4)


def test_self_similarity_hand_computed_case():
    """Two frames, one bin, one channel: student frames (1, 1) → A_T = [[1, 1], [1, 1]]; teacher
    frames (1, −1) → A_T = [[1, −1], [−1, 1]]: MSE = (0 + 4 + 4 + 0) / 4 = 2."""
    model = build_model("dpcrn_lite", TINY)
    method = build_kd_method("self_similarity", model, model, {"layers": ["middle"], "streams": ["time"]})
    (s, t), = method.pairs
    fs, ft = torch.tensor([1.0, 1.0]).view(1, 1, 2, 1), torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)
    x = KDInputs(*(torch.zeros(1, 10),) * 3, student_features={s: fs}, teacher_features={t: ft})
    assert float(method(x)) == pytest.approx(2.0)


def test_none_reads_no_teacher_and_adds_nothing():
    student, teacher = _pair()
    method = build_kd_method("none", student, None)
    assert not method.needs_teacher and method.extra_params() == 0
    assert float(method(KDInputs(*(torch.zeros(1, 10),) * 3))) == 0.0


def test_models_are_not_submodules_of_the_loss():
    student, teacher = _pair()
    method = build_kd_method("self_similarity", student, teacher)
    assert method.extra_params() == 0  # student/teacher weights are not counted as KD extras
    assert list(method.parameters()) == []


def test_taps_by_set_name_resolve_to_the_sets_last_layer():
    student, teacher = _pair()
    method = build_kd_method("self_similarity", student, teacher, {"layers": ["encoder", ["middle", "dualpath.0"]]})
    assert method.pairs == [("encoder.1", "encoder.1"), ("dualpath.0", "dualpath.0")]


@pytest.mark.parametrize("name,kwargs,key", [
    ("self_similarity", {"streams": ["space"]}, "streams"),
    ("self_similarity", {"distance": "l3"}, "distance"),
    ("self_similarity", {"temperature": 0}, "temperature"),
    ("output", {"wav_weigth": 1.0}, "wav_weigth"),
    ("output", {"compress": "strong"}, "compress"),
])
def test_bad_kwargs_are_refused_naming_the_key(name, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs(name, kwargs)


def test_bad_tap_name_is_a_config_error():
    student, teacher = _pair()
    with pytest.raises(ConfigError, match="nowhere"):
        build_kd_method("self_similarity", student, teacher, {"layers": ["nowhere"]})


def test_registry_lists_the_spine_methods():
    assert {"none", "output", "self_similarity"} <= set(KD_METHODS.names())
    with pytest.raises(RegistryError):
        KD_METHODS.get("hinton_classic")
