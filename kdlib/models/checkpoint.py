"""Checkpoints that rebuild any model size from the file alone (asteroid-style ``serialize()``)."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
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
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a torch file: {exc}") from None
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
    except (KdlibError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint '{path}' does not rebuild: {exc}") from None
    return model.to(device).eval(), payload.get("meta", {})
