"""Aggregate student-training throughput (audio-seconds/s) with k = 1, 2, 4, 8 trials packed on one GPU
(issue "Cheap trials", P5): how much a fractional ``resources.gpu`` (several students per GPU) buys.

For each k, k processes each train a student with :class:`kdlib.train.Trainer` on that GPU at once: the
quickstart's student at 25 % of its teacher (``dpcrn_lite``, sized with kdlib's size builder), KD method
``output`` with the quickstart teacher's architecture run at every step (``--method none``: no teacher),
batch 8 of 2 s segments as the quickstart trains. The training items are synthetic (tones in noise, made
once per process before the clock starts), so the figure is the GPU's, not the disk's or the mixer's.
Each process builds its models, trains one untimed warm-up epoch, waits for the others at a barrier, then trains
``--epochs`` timed epochs; the aggregate throughput is all processes' training audio divided by the time
from the barrier to the last process's end. Each process gets ``cores // k`` torch CPU threads.

Prints "no GPU" and exits 0 where CUDA is absent (``--device cpu`` runs the same code on the CPU, to
check the script itself).

    python benchmarks/gpu_packing.py            # k = 1 2 4 8, 64 items per epoch, 3 timed epochs
    python benchmarks/gpu_packing.py --quick    # k = 1 2, 32 items, 1 timed epoch
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
RATE, SEGMENT_S, BATCH = 16000, 2.0, 8


class SyntheticItems:
    """``n`` ``(noisy, clean)`` float32 ``(L,)`` items, a few harmonics in white noise at −5…15 dB SNR, made
    once (the same items every epoch, so the loop's CPU cost is only batching); the
    :class:`kdlib.train.trainer.TrainSet` contract."""

    sample_rate = RATE

    def __init__(self, n: int, seconds: float, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * RATE)) / RATE
        self.items = []
        for _ in range(n):
            f0 = rng.uniform(100, 300)
            clean = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6)) * 0.1
            noisy = clean + rng.normal(0, 10 ** (-rng.uniform(-5, 15) / 20) * clean.std(), t.size)
            self.items.append((noisy.astype(np.float32), clean.astype(np.float32)))

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        pass  # one fixed set of items

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.items[index]


def _worker(rank: int, k: int, args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    """One packed trial: build, warm up one epoch, wait for the others, train the timed epochs, report
    ``(rank, audio seconds, end time)`` on ``queue`` (or ``(rank, error text)``)."""
    try:
        import torch

        from kdlib.config.loader import load_config
        from kdlib.kd import build_kd_method
        from kdlib.losses import task_loss_for
        from kdlib.models import build_model, size_student
        from kdlib.train import Trainer, TrainSettings

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // k))
        spec = load_config(QUICKSTART).teacher.model
        torch.manual_seed(rank)
        teacher = build_model(spec.name, spec.kwargs)
        student = build_model(spec.name, size_student(spec.name, teacher.get_model_args(), 0.25).model_args)
        kd = build_kd_method(args.method, student, teacher)
        data = SimpleNamespace(train=SyntheticItems(args.items, SEGMENT_S, rank), valid=None, test=None)
        settings = TrainSettings(epochs=1 + args.epochs, batch_size=BATCH, lr=1e-3, grad_clip=5.0,
                                 selection_metric="val_si_sdr", label=f"k{k}-{rank}")
        trainer = Trainer(student, teacher, kd, task_loss_for(student), data, settings, args.device,
                          log=lambda _: None)
        trainer.train_epoch()  # warm-up: allocator, cuDNN autotuning, first-call costs
        barrier.wait()
        audio = 0.0
        for _ in range(args.epochs):
            stats = trainer.train_epoch()
            audio += stats["audio_seconds_per_second"] * stats["epoch_seconds"]
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        queue.put((rank, audio, time.time()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        queue.put((rank, f"{type(exc).__name__}: {exc}"))
        barrier.abort()


def packed_throughput(k: int, args: argparse.Namespace) -> float:
    """Aggregate audio-seconds/s of ``k`` processes training at once (see the module docstring).

    Raises:
        RuntimeError: a process failed (its error), or did not report within ``--timeout`` seconds.
    """
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, queue = ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, k, args, barrier, queue), daemon=True) for r in range(k)]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=args.timeout)
        start = time.time()
        reports = [queue.get(timeout=args.timeout) for _ in range(k)]
    except Exception as exc:  # noqa: BLE001 - a broken barrier or a timeout: show what the workers said
        said = []
        while not queue.empty():
            said.append(str(queue.get()))
        raise RuntimeError(f"k={k}: {type(exc).__name__} {'; '.join(said)}") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [r for r in reports if len(r) == 2]
    if errors:
        raise RuntimeError(f"k={k}: process {errors[0][0]} failed: {errors[0][1]}")
    return sum(r[1] for r in reports) / (max(r[2] for r in reports) - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="k = 1 2, 32 items, 1 timed epoch")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="trials per GPU (default 1 2 4 8; --quick 1 2)")
    p.add_argument("--items", type=int, default=None, help="2 s items per epoch (default 64; --quick 32)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs (default 3; --quick 1)")
    p.add_argument("--method", default="output", choices=["output", "none"], help="KD method (default output)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu checks the script itself")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a process")
    args = p.parse_args(argv)
    args.ks = args.ks or ([1, 2] if args.quick else [1, 2, 4, 8])
    args.items = args.items or (32 if args.quick else 64)
    args.epochs = args.epochs or (1 if args.quick else 3)
    shown = " ".join(["python", "benchmarks/gpu_packing.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# command: {shown}", flush=True)

    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"no GPU (torch {torch.__version__} sees no CUDA device): nothing measured  $ {shown}")
            return 0
        name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        name = args.device
    print(f"# device {name}; student dpcrn_lite 25 %, method {args.method}, batch {BATCH} × {SEGMENT_S:g} s, "
          f"{args.items} items/epoch, {args.epochs} timed epoch(s), {os.cpu_count()} CPUs", flush=True)
    single = None
    for k in args.ks:
        rate = packed_throughput(k, args)
        single = rate if single is None and k == 1 else single
        gain = f", {rate / single:.2f}x k=1" if single else ""
        print(f"k={k}: {rate:.1f} audio-s/s aggregate ({rate / k:.1f} per trial{gain})  $ {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
