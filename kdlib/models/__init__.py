"""Enhancement models: registry, size builder, complexity, checkpoints.

Importing this package registers every built-in model family.
"""

from kdlib.models import convtasnet as _convtasnet  # noqa: F401  (registers "convtasnet")
from kdlib.models import dccrn as _dccrn  # noqa: F401  (registers "dccrn")
from kdlib.models import dpcrn_lite as _dpcrn_lite  # noqa: F401  (registers "dpcrn_lite")
from kdlib.models import dpdcrn as _dpdcrn  # noqa: F401  (registers "dpdcrn")
from kdlib.models import dptnet as _dptnet  # noqa: F401  (registers "dptnet")
from kdlib.models import ftjnf as _ftjnf  # noqa: F401  (registers "ftjnf")
from kdlib.models import subband as _subband  # noqa: F401  (registers "subband")
from kdlib.models.base import MODELS, SEModel, build_model, count_params, register_model
from kdlib.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from kdlib.models.complexity import complexity, macs_per_second
from kdlib.models.sizing import SizedConfig, size_student

__all__ = [
    "MODELS", "SEModel", "SizedConfig", "build_model", "complexity", "count_params", "load_model",
    "macs_per_second", "read_checkpoint", "register_model", "save_checkpoint", "size_student",
]
