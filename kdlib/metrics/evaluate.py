"""Score many (reference, estimate) pairs with the metrics of :data:`kdlib.metrics.specs.METRICS` (PESQ,
STOI, ESTOI, SI-SDR), optionally in worker processes.

A metric that cannot score an utterance (see :mod:`kdlib.metrics.scores`) never raises: the utterance is
counted in :attr:`MetricSummary.missing`, left out of the mean, and one summary :class:`MetricWarning`
is emitted per call. Bad input (unequal lengths, NaN, bad sample rate, unknown metric or PESQ mode) raises
:class:`kdlib.errors.DataError` before any scoring starts.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlib.errors import ConfigError, DataError, KdlibError
from kdlib.metrics import specs
from kdlib.metrics.scores import MetricWarning, _check_pair, _check_sample_rate, check_pesq_mode

try:  # imported here, not in a forked worker (see _blas_threads)
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

__all__ = ["MetricSummary", "evaluate_generated", "evaluate_pairs", "score_utterance", "write_score_rows"]

# Start method of the worker processes (measured on the 2-core CPU machine, busy with other jobs at the
# time, pool of 2 workers, median of 5 pool start-ups; the parent had numpy/scipy/pesq/pystoi imported):
#   spawn       1.05 s  (main script without torch)   5.2 s  (main script imports torch)
#   forkserver  1.32 s                                 5.3 s
#   fork        0.015 s                                0.056 s
# spawn and forkserver start a fresh interpreter per worker that re-imports numpy/scipy/pesq/pystoi and
# re-executes the caller's main module (so a training script's "import torch" is paid again in every
# worker). Scoring a 3 s utterance with all four metrics takes about 65-130 ms, so spawn would cost as much
# as 15-75 utterances per call: a per-epoch validation of a few dozen utterances would get slower, not
# faster. So on Linux we fork. evaluate_pairs' worker function (_score_job) is torch-free: it runs only
# numpy, scipy, the single-threaded PESQ C code and pystoi, all imported in the parent before the fork, so
# the child never touches an import lock held by another thread. evaluate_generated's workers also run the
# caller's produce function (kdlib.evaluation: model inference), after the caller's worker_init has put
# torch on one thread, the pattern of torch's own forked DataLoader workers: a single-threaded child never
# enters the OpenMP pool whose threads stayed behind in the parent. (The team's stack notes
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
            ``KDLIB_METRICS_START_METHOD`` above). Each scorer (this process, or each worker) runs numpy's
            BLAS on one thread (this process's count is restored afterwards), so N scorers keep N cores
            busy, and the results are identical either way and always in input order (ESTOI up to pystoi's
            own ~1e-15 call-to-call jitter, see ``stoi_score``).

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

    results = _run_jobs(_score_job, jobs, int(num_workers), chunksize=None)
    return _summarise(results, scorers, stacklevel=3)


# The per-utterance function of evaluate_generated inside one worker process, set by _init_generated
# (passed as the pool initializer's argument: inherited as is by a forked worker, pickled for a spawned one).
_PRODUCE: Callable[[int], tuple[Any, Any]] | None = None


def _init_generated(produce: Callable[[int], tuple[Any, Any]], worker_init: Callable[[], None] | None) -> None:
    global _PRODUCE
    if worker_init is not None:
        worker_init()
    _PRODUCE = produce


def _produce_and_score(
    produce: Callable[[int], tuple[Any, Any]], i: int, rate: int, pesq_mode: str, scorers: Scorers
) -> tuple[Scores, Reasons]:
    reference, estimate = produce(i)
    try:
        ref, est = _check_pair(reference, estimate, "estimate")
    except DataError as exc:
        raise DataError(f"utterance {i}: {exc}") from None
    return _score_checked(ref, est, rate, pesq_mode, scorers)


def _generated_job(job: tuple[int, int, str, Scorers]) -> tuple[Scores, Reasons]:
    assert _PRODUCE is not None, "_init_generated did not run in this worker"
    return _produce_and_score(_PRODUCE, *job)


def evaluate_generated(
    count: int,
    produce: Callable[[int], tuple[Any, Any]],
    sample_rate: int,
    pesq_mode: str,
    metrics: Sequence[str] | None = None,
    num_workers: int = 1,
    worker_init: Callable[[], None] | None = None,
) -> MetricSummary:
    """Make and score ``count`` pairs, ``produce(i) -> (reference, estimate)``, each worker doing both for
    its share: what :func:`kdlib.evaluation.evaluate_model` uses so that inference runs in parallel too.

    ``num_workers <= 1`` runs everything in this process (set it up yourself, e.g. its thread count);
    ``> 1`` starts that many worker processes (capped at ``count``; forked on Linux, spawned elsewhere, see
    ``KDLIB_METRICS_START_METHOD``), each calling ``worker_init()`` once and then taking utterance indices one
    at a time (so a long utterance does not hold back a fixed share). ``produce`` and ``worker_init`` must be
    picklable for a spawned worker (module-level functions, or objects of module-level classes); a forked
    worker inherits them. Every scorer runs numpy's BLAS on one thread, as in :func:`evaluate_pairs`. The
    results are in index order and, for a ``produce`` that gives the same output in every process, the
    same whatever ``num_workers`` is (ESTOI up to pystoi's ~1e-15 call-to-call jitter, see ``stoi_score``).

    Args:
        count: number of utterances (indices ``0 ... count-1``).
        produce: ``i ->`` (clean reference ``(L,)``, estimate ``(L,)``), at ``sample_rate`` Hz.
        sample_rate: rate of all signals in Hz.
        pesq_mode: ``"wb"`` or ``"nb"``; only checked if a metric that uses it is requested.
        metrics: names from :data:`kdlib.metrics.specs.METRICS`; ``None`` = all of them, in table order.
        num_workers: worker processes (see above).
        worker_init: run once in each worker process before its first utterance (``num_workers > 1`` only).

    Returns:
        A :class:`MetricSummary`, as :func:`evaluate_pairs` gives.

    Raises:
        DataError: unknown metric name, bad sample rate or PESQ mode, ``count < 1``, or a produced pair that
            is bad (the message names the utterance index); whatever ``produce`` raises is re-raised here.
        ConfigError: ``KDLIB_METRICS_START_METHOD`` names a start method this platform lacks.
        KdlibError: a worker process died (``num_workers > 1`` only).
    """
    rate, scorers = _check_common(sample_rate, pesq_mode, metrics)
    if count < 1:
        raise DataError("no utterances to evaluate")
    workers = min(int(num_workers), count)
    if workers <= 1:
        with _blas_threads(1):
            results = [_produce_and_score(produce, i, rate, pesq_mode, scorers) for i in range(count)]
    else:
        jobs = [(i, rate, pesq_mode, scorers) for i in range(count)]
        results = _run_jobs(_generated_job, jobs, workers, chunksize=1,
                            initializer=_init_generated, initargs=(produce, worker_init))
    return _summarise(results, scorers, stacklevel=3)


def _blas_threads(n: int) -> contextlib.AbstractContextManager[Any]:
    """numpy/scipy's BLAS (OpenBLAS) on ``n`` threads from now on (restored when used as a context manager).

    pystoi's matrix products would otherwise use every core (measured: STOI/ESTOI took 1.8-2.0 CPU-seconds
    per wall second on 2 cores, and two scoring processes with 2 OpenBLAS threads each fought over the two
    cores: 2 workers were slower than 1). threadpoolctl is a dependency (pyproject.toml); without it
    BLAS keeps its own thread count, which changes speed, not scores.
    """
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    """Pool initializer: a single-threaded BLAS, then the caller's own initializer."""
    _blas_threads(1)  # kept for the worker's life: the limit stays until restored
    if initializer is not None:
        initializer(*initargs)


