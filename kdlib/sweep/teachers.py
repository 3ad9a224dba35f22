"""The sweep's teachers: trained once (when their checkpoint is missing) and saved with their figures.

Used by ``kdlib sweep run`` (every teacher of the sweep; the missing ones as Ray tasks, see
:mod:`kdlib.sweep.teacher_tasks`) and ``kdlib train-teacher`` (in this process). Training leaves a
resumable state after every epoch next to the checkpoint (:func:`partial_path`), so a teacher whose
process was killed continues from its last completed epoch when it is trained again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdlib.data.sources import SweepData
from kdlib.errors import first_line
from kdlib.kd import build_kd_method
from kdlib.losses import task_loss_for
from kdlib.models import build_model, load_model, save_checkpoint
from kdlib.sweep import contract
from kdlib.sweep.plan import SweepPlan, TeacherPlan
from kdlib.sweep.testsets import score_test_sets
from kdlib.train import Trainer, TrainSettings, resolve_device
from kdlib.train.trainer import Log

#: the teacher's own seed (initialisation; its training mixtures are the sweep's ``data.seed``, like every
#: trial's, and its batches keep the dataset order)
TEACHER_SEED = 0
#: key of a teacher checkpoint's ``meta`` with its per-utterance scores: artifact file name → rows
#: (teachers of kdlib before several test sets kept ``test_scores`` / ``noisy_scores`` row lists instead)
SCORE_FILES = "score_files"
#: key of a teacher checkpoint's ``meta`` with ``[start, end]`` of its training (Unix seconds; the start
#: of the first attempt when it was resumed), e.g. to see that a sweep's teachers trained in parallel
TRAINED_AT = "trained_at"
#: format tag of the per-epoch state file
PARTIAL_FORMAT = "kdlib-teacher-partial-v1"

#: trains a sweep's missing teachers: ``(plan, names, log) → {name: meta}``
#: (:func:`train_in_process`, or :func:`kdlib.sweep.teacher_tasks.train_as_ray_tasks`)
TrainMissing = Callable[[SweepPlan, list[str | None], Log], dict[str | None, dict[str, Any]]]


def partial_path(path: str | Path) -> Path:
    """The per-epoch state file of the teacher checkpoint ``path``: ``<path>.partial`` (not ``*.pt``, so
    it never passes for a checkpoint)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class _EpochStateTrainer(Trainer):
    """A :class:`Trainer` that calls ``on_epoch(stats)`` at the end of every epoch of :meth:`fit`, with that
    epoch's stats (``fit`` runs ``train_epoch`` then ``validate`` per epoch, so the end of ``validate`` is
    the end of an epoch: its weights, optimiser and best-validation state are final)."""

    on_epoch: Callable[[dict[str, float]], None] | None = None
    _train_stats: dict[str, float] | None = None

    def train_epoch(self) -> dict[str, float]:
        self._train_stats = super().train_epoch()
        return self._train_stats

    def validate(self) -> dict[str, float]:
        scores = super().validate()
        if self.on_epoch is not None:
            self.on_epoch({**(self._train_stats or {}), **scores})
        return scores


def _build_trainer(plan: SweepPlan, teacher_plan: TeacherPlan, data: SweepData, device: torch.device,
                   log: Log) -> _EpochStateTrainer:
    """The teacher's model and Trainer, seeded: the same weights on every call."""
    teacher = teacher_plan.config
    torch.manual_seed(TEACHER_SEED)
    model = build_model(teacher.model.name, teacher.model.kwargs).to(device)
    settings = TrainSettings(epochs=teacher.epochs, batch_size=teacher.batch_size, lr=teacher.lr,
                             grad_clip=plan.cfg.training.grad_clip, selection_metric=contract.SELECTION_METRIC,
                             kd_weight=0.0, pesq_mode=plan.cfg.data.test.pesq_mode, label="teacher")
    # the teacher family's default task loss, or the teacher's task_loss
    task_loss = task_loss_for(model, teacher.task_loss, f"{teacher_plan.where}.task_loss")
    return _EpochStateTrainer(model, None, build_kd_method("none", model, None).to(device),
                              task_loss.to(device), data, settings, device, log)


