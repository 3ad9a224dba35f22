"""Training: the shared loop and device choice (imports no config schema, Ray or MLflow)."""

from kdlib.train.device import resolve_device
from kdlib.train.trainer import Trainer, TrainSettings

__all__ = ["TrainSettings", "Trainer", "resolve_device"]
