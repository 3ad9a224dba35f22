"""DFKD (arXiv 2502.04711 reconstruction): crossover, fixture values, zero at equality, gradients,
ablation switches, kwargs validation, one real training step.

Regenerate the loss-value fixture only when the maths changes on purpose:
    python -m tests.test_kd_dfkd
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.dfkd import crossover_bin, guard_bins, spectral_profile
from kdlib.models import build_model, size_student
from tests.kd_helpers import kd_inputs

FIXTURE = Path(__file__).parent / "fixtures" / "kd_dfkd.json"
TEACHER_ARGS = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}
CASES = {
    "default": {},
    "complex_frame": {"low_domain": "complex", "cosine_over": "frame"},
    "drop_student_linear": {"slope": "drop", "profile_from": "student", "profile_scale": "linear", "smooth_bins": 3},
    "adaptive_mean": {"high_weight_mode": "adaptive", "profile_from": "mean", "high_weight": 2.0},
    "no_ratio_log_unsmoothed": {"magnitude_ratio_weight": 0.0, "profile_scale": "log", "smooth_bins": 1,
                                "n_fft": 256, "hop_length": 64},
}


def lowpass_noise(n: int, length: int, cutoff: float, floor: float, g: torch.Generator) -> torch.Tensor:
    """White noise with every component above ``cutoff`` (cycles/sample) attenuated to ``floor``."""
    spec = torch.fft.rfft(torch.randn(n, length, generator=g))
    freqs = torch.fft.rfftfreq(length)
    return torch.fft.irfft(spec * torch.where(freqs < cutoff, 1.0, floor), n=length)


def fixture_inputs() -> KDInputs:
    """Seeded ``(2, 4000)`` outputs with a spectral edge: the teacher is low-passed noise (edge near
    bin 150 of 257), the student a noisier, differently-scaled version of it."""
    g = torch.Generator().manual_seed(2502)
    teacher = lowpass_noise(2, 4000, 150 / 512, 1e-2, g)
    student = 0.8 * teacher + 0.1 * torch.randn(2, 4000, generator=g)
    noisy = teacher + 0.3 * torch.randn(2, 4000, generator=g)
    return KDInputs(noisy, teacher, student, teacher)


def _method(kwargs=None, student=None, teacher=None):
    model = build_model("dpcrn_lite", TEACHER_ARGS)
    return build_kd_method("dfkd", student or model, teacher or model, kwargs or {})


def compute_fixtures() -> dict[str, float]:
    return {case: float(_method(kw)(fixture_inputs())) for case, kw in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_values_match_precomputed_fixtures(case):
    expected = json.loads(FIXTURE.read_text())[case]
    assert float(_method(CASES[case])(fixture_inputs())) == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("k", [30, 101, 200])
@pytest.mark.parametrize("smooth_bins", [1, 4, 5, 9])
@pytest.mark.parametrize("scale", ["db", "log", "linear"])
@pytest.mark.parametrize("slope", ["abs", "drop"])
def test_crossover_finds_a_sharp_drop(k, smooth_bins, scale, slope):
    mag = torch.ones(3, 257, 7)
    mag[:, k:] = 0.01
    mag[1] *= 3.0  # level does not move the step
    mag[2, :, ::2] *= 0.5  # nor does a time-varying level
    f_c = crossover_bin(spectral_profile(mag, scale, smooth_bins), slope)
    assert f_c.tolist() == [k, k, k]


def test_crossover_drop_ignores_a_steeper_rise_and_guard_excludes_edges():
    mag = torch.ones(1, 257, 4)
    mag[:, :5] = 1e-4  # a huge step at bin 5: outside the default guard (bins 26..231)
    mag[:, 60:] *= 10.0  # steep rise at 60
    mag[:, 120:] *= 0.1  # drop at 120, same size in dB as the rise
    mag[:, 120:] *= 0.5  # ... now a bit steeper
    p = spectral_profile(mag, "db", 1)
    assert guard_bins(257, (0.1, 0.9)) == (26, 231)
    assert int(crossover_bin(p, "abs")) == 120
    mag[:, 120:] *= 4.0  # drop is now smaller than the rise
    p = spectral_profile(mag, "db", 1)
    assert int(crossover_bin(p, "abs")) == 60
    assert int(crossover_bin(p, "drop")) == 120
    assert int(crossover_bin(p, "abs", guard=(0.0, 0.9))) == 5


def test_crossover_of_real_outputs_sits_at_the_low_pass_edge():
    g = torch.Generator().manual_seed(0)
    wav = lowpass_noise(2, 16000, 90 / 512, 1e-3, g)
    method = _method()
    mag = method.stft(wav).abs()
    f_c = method.crossover(mag, mag)
    assert not f_c.requires_grad
    # the Hann window's leakage skirt (main lobe ±2 bins) puts the steepest dB slope just past the edge
    assert all(abs(v - 90) <= 4 for v in f_c.tolist()), f_c


def test_profile_source_knob_picks_whose_spectrum_is_split():
    g = torch.Generator().manual_seed(1)
    t = lowpass_noise(1, 8000, 60 / 512, 1e-3, g)
    s = lowpass_noise(1, 8000, 180 / 512, 1e-3, g)
    fc = {src: _method({"profile_from": src}).crossover(*[_method().stft(w).abs() for w in (s, t)])
          for src in ("teacher", "student")}
    assert abs(int(fc["teacher"]) - 60) <= 4 and abs(int(fc["student"]) - 180) <= 4


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_is_zero_when_outputs_are_equal(case):
    x = fixture_inputs()
    assert float(_method(CASES[case])(KDInputs(x.noisy, x.clean, x.teacher_out.clone(), x.teacher_out))) == \
        pytest.approx(0.0, abs=1e-6)


def test_loss_is_zero_for_a_student_equal_to_the_teacher():
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = copy.deepcopy(teacher).eval()
    method = _method({"high_weight_mode": "adaptive"}, student, teacher)
    loss = method(kd_inputs(method, student, teacher, torch.randn(2, 8000)))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("case", ["default", "complex_frame", "adaptive_mean"])
def test_gradient_reaches_the_student_and_never_the_teacher(case):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
    method = _method(CASES[case], student, teacher)
    x = torch.randn(2, 8000)
    x[1, 4000:] = 0.0  # a silent tail: exact-zero STFT bins must not give NaN gradients
    loss = method(kd_inputs(method, student, teacher, x))
    assert float(loss.detach()) > 0
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


def test_magnitude_ratio_term_restores_scale_sensitivity():
    x = fixture_inputs()
    scaled = KDInputs(x.noisy, x.clean, 2.0 * x.teacher_out, x.teacher_out)
    low_only = {"high_weight": 0.0}
    # the cosine alone is blind to a global gain; the ratio term adds w_r·|log 2|
    assert float(_method({**low_only, "magnitude_ratio_weight": 0.0})(scaled)) == pytest.approx(0.0, abs=1e-6)
    for domain in ("magnitude", "complex"):
        for over in ("utterance", "frame"):
            kw = {**low_only, "low_domain": domain, "cosine_over": over, "magnitude_ratio_weight": 0.5}
            assert float(_method(kw)(scaled)) == pytest.approx(0.5 * math.log(2.0), rel=1e-4)


def test_ablation_switches_change_the_value():
    x = fixture_inputs()
    full = float(_method()(x))
    low = float(_method({"high_weight": 0.0})(x))
    high = float(_method({"low_weight": 0.0})(x))
    assert low > 0 and high > 0
    assert full == pytest.approx(low + high, rel=1e-5)
    assert float(_method({"magnitude_ratio_weight": 0.0})(x)) < full
    assert float(_method({"high_weight": 2.0})(x)) == pytest.approx(low + 2 * high, rel=1e-5)
    assert float(_method({"low_domain": "complex"})(x)) != pytest.approx(full)
    assert float(_method({"cosine_over": "frame"})(x)) != pytest.approx(full)


def test_adaptive_high_weight_is_clipped_inverse_energy_share():
    g = torch.Generator().manual_seed(3)
    seen = set()
    for floor in (0.5, 0.01):  # a loud high band (weight in range) and a quiet one (clipped at 10)
        teacher = lowpass_noise(1, 8000, 150 / 512, floor, g)
        one = KDInputs(teacher, teacher, 0.7 * teacher + 0.05 * torch.randn(1, 8000, generator=g), teacher)
        method = _method({"low_weight": 0.0, "high_weight_mode": "adaptive"})
        fixed = float(_method({"low_weight": 0.0})(one))
        mag_t = method.stft(one.teacher_out).abs()
        f_c = int(method.crossover(method.stft(one.student_out).abs(), mag_t))
        energy = mag_t.square().sum(-1)[0]
        share = float(energy[f_c:].sum() / energy.sum())
        expected = min(max(0.1 / share, 0.5), 10.0)
        seen.add("clipped" if expected in (0.5, 10.0) else "inside")
        assert float(method(one)) / fixed == pytest.approx(expected, rel=1e-4)
        clipped = _method({"low_weight": 0.0, "high_weight_mode": "adaptive", "adaptive_clip": [0.5, 0.75]})
        assert float(clipped(one)) / fixed <= 0.75 + 1e-5
    assert seen == {"clipped", "inside"}


def test_parameter_free_and_needs_the_teacher():
    method = _method()
    assert method.needs_teacher and method.extra_params() == 0 and list(method.parameters()) == []
    assert method.student_taps() == [] and method.teacher_taps() == []
    assert "2502.04711" in method.source
    with pytest.raises(ValueError, match="teacher"):
        build_kd_method("dfkd", build_model("dpcrn_lite", TEACHER_ARGS), None)


@pytest.mark.parametrize("kwargs,key", [
    ({"guard": [0.9, 0.1]}, "guard"),
    ({"guard": [0.1, 1.5]}, "guard"),
    ({"slope": "rise"}, "slope"),
    ({"profile_scale": "bark"}, "profile_scale"),
    ({"smooth_bins": 0}, "smooth_bins"),
    ({"magnitude_ratio_weight": -1}, "magnitude_ratio_weight"),
    ({"high_weight_mode": "auto"}, "high_weight_mode"),
    ({"adaptive_clip": [2.0, 1.0]}, "adaptive_clip"),
    ({"profile_form": "teacher"}, "profile_form"),
])
def test_bad_kwargs_are_refused_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        validate_kd_kwargs("dfkd", kwargs)


def test_one_real_training_step_updates_the_student():
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
    method = _method({"high_weight_mode": "adaptive"}, student, teacher)
    opt = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=1e-2)
    before = [p.detach().clone() for p in student.parameters()]
    x = torch.randn(2, 8000)
    loss = method(kd_inputs(method, student, teacher, x))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compute_fixtures(), indent=2, sort_keys=True) + "\n")
    print(FIXTURE.read_text())
