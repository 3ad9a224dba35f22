"""DFKD (arXiv 2502.04711 reconstruction, and the per-frame rule of the DISPATCH reading): crossover,
fixture values, naive-loop re-derivations of the frame rule, zero at equality, gradients (also with the teacher
under autograd), ablation switches, kwargs validation, the crossover statistics and their epoch metrics, one
real training step.

Regenerate the loss-value fixture only when the maths changes on purpose:
    python -m tests.test_kd_dfkd
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import KDInputs, build_kd_method, validate_kd_kwargs
from kdlib.kd.dfkd import crossover_bin, frame_crossover_bin, guard_bins, spectral_profile
from kdlib.losses import task_loss_for
from kdlib.models import build_model, size_student
from kdlib.train import Trainer, TrainSettings
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
    "frame_rule": {"crossover": "frame"},
    "frame_disjoint_mean": {"crossover": "frame", "frame_shared_bin": False, "beta": 0.2, "profile_from": "mean",
                            "low_weight": 0.7, "high_weight": 1.3},
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


@pytest.mark.parametrize("case", ["default", "complex_frame", "adaptive_mean", "frame_rule", "frame_disjoint_mean"])
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
    ({"crossover": "bin"}, "crossover"),
    ({"crossover": "frame", "beta": 1.5}, "beta"),
    ({"beta": 0.3}, "beta"),  # a frame-rule knob under the utterance rule
    ({"frame_shared_bin": False}, "frame_shared_bin"),
    ({"crossover": "frame", "guard": [0.2, 0.9]}, "guard"),  # an utterance-rule knob under the frame rule
    ({"crossover": "frame", "cosine_over": "frame"}, "cosine_over"),
    ({"crossover": "frame", "high_weight_mode": "adaptive"}, "high_weight_mode"),
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



# -- the frame rule (DISPATCH reading, methods.md §9.2) ------------------------------------------------------------

def naive_frame_crossover(mag: list[list[float]]) -> list[int]:
    """f_c per frame of one ``[F][T]`` magnitude table, by loops: running maximum over f, relative rise
    (E[f+1] − E[f]) / (E[f] + 1e-8), the first arg-max f*, f_c = f* + 1."""
    n_freqs, n_frames = len(mag), len(mag[0])
    out = []
    for t in range(n_frames):
        env, top = [], -1.0
        for f in range(n_freqs):
            top = max(top, mag[f][t])
            env.append(top)
        rises = [(env[f + 1] - env[f]) / (env[f] + 1e-8) for f in range(n_freqs - 1)]
        best = 0
        for f in range(1, n_freqs - 1):
            if rises[f] > rises[best]:
                best = f
        out.append(best + 1)
    return out


def test_frame_crossover_matches_a_naive_loop():
    g = torch.Generator().manual_seed(7)
    mag = torch.rand(2, 9, 6, generator=g) ** 3
    mag[0, :, 1] = 0.0  # a silent frame: no rise anywhere, f_c = 1
    mag[1, :, 2] = torch.linspace(1.0, 0.1, 9)  # the maximum at DC: no rise, f_c = 1
    mag[1, :, 3] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 5.0])  # a rise into the top bin
    got = frame_crossover_bin(mag)
    assert got.shape == (2, 6) and got.dtype == torch.long
    for b in range(2):
        assert got[b].tolist() == naive_frame_crossover(mag[b].tolist())
    assert int(got[0, 1]) == 1 and int(got[1, 2]) == 1 and int(got[1, 3]) == 8
    # the method routes the teacher's magnitudes (profile_from: teacher) to the same rule
    method = _method({"crossover": "frame", "n_fft": 16, "hop_length": 8})
    assert torch.equal(method.crossover(torch.rand(2, 9, 6, generator=g), mag), got)


@pytest.mark.parametrize("k", [3, 40, 200])
def test_both_rules_on_a_spectrum_with_a_known_step(k):
    drop = torch.ones(2, 257, 5)
    drop[:, k:] = 0.01  # a low-pass spectrum: sharp drop at bin k
    rise = torch.full((2, 257, 5), 0.01)
    rise[:, k:] = 1.0  # a high-pass spectrum: sharp rise at bin k
    utterance = _method({"smooth_bins": 1, "guard": [0.0, 1.0]})
    frame = _method({"crossover": "frame"})
    assert utterance.crossover(drop, drop).tolist() == [k, k]
    assert utterance.crossover(rise, rise).tolist() == [k, k]
    assert frame.crossover(rise, rise).tolist() == [[k] * 5] * 2
    # the cumulative maximum never rises after a drop: the frame rule is degenerate on a low-pass spectrum
    assert frame.crossover(drop, drop).tolist() == [[1] * 5] * 2


def _cos_distance(s: list[complex], u: list[complex], bins: range) -> float:
    """1 − cos between two complex vectors over ``bins``, real and imaginary parts as coordinates."""
    dot = sum(s[f].real * u[f].real + s[f].imag * u[f].imag for f in bins)
    return 1.0 - dot / (math.sqrt(sum(abs(s[f]) ** 2 for f in bins)) * math.sqrt(sum(abs(u[f]) ** 2 for f in bins)))


def naive_frame_loss(student: torch.Tensor, teacher: torch.Tensor, n_fft: int, hop: int, beta: float,
                     shared: bool, low_weight: float, high_weight: float) -> float:
    """The frame rule's loss by loops over utterances, frames and bins (teacher's crossover), from torch.stft."""
    window = torch.hann_window(n_fft)
    spec_s = torch.stft(student, n_fft, hop, window=window, center=True, return_complex=True)
    spec_t = torch.stft(teacher, n_fft, hop, window=window, center=True, return_complex=True)
    n_utt, n_freqs, n_frames = spec_t.shape
    total = 0.0
    for b in range(n_utt):
        s_re, s_im = spec_s[b].real.tolist(), spec_s[b].imag.tolist()
        t_re, t_im = spec_t[b].real.tolist(), spec_t[b].imag.tolist()
        mag_t = spec_t[b].abs().tolist()
        f_cs = naive_frame_crossover(mag_t)
        for t in range(n_frames):
            f_c = f_cs[t]
            s = [complex(s_re[f][t], s_im[f][t]) for f in range(n_freqs)]
            u = [complex(t_re[f][t], t_im[f][t]) for f in range(n_freqs)]
            low = range(0, f_c)
            high = range(f_c - 1 if shared else f_c, n_freqs)
            mse = sum((abs(s[f]) - mag_t[f][t]) ** 2 for f in high) / len(high)
            total += low_weight * _cos_distance(s, u, low) + high_weight * (
                beta * _cos_distance(s, u, high) + (1 - beta) * mse)
    return total / (n_utt * n_frames)


@pytest.mark.parametrize("kw", [{}, {"beta": 0.2, "frame_shared_bin": False, "low_weight": 0.7, "high_weight": 1.3},
                                {"beta": 1.0, "low_weight": 0.0}])
def test_frame_loss_matches_a_naive_loop(kw):
    g = torch.Generator().manual_seed(11)
    teacher = torch.randn(2, 256, generator=g) * torch.linspace(0.2, 1.0, 256)
    student = 0.7 * teacher + 0.3 * torch.randn(2, 256, generator=g)
    cfg = {"beta": 0.5, "frame_shared_bin": True, "low_weight": 1.0, "high_weight": 1.0, **kw}
    expected = naive_frame_loss(student, teacher, 16, 8, cfg["beta"], cfg["frame_shared_bin"],
                                cfg["low_weight"], cfg["high_weight"])
    got = float(_method({"crossover": "frame", "n_fft": 16, "hop_length": 8, **kw})(
        KDInputs(teacher, teacher, student, teacher)))
    assert expected > 0.01
    assert got == pytest.approx(expected, rel=1e-4)


def test_frame_rule_bands_add_up_and_beta_mixes_cosine_and_mse():
    x = fixture_inputs()
    base = {"crossover": "frame"}
    full = float(_method(base)(x))
    low = float(_method({**base, "high_weight": 0.0})(x))
    high = float(_method({**base, "low_weight": 0.0})(x))
    assert low > 0 and high > 0 and full == pytest.approx(low + high, rel=1e-5)
    cos = float(_method({**base, "low_weight": 0.0, "beta": 1.0})(x))
    mse = float(_method({**base, "low_weight": 0.0, "beta": 0.0})(x))
    assert float(_method({**base, "low_weight": 0.0, "beta": 0.3})(x)) == pytest.approx(0.3 * cos + 0.7 * mse,
                                                                                          rel=1e-5)


@pytest.mark.parametrize("case", ["default", "frame_rule"])
def test_no_gradient_reaches_a_teacher_that_ran_with_autograd(case):
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).train().requires_grad_(True)
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
    method = _method(CASES[case], student, teacher)
    inputs = kd_inputs(method, student, teacher, torch.randn(2, 8000), teacher_grad=True)
    assert inputs.teacher_out.requires_grad  # the teacher's graph is live: only the method can cut it
    method(inputs).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# -- crossover statistics ------------------------------------------------------------------------------------------

def test_stats_of_known_crossovers_and_reset():
    method = _method()  # utterance rule, guard bins 26..231 of 257, 16 kHz / 512 → 31.25 Hz per bin
    assert method.stats() == {}
    assert method.search_range == (26, 231)
    method._record(torch.tensor([26, 100, 231]), 257)
    method._record(torch.tensor([26, 50]), 257)  # accumulates across steps: 26, 26, 50, 100, 231
    assert method.stats() == pytest.approx({
        "crossover_median_hz": 50 * 31.25, "crossover_p10_hz": 26 * 31.25, "crossover_p90_hz": 231 * 31.25,
        "crossover_at_guard": 3 / 5, "crossover_degenerate": 0.0})
    assert method.stats() == {}  # reset by the call
    frame = _method({"crossover": "frame"})
    assert frame.search_range == (1, 256)
    frame._record(torch.tensor([[1, 1, 5], [256, 3, 1]]), 257)  # 1, 1, 1, 3, 5, 256
    assert frame.stats() == pytest.approx({
        "crossover_median_hz": 31.25, "crossover_p10_hz": 31.25, "crossover_p90_hz": 256 * 31.25,
        "crossover_at_guard": 4 / 6, "crossover_degenerate": 4 / 6})


@pytest.mark.parametrize("rule", ["utterance", "frame"])
def test_stats_follow_the_forward_passes_at_the_students_rate(rule):
    teacher = build_model("dpcrn_lite", {**TEACHER_ARGS, "sample_rate": 8000})
    method = _method({"crossover": rule}, teacher, teacher)
    g = torch.Generator().manual_seed(5)
    seen = []
    for _ in range(3):
        x = fixture_inputs()
        t_out = lowpass_noise(2, 4000, 0.05 + 0.3 * torch.rand(1, generator=g).item(), 1e-2, g)
        method(KDInputs(x.noisy, x.clean, x.student_out, t_out))
        mag = method.stft(t_out).abs()
        seen.append(method.crossover(mag, mag).reshape(-1))
    f_c = torch.cat(seen).numpy()
    stats = method.stats()
    hz = 8000 / 512
    assert stats["crossover_median_hz"] == pytest.approx(np.percentile(f_c, 50, method="inverted_cdf") * hz)
    assert stats["crossover_p90_hz"] == pytest.approx(np.percentile(f_c, 90, method="inverted_cdf") * hz)
    lo, hi = method.search_range
    assert stats["crossover_at_guard"] == pytest.approx(np.mean((f_c == lo) | (f_c == hi)))
    assert stats["crossover_degenerate"] == pytest.approx(np.mean((f_c == 1) | (f_c == 256)))
    assert method.stats() == {}


class _Noise(torch.utils.data.Dataset):
    """Four training items ``(noisy (L,), clean (L,))`` of 0.25 s: low-passed noise plus white noise."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.clean = lowpass_noise(4, 4000, 0.2, 1e-2, g)
        self.noisy = self.clean + 0.1 * torch.randn(4, 4000, generator=g)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return self.noisy[i], self.clean[i]


