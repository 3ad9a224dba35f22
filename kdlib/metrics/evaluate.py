"""Score many (reference, estimate) pairs with the metrics of :data:`kdlib.metrics.specs.METRICS` (PESQ,
STOI, ESTOI, SI-SDR), optionally in worker processes.

A metric that cannot score an utterance (see :mod:`kdlib.metrics.scores`) never raises: the utterance is
counted in :attr:`MetricSummary.missing`, left out of the mean, and one summary :class:`MetricWarning`
is emitted per call. Bad input (unequal lengths, NaN, bad sample rate, unknown metric or PESQ mode) raises
:class:`kdlib.errors.DataError` before any scoring starts.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlib.errors import ConfigError, DataError, KdlibError
from kdlib.metrics import specs
from kdlib.metrics.scores import MetricWarning, _check_pair, _check_sample_rate, check_pesq_mode

__all__ = ["MetricSummary", "evaluate_pairs", "score_utterance", "write_score_rows"]

# Start method of the worker processes (measured on the 2-core CPU machine, busy with other jobs at the
# time, pool of 2 workers, median of 5 pool start-ups; the parent had numpy/scipy/pesq/pystoi imported):
#   spawn       1.05 s  (main script without torch)   5.2 s  (main script imports torch)
#   forkserver  1.32 s                                 5.3 s
#   fork        0.015 s                                0.056 s
# spawn and forkserver start a fresh interpreter per worker that re-imports numpy/scipy/pesq/pystoi and
# re-executes the caller's main module (so a training script's "import torch" is paid again in every
# worker). Scoring a 3 s utterance with all four metrics takes about 65-130 ms, so spawn would cost as much
# as 15-75 utterances per call: a per-epoch validation of a few dozen utterances would get slower, not
# faster. So on Linux we fork. The worker function (_score_job) is torch-free: it runs only numpy, scipy,
# the single-threaded PESQ C code and pystoi, all imported in the parent before the fork, so the child
# never touches torch's OpenMP pool or an import lock held by another thread. (The team's stack notes
# report that pesq_batch, which forks the same way, works inside Ray tasks.) Python >= 3.12 emits a
# DeprecationWarning when a multi-threaded process forks; that is expected here. Elsewhere (macOS, Windows:
# fork is unsafe or missing) we spawn. KDLIB_METRICS_START_METHOD=spawn|forkserver|fork overrides this.
_START_METHOD_ENV = "KDLIB_METRICS_START_METHOD"


def _start_method() -> str:
    method = os.environ.get(_START_METHOD_ENV, "").strip()
    if not method:
        return "fork" if sys.platform.startswith("linux") else "spawn"
    if method not in multiprocessing.get_all_start_methods():
        raise ConfigError(
            f"{_START_METHOD_ENV}={method!r} is not a start method here; "
            f"use one of {', '.join(multiprocessing.get_all_start_methods())}"
        )
    return method


Scores = dict[str, float | None]
Reasons = dict[str, str]


@dataclass
class MetricSummary:
    """Scores of a set of utterances.

    Attributes:
        means: metric name -> mean over the utterances that metric could score (NaN if it scored none), in
            the metric's unit (:data:`kdlib.metrics.specs.METRICS`: PESQ is MOS-LQO, STOI/ESTOI are in 0 ... 1,
            SI-SDR is in dB).
        missing: metric name -> number of utterances the metric could not score.
        per_utterance: one ``{metric name: value or None}`` dict per utterance, in input order.
        count: number of utterances evaluated.
    """

    means: dict[str, float]
    missing: dict[str, int]
    per_utterance: list[dict[str, float | None]] = field(default_factory=list)
    count: int = 0

    def rows(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per utterance for a per-utterance table (CSV): ``utterance`` (``ids[i]``, else the
        index), each metric's score (``None`` when it could not score) and ``<metric>_missing`` (0/1).

        Raises:
            ValueError: ``ids`` is not one id per utterance.
        """
        if ids is not None and len(ids) != len(self.per_utterance):
            raise ValueError(f"{len(ids)} utterance ids for {len(self.per_utterance)} utterances")
        out = []
        for i, scores in enumerate(self.per_utterance):
            row: dict[str, Any] = {"utterance": ids[i] if ids is not None else str(i)}
            for name in self.means:
                value = scores.get(name)
                row[name] = value
                row[f"{name}{specs.MISSING_SUFFIX}"] = int(value is None)
            out.append(row)
        return out

    def as_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix+name: mean, prefix+name+"_missing": missing count}`` for every metric (for logging).

        With the sweep's prefixes these are the MLflow keys ``test_<name>``, ``test_<name>_missing``,
        ``noisy_<name>``; with no prefix, the keys of ``kdlib eval``'s JSON output.
        """
        flat: dict[str, float] = {}
        for name, mean in self.means.items():
            flat[f"{prefix}{name}"] = mean
            flat[f"{prefix}{name}{specs.MISSING_SUFFIX}"] = self.missing[name]
        return flat


def write_score_rows(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write per-utterance rows (:meth:`MetricSummary.rows`) as CSV, ``None`` as an empty cell; returns the path."""
    import csv

    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["utterance"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _check_metrics(metrics: Sequence[str] | None) -> tuple[specs.MetricSpec, ...]:
    """The specs of the requested names, duplicates dropped (``None``: the whole table), in request order.

    Raises:
        DataError: an unknown name (the message lists the valid ones) or an empty request.
    """
    table = {m.name: m for m in specs.METRICS}  # read now, not at import: a replaced table is followed
    names = tuple(table) if metrics is None else (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(table)}")
    if not names:
        raise DataError(f"no metric requested; valid: {', '.join(table)}")
    return tuple(table[n] for n in dict.fromkeys(names))  # drop duplicates, keep order


# (name, score function) per requested metric: the functions travel with each job (pickled by reference), so
# a worker scores with exactly what the caller checked, whatever start method made it
Scorers = tuple[tuple[str, specs.ScoreFn], ...]


def _score_checked(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str, scorers: Scorers
) -> tuple[Scores, Reasons]:
    """Score one already-validated pair; returns the scores and, for missing ones, the reason.

    Runs in worker processes: module-level, picklable, no warnings (they would be lost in a worker).
    """
    scores: Scores = {}
    reasons: Reasons = {}
    for name, score in scorers:
        value, reason = score(reference, estimate, sample_rate, pesq_mode)
        scores[name] = value
        if reason is not None:
            reasons[name] = reason
    return scores, reasons


def _score_job(job: tuple[np.ndarray, np.ndarray, int, str, Scorers]) -> tuple[Scores, Reasons]:
    return _score_checked(*job)


def _check_common(sample_rate: Any, pesq_mode: Any, metrics: Sequence[str] | None) -> tuple[int, Scorers]:
    """Checked sample rate (Hz) and the scorers of the requested metrics.

    Raises:
        DataError: unknown metric, bad sample rate, or a PESQ mode that a requested metric cannot use.
        ConfigError: a requested table entry has no score function (a cost spec put into ``METRICS``).
    """
    requested = _check_metrics(metrics)
    rate = _check_sample_rate(sample_rate)
    if any(m.uses_pesq_mode for m in requested):  # a mode nothing reads is not refused
        check_pesq_mode(pesq_mode, rate)
    scorers = []
    for m in requested:
        if m.score is None:
            raise ConfigError(f"metric {m.name!r} in kdlib.metrics.specs.METRICS has no score function")
        scorers.append((m.name, m.score))
    return rate, tuple(scorers)


def score_utterance(
    reference: Any,
    estimate: Any,
    sample_rate: int,
    pesq_mode: str,
    metrics: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """Score one utterance with each requested metric.

    Args:
        reference: clean signal, shape ``(L,)``.
        estimate: enhanced signal, shape ``(L,)``.
        sample_rate: rate of both signals in Hz.
        pesq_mode: ``"wb"`` or ``"nb"`` (see :func:`kdlib.metrics.pesq_score`); only checked if a metric that
            uses it (``"pesq"``) is requested.
        metrics: names from :data:`kdlib.metrics.specs.METRICS`; ``None`` = all of them, in table order.

    Returns:
        ``{name: value}`` in the order of ``metrics``; a value is ``None`` (with a :class:`MetricWarning`)
        when the metric cannot score this utterance.

    Raises:
        DataError: unknown metric name, bad sample rate or PESQ mode, or a bad pair (see ``pesq_score``).
    """
    rate, scorers = _check_common(sample_rate, pesq_mode, metrics)
    ref, est = _check_pair(reference, estimate, "estimate")
    scores, reasons = _score_checked(ref, est, rate, pesq_mode, scorers)
    for name, reason in reasons.items():
        label = specs.metric(name).label
        warnings.warn(f"{label} could not score the utterance: {reason}", MetricWarning, stacklevel=2)
    return scores


def evaluate_pairs(
    references: Sequence[np.ndarray],
    estimates: Sequence[np.ndarray],
    sample_rate: int,
    pesq_mode: str,
    metrics: Sequence[str] | None = None,
    num_workers: int = 1,
) -> MetricSummary:
    """Score every ``(references[i], estimates[i])`` pair and average each metric over the scored ones.

    Args:
        references: clean signals, each of shape ``(L_i,)``.
        estimates: enhanced signals, ``estimates[i]`` of the same shape as ``references[i]``.
        sample_rate: rate of all signals in Hz.
        pesq_mode: ``"wb"`` (16 kHz scoring) or ``"nb"`` (8 kHz scoring); only checked if a metric that uses
            it (``"pesq"``) is requested.
        metrics: names from :data:`kdlib.metrics.specs.METRICS` (``"pesq"``, ``"stoi"``, ``"estoi"``,
            ``"si_sdr"``); ``None`` = all of them, in table order.
        num_workers: ``<= 1`` scores in this process; ``> 1`` uses a ``ProcessPoolExecutor`` with that
            many worker processes (capped at the number of pairs; forked on Linux, spawned elsewhere, see
            ``KDLIB_METRICS_START_METHOD`` above). The results are identical either way and always in
            input order (ESTOI up to pystoi's own ~1e-15 call-to-call jitter, see ``stoi_score``).

    Returns:
        A :class:`MetricSummary`. Utterances a metric cannot score are counted in ``missing`` and left
        out of that metric's mean; one :class:`MetricWarning` summarises them (e.g. "PESQ could not
        score 2 of 27 utterances (first: utterance 4, ...)").

    Raises:
        DataError: unknown metric name (the message lists the valid ones), bad sample rate or PESQ mode,
            ``references`` and ``estimates`` of different counts or no pairs at all, or a bad pair
            (not 1-D, NaN/inf, unequal lengths; the message names the utterance index).
        ConfigError: ``KDLIB_METRICS_START_METHOD`` names a start method this platform lacks.
        KdlibError: a worker process died (``num_workers > 1`` only).
    """
    rate, scorers = _check_common(sample_rate, pesq_mode, metrics)
    if len(references) != len(estimates):
        raise DataError(f"got {len(references)} references but {len(estimates)} estimates")
    if len(references) == 0:
        raise DataError("no utterances to evaluate")
    jobs = []
    for i, (reference, estimate) in enumerate(zip(references, estimates, strict=True)):
        try:
            ref, est = _check_pair(reference, estimate, "estimate")
        except DataError as exc:
            raise DataError(f"utterance {i}: {exc}") from None
        jobs.append((ref, est, rate, pesq_mode, scorers))

    workers = min(int(num_workers), len(jobs))
    if workers <= 1:
        results = [_score_job(job) for job in jobs]
    else:
        chunksize = max(1, math.ceil(len(jobs) / (4 * workers)))
        context = multiprocessing.get_context(_start_method())
        import pesq  # noqa: F401  (imported before the fork so that the workers import nothing)
        import pystoi  # noqa: F401

        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                results = list(pool.map(_score_job, jobs, chunksize=chunksize))
        except BrokenProcessPool as exc:
            raise KdlibError(
                "a metric worker process died (the PESQ C code can crash on odd input); "
                "rerun with num_workers=1 to find the utterance"
            ) from exc

    per_utterance = [scores for scores, _ in results]
    means: dict[str, float] = {}
    missing: dict[str, int] = {}
    notes = []
    for name, _ in scorers:
        values = [s[name] for s in per_utterance if s[name] is not None]
        means[name] = float(np.mean(values)) if values else math.nan
        missing[name] = len(per_utterance) - len(values)
        if missing[name]:
            first = next(i for i, (_, r) in enumerate(results) if name in r)
            notes.append(
                f"{specs.metric(name).label} could not score {missing[name]} of {len(jobs)} utterances "
                f"(first: utterance {first}, {results[first][1][name]})"
            )
    if notes:
        warnings.warn("; ".join(notes), MetricWarning, stacklevel=2)
    return MetricSummary(means=means, missing=missing, per_utterance=per_utterance, count=len(jobs))
