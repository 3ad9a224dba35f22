"""Checkpoints that rebuild any model size from the file alone (asteroid-style ``serialize()``)."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlib.errors import CheckpointError, KdlibError
from kdlib.models.base import MODELS, SEModel, build_model

FORMAT = "kdlib-checkpoint-v1"


def save_checkpoint(model: SEModel, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``{format, model_name, model_args, state_dict, meta}`` atomically (temp file + rename).

    ``meta`` must hold only plain types (str, numbers, lists, dicts) so the file loads with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **model.serialize(), "meta": dict(meta or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint behind
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line (torch's messages span lines and carry ANSI colours), cut at ``limit``."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises:
        CheckpointError: missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # a real torch file whose pickle holds Python objects, e.g. ``torch.save(model)``
            raise CheckpointError(
                f"'{path}' is not a kdlib checkpoint: it holds pickled Python objects ({found.group(1)}), which "
                "kdlib never loads (weights_only=True); write it with kdlib.models.save_checkpoint") from None
        # torch wraps the unpickler's one-line reason in a paragraph of advice
        reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a torch file: "
                              f"{_one_line(pickle.UnpicklingError(reason))}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged/foreign file makes torch.load raise anything
        # (RuntimeError/OSError for a cut zip, EOFError when empty, KeyError/IndexError for other files)
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a torch file: {_one_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a kdlib checkpoint (no '{FORMAT}' format tag)")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SEModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model, meta)``.

    Raises:
        CheckpointError: unreadable file, unknown model name or weights that do not fit the args.
    """
    payload = read_checkpoint(path)
    name = payload.get("model_name", "")
    if name not in MODELS:
        raise CheckpointError(f"checkpoint '{path}' holds unknown model '{name}'")
    try:
        model = build_model(name, payload["model_args"])
        model.load_state_dict(payload["state_dict"])
    except (KdlibError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' does not rebuild: {_one_line(exc)}") from None
    return model.to(device).eval(), payload.get("meta", {})
