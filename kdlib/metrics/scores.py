"""Per-utterance speech-enhancement metrics: PESQ, STOI, ESTOI and SI-SDR.

Sources:

* PESQ: ITU-T P.862 (narrowband, ``"nb"``, 8 kHz) and P.862.2 (wideband, ``"wb"``, 16 kHz), computed by
  the ``pesq`` package (ludlows/python-pesq, a wrapper of the ITU reference C code). Output is MOS-LQO.
* STOI: C. H. Taal, R. C. Hendriks, R. Heusdens, J. Jensen, "An Algorithm for Intelligibility Prediction
  of Time-Frequency Weighted Noisy Speech", IEEE TASLP 2011, computed by ``pystoi``.
* ESTOI: J. Jensen, C. H. Taal, "An Algorithm for Predicting the Intelligibility of Speech Masked by
  Modulated Noise Maskers", IEEE TASLP 2016, computed by ``pystoi`` (``extended=True``).
* SI-SDR: J. Le Roux, S. Wisdom, H. Erdogan, J. R. Hershey, "SDR - half-baked or well done?",
  ICASSP 2019, arXiv:1811.02508 (zero-mean signals, projection ``alpha = <s_hat, s> / ||s||^2``).

Conventions: every signal is a 1-D array of shape ``(L,)`` in samples; sample rates are in Hz; SI-SDR is
in dB. Bad input (wrong shape, unequal lengths, NaN/inf, impossible sample rate, unknown PESQ mode) raises
:class:`kdlib.errors.DataError`. An utterance that a metric *cannot score* (silence, too short, too little
active speech, an error inside the metric library) is not bad input: ``pesq_score``/``stoi_score`` return
``None`` and ``si_sdr`` returns NaN, each with a :class:`MetricWarning` naming the reason.

This module imports neither torch nor Ray/MLflow at import time, so worker processes stay light.
Which of these a set is scored with, and how each is named and shown, is the table in
:mod:`kdlib.metrics.specs`.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.signal import resample_poly

from kdlib.errors import DataError

if TYPE_CHECKING:  # torch is only needed by si_sdr_torch, whose callers already have it imported
    import torch

__all__ = [
    "PESQ_MODES",
    "MetricWarning",
    "check_pesq_mode",
    "pesq_score",
    "si_sdr",
    "si_sdr_torch",
    "stoi_score",
]

PESQ_MODES: tuple[str, ...] = ("wb", "nb")

_PESQ_RATE = {"wb": 16000, "nb": 8000}
# SI-SDR is bounded to +-_SI_SDR_LIMIT_DB so that a perfect (or orthogonal) estimate gives a finite value.
_SI_SDR_LIMIT_DB = 200.0
_PYSTOI_SHORT_MESSAGE = "Not enough STFT frames"


class MetricWarning(UserWarning):
    """A metric could not score an utterance (the score is reported as missing, never raised)."""


# --------------------------------------------------------------------------------------------- checks


def _as_signal(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite 1-D float array ``(L,)``; float32/float64 are kept as they are.

    Keeping the caller's float dtype makes our PESQ/STOI equal to calling ``pesq``/``pystoi`` directly on
    the same arrays. Integer PCM is converted to float64 (both libraries are scale-invariant).
    """
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D signal of shape (L,), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or inf values")
    return arr


def _check_pair(reference: Any, other: Any, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    ref = _as_signal(reference, "reference")
    oth = _as_signal(other, other_name)
    if ref.shape != oth.shape:
        raise DataError(
            f"reference and {other_name} differ in length: {ref.shape[0]} vs {oth.shape[0]} samples"
        )
    return ref, oth


def _check_sample_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise DataError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    return int(sample_rate)


def check_pesq_mode(mode: Any, sample_rate: int) -> None:
    """Raise :class:`DataError` unless PESQ ``mode`` can score audio at ``sample_rate`` Hz.

    ``"wb"`` needs at least 16 kHz of sampling (content up to 8 kHz): upsampling 8 kHz audio to 16 kHz
    would not create wideband content, so any rate below 16000 Hz is refused. ``"nb"`` needs at least
    8000 Hz.
    """
    if mode not in _PESQ_RATE:
        raise DataError(f"unknown PESQ mode {mode!r}; use one of {', '.join(PESQ_MODES)}")
    need = _PESQ_RATE[mode]
    if sample_rate < need:
        raise DataError(
            f"PESQ mode {mode!r} needs a sample rate of at least {need} Hz, got {sample_rate} Hz"
            + ("; use mode 'nb' for narrowband audio" if mode == "wb" else "")
        )


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x
    g = math.gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g)


