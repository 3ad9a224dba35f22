"""Model contract: every enhancement model can rebuild itself from its args (asteroid's serialize())
and names its feature taps, grouped into correlated sets, so KD methods read them through forward
hooks without KD-specific code in the model."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, ClassVar

from torch import nn

from kdlib.registry import Registry


class SEModel(nn.Module):
    """Base class of kdlib's speech-enhancement models.

    Input: noisy waveform ``(B, L)`` (mono) or ``(B, M, L)`` (multi-channel), in samples at
    ``sample_rate`` Hz. Output: enhanced waveform ``(B, L)``.

    Subclasses store their constructor kwargs with :meth:`_save_args`, define
    :attr:`feature_sets` (set name → module names whose outputs are ``(B, C, T, F)`` features) and
    :meth:`size_candidates` for the size builder.
    """

    #: knobs the size builder scales (documented by ``kdlib models``)
    size_knobs: ClassVar[dict[str, str]] = {}
    #: the family's default task loss ``{name, kwargs}`` (a :data:`kdlib.losses.TASK_LOSSES` name); a sweep's
    #: ``training.task_loss`` / ``teacher.task_loss`` overrides it (:func:`kdlib.losses.task_loss_for`)
    task_loss: ClassVar[dict[str, Any]] = {"name": "compressed_spectral", "kwargs": {}}
    #: the F axis of the ``(B, C, T, F)`` feature taps indexes frequency (STFT bins, possibly strided, or
    #: sub-bands); False for time-domain models, whose taps are ``(B, C, T, 1)`` or whose F axis indexes
    #: something else (DPTNet's chunks). KD methods that compare features across F are refused on False
    #: (:mod:`kdlib.kd.compat`)
    frequency_axis: ClassVar[bool] = True

    def _save_args(self, args: dict[str, Any]) -> None:
        self._model_args = {k: copy.deepcopy(v) for k, v in args.items() if k not in ("self", "__class__")}

    def get_model_args(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this exact architecture."""
        return copy.deepcopy(self._model_args)

    def serialize(self) -> dict[str, Any]:
        """``{"model_name", "model_args", "state_dict"}``: enough to rebuild the model from a file."""
        return {
            "model_name": type(self).registry_name,  # type: ignore[attr-defined]
            "model_args": self.get_model_args(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        """Correlated sets of feature taps: ``{"encoder": [...], "middle": [...], "decoder": [...]}``."""
        raise NotImplementedError

    def feature_taps(self) -> list[str]:
        """Every tap name, in forward order."""
        return [name for names in self.feature_sets.values() for name in names]

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """Yield ``(candidate_args, depth_reduction)`` smaller than ``args``; widths first (0), then depth."""
        raise NotImplementedError


MODELS: Registry[SEModel] = Registry("model")
register_model = MODELS.register


def build_model(name: str, kwargs: dict[str, Any] | None = None) -> SEModel:
    """Build a registered model from a config node ``{name, kwargs}``.

    Raises:
        RegistryError: unknown model name.
        ConfigError: kwargs the model does not take, or impossible values.
    """
    return MODELS.build(name, kwargs)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements), optionally only those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
