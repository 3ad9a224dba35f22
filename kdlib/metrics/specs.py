"""The metric table: one :class:`MetricSpec` per quality metric (:data:`METRICS`) and per cost (:data:`COSTS`).

Adding a quality metric is one :class:`MetricSpec` entry in :data:`METRICS` plus its score function. Everything
else follows from the table:

* :func:`kdlib.metrics.evaluate_pairs` / :func:`kdlib.metrics.score_utterance` score every entry by default
  (and label their :class:`~kdlib.metrics.MetricWarning` messages with ``label``);
* :meth:`kdlib.metrics.MetricSummary.as_flat_dict` gives ``<prefix><name>`` and ``<prefix><name>_missing``,
  i.e. the MLflow keys ``test_<name>``, ``test_<name>_missing`` and ``noisy_<name>`` the sweep logs, and the
  keys of ``kdlib eval``'s JSON output (:func:`metric_keys` lists them);
* the report's columns: ``<name>`` and ``noisy_<name>`` in :func:`kdlib.report.load_runs`' frame, the reference
  and per-method tables, and (entries with ``compact=True``) the tables of non-dominated trials.

The table is read when a function runs, never copied at import time, so a test (or a plugin) that replaces
``kdlib.metrics.specs.METRICS`` changes every consumer at once. :data:`METRIC_NAMES` (and the re-exports in
:mod:`kdlib.metrics`) are import-time snapshots of the shipped table, kept for the modules that import them.

Imports neither torch, Ray nor MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdlib.errors import DataError
from kdlib.metrics.scores import estoi_scorer, pesq_scorer, si_sdr_scorer, stoi_scorer

__all__ = [
    "COSTS",
    "METRICS",
    "METRIC_NAMES",
    "MISSING_SUFFIX",
    "MetricSpec",
    "ScoreFn",
    "metric",
    "metric_keys",
]

#: ``(reference (L,), estimate (L,), sample_rate in Hz, pesq_mode "wb"/"nb") -> (value, None) | (None, reason)``.
#: Takes already-checked 1-D float arrays of equal length; must not warn or raise for an utterance it cannot
#: score (it returns the reason instead) and must be a module-level function, as it runs in worker processes.
ScoreFn = Callable[[np.ndarray, np.ndarray, int, str], tuple[float | None, str | None]]

#: suffix of the count of utterances a metric could not score (``test_pesq_missing``): the one definition;
#: the sweep contract refers here for the metric names and this suffix
MISSING_SUFFIX = "_missing"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how to compute it, name it, and show it.

    Attributes:
        name: key of the metric: ``MetricSummary.means[name]``, MLflow ``test_<name>``, report column ``<name>``.
        label: human name in tables, plots and warnings (``"PESQ"``).
        unit: unit of the value (``"dB"``), or ``""`` for a unitless score. Table headers read
            ``"<label> (<unit>)"`` when there is one.
        fmt: format spec of one value in the report's tables (``".3f"``); deltas use ``"+" + fmt``.
        higher_is_better: direction of improvement (costs: ``False``).
        score: the :data:`ScoreFn`; ``None`` for a cost, which the profiler measures and no scorer computes.
        scale: the value range or scale named on a plot axis (``"MOS-LQO"``, ``"0-1"``), ``""`` for none.
        uses_pesq_mode: the score depends on the ``pesq_mode`` argument, so ``evaluate_pairs`` checks that mode
            (and refuses e.g. ``"wb"`` below 16 kHz) only when such a metric is requested, and plot axes name it.
        compact: listed in the report's compact tables (the non-dominated trials); ``False`` keeps a close
            cousin of another column (ESTOI of STOI) out of them, so those tables stay narrow.
    """

    name: str
    label: str
    unit: str = ""
    fmt: str = ".3f"
    higher_is_better: bool = True
    score: ScoreFn | None = None
    scale: str = ""
    uses_pesq_mode: bool = False
    compact: bool = True

    @property
    def column_label(self) -> str:
        """Table header: ``"PESQ"``, ``"SI-SDR (dB)"``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def axis_label(self, pesq_mode: str | None = None) -> str:
        """Plot axis label: ``"PESQ (wb, MOS-LQO, unitless)"``, ``"STOI (0-1, unitless)"``, ``"SI-SDR (dB)"``.

        ``pesq_mode`` is named only for a metric with ``uses_pesq_mode`` (``None``/``""``: left out).
        """
        parts = [pesq_mode] if self.uses_pesq_mode and pesq_mode else []
        parts += [self.scale] if self.scale else []
        parts.append(self.unit or "unitless")
        return f"{self.label} ({', '.join(parts)})"


#: quality metrics scored on every test set, in the order of every table and of the MLflow keys
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("pesq", "PESQ", fmt=".3f", score=pesq_scorer, scale="MOS-LQO", uses_pesq_mode=True),
    MetricSpec("stoi", "STOI", fmt=".3f", score=stoi_scorer, scale="0-1"),
    # ESTOI follows STOI closely, so the compact tables show STOI only
    MetricSpec("estoi", "ESTOI", fmt=".3f", score=estoi_scorer, scale="0-1", compact=False),
    MetricSpec("si_sdr", "SI-SDR", unit="dB", fmt=".2f", score=si_sdr_scorer),
)

#: complexity costs (lower is better) the report ranks quality against; logged by the sweep, not scored here.
#: ``macs`` is logged as multiply-accumulates per second of audio; the report shows it in millions (M/s).
COSTS: tuple[MetricSpec, ...] = (
    MetricSpec("params", "params", fmt=",.0f", higher_is_better=False),
    MetricSpec("macs", "MACs", unit="M/s", fmt=".2f", higher_is_better=False),
)

#: names of the shipped :data:`METRICS` (import-time snapshot; code that must follow a replaced table reads
#: ``specs.METRICS`` when it runs)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)


def metric(name: str) -> MetricSpec:
    """The :data:`METRICS` or :data:`COSTS` entry called ``name``.

    Raises:
        DataError: no such metric (the message lists the valid names).
    """
    for spec in (*METRICS, *COSTS):
        if spec.name == name:
            return spec
    valid = ", ".join(m.name for m in (*METRICS, *COSTS))
    raise DataError(f"unknown metric {name!r}; valid: {valid}")


def metric_keys(prefix: str) -> tuple[str, ...]:
    """``<prefix><name>`` for every quality metric: ``metric_keys("test_")`` = ``("test_pesq", ...)``.

    These are the keys ``MetricSummary.as_flat_dict(prefix)`` writes (besides the ``_missing`` counts).
    """
    return tuple(f"{prefix}{m.name}" for m in METRICS)
