"""Speech-enhancement metrics: PESQ (P.862/P.862.2), STOI, ESTOI and SI-SDR, per utterance and per set.

Imports neither torch, Ray nor MLflow (``si_sdr_torch`` works on tensors it is given).
"""

from kdlib.metrics.evaluate import MetricSummary, evaluate_pairs, score_utterance
from kdlib.metrics.scores import (
    METRIC_NAMES,
    PESQ_MODES,
    MetricWarning,
    check_pesq_mode,
    pesq_score,
    si_sdr,
    si_sdr_torch,
    stoi_score,
)

__all__ = [
    "METRIC_NAMES",
    "PESQ_MODES",
    "MetricSummary",
    "MetricWarning",
    "check_pesq_mode",
    "evaluate_pairs",
    "pesq_score",
    "score_utterance",
    "si_sdr",
    "si_sdr_torch",
    "stoi_score",
]
