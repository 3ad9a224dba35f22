"""Name → class registries with decorators, in the style of torchdistill's ``register_*``.

One :class:`Registry` per kind (models, KD methods). Config nodes ``{name, kwargs}`` are resolved in
one place, :meth:`Registry.build`, which refuses unknown names and unknown or mistyped kwargs before
any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kdlib.errors import ConfigError, RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A case-insensitive mapping from registered names to classes.

    Args:
        kind: what is registered ("model", "KD method"), used in error messages.

    Raises:
        RegistryError: on a duplicate registration or an unknown name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@MODELS.register("dpcrn_lite")``; the name defaults to the class name."""

        def deco(cls: type[T]) -> type[T]:
            key = (name or cls.__name__).lower()
            if key in self._items:
                raise RegistryError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = cls
            cls.registry_name = key  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        """The class registered as ``name`` (case-insensitive)."""
        try:
            return self._items[name.lower()]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; registered: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, type[T]]]:
        return sorted(self._items.items())

    def build(self, name: str, kwargs: dict[str, Any] | None = None, *args: Any, **extra: Any) -> T:
        """Instantiate ``name`` from a config node: ``cls(*args, **kwargs, **extra)``, where ``kwargs``
        come from the YAML and ``args`` / ``extra`` from code (e.g. a KD method's student and teacher).

        Raises:
            RegistryError: unknown name. ConfigError: arguments the class does not take.
        """
        cls = self.get(name)
        try:
            return cls(*args, **(kwargs or {}), **extra)
        except TypeError as exc:
            raise ConfigError(f"{self.kind} '{name}': {exc}") from None
