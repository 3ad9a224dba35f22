"""Training: the shared loop, teacher training, device choice (importable without Ray/MLflow)."""

from kdlib.train.device import resolve_device
from kdlib.train.trainer import Trainer, TrialSpec

__all__ = ["Trainer", "TrialSpec", "resolve_device"]
