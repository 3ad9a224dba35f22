"""Overhead of a small real sweep: the wall time of ``kdlib sweep run`` against the trials' own time
(issue "Cheap trials", P3; target: wall / (Σ trial time ÷ concurrency) ≤ 1.10).

Runs ``kdlib sweep run sweeps/quickstart.yaml`` in a subprocess with ``--set`` overrides and a temporary
``KDLIB_OUTPUT``: 4 trials (methods ``none`` and ``output`` × seeds 0, 1 at student ratio 0.25; 2 trials in
the ``--quick`` form, which is ``--smoke-test`` and keeps one seed), 2 at a time on 1 CPU each as the quickstart
runs them, report included. By default the trials are the quickstart's own (4 epochs × 320 segments, both test
sets); ``--short`` cuts them to 2 epochs × 64 segments, where the fixed costs weigh more.

A trial's own time is Ray Tune's ``time_total_s`` of its last result (from the trainable's start to its final
report: training, validation, test scoring and the final checkpoint); concurrency is the number of trials Ray
runs at once (``ray.max_concurrent_trials``, else ``ray.num_cpus // resources.cpu``, at most the trial count).
The teacher-output cache is filled by Ray tasks (one per epoch, each in a trial slot) before and beside the
first trials: the work the KD trials' teacher forwards would otherwise be. Its fill time (the tasks' ``[teacher
cache] …/epoch_N: … in X s`` log lines) is counted as trial work in the ratio, and printed apart. The ratio
charges everything else to the sweep: Ray start-up, trial actor start-up, MLflow logging, the parent run and the
report. The teacher is not part of it: it is trained beforehand (``kdlib train-teacher``, 1 epoch; its time is
printed apart) or given with ``--teacher CHECKPOINT`` (a checkpoint of the quickstart teacher's architecture).

    python benchmarks/sweep_overhead.py            # the quickstart's trials (about 8 min on 2 cores)
    python benchmarks/sweep_overhead.py --short    # 2 epochs × 64 segments per trial (about 3 min)
    python benchmarks/sweep_overhead.py --quick    # the same grid in --smoke-test form (about 1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _sweep_common import KDLIB, SWEEP, clean_env, run, teacher_sets, train_teacher

TARGET = 1.10
GRID = ["search.method=[none,output]", "search.student_ratio=[0.25]", "search.seed=[0,1]"]
SHORT = ["training.epochs=2", "data.train.segments_per_epoch=64"]
#: a fill line of the cache-filling Ray task (not of a trial, whose fills are in its own time)
FILL = re.compile(r"\(teacher-cache-[^)]*\).*\[teacher cache\] \S+/epoch_\d+: .* in ([0-9.]+) s")


def concurrency(config: dict[str, Any], trials: int) -> int:
    """Trials Ray runs at once for a validated sweep config (``kdlib_sweep.json``'s ``config``)."""
    ray, cpu = config["ray"], float(config["resources"]["cpu"])
    slots = ray.get("max_concurrent_trials") or max(1, int((ray.get("num_cpus") or os.cpu_count() or 1) // cpu))
    return max(1, min(slots, trials))


def trial_times(experiment_dir: Path) -> list[tuple[float, float]]:
    """``(start, end)`` unix seconds of each trial of a Ray Tune experiment: ``end`` is its last result's
    ``timestamp``, ``start`` that minus ``time_total_s``."""
    from ray.tune import ExperimentAnalysis

    out = []
    for trial in ExperimentAnalysis(str(experiment_dir)).trials:
        last = trial.last_result or {}
        if "time_total_s" not in last:
            raise RuntimeError(f"trial {trial} reported no result")
        out.append((float(last["timestamp"]) - float(last["time_total_s"]), float(last["timestamp"])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="--smoke-test sized trials")
    p.add_argument("--short", action="store_true", help="2 epochs x 64 segments per trial")
    p.add_argument("--teacher", default=None, help="use this teacher checkpoint instead of training one")
    p.add_argument("--keep", default=None, help="keep the sweep's output in this folder (default: a temp dir)")
    args = p.parse_args(argv)
    shown = " ".join(["python", "benchmarks/sweep_overhead.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# command: {shown}", flush=True)

    with tempfile.TemporaryDirectory(prefix="kdlib-overhead-") as tmp:
        out = Path(args.keep).resolve() if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        env = clean_env(KDLIB_OUTPUT=str(out / "runs"))  # a fresh local Ray, as the quickstart has it
        sets = [*GRID, *(SHORT if args.short and not args.quick else []), *teacher_sets(out, args.teacher)]
        flags = ["--smoke-test"] if args.quick else []
        overrides = [a for s in sets for a in ("--set", s)]
        if not args.teacher:
            train_teacher(overrides, flags, env, out / "teacher.log", shown)
        cmd = [*KDLIB, "sweep", "run", SWEEP, *flags, *overrides]
        print(f"# sweep: kdlib sweep run {SWEEP} {' '.join(flags + overrides)}", flush=True)
        start = time.time()
        wall = run(cmd, env, out / "sweep.log")
        end = start + wall

        records = list((out / "runs" / "ray").glob("*/kdlib_sweep.json"))
        if len(records) != 1:
            raise RuntimeError(f"expected one sweep record under {out / 'runs' / 'ray'}, found {len(records)}")
        config = json.loads(records[0].read_text())["config"]
        times = trial_times(records[0].parent)
        own = [e - s for s, e in times]
        fill = sum(float(m.group(1)) for m in FILL.finditer((out / "sweep.log").read_text(errors="replace")))
        slots = concurrency(config, len(times))
        ideal = (sum(own) + fill) / slots
        first, last = min(s for s, _ in times), max(e for _, e in times)
        ratio = wall / ideal
        for line in (
            f"sweep wall (whole kdlib sweep run process): {wall:.1f} s",
            f"trials: {len(times)}, own time (Ray time_total_s) sum {sum(own):.1f} s, "
            f"min {min(own):.1f} s, max {max(own):.1f} s",
            f"teacher-output cache filled by Ray tasks (trial work, counted): {fill:.1f} s",
            f"concurrency: {slots}; ideal wall = (trials + cache fill) / concurrency: {ideal:.1f} s",
            f"before the first trial started (Ray, MLflow parent run, trial actor start-up): {first - start:.1f} s",
            f"trial span (first start to last end): {last - first:.1f} s = {(last - first) / ideal:.3f} x ideal",
            f"after the last trial ended (MLflow close, report, Ray shutdown): {end - last:.1f} s",
            f"overhead ratio wall / ideal: {ratio:.3f} (with the cache fill charged to the sweep instead: "
            f"{wall / (sum(own) / slots):.3f}) "
            f"(target <= {TARGET:.2f}: {'met' if ratio <= TARGET else 'missed'})",
        ):
            print(f"{line}  $ {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
