"""Trial-epochs that ASHA saves against FIFO on one grid, at the best validation SI-SDR each reaches
(issue "Cheap trials", P4; target: ≥ 50 % of the trial-epochs saved, best validation score equal ±0.1 dB).

The grid: ``sweeps/quickstart.yaml``'s data (its own epochs of 320 segments) and teacher, method ``none`` at
student ratio 0.04 (``--ratio``), seed 0, and a log-spaced grid of 16 learning rates (``--grid``;
``search.grid.lr``), run twice through ``kdlib sweep run``: once
with ``scheduler: fifo`` and once with ``scheduler: {name: asha, grace_period: 1, reduction_factor: 2}``
(time attribute: epochs, so with E epochs the rungs are at 1, 2, 4, ... < E).

Why this grid is fair to ASHA and meaningful:

* ASHA compares validation SI-SDR across every trial of the sweep. That is a sound comparison only among
  trials whose final scores are meant to be ranked against each other: the same method and the same student
  size, differing in a knob whose best value is what is searched (here the learning rate). Across methods or
  sizes it would stop the small students just for being small (the quickstart uses FIFO for that reason).
* Seeds alone would make ASHA pick the luckiest initialisation, a selection on noise; learning rates give
  it real differences to find, including rates too low to learn in time and too high to stay stable.
* Each trial sees the same training mixtures (``data.seed``) and its own fixed seed, so a learning rate's
  learning curve is the same in both runs (checked below, epoch by epoch): the FIFO run gives every trial's
  full curve, and the ASHA run can only differ by stopping trials. "Equal best score" therefore means ASHA
  did not stop the trial that FIFO finds best (or stopped only trials that end no better than it).
* The learning rates are listed in a fixed shuffled order (``random.Random(0)``). Trials start in grid
  order, and asynchronous ASHA lets a trial past a rung when it beats the share of the trials recorded
  there so far; listed in ascending order of a knob whose score rises with it, nearly every trial would
  beat its predecessors and be promoted, an artefact of the listing, not of the search.
* Method ``none`` needs no teacher at training time, so an epoch costs the same in every trial; the
  teacher is only used to size the student (trained for 1 epoch, or ``--teacher CHECKPOINT``).

What limits the saving (read from the per-trial lines): Ray's asynchronous ASHA lets the first trial to reach
a rung through unconditionally, and a trial compared with few recorded ones passes easily, so with 2 trials at a
time the first trials of the grid run all epochs whatever their score. More trials per sweep amortise that,
hence 16 learning rates by default (``--grid 8`` for 8). The rung score is
``best_val_si_sdr`` (what kdlib's Tune setup ranks on: the score of the weights a trial keeps), so a trial is
not stopped on a one-epoch dip of ``val_si_sdr``, which in short epochs swings by 1-3 dB at the
higher rates.
* The epochs are the quickstart's own (320 segments, 40 steps of batch 8). With epochs of 64 segments (``--segments
  64``), a rung at epoch 2 judges a trial after 16 steps, where the fastest-learning rates have not yet overtaken
  the cautious ones: at ratio 0.25 and 16 learning rates, ASHA saved 71 % but stopped FIFO's best rate (1.16 dB at
  epoch 2, 5.95 dB at epoch 8) and ended 0.29 dB short.

A trial-epoch is one epoch of one trial (ASHA's unit of budget); a trial's epochs are its last reported
``epoch``. Both runs use ``--no-report`` and the primary test set only (the report and the final test
scoring are the same work in both, per finished trial, and are not what is counted).

    python benchmarks/asha_savings.py            # 16 rates × 8 epochs × 320 segments at 0.04 (about 54 min, 2 cores)
    python benchmarks/asha_savings.py --grid 8 --segments 64 --ratio 0.25   # the earlier, shorter grid (about 9 min)
    python benchmarks/asha_savings.py --quick    # 4 learning rates × 4 epochs × 8 short segments (about 2-3 min)
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

from _sweep_common import KDLIB, SWEEP, clean_env, run, teacher_sets, train_teacher

TARGET_SAVED, TARGET_DB = 50.0, 0.1
ASHA = "scheduler={name: asha, grace_period: 1, reduction_factor: 2}"
COMMON = ["search.method=[none]", "search.seed=[0]"]
TEST = "data.test=[{{name: vb_demand, corpus: vb_demand, speakers: [p232], pesq_mode: wb, max_utterances: {}}}]"
GRIDS = {8: [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2],
         16: [1e-4, 1.5e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7e-3, 1e-2, 1.5e-2, 2e-2, 3e-2]}
QUICK = {"lrs": [1e-4, 1e-3, 5e-3, 2e-2], "epochs": 4,
         "sets": ["search.student_ratio=[0.25]", "data.train.segments_per_epoch=8", "data.train.segment_seconds=1.0",
                  "data.valid.max_utterances=6",
                  TEST.format(2)]}


def curves(runs: Path) -> dict[float, list[float]]:
    """Learning rate → the trial's validation SI-SDR (dB) per epoch it ran, from the one Ray Tune
    experiment under ``runs/ray``."""
    from ray.tune import ExperimentAnalysis

    dirs = [p.parent for p in (runs / "ray").glob("*/kdlib_sweep.json")]
    if len(dirs) != 1:
        raise RuntimeError(f"expected one sweep under {runs / 'ray'}, found {len(dirs)}")
    analysis = ExperimentAnalysis(str(dirs[0]))
    out: dict[float, list[float]] = {}
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id].sort_values("epoch")
        out[float(trial.config["lr"])] = [float(v) for v in frame["val_si_sdr"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 learning rates × 4 short epochs")
    p.add_argument("--grid", type=int, choices=sorted(GRIDS), default=16, help="learning rates in the full grid")
    p.add_argument("--segments", type=int, default=320, help="training segments per epoch (full grid)")
    p.add_argument("--ratio", type=float, default=0.04, help="student ratio (full grid)")
    p.add_argument("--teacher", default=None, help="use this teacher checkpoint (quickstart architecture)")
    p.add_argument("--keep", default=None, help="keep the sweeps' output in this folder (default: a temp dir)")
    args = p.parse_args(argv)
    shown = " ".join(["python", "benchmarks/asha_savings.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# command: {shown}", flush=True)
    size = QUICK if args.quick else {
        "lrs": GRIDS[args.grid], "epochs": 8,
        "sets": [f"search.student_ratio=[{args.ratio:g}]", f"data.train.segments_per_epoch={args.segments}",
                 TEST.format("null")]}

    with tempfile.TemporaryDirectory(prefix="kdlib-asha-") as tmp:
        out = Path(args.keep).resolve() if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        env = clean_env()
        order = list(size["lrs"])
        random.Random(0).shuffle(order)
        lrs = "[" + ", ".join(f"{lr:g}" for lr in order) + "]"
        sets = [*COMMON, *size["sets"], f"search.grid.lr={lrs}", f"training.epochs={size['epochs']}",
                *teacher_sets(out, args.teacher)]
        overrides = [a for s in sets for a in ("--set", s)]
        if not args.teacher:
            train_teacher(overrides, [], {**env, "KDLIB_OUTPUT": str(out / "fifo")}, out / "teacher.log", shown)
        print(f"# sweeps: kdlib sweep run {SWEEP} --no-report {' '.join(overrides)} "
              f"[--set scheduler.name=fifo | --set '{ASHA}']", flush=True)
        results = {}
        for name, scheduler in (("fifo", "scheduler.name=fifo"), ("asha", ASHA)):
            runs = out / name
            wall = run([*KDLIB, "sweep", "run", SWEEP, "--no-report", *overrides, "--set", scheduler],
                        {**env, "KDLIB_OUTPUT": str(runs)}, out / f"{name}.log")
            results[name] = curves(runs), wall

        fifo, asha = results["fifo"][0], results["asha"][0]
        lines = []
        same = all(asha[lr] == fifo[lr][: len(asha[lr])] for lr in asha)
        for lr in sorted(fifo):
            lines.append(f"lr {lr:g}: fifo {len(fifo[lr])} epochs, best val SI-SDR {max(fifo[lr]):.2f} dB; "
                         f"asha {len(asha[lr])} epochs, best {max(asha[lr]):.2f} dB")
        spent = {name: sum(len(c) for c in results[name][0].values()) for name in results}
        best = {name: max(max(c) for c in results[name][0].values()) for name in results}
        saved = 100.0 * (1 - spent["asha"] / spent["fifo"])
        gap = best["asha"] - best["fifo"]
        ok = saved >= TARGET_SAVED and abs(gap) <= TARGET_DB and math.isfinite(gap)
        lines += [
            f"learning curves identical in both runs where both ran: {'yes' if same else 'NO'}",
            *(f"{n}: {spent[n]} trial-epochs, best val SI-SDR {best[n]:.3f} dB, wall {results[n][1]:.0f} s"
              for n in ("fifo", "asha")),
            f"trial-epochs saved by asha: {saved:.1f} % (target >= {TARGET_SAVED:.0f} %)",
            f"best val SI-SDR asha - fifo: {gap:+.3f} dB (target within ±{TARGET_DB} dB); "
            f"targets {'met' if ok else 'missed'}",
        ]
        for line in lines:
            print(f"{line}  $ {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
