"""P1: the training-step time of every registered KD method, with and without the teacher-output cache, as a
ratio to the ``none`` step measured in the same process.

A step is what :meth:`kdlib.train.Trainer.train_epoch` does per batch: (teacher forward or cache read) +
student forward + task and KD losses + backward + gradient clipping + Adam. The teacher and students are the
quickstart's family (``sweeps/quickstart.yaml``'s teacher, untrained unless ``--teacher`` gives a checkpoint:
the weights do not change the cost), the items its real training mixtures (batch 8 × 2 s at 16 kHz by
default), one torch thread. Each figure is the median of ``--steps`` steps after ``--warmup`` warm-up steps.
Per method, the ``none`` step and the method's steps without and with the cache are timed in turn (one step of
each per round) and the ratios are taken against the ``none`` median of the same rounds: the machine's speed
drifts by up to 20 % over one run of this script, and interleaving gives all three figures the same drift.
Methods that do not run on the family (other families' methods) are listed as skipped, with the reason.

Target (issue 12): with the cache, ≤ 1.10 for output-based methods and ≤ 1.30 for feature-based methods at 4 %.

    python benchmarks/kd_step.py            # every method, ratios 0.25 and 0.04
    python benchmarks/kd_step.py --quick    # 3 methods, 3 steps: CI's check that it runs
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK_METHODS = ["output", "self_similarity", "fitnets"]


def _stepper(trainer):
    """A function that runs the next training step of ``trainer`` (the body of ``Trainer.train_epoch`` for one
    batch, cycling over its epoch-0 batches) and returns its seconds."""
    import torch

    trainer.data.train.set_epoch(0)
    trainer.sampler.set_epoch(0)
    trainer._cached_epoch(0)
    trainer.student.train()
    trainer.kd.train()
    task_weight, kd_weight = trainer.loss_weights()
    batches = itertools.cycle(list(trainer.loader))

    def step() -> float:
        noisy, clean, index = next(batches)
        start = time.perf_counter()
        task, kd = trainer._losses(noisy, clean, index)
        loss = task_weight * task + kd_weight * kd
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.student.parameters(), trainer.settings.grad_clip)
        trainer.optimizer.step()
        return time.perf_counter() - start

    return step


def interleaved_medians(trainers: list, steps: int, warmup: int) -> list[float]:
    """Median seconds per step of each trainer, their steps taken in turn (trainer 1, 2, ..., 1, 2, ...) so
    that a slow drift of the machine's speed reaches every trainer alike; ``warmup`` rounds are discarded."""
    steppers = [_stepper(t) for t in trainers]
    times: list[list[float]] = [[] for _ in trainers]
    for k in range(warmup + steps):
        for step, out in zip(steppers, times, strict=True):
            seconds = step()
            if k >= warmup:
                out.append(seconds)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 methods, 3 steps, ratio 0.04 only")
    parser.add_argument("--methods", nargs="*", help="methods to time (default: every registered one)")
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.25, 0.04])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--teacher", help="a teacher checkpoint of the quickstart family (default: untrained)")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods, args.ratios, args.steps, args.warmup = args.methods or QUICK_METHODS, [0.04], 3, 1

    import torch

    from kdlib.errors import KdlibError
    from kdlib.kd import KD_METHODS, build_kd_method
    from kdlib.losses import task_loss_for
    from kdlib.models import build_model, load_model, size_student
    from kdlib.sweep.plan import load_plan
    from kdlib.train import Trainer, TrainSettings
    from kdlib.train.teacher_cache import TeacherCache

    torch.set_num_threads(1)
    segments = max(args.batch_size * (args.steps + args.warmup), args.batch_size)
    plan = load_plan(REPO / "sweeps" / "quickstart.yaml", overrides=[f"data.train.segments_per_epoch={segments}"])
    cfg = plan.cfg
    data = plan.data_source().build(seed=cfg.data.seed)
    torch.manual_seed(0)
    if args.teacher:
        teacher, _ = load_model(args.teacher)
    else:
        teacher = build_model(cfg.teacher.model.name, cfg.teacher.model.kwargs)
    teacher.eval().requires_grad_(False)
    methods = args.methods or [m for m in KD_METHODS.names() if m != "none"]
    command = "python benchmarks/kd_step.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"# command: {command.strip()}")
    print(f"# teacher {cfg.teacher.model.name} ({'trained: ' + args.teacher if args.teacher else 'untrained'}), "
          f"batch {args.batch_size} x {cfg.data.train.segment_seconds:g} s, 1 thread, median of {args.steps} steps "
          f"after {args.warmup}")

    with tempfile.TemporaryDirectory() as tmp:
        taps: dict[str, None] = {}
        built: dict[str, str | None] = {}
        for m in methods:  # which methods run on this family, and the teacher taps they read
            try:
                kd = build_kd_method(m, teacher, teacher, cfg.methods.get(m, {}))
                taps.update(dict.fromkeys(kd.teacher_taps()))
                built[m] = None
            except (KdlibError, ValueError, TypeError) as exc:
                built[m] = str(exc).splitlines()[0][:120]
        cache = TeacherCache(tmp, "bench", list(taps), log=lambda _: None)

        def trainer(method: str, ratio: float, cached: bool) -> Trainer:
            torch.manual_seed(1)
            args_ = size_student(cfg.teacher.model.name, teacher.get_model_args(), ratio).model_args
            student = build_model(cfg.teacher.model.name, args_)
            kd = build_kd_method(method, student, teacher, cfg.methods.get(method, {}))
            settings = TrainSettings(epochs=1, batch_size=args.batch_size, lr=1e-3, grad_clip=5.0,
                                     selection_metric="val_si_sdr", kd_weight=1.0, shuffle_seed=0)
            return Trainer(student, teacher, kd, task_loss_for(student), data, settings, "cpu",
                           log=lambda _: None, teacher_cache=cache if cached else None)

        interleaved_medians([trainer("none", args.ratios[0], False)], args.steps, args.warmup)  # process warm-up
        for ratio in args.ratios:
            bases = []
            for m in methods:
                if built[m] is not None:
                    print(f"ratio {ratio:g}: {m}: skipped ({built[m]})")
                    continue
                base, plain, cached = interleaved_medians(
                    [trainer("none", ratio, False), trainer(m, ratio, False), trainer(m, ratio, True)],
                    args.steps, args.warmup)
                bases.append(base)
                print(f"ratio {ratio:g}: {m}: {plain / base:.2f}x none without the cache, "
                      f"{cached / base:.2f}x with it ({plain * 1e3:.0f} -> {cached * 1e3:.0f} ms; "
                      f"none {base * 1e3:.0f} ms in the same rounds)", flush=True)
            if bases:
                print(f"ratio {ratio:g}: none step over the methods' rounds: {min(bases) * 1e3:.0f}-"
                      f"{max(bases) * 1e3:.0f} ms (median {statistics.median(bases) * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
