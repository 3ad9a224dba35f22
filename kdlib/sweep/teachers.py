"""The sweep's teachers: trained once (when their checkpoint is missing) and saved with their figures.

Used by ``kdlib sweep run`` (every teacher of the sweep) and ``kdlib train-teacher``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from kdlib.data.sources import SweepData
from kdlib.kd import build_kd_method
from kdlib.losses import task_loss_for
from kdlib.models import build_model, load_model, save_checkpoint
from kdlib.sweep import contract
from kdlib.sweep.plan import SweepPlan
from kdlib.sweep.testsets import score_test_sets
from kdlib.train import Trainer, TrainSettings, resolve_device
from kdlib.train.trainer import Log

#: the teacher's own seed (initialisation; its training mixtures are the sweep's ``data.seed``, like every
#: trial's, and its batches keep the dataset order)
TEACHER_SEED = 0
#: key of a teacher checkpoint's ``meta`` with its per-utterance scores: artifact file name → rows
#: (teachers of kdlib before several test sets kept ``test_scores`` / ``noisy_scores`` row lists instead)
SCORE_FILES = "score_files"


def train_teacher(plan: SweepPlan, path: str | Path | None = None, data: SweepData | None = None,
                  log: Log = print, eval_workers: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Train one teacher of the sweep and save it to ``path`` (default: its planned checkpoint path).

    ``name`` picks one of the sweep's ``teachers:`` (None: the single ``teacher:``). The checkpoint's
    ``meta`` holds the teacher's params, MACs per second of audio, validation SI-SDR (dB), test
    PESQ/STOI/ESTOI/SI-SDR and the noisy input's scores on every test set (means, and per utterance
    under ``score_files``: file name → rows), so the sweep logs the teacher and noisy reference points
    without evaluating again.

    Returns:
        the ``meta`` dict written.

    Raises:
        DataError: data problems. ConfigError: bad teacher config or device.
    """
    teacher_plan = plan.teacher(name)
    teacher = teacher_plan.config
    path = Path(path or teacher_plan.path)
    device = resolve_device(plan.cfg.training.device)
    torch.set_num_threads(teacher.threads)
    data = data or plan.data_source().build(seed=plan.cfg.data.seed)
    torch.manual_seed(TEACHER_SEED)
    model = build_model(teacher.model.name, teacher.model.kwargs).to(device)
    settings = TrainSettings(epochs=teacher.epochs, batch_size=teacher.batch_size, lr=teacher.lr,
                             grad_clip=plan.cfg.training.grad_clip, selection_metric=contract.SELECTION_METRIC,
                             kd_weight=0.0, pesq_mode=plan.cfg.data.test.pesq_mode, label="teacher")
    trainer = Trainer(model, None, build_kd_method("none", model, None).to(device), task_loss_for(model).to(device),
                      data, settings, device, log)
    figures = trainer.complexity()
    log(f"[teacher] {teacher.model.name}: {int(figures['params']):,} params, "
        f"{figures['macs'] / 1e6:.1f} MMAC/s, {len(data.train_speakers)} training speakers, device {device}")
    start = time.perf_counter()
    history = trainer.fit()
    workers = eval_workers or teacher.threads
    valid = trainer.valid_scores(num_workers=workers, pesq_mode=plan.cfg.data.valid.pesq_mode) \
        .as_flat_dict(contract.VALID_PREFIX)
    scores = score_test_sets(lambda corpus, m: trainer.test(workers, corpus, m), data, plan.cfg.data, noisy=True,
                             num_workers=workers)
    mode = scores.pesq_modes[None]
    meta = {
        "role": contract.ROLE_TEACHER, "teacher_hash": teacher_plan.hash, "sweep": plan.name, "pesq_mode": mode,
        "teacher_name": teacher_plan.key, "model": teacher.model.name,
        "sample_rate": plan.cfg.data.sample_rate, "epochs": teacher.epochs,
        "train_seconds": time.perf_counter() - start,
        "audio_seconds_per_second": sum(h["audio_seconds_per_second"] for h in history) / len(history),
        contract.SELECTION_METRIC: trainer.best_val,
        "history": [{k: float(v) for k, v in h.items()} for h in history],
        **{k: float(v) for k, v in figures.items()}, **valid, **scores.metrics,
        # per-utterance rows by file name, logged as the teacher run's CSV artifacts (the report reads them)
        SCORE_FILES: scores.files,
    }
    save_checkpoint(trainer.best_model(), path, meta)
    m = scores.metrics
    log(f"[teacher] saved {path}: test PESQ {m.get('test_pesq', float('nan')):.3f} "
        f"(noisy {m.get('noisy_pesq', float('nan')):.3f}), STOI {m.get('test_stoi', float('nan')):.3f}")
    return meta


def ensure_teacher(plan: SweepPlan, log: Log = print, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A teacher checkpoint of the sweep, trained first if missing; returns ``(path, meta)``.

    Raises:
        CheckpointError: the file exists but is truncated or not a kdlib checkpoint.
    """
    path = plan.teacher(name).path
    if path.exists():
        _, meta = load_model(path)
        log(f"[teacher] using {path}")
        return path, meta
    log(f"[teacher] {path} missing: training it once for the whole sweep")
    return path, train_teacher(plan, path, log=log, name=name)


def ensure_teachers(plan: SweepPlan, log: Log = print) -> dict[str | None, tuple[Path, dict[str, Any]]]:
    """Every teacher of the sweep (``teachers:`` names, or ``None`` for the single one) → ``(path, meta)``."""
    return {name: ensure_teacher(plan, log, name) for name in plan.teachers}
