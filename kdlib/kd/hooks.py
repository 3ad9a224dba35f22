"""Forward hooks that read named intermediate features (torchdistill's ForwardHookManager idea):
models need no KD-specific code, KD methods ask for taps by module name or by correlated-set name."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdlib.errors import ConfigError

#: a tap spec: one set/module name used on both models, or a ``[student, teacher]`` pair of them
TapSpec = str | tuple[str, str]


def resolve_tap_pairs(student: nn.Module, teacher: nn.Module, specs: Iterable[TapSpec]) -> list[tuple[str, str]]:
    """``(student tap, teacher tap)`` per spec, each resolved to its set's last layer by :func:`resolve_tap`.

    Raises:
        ConfigError: a spec names no set or module of its model.
    """
    pairs = []
    for spec in specs:
        s_spec, t_spec = (spec, spec) if isinstance(spec, str) else spec
        pairs.append((resolve_tap(student, s_spec)[0], resolve_tap(teacher, t_spec)[0]))
    return pairs


def resolve_tap(model: nn.Module, spec: str, pick: str = "last") -> list[str]:
    """Module names for a tap spec.

    Args:
        model: an :class:`~kdlib.models.base.SEModel` (uses its ``feature_sets``) or any module.
        spec: a correlated-set name (``"encoder"``, ``"middle"``, ``"decoder"``) or a module path
            (``"encoder.2"``).
        pick: for a set name, ``"last"`` (its deepest layer) or ``"all"``.

    Raises:
        ConfigError: the spec names neither a set nor a submodule of ``model``.
    """
    sets = getattr(model, "feature_sets", {})
    if spec in sets:
        names = sets[spec]
        if not names:
            raise ConfigError(f"feature set '{spec}' of {type(model).__name__} is empty")
        return list(names) if pick == "all" else [names[-1]]
    try:
        model.get_submodule(spec)
    except AttributeError:
        raise ConfigError(
            f"feature tap '{spec}' is neither a feature set ({', '.join(sets)}) nor a module of "
            f"{type(model).__name__}"
        ) from None
    return [spec]


class FeatureTaps:
    """Registers forward hooks on named submodules and keeps their latest outputs.

    Usage::

        taps = FeatureTaps(model, ["encoder.2", "dualpath.1"])
        model(x)
        taps.features["encoder.2"]  # (B, C, T, F)
        taps.remove()

    Features keep their autograd graph, so a KD loss on a student tap back-propagates into the
    student; teacher taps recorded under ``torch.no_grad()`` carry no graph.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(names):  # de-duplicate, keep order
            module = model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()


@torch.no_grad()
def probe_feature_shapes(model: nn.Module, names: Iterable[str], n_samples: int = 4000) -> dict[str, torch.Size]:
    """Output shape of each named tap for a ``(1, n_samples)`` input (``(1, M, n_samples)`` when the
    model declares ``n_channels`` > 1). Used by KD methods to size adapters (e.g. channel counts C
    of ``(B, C, T, F)`` features) at construction. Runs in eval mode so BatchNorm statistics are
    untouched; the model's train/eval mode is restored.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "meta":
        raise ConfigError("probe_feature_shapes needs a model on a real device, not 'meta'")
    device = param.device if param is not None else torch.device("cpu")
    n_channels = int(getattr(model, "n_channels", 1))
    x = torch.zeros(1, n_samples, device=device) if n_channels == 1 else torch.zeros(1, n_channels, n_samples,
                                                                                       device=device)
    taps = FeatureTaps(model, names)
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        shapes = {n: taps.features[n].shape for n in names}
        taps.remove()
    return shapes
