"""The Ray Tune trial: one student trained with one KD method, read top to bottom.

Frozen teacher → student at the trial's size → per epoch: train, validate (SI-SDR), checkpoint,
report → after the last epoch: PESQ/STOI/ESTOI/SI-SDR on the test set, and the best-validation student (with
its complexity and those scores in its ``meta``) in the final checkpoint.
A restarted trial continues from its last reported epoch.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kdlib.kd import build_kd_method
from kdlib.losses import task_loss_for
from kdlib.metrics import write_score_rows
from kdlib.models import build_model, count_params, load_model, save_checkpoint, size_student
from kdlib.sweep import contract
from kdlib.sweep.plan import SweepPlan
from kdlib.sweep.testsets import score_test_sets
from kdlib.train import Trainer, TrainSettings, resolve_device
from kdlib.train.teacher_cache import TeacherCache, cache_key


def kd_trial(config: dict[str, Any], plan: SweepPlan, teacher_paths: dict[str, str]) -> None:
    """Ray Tune function trainable (bound with ``tune.with_parameters``).

    Args:
        config: the trial's point: ``method``, ``student_ratio``, ``seed`` and searched knobs.
        plan: the sweep plan, its data root pinned by the driver.
        teacher_paths: teacher checkpoints by ``teachers:`` name (``""`` for the single ``teacher:``).

    Reports per epoch: ``train_loss``, ``task_loss``, ``kd_loss``, ``val_si_sdr`` (dB),
    ``best_val_si_sdr``, ``params``, ``macs`` (per second of audio), ``params_pct``,
    ``kd_extra_params``, ``achieved_ratio``, ``audio_seconds_per_second``; after the last epoch
    also ``valid_pesq``, ``valid_stoi``, ``valid_estoi``, ``valid_si_sdr`` (the best-validation student on the
    validation set: what the report selects on) and ``test_pesq``, ``test_stoi``, ``test_estoi``,
    ``test_si_sdr`` (+ ``*_missing`` counts) on the primary test set, and ``test_<name>_*`` on every named one
    (per-utterance rows in ``test_scores.csv`` / ``test_scores_<name>.csv`` in the final checkpoint).
    The student trains with ``training.task_loss``, else its family's default; the final checkpoint's ``meta``
    names it (``task_loss``: :meth:`kdlib.losses.TaskLossSpec.label`).
    """
    from ray import tune

    from kdlib.config import import_plugins

    cfg = plan.cfg
    import_plugins(cfg.plugins)
    threads = max(1, int(cfg.resources.cpu))
    torch.set_num_threads(threads)
    spec = plan.trial_spec(config)
    device = resolve_device(cfg.training.device)
    workers = cfg.training.num_workers
    workers = max(0, math.ceil(cfg.resources.cpu) - 1) if workers is None else workers

    # the frozen teacher, and the student sized against it
    teacher_path = teacher_paths[spec.teacher or ""]
    teacher, _ = load_model(teacher_path, device)
    family, base_args = cfg.student_base(spec.student, teacher.get_model_args(), spec.teacher)
    sized = size_student(family, teacher.get_model_args(), spec.student_ratio, cfg.training.size_tolerance,
                         base_args=base_args, teacher_name=cfg.teacher_cfg(spec.teacher).model.name)
    # paired design: every trial of the sweep trains on the mixtures of data.seed; its own seed decides the
    # student's initialisation and the batch order
    data = plan.data_source().build(seed=cfg.data.seed)
    torch.manual_seed(spec.seed)  # student init, then the KD method's own parameters, in this order
    student = build_model(family, sized.model_args).to(device)
    teacher.to(device).eval().requires_grad_(False)
    kd = build_kd_method(spec.method, student, teacher, spec.kd).to(device)
    auto = spec.kd_weight == "auto"
    settings = TrainSettings(
        epochs=cfg.training.epochs, batch_size=cfg.training.batch_size, lr=spec.lr,
        grad_clip=cfg.training.grad_clip, selection_metric=contract.SELECTION_METRIC,
        kd_weight=1.0 if auto else float(spec.kd_weight),
        schedule=spec.schedule, kd_only_epochs=cfg.training.kd_only_epochs, pesq_mode=cfg.data.test.pesq_mode,
        label=spec.label(), shuffle_seed=spec.seed, num_workers=workers, precision=cfg.training.precision)
    # the teacher's outputs and taps per epoch, computed by the first KD trial that reaches the epoch and read
    # by all the others (paired design: every trial sees the same items)
    cache = None
    if cfg.teacher_cache.enabled and kd.needs_teacher:
        key = cache_key(teacher_path, plan.cache_data_identity(), cfg.data.seed)
        cache = TeacherCache(plan.teacher_cache_dir, key, plan.cache_taps(spec.teacher))
    # the student family's default task loss, or the sweep's training.task_loss
    task_loss = task_loss_for(student, cfg.training.task_loss, "training.task_loss")
    print(f"[{spec.label()}] task loss {task_loss.spec.label()}")
    trainer = Trainer(student, teacher, kd, task_loss.to(device), data, settings, device, teacher_cache=cache)
    figures = {**trainer.complexity(count_params(teacher)), "achieved_ratio": sized.achieved_ratio}
    if auto:
        # on the freshly initialised student, before any checkpoint is loaded: a resumed trial gets the same λ
        ratio = trainer.gradient_ratio(cfg.training.kd_calibration_batches)
        if not (ratio > 0 and math.isfinite(ratio)):
            if trainer.use_teacher:  # a KD method with no usable gradient must not train as `none` under its name
                raise FloatingPointError(
                    f"[{spec.label()}] kd_weight auto: ‖∇KD‖/‖∇task‖ is {ratio} at initialisation (the KD loss "
                    "sends no gradient to the student, or the task loss none): set a fixed training.kd_weight")
            ratio = 0.0
        weight = cfg.training.kd_balance / ratio if ratio > 0 else 0.0
        trainer.settings = replace(settings, kd_weight=weight)
        figures.update(kd_grad_ratio_init=ratio)
        print(f"[{spec.label()}] kd_weight auto: ‖∇KD‖/‖∇task‖ = {ratio:.3g} at init, λ = {weight:.3g}")
    figures["kd_weight_resolved"] = trainer.settings.kd_weight

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state(torch.load(Path(d) / contract.STATE_FILE, map_location=device, weights_only=True))
        # after the last epoch (a driver killed between the trial's final report and Tune saving that
        # it ended) the loop below does nothing: Tune keeps the final result it had saved with that
        # checkpoint and ends the trial, without training or reporting anything again
        print(f"[{spec.label()}] resumed after epoch {trainer.epoch}")

    while trainer.epoch < trainer.epochs:
        metrics: dict[str, Any] = {**trainer.train_epoch(), **trainer.validate(), **figures}
        metrics["epoch"] = trainer.epoch
        final = trainer.epoch == trainer.epochs
        if final:
            metrics.update(trainer.valid_scores(num_workers=threads, pesq_mode=cfg.data.valid.pesq_mode)
                           .as_flat_dict(contract.VALID_PREFIX))
            scores = score_test_sets(partial(trainer.test, threads), data, cfg.data)  # (corpus, pesq_mode)
            metrics.update(scores.metrics)
        pesq_key = f"{contract.TEST_PREFIX}pesq"
        test_line = f" test PESQ {metrics[pesq_key]:.3f}" if pesq_key in metrics else ""
        print(f"[{spec.label()}] epoch {trainer.epoch}/{trainer.epochs} loss {metrics['train_loss']:.4f} "
              f"val SI-SDR {metrics[contract.SELECTION_METRIC]:.2f} dB{test_line}")
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state(), Path(d) / contract.STATE_FILE)
            if final:
                # the best-validation student rides in the final Tune checkpoint, which Ray persists to the
                # sweep's storage; the driver's MLflow logger logs it as the run's artifact from there
                save_checkpoint(trainer.best_model(), Path(d) / contract.STUDENT_FILE, {
                    "method": spec.method, "student_ratio": spec.student_ratio, "seed": spec.seed,
                    "teacher": os.path.basename(teacher_path), "task_loss": task_loss.spec.label(),
                    **{k: float(v) for k, v in metrics.items() if k != "epoch" and isinstance(v, int | float)},
                    # the saved weights are the best epoch's: so is the validation score beside them
                    contract.SELECTION_METRIC: trainer.best_val,
                })
                for file, rows in scores.files.items():
                    write_score_rows(Path(d) / file, rows)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    # a finished trial gives its memory back at once: Tune hands its actor to the next trial (reuse_actors),
    # and nothing module-level holds a trial's tensors
    del trainer, teacher, data, sized, student, kd, task_loss
    release_memory()


def release_memory() -> None:
    """Collect garbage and hand cached CUDA memory back to the device (no-op without CUDA)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
