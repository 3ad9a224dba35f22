"""Sweep YAML file → schema-validated :class:`~kdlib.config.schema.SweepConfig` (no models built).

YAML is read with :class:`SweepLoader`, a :class:`yaml.SafeLoader` (so no YAML tag can run code) that
also refuses a duplicate mapping key, nesting deeper than :data:`MAX_DEPTH`, and a document of more
than :data:`MAX_NODES` nodes once its aliases are expanded (a "billion laughs" file): the expanded
size is counted on the composed node graph, never by expanding it. Files over :data:`MAX_BYTES` and
files that are not UTF-8 are refused too, so reading any file stays bounded in time and memory. The
full load of a sweep (schema, then the plan's checks and the smoke transform) is
:func:`kdlib.sweep.plan.load_plan`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kdlib.config.schema import SweepConfig
from kdlib.errors import ConfigError, first_line
from kdlib.validation import short_reprlib, validate

#: most nodes of a document, counted once per use of an alias (a sweep YAML has a few hundred)
MAX_NODES = 100_000
#: deepest nesting of a document, aliases expanded (a sweep YAML nests about 6 levels)
MAX_DEPTH = 64
#: largest sweep YAML file read
MAX_BYTES = 1 << 20

_MERGE_TAG = "tag:yaml.org,2002:merge"
_short = short_reprlib(40)


class YAMLLimitError(ConstructorError):
    """A document over :data:`MAX_NODES` or :data:`MAX_DEPTH`, or one that refers to itself."""


class SweepLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that refuses duplicate keys and documents too large or too deep."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._composed = 0
        self._depth = 0

    # -- while composing: the nodes written in the file (aliases not expanded) ----------------------
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._composed += 1
        self._depth += 1
        try:
            if self._composed > MAX_NODES or self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                what = (f"has more than {MAX_NODES} nodes" if self._composed > MAX_NODES
                        else f"nests deeper than {MAX_DEPTH} levels")
                raise YAMLLimitError(None, None, f"the document {what}", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    # -- before constructing: the document with its aliases expanded, counted on the node graph -----
    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded(node)
        return self.construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue  # merged keys may be overridden; unhashable keys are refused by SafeLoader
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue
                if first is not key_node:
                    raise ConstructorError(
                        None, None, f"duplicate key {_short.repr(key)} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_expanded(root: Node) -> None:
    """Refuse a node graph whose alias expansion exceeds :data:`MAX_NODES` nodes or :data:`MAX_DEPTH`
    levels, or that refers to itself; memoised per node, iterative, so linear in the composed nodes.

    Raises:
        YAMLLimitError: at the node where a limit is crossed.
    """
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, ScalarNode):
            size[key] = (1, 1)
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, MappingNode)
                    else list(node.value) if isinstance(node, SequenceNode) else [])
        if not done:
            if key in size:
                continue
            if key in open_:
                raise YAMLLimitError(None, None, "an alias refers to a node that contains it (a recursive "
                                       "document)", node.start_mark)
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in size)
            continue
        open_.discard(key)
        total = 1 + sum(size[id(c)][0] for c in children)
        depth = 1 + max((size[id(c)][1] for c in children), default=0)
        if total > MAX_NODES:
            raise YAMLLimitError(None, None, f"the document expands to more than {MAX_NODES} nodes "
                                   "(aliases counted once per use)", node.start_mark)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(None, None, f"the document nests deeper than {MAX_DEPTH} levels "
                                   "(aliases expanded)", node.start_mark)
        size[key] = (total, depth)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :class:`SweepLoader`'s limits."""
    loader = SweepLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def import_plugins(modules: list[str]) -> None:
    """Import user modules that register models or KD methods (``plugins:`` in the YAML).

    A plugin is user code run at import: whatever it raises, and a ``sys.exit()`` in it, becomes one
    line naming the plugin (an exit would otherwise end kdlib silently, often with status 0).

    Raises:
        ConfigError: a module cannot be imported, raises while being imported, or exits.
    """
    import importlib

    if not isinstance(modules, list):
        raise ConfigError("plugins: expected a list of module names")
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import '{name}': {first_line(exc)}") from None
        except SystemExit as exc:
            raise ConfigError(f"plugins: '{name}' called sys.exit({exc.code!r}) while being imported; "
                              "a plugin must only define and register") from None
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            raise ConfigError(f"plugins: importing '{name}' raised {type(exc).__name__}: {first_line(exc)}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML) to a raw config mapping.

    Raises:
        ConfigError: an override without ``=`` or with an unparsable value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        shown = item if len(item) <= 80 else item[:79] + "…"
        if not sep or not key:
            raise ConfigError(f"--set '{shown}': expected dotted.key=value")
        try:
            value = safe_load(text)
        except YAMLLimitError as exc:
            raise ConfigError(f"--set '{shown}': the value is over kdlib's YAML limits: {exc.problem}") from None
        except (yaml.YAMLError, ValueError, RecursionError):
            raise ConfigError(f"--set '{shown}': the value is not valid YAML") from None
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
        ConfigError: missing, unreadable, too large or non-UTF-8 file, malformed YAML, a YAML tag, a
            duplicate key, a document too large or too deep once its aliases are expanded, or a top
            level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config '{path}' does not exist")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the sweep config: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: the file is larger than {MAX_BYTES // 1024} KiB: not a sweep YAML")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = "UTF-16/32 (it starts with a byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        what = bom or f"invalid UTF-8 byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise ConfigError(f"{path}: not UTF-8 text: {what}; save the sweep YAML as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not UTF-8 text: it holds NUL bytes (UTF-16 or binary?); "
                          "save the sweep YAML as UTF-8")
    try:
        raw = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        what = "YAML over kdlib's limits" if isinstance(exc, YAMLLimitError) else "malformed YAML"
        raise ConfigError(f"{path}: {what}{where}: {problem[:300]}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "integer string conversion" in problem:
            problem = f"an integer of more than {sys.get_int_max_str_digits()} digits"
        raise ConfigError(f"{path}: malformed YAML: {problem[:200]}") from None
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
