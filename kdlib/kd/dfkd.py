"""DFKD: dynamic frequency-adaptive output-level KD (Yuan et al., arXiv 2502.04711).

Only the abstract and third-party summaries of the paper could be read (methods.md §2.1-2.2), so
the loss below is the reconstruction of methods.md §2.3 [R]; every unverified detail is a knob.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.models.stft import STFT

_EPS = 1e-8


def spectral_profile(mag: torch.Tensor, scale: str = "db", smooth_bins: int = 5) -> torch.Tensor:
    """Smoothed spectral profile of a magnitude spectrogram.

    p(f) = mean over frames t of |S(f, t)|, expressed in ``scale`` (``"db"``: 20·log10, ``"log"``:
    natural log, ``"linear"``: as is; magnitudes floored at 1e-8), then smoothed along f by a
    moving average of ``smooth_bins`` bins (edge bins replicated; odd widths are centred).

    Shapes: ``mag`` ``(B, F, T)`` → ``(B, F)``.
    """
    p = mag.mean(dim=-1)
    if scale == "db":
        p = 20.0 * torch.log10(p.clamp_min(_EPS))
    elif scale == "log":
        p = torch.log(p.clamp_min(_EPS))
    elif scale != "linear":
        raise ValueError(f"unknown profile scale '{scale}' (db, log, linear)")
    if smooth_bins > 1:
        left = (smooth_bins - 1) // 2
        padded = F.pad(p.unsqueeze(1), (left, smooth_bins - 1 - left), mode="replicate")
        p = F.avg_pool1d(padded, smooth_bins, stride=1).squeeze(1)
    return p


def guard_bins(n_freqs: int, guard: tuple[float, float]) -> tuple[int, int]:
    """Inclusive range ``[lo, hi]`` the crossover f_c may take: ``[⌈g0·F⌉, ⌊g1·F⌋] ∩ [1, F−1]``
    (both bands always non-empty); collapses to one bin when the guard is narrower than a bin."""
    lo = max(1, math.ceil(guard[0] * n_freqs))
    hi = min(n_freqs - 1, math.floor(guard[1] * n_freqs))
    if lo > hi:
        lo = hi = min(max(1, round(guard[0] * n_freqs)), n_freqs - 1)
    return lo, hi


@torch.no_grad()
def crossover_bin(profile: torch.Tensor, slope: str = "abs", guard: tuple[float, float] = (0.1, 0.9),
                  rtol: float = 1e-4) -> torch.Tensor:
    """Crossover f_c between the low and the high band of each profile (no gradient).

    d(f) = p(f+1) − p(f); the steepest step is f* = argmax |d(f)| (``slope="abs"``) or argmax −d(f)
    (``slope="drop"``: steepest fall only), searched over the f* whose f_c = f* + 1 lies in the
    guard range (:func:`guard_bins`). f_c is the first bin of the high band, so a profile that drops
    sharply between bins k−1 and k gives f_c = k. A symmetric smoothing spreads a step into a run
    of (near-)equal slopes; ties within ``rtol`` of the maximum are resolved to the centre of the
    first maximal run, which puts f_c back on the step.

    Shapes: ``profile`` ``(B, F)`` → ``(B,)`` long, values in ``[1, F−1]``.
    """
    b, n_freqs = profile.shape
    d = (profile[:, 1:] - profile[:, :-1]).double()
    score = d.abs() if slope == "abs" else -d
    lo, hi = guard_bins(n_freqs, guard)
    idx = torch.arange(n_freqs - 1, device=profile.device)
    inside = (idx >= lo - 1) & (idx <= hi - 1)
    score = score.masked_fill(~inside, -math.inf)
    best = score.max(dim=-1, keepdim=True).values
    tol = rtol * best.abs().clamp_min(1e-12)
    ties = score >= best - tol
    first = ties.int().argmax(dim=-1, keepdim=True)  # first maximal index
    beyond = (~ties) & (idx > first)
    end = torch.where(beyond.any(-1, keepdim=True), beyond.int().argmax(-1, keepdim=True),
                      torch.full_like(first, n_freqs - 1))
    centre = first + (end - first) // 2
    return (centre + 1).squeeze(-1)


class DFKDConfig(KDConfig):
    n_fft: int = Field(512, ge=8, description="STFT size of the outputs' spectra (samples)")
    hop_length: int = Field(128, gt=0, description="STFT hop (samples)")
    profile_scale: Literal["db", "log", "linear"] = "db"
    smooth_bins: int = Field(5, ge=1, le=64)
    slope: Literal["abs", "drop"] = "abs"
    guard: tuple[float, float] = (0.1, 0.9)
    profile_from: Literal["teacher", "student", "mean"] = "teacher"
    low_domain: Literal["magnitude", "complex"] = "magnitude"
    cosine_over: Literal["utterance", "frame"] = "utterance"
    magnitude_ratio_weight: float = Field(0.1, ge=0)
    high_weight: float = Field(1.0, ge=0)
    high_weight_mode: Literal["fixed", "adaptive"] = "fixed"
    adaptive_reference_share: float = Field(0.1, gt=0, le=1)
    adaptive_clip: tuple[float, float] = (0.5, 10.0)
    low_weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check_ranges(self) -> DFKDConfig:
        g0, g1 = self.guard
        if not 0.0 <= g0 < g1 <= 1.0:
            raise ValueError(f"kd.dfkd.guard must satisfy 0 <= lo < hi <= 1, got {list(self.guard)}")
        c0, c1 = self.adaptive_clip
        if not 0.0 < c0 <= c1:
            raise ValueError(f"kd.dfkd.adaptive_clip must satisfy 0 < lo <= hi, got {list(self.adaptive_clip)}")
        return self


@register_kd_method("dfkd")
class DFKD(KDMethod):
    """Dynamic frequency-adaptive KD on the outputs' spectra (arXiv 2502.04711 §2.3 reconstruction [R]).

    Ŝ_s, Ŝ_t = STFT(student_out), STFT(teacher_out) (Hann, ``n_fft``/``hop_length``), ``(B, F, T)``.
    Works on waveforms, so time-domain and TF-domain students get the same treatment.

    1. Profile (per utterance, no gradient): p(f) = mean over t of |Ŝ|, in dB/log/linear, moving
       average over ``smooth_bins`` bins; taken from the teacher, the student or the mean of both.
    2. Crossover: d(f) = p(f+1) − p(f); f_c = 1 + argmax |d| (or argmax −d) inside the guard range
       (:func:`crossover_bin`). Recomputed for every utterance and step: the "dynamic" split.
    3. Low band f < f_c ("modified cosine"): L_low = 1 − cos(vec(Ŝ_s[:f_c]), vec(Ŝ_t[:f_c])) on
       magnitudes or stacked real/imag, over the whole utterance or per frame (then averaged over
       frames), computed as ½‖a/‖a‖ − b/‖b‖‖² so two all-zero vectors give 0; plus
       w_r · |log(‖Ŝ_s[:f_c]‖ / ‖Ŝ_t[:f_c]‖)| (per utterance) so the scale the cosine ignores still counts.
    4. High band f ≥ f_c: L_high = w_h · mean over (f ≥ f_c, t) of | |Ŝ_s| − |Ŝ_t| |. ``fixed``:
       w_h = ``high_weight``. ``adaptive``: w_h = ``high_weight`` · clip(ρ / e_t, lo, hi), with e_t the
       teacher's high-band share of spectral energy Σ_{f≥f_c}|Ŝ_t|² / Σ|Ŝ_t|² (no gradient), ρ =
       ``adaptive_reference_share`` (the share at which w_h = ``high_weight``) and [lo, hi] =
       ``adaptive_clip`` (default [0.5, 10]): a quiet high band gets a larger weight so its small
       magnitude errors are not drowned by the low band.
    5. L = mean over the batch of (``low_weight`` · L_low + L_high). The trainer adds λ·L to the
       student's task loss.

    Zero when student_out == teacher_out. Parameter-free (the STFT window is a buffer).

    Knobs: ``n_fft`` (512), ``hop_length`` (128), ``profile_scale`` (db | log | linear),
    ``smooth_bins`` (5), ``slope`` (abs | drop), ``guard`` ([0.1, 0.9] fractions of the F bins),
    ``profile_from`` (teacher | student | mean), ``low_domain`` (magnitude | complex),
    ``cosine_over`` (utterance | frame), ``magnitude_ratio_weight`` w_r (0.1; 0 disables),
    ``high_weight`` (1.0), ``high_weight_mode`` (fixed | adaptive), ``adaptive_reference_share`` ρ
    (0.1), ``adaptive_clip`` ([0.5, 10]), ``low_weight`` (1.0; 0 is the high-band-only ablation).
    """

    Config = DFKDConfig
    source = "arXiv 2502.04711 §2.3 (reconstruction [R], see methods.md)"
    needs_teacher = True

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        self.stft = STFT(self.cfg.n_fft, self.cfg.hop_length)

    @torch.no_grad()
    def crossover(self, mag_s: torch.Tensor, mag_t: torch.Tensor) -> torch.Tensor:
        """Per-utterance crossover bin f_c ``(B,)`` from magnitude spectrograms ``(B, F, T)``."""
        c = self.cfg
        sources = {"teacher": [mag_t], "student": [mag_s], "mean": [mag_s, mag_t]}[c.profile_from]
        profiles = [spectral_profile(m.detach(), c.profile_scale, c.smooth_bins) for m in sources]
        profile = torch.stack(profiles).mean(0)
        return crossover_bin(profile, c.slope, c.guard)

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        c = self.cfg
        spec_s = self.stft(inputs.student_out)
        spec_t = self.stft(inputs.teacher_out.detach())
        mag_s, mag_t = spec_s.abs(), spec_t.abs()
        n_freqs = mag_s.shape[-2]
        f_c = self.crossover(mag_s, mag_t)
        low = (torch.arange(n_freqs, device=f_c.device)[None, :] < f_c[:, None]).to(mag_s.dtype)  # (B, F)
        high = 1.0 - low
        loss = mag_s.new_zeros(mag_s.shape[0])
        if c.low_weight:
            loss = loss + c.low_weight * self._low_band(spec_s, spec_t, mag_s, mag_t, low)
        if c.high_weight:
            loss = loss + self._high_band(mag_s, mag_t, high)
        return loss.mean()

    def _low_band(self, spec_s, spec_t, mag_s, mag_t, low: torch.Tensor) -> torch.Tensor:
        """Per-utterance L_low ``(B,)``: masked modified cosine (+ log-norm-ratio term)."""
        c = self.cfg
        if c.low_domain == "magnitude":
            a, b = mag_s.unsqueeze(1), mag_t.unsqueeze(1)  # (B, 1, F, T)
        else:
            a = torch.stack([spec_s.real, spec_s.imag], dim=1)  # (B, 2, F, T)
            b = torch.stack([spec_t.real, spec_t.imag], dim=1)
        m = low[:, None, :, None]
        dims = (1, 2, 3) if c.cosine_over == "utterance" else (1, 2)
        saa, sbb, sab = (m * a * a).sum(dims), (m * b * b).sum(dims), (m * a * b).sum(dims)
        na2, nb2 = saa + _EPS**2, sbb + _EPS**2
        # ½‖â − b̂‖² = 1 − cos for non-zero vectors, 0 for two zero vectors; no NaN gradient at 0
        cos_loss = 0.5 * (saa / na2 + sbb / nb2) - sab / (na2 * nb2).sqrt()
        if c.cosine_over == "frame":
            cos_loss = cos_loss.mean(-1)
        if c.magnitude_ratio_weight:
            if c.cosine_over == "frame":
                na2, nb2 = saa.sum(-1) + _EPS**2, sbb.sum(-1) + _EPS**2
            ratio = 0.5 * (torch.log(na2) - torch.log(nb2))
            cos_loss = cos_loss + c.magnitude_ratio_weight * ratio.abs()
        return cos_loss

    def _high_band(self, mag_s, mag_t, high: torch.Tensor) -> torch.Tensor:
        """Per-utterance weighted L_high ``(B,)``: mean L1 of magnitudes over f ≥ f_c."""
        c = self.cfg
        n_frames = mag_s.shape[-1]
        l1 = (high[:, :, None] * (mag_s - mag_t).abs()).sum((1, 2)) / (high.sum(1) * n_frames).clamp_min(1.0)
        weight = torch.full_like(l1, c.high_weight)
        if c.high_weight_mode == "adaptive":
            with torch.no_grad():
                energy = mag_t.detach().square().sum(-1)  # (B, F)
                share = (high * energy).sum(1) / energy.sum(1).clamp_min(_EPS)
                ratio = c.adaptive_reference_share / share.clamp_min(_EPS)
                weight = c.high_weight * ratio.clamp(c.adaptive_clip[0], c.adaptive_clip[1])
        return weight * l1
