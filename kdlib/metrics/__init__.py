"""Speech-enhancement metrics: PESQ (P.862/P.862.2), STOI, ESTOI and SI-SDR, per utterance and per set.

:mod:`kdlib.metrics.specs` holds the metric table (:data:`METRICS`, :data:`COSTS`) that the evaluation, the
sweep's MLflow keys and the report's columns follow. Imports neither torch, Ray nor MLflow (``si_sdr_torch``
works on tensors it is given).
"""

from kdlib.metrics.evaluate import (
    MetricSummary,
    evaluate_generated,
    evaluate_pairs,
    score_utterance,
    write_score_rows,
)
from kdlib.metrics.scores import (
    PESQ_MODES,
    MetricWarning,
    check_pesq_mode,
    pesq_score,
    si_sdr,
    si_sdr_torch,
    stoi_score,
)
from kdlib.metrics.specs import COSTS, METRIC_NAMES, METRICS, MetricSpec, metric_keys

__all__ = [
    "COSTS",
    "METRICS",
    "METRIC_NAMES",
    "PESQ_MODES",
    "MetricSpec",
    "MetricSummary",
    "MetricWarning",
    "check_pesq_mode",
    "evaluate_generated",
    "evaluate_pairs",
    "metric_keys",
    "write_score_rows",
    "pesq_score",
    "score_utterance",
    "si_sdr",
    "si_sdr_torch",
    "stoi_score",
]
