"""Sweep YAML file → schema-validated :class:`~kdlib.config.schema.SweepConfig` (no models built).

``yaml.safe_load`` only, so no YAML tag can run code. The full load of a sweep (schema, then the
plan's checks and the smoke transform) is :func:`kdlib.sweep.plan.load_plan`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from kdlib.config.schema import SweepConfig
from kdlib.errors import ConfigError
from kdlib.validation import validate


def import_plugins(modules: list[str]) -> None:
    """Import user modules that register models or KD methods (``plugins:`` in the YAML).

    Raises:
        ConfigError: a module cannot be imported.
    """
    import importlib

    if not isinstance(modules, list):
        raise ConfigError("plugins: expected a list of module names")
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import '{name}': {exc}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML) to a raw config mapping.

    Raises:
        ConfigError: an override without ``=`` or with an unparsable value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}': expected dotted.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set '{item}': the value is not valid YAML") from None
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return raw


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a sweep YAML file.

    Raises:
        ConfigError: missing file, malformed YAML, a YAML tag, or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys at the top level")
    return raw


def load_config(path: str | os.PathLike, *, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML and validate it against the schema (plugins imported first, so their model
    and KD-method names exist for the plan's checks).

    Args:
        path: the YAML file.
        overrides: ``dotted.key=value`` items (``--set``), applied before validation.

    Raises:
        ConfigError: missing file, malformed YAML, a YAML tag, or any invalid key: one line.
    """
    raw = apply_overrides(read_yaml(path), overrides or [])
    import_plugins(raw.get("plugins") or [])
    try:
        return validate(SweepConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
