"""Device choice: CUDA when present, overridable by config (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""

from __future__ import annotations

import torch

from kdlib.errors import ConfigError


def resolve_device(spec: str = "auto", key: str = "training.device") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; ``key`` names the setting in messages.

    Raises:
        ConfigError: a CUDA device was asked for on a machine without one.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: '{spec}' asked for, but this machine has no CUDA GPU")
    return device