def _run_jobs(fn: Callable[[Any], tuple[Scores, Reasons]], jobs: list[Any], workers: int, chunksize: int | None,
              initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
              ) -> list[tuple[Scores, Reasons]]:
    """``[fn(job) for job in jobs]``, in this process (``workers <= 1``) or in a pool of ``workers``
    processes (capped at the job count), results in job order; ``chunksize=None``: about 4 chunks per worker.

    Raises:
        ConfigError: ``KDLIB_METRICS_START_METHOD`` names a start method this platform lacks.
        KdlibError: a worker process died.
    """
    workers = min(workers, len(jobs))
    if workers <= 1:
        with _blas_threads(1):
            return [fn(job) for job in jobs]
    chunksize = chunksize or max(1, math.ceil(len(jobs) / (4 * workers)))
    context = multiprocessing.get_context(_start_method())
    import pesq  # noqa: F401  (imported before the fork so that the workers import nothing)
    import pystoi  # noqa: F401

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                 initargs=(initializer, initargs)) as pool:
            return list(pool.map(fn, jobs, chunksize=chunksize))
    except BrokenProcessPool as exc:
        raise KdlibError(
            "a scoring worker process died (the PESQ C code can crash on odd input, or it ran out of "
            "memory); rerun with num_workers=1 to find the utterance"
        ) from exc


def _summarise(results: list[tuple[Scores, Reasons]], scorers: Scorers, stacklevel: int) -> MetricSummary:
    """Means over the scored utterances, missing counts and one summary warning (``stacklevel`` 3: the
    caller of the public function)."""
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
                f"{specs.metric(name).label} could not score {missing[name]} of {len(results)} utterances "
                f"(first: utterance {first}, {results[first][1][name]})"
            )
    if notes:
        warnings.warn("; ".join(notes), MetricWarning, stacklevel=stacklevel)
    return MetricSummary(means=means, missing=missing, per_utterance=per_utterance, count=len(results))
