"""Which KD methods can carry information on which model families: the one place that refuses a pair
whose loss would be constant or meaningless (a silent no-op), called by
:func:`kdlib.kd.base.build_kd_method` and so by the sweep's config check.

The rules are keyed on what the models declare, not on family names: ``frequency_axis``
(:class:`kdlib.models.base.SEModel`: whether the F axis of the ``(B, C, T, F)`` feature taps indexes
frequency) and the F size of the taps the method reads (probed once). A method *part* that compares
features across F (a per-frame F×F self-similarity, a frequency stream) is refused when

- a model declares ``frequency_axis = False`` (time-domain families: taps ``(B, C, T, 1)``, where each
  frame's 1×1 similarity is the constant 1 for student and teacher alike, or DPTNet's chunk index,
  which is not frequency), or
- a tap it reads has F = 1 (e.g. a sub-band model with ``n_bands=1``), the same constant.

Parts that compare across time, and every other method, run on every family. Methods that need a tap
a family lacks (``mask_matching``, ``subband_kd``) refuse it themselves when built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdlib.errors import ConfigError
from kdlib.kd.hooks import probe_feature_shapes


@dataclass(frozen=True)
class FrequencyPart:
    """A part of a KD method that compares features across the F axis.

    Attributes:
        what: the part, for messages ("per-frame F×F self-similarity").
        active: cfg → whether the method's validated config uses the part.
        fix: cfg → the knob change that drops the part (None: the part is the whole method).
    """

    what: str
    active: Callable[[Any], bool]
    fix: Callable[[Any], str] | None = None


def _tfckd_fix(cfg: Any) -> str:
    return ("set frequency_stream: batch (or calibration: time)" if hasattr(cfg, "frequency_stream")
            else "set calibration: time")


def _tfckd_bins(cfg: Any) -> bool:
    # the F×F-between-bins frequency stream: i2rf_tfckd before its ``frequency_stream`` knob, or "bins"
    stream = getattr(cfg, "frequency_stream", "bins")
    return stream == "bins" and getattr(cfg, "calibration", "dual") in ("none", "dual", "frequency")


#: KD method → its parts that compare features across F
FREQUENCY_PARTS: dict[str, FrequencyPart] = {
    "ss_wideband": FrequencyPart("its per-frame F×F self-similarity across frequency", lambda cfg: True),
    "self_similarity": FrequencyPart("its frequency stream (F×F self-similarity between bins)",
                                     lambda cfg: "frequency" in cfg.streams, lambda cfg: "set streams: [time]"),
    "i2rf_tfckd": FrequencyPart("its frequency stream (F×F similarities between bins)", _tfckd_bins, _tfckd_fix),
}


def _family(model: nn.Module) -> str:
    return getattr(type(model), "registry_name", type(model).__name__)


def check_compatible(name: str, method: nn.Module, student: nn.Module, teacher: nn.Module | None) -> None:
    """Refuse a built KD method that cannot carry information on its student's or teacher's family.

    Args:
        name: the method's registered name. method: the built method (its validated ``cfg`` and taps).
        student, teacher: the models (``teacher`` None for methods that need none).

    Raises:
        ConfigError: one line naming the method, the family and why, with the knob that fixes it
            when the refused part is optional.
    """
    part = FREQUENCY_PARTS.get(name)
    cfg = getattr(method, "cfg", None)
    if part is None or cfg is None or not part.active(cfg):
        return
    fix = f": {part.fix(cfg)}" if part.fix else ""
    sides = [("student", student, method.student_taps()), ("teacher", teacher, method.teacher_taps())]
    for role, model, _ in sides:
        if model is None:
            continue
        if not getattr(model, "frequency_axis", True):
            raise ConfigError(
                f"{name} cannot carry information on {_family(model)} ({role}): {part.what} needs a frequency "
                f"axis, but {_family(model)}'s feature taps have none (time-domain: F = 1, or an index that is "
                f"not frequency), so it would be constant or meaningless{fix}")
    for role, model, taps in sides:
        if model is None or not taps:
            continue
        flat = [t for t, shape in probe_feature_shapes(model, taps).items() if len(shape) == 4 and shape[-1] == 1]
        if flat:
            raise ConfigError(
                f"{name} cannot carry information on {_family(model)} ({role}): {part.what} is constant "
                f"on tap '{flat[0]}', whose F axis has a single entry{fix}")
