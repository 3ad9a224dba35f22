"""Complexity profile of a model: params, MACs per second of audio and real-time factor (RTF)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kdlib.errors import ConfigError
from kdlib.models import SEModel, build_model, count_params, load_model, macs_per_second, size_student


def real_time_factor(model: SEModel, seconds: float = 4.0, repeats: int = 5, threads: int = 1) -> float:
    """Median processing time / audio duration for one ``seconds``-long utterance on the CPU.

    Runs in eval mode without grad on ``threads`` torch threads (restored afterwards), after one
    warm-up pass. RTF < 1 means faster than real time.
    """
    model = model.cpu().eval()
    sr = int(getattr(model, "sample_rate", 16000))
    m = int(getattr(model, "n_channels", 1))
    x = torch.randn(1, int(seconds * sr)) if m == 1 else torch.randn(1, m, int(seconds * sr))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            model(x)  # warm-up: allocator and oneDNN kernel selection
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times) / seconds


def _models_from(path: str | Path, ratios: list[float]) -> list[tuple[str, SEModel, float]]:
    """``(label, model, ratio)`` for a checkpoint, a model YAML ``{name, kwargs}`` or a sweep YAML."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".ckpt"):
        model, _ = load_model(path)
        return [(path.name, model, 1.0)]
    if not path.is_file():
        raise ConfigError(f"'{path}' does not exist")
    from kdlib.config import read_yaml

    raw = read_yaml(path)  # the sweep loader's limits: size, depth, aliases, duplicate keys, UTF-8
    if isinstance(raw, dict) and ("teacher" in raw or "teachers" in raw):
        from kdlib.sweep.plan import load_plan

        cfg = load_plan(path).cfg
        node = cfg.teacher_cfg(cfg.teacher_names()[0]).model  # the first of several named teachers
        name, kwargs = node.name, node.kwargs
    elif isinstance(raw, dict) and "name" in raw and set(raw) <= {"name", "kwargs"}:
        name, kwargs = raw["name"], raw.get("kwargs") or {}
    else:
        raise ConfigError(f"{path}: expected a model YAML {{name, kwargs}} or a sweep YAML with a teacher")
    out = []
    for ratio in ratios:
        teacher_args = build_model(name, kwargs).get_model_args()
        args = teacher_args if ratio == 1 else size_student(name, teacher_args, ratio).model_args
        out.append((f"{name} @ {ratio:g}", build_model(name, args), ratio))
    return out


def profile(path: str | Path, ratios: list[float] | None = None, seconds: float = 4.0,
            repeats: int = 5) -> list[dict[str, Any]]:
    """Profile the model(s) ``path`` describes at each ratio of the teacher's params.

    Returns rows ``{model, ratio, params, macs, rtf}``; MACs are per second of audio, RTF is on one
    CPU thread (median of ``repeats``).

    Raises:
        ConfigError / CheckpointError: unreadable input.
    """
    rows = []
    # the full-size model always comes first: it is the reference of the "% teacher" column
    models = _models_from(path, [1.0, *(r for r in ratios or [] if r != 1.0)])
    base = count_params(models[0][1]) if models and models[0][2] == 1.0 else None
    for label, model, ratio in models:
        params = count_params(model)
        rows.append({"model": label, "ratio": ratio, "params": params,
                     "params_pct": 100.0 * params / base if base else None,
                     "macs": macs_per_second(model), "rtf": real_time_factor(model, seconds, repeats)})
    return rows
