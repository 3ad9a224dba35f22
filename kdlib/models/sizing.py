"""Size builder: a student of a model family at a fraction of the teacher's parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdlib.errors import ConfigError
from kdlib.models.base import MODELS, count_params


@dataclass(frozen=True)
class SizedConfig:
    """Result of :func:`size_student`.

    Attributes:
        model_args: constructor kwargs of the chosen student.
        params: its parameter count.
        teacher_params: the teacher's parameter count.
        target_ratio: the requested fraction of the teacher's params.
        achieved_ratio: ``params / teacher_params``.
        depth_reduction: blocks removed (0 = widths alone reached the target).
    """

    model_args: dict[str, Any]
    params: int
    teacher_params: int
    target_ratio: float
    achieved_ratio: float
    depth_reduction: int


def _params_of(name: str, args: dict[str, Any]) -> int:
    # meta device: no memory or init cost, exact counts
    with torch.device("meta"):
        return count_params(MODELS.build(name, args))


def size_student(name: str, teacher_args: dict[str, Any], ratio: float, tolerance: float = 0.10,
                 base_args: dict[str, Any] | None = None, teacher_name: str | None = None) -> SizedConfig:
    """Pick the student config whose params are within ``±tolerance`` of ``ratio ×`` the teacher's.

    Widths are scaled first; depth is reduced only when no width-only candidate fits (e.g. at 4 %
    the fixed per-block costs dominate). Among fitting candidates of the least depth reduction,
    the one closest to the target wins.

    Args:
        name: registered model family.
        teacher_args: the teacher's constructor kwargs.
        ratio: target fraction of the teacher's params, in (0, 1].
        tolerance: relative tolerance on the param count (0.10 = ±10 %).
        base_args: the student's unscaled args when they differ from the teacher's (e.g. a shared
            sub-band student of elite sub-band teachers, or another family); default ``teacher_args``.
        teacher_name: the teacher's family when it differs from ``name``.

    Raises:
        ConfigError: ratio outside (0, 1], or no candidate within tolerance.
    """
    if not 0 < ratio <= 1:
        raise ConfigError(f"student_ratio must be in (0, 1], got {ratio}")
    teacher_params = _params_of(teacher_name or name, teacher_args)
    if ratio == 1 and base_args is None and teacher_name in (None, name):
        return SizedConfig(dict(teacher_args), teacher_params, teacher_params, 1.0, 1.0, 0)
    target = ratio * teacher_params
    best: tuple[int, float, dict[str, Any], int] | None = None
    seen: set[str] = set()
    start = dict(teacher_args if base_args is None else base_args)
    for args, reduction in MODELS.get(name).size_candidates(start):
        if best is not None and reduction > best[0]:
            break  # a fitting candidate with less depth reduction exists
        key = repr(sorted(args.items()))
        if key in seen:
            continue
        seen.add(key)
        params = _params_of(name, args)
        err = abs(params - target) / target
        if err <= tolerance and (best is None or err < best[1]):
            best = (reduction, err, args, params)
    if best is None:
        raise ConfigError(
            f"no {name} config within ±{tolerance:.0%} of {ratio} × {teacher_params} params; "
            "widen the teacher or change the ratio"
        )
    reduction, _, args, params = best
    return SizedConfig(args, params, teacher_params, ratio, params / teacher_params, reduction)
