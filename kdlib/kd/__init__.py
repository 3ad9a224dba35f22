"""KD methods: registry, forward-hook feature taps and the losses. Importing registers them all."""

from kdlib.kd import methods as _methods  # noqa: F401  (registers none, output, self_similarity)
from kdlib.kd.base import (
    KD_METHODS,
    KDConfig,
    KDInputs,
    KDMethod,
    build_kd_method,
    register_kd_method,
    validate_kd_kwargs,
)
from kdlib.kd.hooks import FeatureTaps, resolve_tap

__all__ = [
    "KD_METHODS", "FeatureTaps", "KDConfig", "KDInputs", "KDMethod", "build_kd_method",
    "register_kd_method", "resolve_tap", "validate_kd_kwargs",
]