def _read_partial(path: Path, teacher_plan: TeacherPlan, log: Log) -> dict[str, Any] | None:
    """The per-epoch state at ``path`` when it belongs to this teacher; a corrupt or foreign one is deleted."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(state, dict) and state.get("format") == PARTIAL_FORMAT
              and state.get("teacher_hash") == teacher_plan.hash
              and 0 < int(state["trainer"]["epoch"]) <= teacher_plan.config.epochs)
        reason = "another teacher's or an unknown format"
    except Exception as exc:  # noqa: BLE001 - a cut or foreign file makes torch.load raise anything
        ok, reason = False, f"{type(exc).__name__}: {first_line(exc)}"
    if ok:
        return state
    log(f"[teacher] ignoring and deleting the per-epoch state {path} ({reason}): training from epoch 1")
    path.unlink(missing_ok=True)
    return None


def _write_partial(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write leaves the previous state."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def train_teacher(plan: SweepPlan, path: str | Path | None = None, data: SweepData | None = None,
                  log: Log = print, eval_workers: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Train one teacher of the sweep and save it to ``path`` (default: its planned checkpoint path).

    ``name`` picks one of the sweep's ``teachers:`` (None: the single ``teacher:``). The checkpoint's
    ``meta`` holds the teacher's task loss (``task_loss``: its label, e.g. ``si_snr``), params, MACs per
    second of audio, validation SI-SDR (dB), test PESQ/STOI/ESTOI/SI-SDR and the noisy input's scores on
    every test set (means, and per utterance under ``score_files``: file name → rows), the per-epoch
    history, ``train_seconds`` (s, over every attempt) and ``trained_at`` (``[start, end]``, Unix seconds),
    so the sweep logs the teacher and noisy reference points without evaluating again.

    After every epoch the training state (weights, optimiser, best-validation weights, history, torch's
    RNG) is written atomically to :func:`partial_path` of ``path``. A call that finds a valid one there
    (same teacher hash) continues after its epoch, ending bit-identical to an uninterrupted run (the
    mixtures depend only on (seed, epoch, index) and the teacher's batches keep the dataset order); an
    unreadable or foreign one is deleted with a log line. It is removed once the checkpoint is written.

    Returns:
        the ``meta`` dict written.

    Raises:
        DataError: data problems. ConfigError: bad teacher config or device. FloatingPointError: the
            loss or the validation SI-SDR became NaN/inf (the per-epoch state is kept).
    """
    started = time.time()
    teacher_plan = plan.teacher(name)
    teacher = teacher_plan.config
    path = Path(path or teacher_plan.path)
    partial = partial_path(path)
    device = resolve_device(plan.cfg.training.device)
    torch.set_num_threads(teacher.threads)
    data = data or plan.data_source().build(seed=plan.cfg.data.seed)
    trainer = _build_trainer(plan, teacher_plan, data, device, log)
    figures = trainer.complexity()
    task_loss = trainer.task_loss.spec.label()
    log(f"[teacher] {teacher.model.name}: {int(figures['params']):,} params, "
        f"{figures['macs'] / 1e6:.1f} MMAC/s, {len(data.train_speakers)} training speakers, device {device}, "
        f"task loss {task_loss}")
    start, seconds_before = time.perf_counter(), 0.0
    history: list[dict[str, float]] = []
    saved = _read_partial(partial, teacher_plan, log)
    if saved is not None:
        try:
            trainer.load_state(saved["trainer"])
            torch.set_rng_state(saved["rng"])
            history, seconds_before = saved["history"], float(saved["train_seconds"])
            started = float(saved["started"])
            log(f"[teacher] resuming after epoch {trainer.epoch}/{teacher.epochs} from {partial}")
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            log(f"[teacher] ignoring and deleting the per-epoch state {partial} ({type(exc).__name__}: "
                f"{first_line(exc)}): training from epoch 1")
            partial.unlink(missing_ok=True)
            trainer = _build_trainer(plan, teacher_plan, data, device, log)  # load_state may have half-applied
            history, seconds_before = [], 0.0

    def save_epoch(stats: dict[str, float]) -> None:
        history.append({k: float(v) for k, v in stats.items()})
        partial.parent.mkdir(parents=True, exist_ok=True)
        _write_partial(partial, {
            "format": PARTIAL_FORMAT, "teacher_hash": teacher_plan.hash, "trainer": trainer.state(),
            "rng": torch.get_rng_state(), "history": history, "started": started,
            "train_seconds": seconds_before + time.perf_counter() - start})

    trainer.on_epoch = save_epoch
    trainer.fit()
    workers = eval_workers or teacher.threads
    valid = trainer.valid_scores(num_workers=workers, pesq_mode=plan.cfg.data.valid.pesq_mode) \
        .as_flat_dict(contract.VALID_PREFIX)
    scores = score_test_sets(lambda corpus, m: trainer.test(workers, corpus, m), data, plan.cfg.data, noisy=True,
                             num_workers=workers)
    mode = scores.pesq_modes[None]
    meta = {
        "role": contract.ROLE_TEACHER, "teacher_hash": teacher_plan.hash, "sweep": plan.name, "pesq_mode": mode,
        "teacher_name": teacher_plan.key, "model": teacher.model.name, "task_loss": task_loss,
        "sample_rate": plan.cfg.data.sample_rate, "epochs": teacher.epochs,
        "train_seconds": seconds_before + time.perf_counter() - start,
        "audio_seconds_per_second": sum(h["audio_seconds_per_second"] for h in history) / len(history),
        contract.SELECTION_METRIC: trainer.best_val,
        "history": history,
        **{k: float(v) for k, v in figures.items()}, **valid, **scores.metrics,
        # per-utterance rows by file name, logged as the teacher run's CSV artifacts (the report reads them)
        SCORE_FILES: scores.files,
        TRAINED_AT: [started, time.time()],
    }
    save_checkpoint(trainer.best_model(), path, meta)
    partial.unlink(missing_ok=True)
    m = scores.metrics
    log(f"[teacher] saved {path}: test PESQ {m.get('test_pesq', float('nan')):.3f} "
        f"(noisy {m.get('noisy_pesq', float('nan')):.3f}), STOI {m.get('test_stoi', float('nan')):.3f}")
    return meta


