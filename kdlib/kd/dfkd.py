"""DFKD: dynamic frequency-adaptive output-level KD (Yuan et al., arXiv 2502.04711).

Only the abstract and third-party summaries of the paper could be read (methods.md §2.1-2.2), so
the default loss (``crossover: utterance``) is the reconstruction of methods.md §2.3 [R]; every
unverified detail is a knob. ``crossover: frame`` is a public third-party reading of the paper,
``rlaehghks5/DISPATCH`` ``dispatch_DFKD.py`` (methods.md §9.2; secondary evidence, not the
authors' code): one crossover per STFT frame and a per-frame loss. kdlib's code is its own.
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


@torch.no_grad()
def frame_crossover_bin(mag: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Crossover f_c of every frame, the rule of the DISPATCH reading (no gradient).

    E(f, t) = max over f' ≤ f of |S(f', t)| (cumulative maximum along frequency, non-decreasing);
    r(f, t) = (E(f+1, t) − E(f, t)) / (E(f, t) + ``eps``), the relative rise of that envelope;
    f* = argmax_f r (the first one on ties) and f_c = f* + 1, the first bin above the step, as in
    :func:`crossover_bin`. No guard: the search covers every bin, so f_c = 1 (the low band is the DC
    bin) and f_c = F − 1 are possible; a frame whose envelope never rises (e.g. silence, or a
    maximum at DC) has r ≡ 0 and gets f_c = 1.

    Source: ``rlaehghks5/DISPATCH`` ``dispatch_DFKD.py`` (``frequency_adapter``; methods.md §9.2),
    secondary evidence, not the authors' code. ``eps`` is that file's 1e-8.

    Shapes: ``mag`` ``(B, F, T)`` (magnitudes ≥ 0, F ≥ 2) → ``(B, T)`` long, values in ``[1, F−1]``.
    """
    env = mag.cummax(dim=-2).values
    rise = (env[..., 1:, :] - env[..., :-1, :]) / (env[..., :-1, :] + eps)
    return rise.argmax(dim=-2) + 1


