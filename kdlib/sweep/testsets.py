"""Scoring every test set of a sweep (``data.test``, or each set of a ``data.test`` list) under its own name:
the metrics a trial or teacher logs and the per-utterance files the report's statistics read.

The primary set (the first) is logged as plain ``test_*`` (the Pareto axes) and ``test_scores.csv``; every named
set, the primary included, also as ``test_<name>_*`` and ``test_scores_<name>.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdlib.config.data import DataConfig
from kdlib.data.sources import SweepData
from kdlib.evaluation import evaluate_noisy, resolve_pesq_mode, utterance_ids
from kdlib.metrics import MetricSummary
from kdlib.sweep.contract import noisy_prefix, scores_file, set_prefix


@dataclass
class SetScores:
    """What scoring the test sets gave.

    Attributes:
        metrics: flat metrics (``test_pesq``, ``test_<name>_pesq``, ``..._missing``; with the noisy input also
            ``noisy_*`` / ``noisy_<name>_*``).
        files: artifact file name → per-utterance rows (``utterance``, each metric, ``<metric>_missing``).
        pesq_modes: set name (None: the primary) → the PESQ mode it was scored in (``wb``/``nb``).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pesq_modes: dict[str | None, str] = field(default_factory=dict)


def score_test_sets(score: Callable[[Any, str], MetricSummary], data: SweepData, cfg: DataConfig, *,
                    noisy: bool = False, num_workers: int = 1) -> SetScores:
    """Score a model on every test set.

    Args:
        score: ``(corpus, pesq_mode) -> MetricSummary`` of the model (e.g. ``Trainer.test``).
        data: the sweep's data (``data.test`` and ``data.extra_tests``).
        cfg: the ``data`` section (each set's name and ``pesq_mode``).
        noisy: also score the unprocessed input (teachers log it as the reference point).
        num_workers: scoring processes for the noisy input.
    """
    out = SetScores()
    parts = [cfg.test, *cfg.extra_tests]
    for (_, corpus), part in zip(data.test_sets(), parts, strict=True):
        mode = resolve_pesq_mode(part.pesq_mode, corpus)
        ids = utterance_ids(corpus)
        summaries = {False: score(corpus, mode)}
        if noisy:
            summaries[True] = evaluate_noisy(corpus, mode, num_workers=num_workers)
        names = [None, part.name] if part is cfg.test and part.name else [part.name]
        for name in names:
            out.pesq_modes[name] = mode
            for is_noisy, summary in summaries.items():
                prefix = noisy_prefix(name) if is_noisy else set_prefix(name)
                out.metrics.update(summary.as_flat_dict(prefix))
                out.files[scores_file(name, noisy=is_noisy)] = summary.rows(ids)
    return out
