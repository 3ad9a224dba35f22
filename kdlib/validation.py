"""Turns pydantic validation errors into the one-line messages kdlib promises for bad config.

A message stays short whatever the input: values are shown with :mod:`reprlib` limits (never the
``repr`` of a whole, possibly huge, input) and every part is cut to a fixed length.
"""

from __future__ import annotations

import reprlib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdlib.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

#: longest key path, message text and shown value of a one-line error
MAX_KEY, MAX_TEXT, MAX_GOT = 120, 300, 60



def short_reprlib(width: int = MAX_GOT) -> reprlib.Repr:
    """A :class:`reprlib.Repr` of two levels, four items per container and ``width`` characters per
    string or other value (attributes set one by one: ``Repr`` takes no arguments before Python 3.12)."""
    r = reprlib.Repr()
    r.maxlevel = 2
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 4
    r.maxstring = r.maxother = width
    r.maxlong = 40
    return r


_repr = short_reprlib()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_repr(value: Any) -> str:
    """A ``repr`` of ``value`` of at most :data:`MAX_GOT` characters, whatever its size."""
    try:
        return _cut(_repr.repr(value), MAX_GOT)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the error being reported
        return f"<{type(value).__name__}>"


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """First error as ``<dotted.key>: <message> (got <value>)``; further errors are counted."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    key = _cut(".".join(_cut(str(p), 40) for p in (prefix, *err["loc"]) if p != ""), MAX_KEY)
    if err["type"] == "extra_forbidden":
        msg = f"unknown key '{key}'"
    elif err["type"] == "missing":
        msg = f"missing key '{key}'"
    elif not err["loc"] and err["type"] == "value_error":
        # cross-field checks already name their key in the message
        msg = _cut(err["msg"].removeprefix("Value error, "), MAX_TEXT)
    else:
        text = _cut(err["msg"].removeprefix("Value error, "), MAX_TEXT)
        msg = f"{key}: {text} (got {short_repr(err.get('input'))})"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more error(s)]"
    return msg


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    """``model.model_validate(data)`` that raises :class:`ConfigError` with one line naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, prefix)) from None
