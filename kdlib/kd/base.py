"""KD method contract and registry (torchdistill-style ``register_kd_method``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdlib.models.base import SEModel
from kdlib.registry import Registry
from kdlib.validation import validate


class KDConfig(BaseModel):
    """Base of every method's kwargs: unknown keys and wrong types are refused at config load."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class KDInputs:
    """What a KD loss may read for one batch.

    Attributes:
        noisy: ``(B, L)`` input waveform. clean: ``(B, L)`` target waveform.
        student_out: ``(B, L)`` student estimate. teacher_out: ``(B, L)`` teacher estimate, or None
            when the method does not need the teacher.
        student_features / teacher_features: tap name → ``(B, C, T, F)`` feature (forward hooks).
        teacher_targets: what :meth:`KDMethod.teacher_targets` derived from the teacher for these items, when
            the teacher-output cache holds it (empty otherwise: the method derives it itself).
    """

    noisy: torch.Tensor
    clean: torch.Tensor
    student_out: torch.Tensor
    teacher_out: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_targets: dict[str, torch.Tensor] = field(default_factory=dict)


class KDMethod(nn.Module):
    """Base class of KD losses. Subclasses set ``Config`` (validated kwargs), ``source`` and
    implement :meth:`forward`; learnable parts (adapters, fusion) are submodules of the method, so
    :meth:`extra_params` counts them apart from the deployed student.

    Args:
        student, teacher: the models (kept as plain references, not submodules).
        **kwargs: the method's knobs, validated against ``Config``.

    Raises:
        ConfigError: unknown or mistyped kwargs, or taps the models do not have.
    """

    Config: ClassVar[type[KDConfig]] = KDConfig
    source: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True

    def __init__(self, student: SEModel, teacher: SEModel | None, **kwargs: Any) -> None:
        super().__init__()
        name = type(self).registry_name  # type: ignore[attr-defined]
        if self.needs_teacher and teacher is None:
            raise ValueError(f"KD method '{name}' needs a teacher")
        self.cfg = validate(self.Config, kwargs, prefix=f"kd.{name}")
        # plain attributes via __dict__ so the models never become submodules of the loss
        self.__dict__["student"] = student
        self.__dict__["teacher"] = teacher
        #: (student tap, teacher tap) pairs; methods that match layer to layer set it, and the
        #: default tap lists below follow from it
        self.pairs: list[tuple[str, str]] = []

    def student_taps(self) -> list[str]:
        """Student module names whose outputs the loss reads."""
        return [s for s, _ in self.pairs]

    def teacher_taps(self) -> list[str]:
        """Teacher module names whose outputs the loss reads."""
        return [t for _, t in self.pairs]

    def teacher_targets(self, teacher_out: torch.Tensor, teacher_features: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """Tensors the loss derives from the teacher alone, item by item (row ``b`` depends only on item
        ``b``), e.g. the teacher's self-similarity matrices: the teacher-output cache stores them once per
        epoch so trials do not recompute them at every step. Default: none.

        Args:
            teacher_out: ``(B, L)``. teacher_features: tap name → ``(B, ...)``, the taps of :meth:`teacher_taps`.
        """
        return {}

    def target_taps(self) -> list[str]:
        """Teacher taps the loss reads only through :meth:`teacher_targets` (the cache does not hand their
        features to the trial when it holds the targets)."""
        return []

    def targets_id(self) -> str:
        """Names this method's targets in the cache: the method, its knobs and its taps."""
        import hashlib
        import json

        blob = json.dumps([type(self).registry_name, self.cfg.model_dump(mode="json"), self.teacher_taps()],  # type: ignore[attr-defined]
                          sort_keys=True, default=str)
        return f"{type(self).registry_name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"  # type: ignore[attr-defined]

    @classmethod
    def min_batch_size(cls, cfg: KDConfig) -> int:
        """Smallest training batch the loss can use with knobs ``cfg`` (checked when the sweep loads; e.g. a
        loss that compares the items of a batch needs 2). Default 1."""
        return 1

    def stats(self) -> dict[str, float]:
        """Diagnostics of the loss aggregated since the last call, then reset (e.g. DFKD's crossover
        distribution). The Trainer calls it at the start of every epoch (discarding what calibration left) and
        at its end, and logs each value as the epoch metric ``kd_<name>``. Accumulate on the device and
        detached, so a step adds no host-device sync. Default: none (``{}``)."""
        return {}

    def extra_params(self) -> int:
        """Learnable parameters of the method itself (logged as ``kd_extra_params``)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, inputs: KDInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


KD_METHODS: Registry[KDMethod] = Registry("KD method")
register_kd_method = KD_METHODS.register


def validate_kd_kwargs(name: str, kwargs: dict[str, Any] | None) -> KDConfig:
    """Check a method's kwargs at config load, before any model exists.

    Raises:
        RegistryError: unknown method. ConfigError: bad kwargs, naming the key.
    """
    cls = KD_METHODS.get(name)
    return validate(cls.Config, kwargs or {}, prefix=f"kd.{name}")


def build_kd_method(name: str, student: SEModel, teacher: SEModel | None,
                    kwargs: dict[str, Any] | None = None) -> KDMethod:
    """Instantiate a registered KD method for a student/teacher pair.

    Raises:
        RegistryError: unknown method. ConfigError: bad kwargs or taps, naming the key; or a method that
            cannot carry information on the student's or teacher's family (:mod:`kdlib.kd.compat`).
    """
    from kdlib.kd.compat import check_compatible  # lazy: compat reads built methods, base builds them

    method = KD_METHODS.build(name, kwargs, student, teacher)
    check_compatible(name.lower(), method, student, teacher)
    return method
