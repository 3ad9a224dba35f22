"""KD methods: registry, forward-hook feature taps and the losses. Importing registers them all."""

# importing a module registers its methods
from kdlib.kd import baselines as _baselines  # noqa: F401  (fitnets, spkd, reviewkd)
from kdlib.kd import dfkd as _dfkd  # noqa: F401  (dfkd)
from kdlib.kd import ftjnf as _ftjnf  # noqa: F401  (the FT-JNF study's five)
from kdlib.kd import methods as _methods  # noqa: F401  (none, output, self_similarity)
from kdlib.kd import subband as _subband  # noqa: F401  (subband_kd)
from kdlib.kd import tfckd as _tfckd  # noqa: F401  (i2rf_tfckd)
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
