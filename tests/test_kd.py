"""KD losses: fixture values, zero at equality, gradients, invariances, kwargs validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError, RegistryError
from kdlib.kd import KD_METHODS, KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.similarity import freq_self_similarity, similarity_distance, time_self_similarity
from kdlib.models import build_model, size_student
from tests.kd_fixture_inputs import CASES, fixture_inputs, method_for
from tests.kd_helpers import kd_inputs

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "kd_losses.json").read_text())
TEACHER_ARGS = {"channels": [8, 12], "rnn_hidden": 12, "n_dilated": 1, "n_dualpath": 1}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_precomputed_fixtures(case):
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
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = build_kd_method(name, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["output", "self_similarity"])
def test_gradient_reaches_the_student_and_never_the_teacher(name):
    student, teacher = _pair()
    method = build_kd_method(name, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert float(loss) > 0
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


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