def _warn(metric: str, reason: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{metric} could not score the utterance: {reason}", MetricWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------- scorers that report the reason
# Each scorer takes already-checked arrays and returns ``(value, None)`` or ``(None, reason)``. They never
# warn, so evaluate.py can run them in worker processes and summarise the reasons itself. The ``*_scorer``
# functions have the uniform signature of ``kdlib.metrics.specs.ScoreFn`` that the metric table refers to.


def pesq_scorer(
    reference: np.ndarray, degraded: np.ndarray, sample_rate: int, mode: str
) -> tuple[float | None, str | None]:
    """PESQ of checked arrays at ``sample_rate`` Hz in PESQ ``mode``: ``(MOS-LQO, None)`` or ``(None, reason)``."""
    import pesq as pesq_lib  # imported here: the C extension is only needed when PESQ is asked for

    if not np.any(reference):
        return None, "reference signal is silent (all zeros)"
    if not np.any(degraded):
        return None, "degraded signal is silent (all zeros)"
    rate = _PESQ_RATE[mode]
    ref = _resample(reference, sample_rate, rate)
    deg = _resample(degraded, sample_rate, rate)
    try:
        value = pesq_lib.pesq(rate, ref, deg, mode)
    except pesq_lib.PesqError as exc:  # NoUtterancesError, BufferTooShortError, ...
        msg = exc.args[0] if exc.args else ""
        msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        return None, f"{type(exc).__name__}: {msg}"
    except (ValueError, RuntimeError) as exc:  # e.g. "cannot convert float NaN to integer"
        return None, f"{type(exc).__name__}: {exc}"
    value = float(value)
    if not math.isfinite(value) or value < -0.5:  # an error code (-1 ... -7) or NaN slipped through
        return None, f"pesq returned {value}"
    return value, None


def _stoi_or_reason(
    reference: np.ndarray, degraded: np.ndarray, sample_rate: int, extended: bool
) -> tuple[float | None, str | None]:
    from pystoi import stoi as pystoi_stoi

    if not np.any(reference):
        return None, "reference signal is silent (all zeros)"
    if not np.any(degraded):
        return None, "degraded signal is silent (all zeros); the correlation is undefined"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(pystoi_stoi(reference, degraded, sample_rate, extended=extended))
        except Exception as exc:  # pystoi raises bare Exception/AssertionError/AxisError
            return None, f"{type(exc).__name__}: {exc}"
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and _PYSTOI_SHORT_MESSAGE in str(w.message):
            return (
                None,
                "less than about 0.4 s of active speech (pystoi: not enough STFT frames, returns 1e-05)",
            )
    if not math.isfinite(value):
        return None, f"pystoi returned {value}"
    for w in caught:  # unrelated warnings are passed on unchanged
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value, None


def _si_sdr_or_reason(estimate: np.ndarray, reference: np.ndarray) -> tuple[float | None, str | None]:
    est = estimate.astype(np.float64) - np.mean(estimate, dtype=np.float64)
    ref = reference.astype(np.float64) - np.mean(reference, dtype=np.float64)
    ref_energy = float(np.dot(ref, ref))
    est_energy = float(np.dot(est, est))
    if ref_energy == 0.0:
        return None, "reference signal is silent (constant), the projection is undefined"
    if est_energy == 0.0:
        return None, "estimate is silent (constant), SI-SDR is undefined"
    alpha = float(np.dot(est, ref)) / ref_energy
    target = alpha * ref
    noise = est - target
    floor = est_energy * 10.0 ** (-_SI_SDR_LIMIT_DB / 10.0)  # scale-invariant bound of +-200 dB
    target_energy = max(float(np.dot(target, target)), floor)
    noise_energy = max(float(np.dot(noise, noise)), floor)
    return 10.0 * math.log10(target_energy / noise_energy), None


def stoi_scorer(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str
) -> tuple[float | None, str | None]:
    """STOI (0 ... 1) of checked arrays; ``pesq_mode`` is unused (uniform scorer signature)."""
    return _stoi_or_reason(reference, estimate, sample_rate, extended=False)


def estoi_scorer(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str
) -> tuple[float | None, str | None]:
    """ESTOI (about 0 ... 1) of checked arrays; ``pesq_mode`` is unused (uniform scorer signature)."""
    return _stoi_or_reason(reference, estimate, sample_rate, extended=True)


def si_sdr_scorer(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str
) -> tuple[float | None, str | None]:
    """SI-SDR in dB of checked arrays; ``sample_rate`` and ``pesq_mode`` are unused (uniform scorer signature)."""
    return _si_sdr_or_reason(estimate, reference)


# ------------------------------------------------------------------------------------- public API


def pesq_score(reference: Any, degraded: Any, sample_rate: int, mode: str) -> float | None:
    """PESQ (MOS-LQO, about -0.5 ... 4.64) of ``degraded`` against ``reference``.

    ITU-T P.862 (``mode="nb"``) / P.862.2 (``mode="wb"``) via the ``pesq`` package.

    Args:
        reference: clean signal, shape ``(L,)``.
        degraded: enhanced or noisy signal, shape ``(L,)`` (same length as ``reference``).
        sample_rate: rate of both signals in Hz.
        mode: ``"wb"`` scores at 16 kHz (audio at a higher rate is resampled with
            ``scipy.signal.resample_poly``; audio below 16 kHz is refused). ``"nb"`` always scores at
            8 kHz, resampling from ``sample_rate`` with ``resample_poly`` (16 kHz: ``resample_poly(x, 1, 2)``;
            audio below 8 kHz is refused).

    Returns:
        The score, or ``None`` with a :class:`MetricWarning` when PESQ cannot score the utterance: silent
        reference or degraded signal, fewer than 0.25 s (``BufferTooShortError``), no utterance detected
        (``NoUtterancesError``), or any other error inside the ``pesq`` library. Never raises for these.

    Raises:
        DataError: unknown ``mode``; ``sample_rate`` not a positive int or too low for ``mode``; a signal
            not 1-D, not real or with NaN/inf; ``reference`` and ``degraded`` of different lengths (the
            ``pesq`` package silently accepts that, we do not).
    """
    sample_rate = _check_sample_rate(sample_rate)
    check_pesq_mode(mode, sample_rate)
    ref, deg = _check_pair(reference, degraded, "degraded")
    value, reason = pesq_scorer(ref, deg, sample_rate, mode)
    if reason is not None:
        _warn("PESQ", reason)
    return value


def stoi_score(reference: Any, degraded: Any, sample_rate: int, extended: bool = False) -> float | None:
    """STOI (Taal et al. 2011) or, with ``extended=True``, ESTOI (Jensen & Taal 2016), via ``pystoi``.

    Args:
        reference: clean signal, shape ``(L,)``.
        degraded: enhanced or noisy signal, shape ``(L,)`` (same length as ``reference``).
        sample_rate: rate of both signals in Hz (pystoi resamples to 10 kHz internally).
        extended: compute ESTOI instead of STOI.

    Returns:
        Exactly ``pystoi.stoi(reference, degraded, sample_rate, extended=extended)`` (about 0 ... 1), or
        ``None`` with a :class:`MetricWarning` when it cannot be scored: a silent (all-zero) reference or
        degraded signal (pystoi would return a meaningless 0.0), less than about 0.4 s of active speech
        (pystoi needs 30 STFT frames after dropping silent frames; otherwise it returns ``1e-05`` with only a
        RuntimeWarning), or any exception inside pystoi. Note: pystoi's ESTOI itself is not bit-reproducible
        (it varies by a few ulps, about 1e-15, between identical calls, as numpy's SIMD sums depend on memory
        alignment); STOI is.

    Raises:
        DataError: a signal not 1-D, not real or with NaN/inf; signals of different lengths;
            ``sample_rate`` not a positive int.
    """
    sample_rate = _check_sample_rate(sample_rate)
    ref, deg = _check_pair(reference, degraded, "degraded")
    value, reason = _stoi_or_reason(ref, deg, sample_rate, bool(extended))
    if reason is not None:
        _warn("ESTOI" if extended else "STOI", reason)
    return value


def si_sdr(estimate: Any, reference: Any) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019, arXiv:1811.02508), computed in float64.

    Both signals are made zero-mean; with ``alpha = <s_hat, s> / ||s||^2`` the value is
    ``10 log10(||alpha s||^2 / ||alpha s - s_hat||^2)``. It is invariant to the scale of ``estimate``.
    The result is bounded to +-200 dB (a perfect estimate gives about +200 dB instead of inf).

    Args:
        estimate: estimated signal ``s_hat``, shape ``(L,)``.
        reference: clean signal ``s``, shape ``(L,)``.

    Returns:
        SI-SDR in dB, or NaN with a :class:`MetricWarning` if either signal is constant (silent), where
        SI-SDR is undefined.

    Raises:
        DataError: a signal not 1-D, not real or with NaN/inf; signals of different lengths.
    """
    ref, est = _check_pair(reference, estimate, "estimate")
    value, reason = _si_sdr_or_reason(est, ref)
    if value is None:
        _warn("SI-SDR", str(reason))
        return math.nan
    return value


def si_sdr_torch(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable batched SI-SDR in dB (arXiv:1811.02508), for use as a loss (negate it) or metric.

    ``alpha = <s_hat, s> / (||s||^2 + eps)``, ``value = 10 log10((||alpha s||^2 + eps) /
    (||alpha s - s_hat||^2 + eps))`` on zero-mean signals. ``eps`` keeps silent signals and perfect
    estimates finite (and their gradients defined); for ordinary float64 audio the value matches
    :func:`si_sdr` to well below 1e-4 dB.

    Args:
        estimate: ``(B, L)`` tensor (floating point; gradients flow through it).
        reference: ``(B, L)`` tensor, same shape, dtype and device as ``estimate``.
        eps: stabiliser added to energies (same unit as the squared signal).

    Returns:
        ``(B,)`` tensor of SI-SDR values in dB.

    Raises:
        DataError: the inputs are not 2-D tensors of the same shape.
    """
    if estimate.ndim != 2 or reference.ndim != 2 or estimate.shape != reference.shape:
        raise DataError(
            "si_sdr_torch needs estimate and reference of the same shape (B, L), got "
            f"{tuple(estimate.shape)} and {tuple(reference.shape)}"
        )
    est = estimate - estimate.mean(dim=-1, keepdim=True)
    ref = reference - reference.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(dim=-1, keepdim=True) / (ref.pow(2).sum(dim=-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    ratio = (target.pow(2).sum(dim=-1) + eps) / (noise.pow(2).sum(dim=-1) + eps)
    return 10.0 * ratio.log10()
