"""Turns pydantic validation errors into the one-line messages kdlib promises for bad config."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdlib.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """First error as ``<dotted.key>: <message> (got <value>)``; further errors are counted."""
    errors = exc.errors()
    err = errors[0]
    key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    if err["type"] == "extra_forbidden":
        msg = f"unknown key '{key}'"
    elif err["type"] == "missing":
        msg = f"missing key '{key}'"
    elif not err["loc"] and err["type"] == "value_error":
        # cross-field checks already name their key in the message
        msg = err["msg"].removeprefix("Value error, ")
    else:
        got = repr(err.get("input"))
        text = err["msg"].removeprefix("Value error, ")
        msg = f"{key}: {text} (got {got[:60]})"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more error(s)]"
    return msg


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    """``model.model_validate(data)`` that raises :class:`ConfigError` with one line naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, prefix)) from None