def _cosine_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 − cos between the masked entries of ``a`` and ``b`` over ``dims``, as ½‖a/‖a‖ − b/‖b‖‖² so that
    two all-zero vectors give 0 and no NaN gradient (one zero vector gives ½). Also returns ‖a‖², ‖b‖²
    over the mask. ``mask`` broadcasts against ``a`` and ``b`` (same shape)."""
    saa, sbb, sab = (mask * a * a).sum(dims), (mask * b * b).sum(dims), (mask * a * b).sum(dims)
    na2, nb2 = saa + _EPS**2, sbb + _EPS**2
    return 0.5 * (saa / na2 + sbb / nb2) - sab / (na2 * nb2).sqrt(), saa, sbb


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
    crossover: Literal["utterance", "frame"] = Field(
        "utterance", description="utterance: one split per utterance, steepest slope of the profile (§2.3 [R]); "
        "frame: one split per frame and the per-frame loss of the DISPATCH reading (methods.md §9.2)")
    beta: float = Field(0.5, ge=0, le=1, description="frame rule: high band = beta·(1 − cos) + (1 − beta)·MSE")
    frame_shared_bin: bool = Field(
        True, description="frame rule: the bin just below the step belongs to both bands (as in the reading)")

    @model_validator(mode="after")
    def _check_ranges(self) -> DFKDConfig:
        g0, g1 = self.guard
        if not 0.0 <= g0 < g1 <= 1.0:
            raise ValueError(f"kd.dfkd.guard must satisfy 0 <= lo < hi <= 1, got {list(self.guard)}")
        c0, c1 = self.adaptive_clip
        if not 0.0 < c0 <= c1:
            raise ValueError(f"kd.dfkd.adaptive_clip must satisfy 0 < lo <= hi, got {list(self.adaptive_clip)}")
        # a knob the chosen rule never reads must not look as if it changed the run: a non-default value is
        # refused (its default, e.g. written out in a sweep file, is accepted)
        unused = _FRAME_ONLY if self.crossover == "utterance" else _UTTERANCE_ONLY
        for key in unused:
            if getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"kd.dfkd.{key} is not read with crossover={self.crossover} "
                                 f"(got {getattr(self, key)!r}): drop it or set crossover")
        return self


#: knobs read only by the per-utterance rule / only by the per-frame rule
_UTTERANCE_ONLY = ("profile_scale", "smooth_bins", "slope", "guard", "low_domain", "cosine_over",
                   "magnitude_ratio_weight", "high_weight_mode", "adaptive_reference_share", "adaptive_clip")
_FRAME_ONLY = ("beta", "frame_shared_bin")


@register_kd_method("dfkd")
class DFKD(KDMethod):
    """Dynamic frequency-adaptive KD on the outputs' spectra (arXiv 2502.04711 §2.3 reconstruction [R]).

    Ŝ_s, Ŝ_t = STFT(student_out), STFT(teacher_out) (Hann, ``n_fft``/``hop_length``), ``(B, F, T)``.
    Works on waveforms, so time-domain and TF-domain students get the same treatment. The teacher's
    side is detached: no gradient reaches the teacher, even when it ran with autograd on.

    ``crossover: utterance`` (default; methods.md §2.3 [R]):

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
    5. L = mean over the batch of (``low_weight`` · L_low + L_high).

    ``crossover: frame`` (the DISPATCH reading, ``rlaehghks5/DISPATCH`` ``dispatch_DFKD.py``,
    methods.md §9.2; secondary evidence, without that file's DISPatch patch selection):

    1. Crossover per frame f_c(t) = 1 + argmax_f of the relative rise of the cumulative maximum over
       frequency of |X| (:func:`frame_crossover_bin`, no guard, no gradient); X = Ŝ_t (``profile_from:
       teacher``, as in the reading), Ŝ_s, or the mean of the two magnitudes.
    2. Per frame, on complex spectra (stacked real/imag): L_low(t) = 1 − cos over the bins f < f_c(t);
       L_high(t) = β · (1 − cos) + (1 − β) · mean of (|Ŝ_s| − |Ŝ_t|)², both over the bins f ≥ f_c(t) − 1
       (``frame_shared_bin``: the bin just below the step is in both bands, as in the reading) or
       f ≥ f_c(t). Neither band is ever empty.
    3. L = mean over the batch and the frames of (``low_weight`` · L_low(t) + ``high_weight`` · L_high(t)).

    The trainer adds λ·L to the student's task loss. Zero when student_out == teacher_out.
    Parameter-free (the STFT window is a buffer). :meth:`stats` reports where the splits fell.

    Knobs: ``crossover`` (utterance | frame), ``n_fft`` (512), ``hop_length`` (128), ``profile_from``
    (teacher | student | mean), ``low_weight`` (1.0; 0 is the high-band-only ablation), ``high_weight``
    (1.0); utterance rule only: ``profile_scale`` (db | log | linear), ``smooth_bins`` (5), ``slope``
    (abs | drop), ``guard`` ([0.1, 0.9] fractions of the F bins), ``low_domain`` (magnitude | complex),
    ``cosine_over`` (utterance | frame), ``magnitude_ratio_weight`` w_r (0.1; 0 disables),
    ``high_weight_mode`` (fixed | adaptive), ``adaptive_reference_share`` ρ (0.1), ``adaptive_clip``
    ([0.5, 10]); frame rule only: ``beta`` β (0.5), ``frame_shared_bin`` (true). A non-default value of a
    knob the chosen rule does not read is a ConfigError.
    """

    Config = DFKDConfig
    source = ("arXiv 2502.04711 §2.3 (reconstruction [R], see methods.md); crossover=frame: "
              "rlaehghks5/DISPATCH dispatch_DFKD.py (secondary, methods.md §9.2)")
    needs_teacher = True

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.stft = STFT(c.n_fft, c.hop_length)
        self.sample_rate = int(getattr(student, "sample_rate", 16000))
        n_freqs = self.stft.n_freqs
        #: the bins f_c may take under the chosen rule (inclusive): its edges are the "at guard" splits
        self.search_range = guard_bins(n_freqs, c.guard) if c.crossover == "utterance" else (1, n_freqs - 1)
        # counts of f_c per bin since the last stats() call; a plain attribute (not a buffer), so it stays out
        # of checkpoints, lives on the device of the spectra and is never synced to the host per step
        self._counts: torch.Tensor | None = None

    @torch.no_grad()
    def crossover(self, mag_s: torch.Tensor, mag_t: torch.Tensor) -> torch.Tensor:
        """Crossover bins from magnitude spectrograms ``(B, F, T)``: ``(B,)`` under the utterance rule
        (:func:`crossover_bin` of the profile), ``(B, T)`` under the frame rule (:func:`frame_crossover_bin`)."""
        c = self.cfg
        sources = {"teacher": [mag_t], "student": [mag_s], "mean": [mag_s, mag_t]}[c.profile_from]
        if c.crossover == "frame":
            return frame_crossover_bin(torch.stack([m.detach() for m in sources]).mean(0))
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
        self._record(f_c, n_freqs)
        if c.crossover == "frame":
            return self._frame_loss(spec_s, spec_t, mag_s, mag_t, f_c).mean()
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
        dims = (1, 2, 3) if c.cosine_over == "utterance" else (1, 2)
        cos_loss, saa, sbb = _cosine_distance(a, b, low[:, None, :, None], dims)
        if c.cosine_over == "frame":
            cos_loss = cos_loss.mean(-1)
        if c.magnitude_ratio_weight:
            if c.cosine_over == "frame":
                saa, sbb = saa.sum(-1), sbb.sum(-1)
            ratio = 0.5 * (torch.log(saa + _EPS**2) - torch.log(sbb + _EPS**2))
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

    def _frame_loss(self, spec_s, spec_t, mag_s, mag_t, f_c: torch.Tensor) -> torch.Tensor:
        """Per-utterance loss of the frame rule ``(B,)``: the mean over frames of
        ``low_weight`` · L_low(t) + ``high_weight`` · L_high(t), with f_c ``(B, T)``."""
        c = self.cfg
        idx = torch.arange(mag_s.shape[-2], device=f_c.device)[None, :, None]  # (1, F, 1)
        low = (idx < f_c[:, None, :]).to(mag_s.dtype)  # (B, F, T)
        high = (idx >= (f_c - 1 if c.frame_shared_bin else f_c)[:, None, :]).to(mag_s.dtype)
        a = torch.stack([spec_s.real, spec_s.imag], dim=1)  # (B, 2, F, T)
        b = torch.stack([spec_t.real, spec_t.imag], dim=1)
        loss = mag_s.new_zeros(f_c.shape)  # (B, T)
        if c.low_weight:
            loss = loss + c.low_weight * _cosine_distance(a, b, low[:, None], (1, 2))[0]
        if c.high_weight:
            cos_high = _cosine_distance(a, b, high[:, None], (1, 2))[0]
            mse = (high * (mag_s - mag_t).square()).sum(1) / high.sum(1)  # ≥ 1 bin per frame
            loss = loss + c.high_weight * (c.beta * cos_high + (1.0 - c.beta) * mse)
        return loss.mean(-1)

    # -- crossover statistics -----------------------------------------------------------------
    @torch.no_grad()
    def _record(self, f_c: torch.Tensor, n_freqs: int) -> None:
        """Add the crossover bins ``f_c`` (any shape, values in ``[0, F)``) to the counts (no host sync)."""
        flat = f_c.detach().reshape(-1).long()
        if self._counts is None or self._counts.numel() != n_freqs:
            self._counts = torch.zeros(n_freqs, dtype=torch.long, device=flat.device)
        elif self._counts.device != flat.device:
            self._counts = self._counts.to(flat.device)
        self._counts.index_add_(0, flat, torch.ones_like(flat))

    def stats(self) -> dict[str, float]:
        """Where the crossovers fell since the last call (then reset); ``{}`` when none was computed.

        Counted per utterance (utterance rule) or per frame (frame rule), over every loss evaluation:

        * ``crossover_median_hz``, ``crossover_p10_hz``, ``crossover_p90_hz``: percentiles of f_c · sr / n_fft
          (Hz; f_c the first bin of the high band, sr the student's ``sample_rate``), each the smallest
          f_c with at least that share of the counts at or below it (numpy's ``inverted_cdf``);
        * ``crossover_at_guard``: share at either edge of :attr:`search_range` (the guard bins for the
          utterance rule; bins 1 and F − 1 for the frame rule);
        * ``crossover_degenerate``: share at f_c = 1 (the low band is the DC bin alone) or f_c = F − 1.

        A share near 1 at the guard or degenerate says the rule, not the signal, picked the split.
        """
        counts, self._counts = self._counts, None
        if counts is None:
            return {}
        counts = counts.cpu()
        total = int(counts.sum())
        if total == 0:
            return {}
        cum = counts.cumsum(0)
        hz = self.sample_rate / self.cfg.n_fft

        def percentile(q: int) -> float:  # smallest bin k with 100·cum[k] ≥ q·total, in integers
            return float(int(torch.searchsorted(cum * 100, torch.tensor(q * total))) * hz)

        n_freqs = counts.numel()
        lo, hi = self.search_range
        edges = sorted({lo, hi})
        return {
            "crossover_median_hz": percentile(50),
            "crossover_p10_hz": percentile(10),
            "crossover_p90_hz": percentile(90),
            "crossover_at_guard": float(sum(int(counts[k]) for k in edges)) / total,
            "crossover_degenerate": float(int(counts[1]) + int(counts[n_freqs - 1])) / total,
        }
