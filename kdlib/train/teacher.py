"""Train the sweep's teacher once and save it with its figures (used by ``kdlib train-teacher`` and
by ``kdlib sweep run`` when the teacher checkpoint is missing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from kdlib.config import SweepConfig
from kdlib.evaluation import evaluate_noisy, resolve_pesq_mode
from kdlib.models import load_model, save_checkpoint
from kdlib.train.datasets import SweepData, build_sweep_data
from kdlib.train.device import resolve_device
from kdlib.train.trainer import Log, Trainer, TrialSpec


def train_teacher(cfg: SweepConfig, path: str | Path | None = None, data: SweepData | None = None,
                  log: Log = print, eval_workers: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Train a teacher of ``cfg`` and save it to ``path`` (default :meth:`SweepConfig.teacher_path`).

    ``name`` picks one of the sweep's ``teachers:`` (None: the single ``teacher:``).

    The checkpoint's ``meta`` holds the teacher's params, MACs per second of audio, validation
    SI-SDR (dB), test PESQ/STOI/ESTOI/SI-SDR and the noisy input's scores on the same test set,
    so the sweep can log the teacher and noisy reference points without re-evaluating.

    Returns:
        the ``meta`` dict written.

    Raises:
        DataError: data problems. ConfigError: bad teacher config.
    """
    path = Path(path or cfg.teacher_path(name))
    teacher = cfg.teacher_cfg(name)
    device = resolve_device(cfg.training.device)
    torch.set_num_threads(teacher.threads)
    data = data or build_sweep_data(cfg, seed=0)
    spec = TrialSpec("none", 1.0, seed=0, lr=teacher.lr, kd_weight=0.0)
    trainer = Trainer(cfg, spec, teacher.model.kwargs, data, None, device,
                      epochs=teacher.epochs, batch_size=teacher.batch_size,
                      log=lambda m: log(m.replace(spec.label(), "teacher")), model_name=teacher.model.name)
    figures = trainer.complexity()
    log(f"[teacher] {teacher.model.name}: {int(figures['params']):,} params, "
        f"{figures['macs'] / 1e6:.1f} MMAC/s, {len(data.train_speakers)} training speakers, device {device}")
    start = time.perf_counter()
    history = []
    for epoch in range(teacher.epochs):
        stats = trainer.train_epoch()
        stats.update(trainer.validate())
        history.append(stats)
        elapsed = time.perf_counter() - start
        log(f"[teacher] epoch {epoch + 1}/{teacher.epochs} loss {stats['train_loss']:.4f} "
            f"val SI-SDR {stats['val_si_sdr']:.2f} dB, {stats['audio_seconds_per_second']:.1f} audio s/s, "
            f"eta {elapsed / (epoch + 1) * (teacher.epochs - epoch - 1):.0f}s")
    workers = eval_workers or teacher.threads
    test = trainer.test(num_workers=workers)
    mode = resolve_pesq_mode(cfg.data.test.pesq_mode, data.test)
    noisy = evaluate_noisy(data.test, mode, num_workers=workers).as_flat_dict("noisy_")
    meta = {
        "role": "teacher", "teacher_hash": cfg.teacher_hash(name), "sweep": cfg.name, "pesq_mode": mode,
        "teacher_name": name or "", "model": teacher.model.name,
        "sample_rate": cfg.data.sample_rate, "epochs": teacher.epochs,
        "train_seconds": time.perf_counter() - start,
        "audio_seconds_per_second": sum(h["audio_seconds_per_second"] for h in history) / len(history),
        "val_si_sdr": trainer.best_val, "history": [{k: float(v) for k, v in h.items()} for h in history],
        **{k: float(v) for k, v in figures.items()}, **test, **noisy,
    }
    save_checkpoint(trainer.best_model(), path, meta)
    log(f"[teacher] saved {path}: test PESQ {test.get('test_pesq', float('nan')):.3f} "
        f"(noisy {noisy.get('noisy_pesq', float('nan')):.3f}), STOI {test.get('test_stoi', float('nan')):.3f}")
    return meta


def ensure_teacher(cfg: SweepConfig, log: Log = print, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A teacher checkpoint of ``cfg``, trained first if missing; returns ``(path, meta)``.

    Raises:
        CheckpointError: the file exists but is truncated or not a kdlib checkpoint.
    """
    path = cfg.teacher_path(name)
    if path.exists():
        _, meta = load_model(path)
        log(f"[teacher] using {path}")
        return path, meta
    log(f"[teacher] {path} missing: training it once for the whole sweep")
    return path, train_teacher(cfg, path, log=log, name=name)


def ensure_teachers(cfg: SweepConfig, log: Log = print) -> dict[str | None, tuple[Path, dict[str, Any]]]:
    """Every teacher of the sweep (``teachers:`` names, or ``None`` for the single one) → ``(path, meta)``."""
    return {name: ensure_teacher(cfg, log, name) for name in cfg.teacher_names()}