def ensure_teacher(plan: SweepPlan, log: Log = print, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A teacher checkpoint of the sweep, trained first (in this process) if missing; returns ``(path, meta)``.

    Raises:
        CheckpointError: the file exists but is truncated or not a kdlib checkpoint.
    """
    return ensure_teachers(plan, log, names=[name])[name]


def train_in_process(plan: SweepPlan, names: list[str | None], log: Log = print) -> dict[str | None, dict[str, Any]]:
    """:data:`TrainMissing` one after another in this process: ``{name: meta}``."""
    return {name: train_teacher(plan, log=log, name=name) for name in names}


def ensure_teachers(plan: SweepPlan, log: Log = print, train: TrainMissing | None = None,
                    names: list[str | None] | None = None) -> dict[str | None, tuple[Path, dict[str, Any]]]:
    """Every teacher of the sweep (``teachers:`` names, or ``None`` for the single one; ``names``: only
    those) → ``(path, meta)``. Existing checkpoints are read; the missing ones are trained by ``train``
    (default :func:`train_in_process`), once per checkpoint path (two names with the same config share it).

    Raises:
        CheckpointError: a checkpoint exists but is truncated or not a kdlib checkpoint. Whatever
            ``train`` raises (see :func:`train_teacher`).
    """
    names = list(plan.teachers) if names is None else names
    found: dict[str | None, tuple[Path, dict[str, Any]]] = {}
    missing: dict[Path, str | None] = {}  # checkpoint path → the first name that trains it
    for name in names:
        path = plan.teacher(name).path
        if path in missing:
            continue
        if path.exists():
            _, meta = load_model(path)
            log(f"[teacher] using {path}")
            found[name] = path, meta
        else:
            log(f"[teacher] {path} missing: training it once for the whole sweep")
            missing[path] = name
    trained = (train or train_in_process)(plan, list(missing.values()), log) if missing else {}
    for path, name in missing.items():
        found[name] = path, trained[name]
    by_path = {path: (path, meta) for path, meta in found.values()}
    return {name: by_path[plan.teacher(name).path] for name in names}