def _trainer(method: str, kwargs: dict | None = None) -> Trainer:
    torch.manual_seed(0)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS).eval()
    student = build_model("dpcrn_lite", size_student("dpcrn_lite", TEACHER_ARGS, 0.25).model_args)
    kd = build_kd_method(method, student, teacher, kwargs or {})
    settings = TrainSettings(epochs=1, batch_size=2, lr=1e-3, grad_clip=5.0, selection_metric="val_si_sdr")
    data = SimpleNamespace(train=_Noise(), valid=None, test=None)
    return Trainer(student, teacher, kd, task_loss_for(student), data, settings, "cpu", log=lambda _: None)


STAT_KEYS = {"kd_crossover_median_hz", "kd_crossover_p10_hz", "kd_crossover_p90_hz", "kd_crossover_at_guard",
             "kd_crossover_degenerate"}
BASE_KEYS = {"train_loss", "task_loss", "kd_loss", "epoch_seconds", "audio_seconds_per_second"}


@pytest.mark.parametrize("rule", ["utterance", "frame"])
def test_epoch_metrics_carry_the_crossover_stats_of_that_epoch_only(rule):
    trainer = _trainer("dfkd", {"crossover": rule})
    # left over from before the epoch (e.g. λ calibration): must not reach the epoch's figures
    trainer.kd._record(torch.full((10_000,), 256), 257)
    metrics = trainer.train_epoch()
    assert set(metrics) == BASE_KEYS | STAT_KEYS
    assert all(isinstance(metrics[k], float) and math.isfinite(metrics[k]) for k in STAT_KEYS)
    assert metrics["kd_crossover_p90_hz"] < 256 * 31.25 and metrics["kd_crossover_degenerate"] < 0.5
    if rule == "utterance":  # 2 batches × 2 utterances, inside the default guard: never degenerate
        assert metrics["kd_crossover_degenerate"] == 0.0
    assert trainer.kd.stats() == {}  # the trainer consumed them


def test_epoch_metrics_of_a_method_without_stats_have_no_kd_stats():
    assert set(_trainer("output").train_epoch()) == BASE_KEYS


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compute_fixtures(), indent=2, sort_keys=True) + "\n")
    print(FIXTURE.read_text())
