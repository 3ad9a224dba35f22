"""Test-scoring throughput (utterances/s) of ``kdlib.evaluation.evaluate_model`` with 1 and 2 workers
(issue "Cheap trials", P2; target: 2 workers ≥ 1.8× the utterances/s of 1 worker on 2 cores).

Scores the real VoiceBank+DEMAND pairs of the shared corpus (``$KDLIB_DATA/vb_demand``, the corpus that
``sweeps/quickstart.yaml`` names ``vb_demand``: 51 pairs, p232 + p257) with all four metrics (PESQ wb,
STOI, ESTOI, SI-SDR) after enhancing each noisy file with the quickstart teacher's architecture. The model
is built from ``sweeps/quickstart.yaml``'s ``teacher.model`` with ``torch.manual_seed(0)`` (inference cost
does not depend on the weights), or loaded from ``--teacher CHECKPOINT``. The caller keeps torch's default
thread count, as ``kdlib eval`` and a trial do. Each figure is the median wall time of ``--repeats`` calls
of ``evaluate_model`` inside this process, the worker counts taking turns (files are read once untimed
first, so the page cache is warm);
the per-utterance scores of every call are checked to be the same whatever the worker count.

    python benchmarks/eval_throughput.py            # 51 pairs, median of 3
    python benchmarks/eval_throughput.py --quick    # 12 pairs, 1 run each
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
TARGET = 1.8


def _model(teacher: str | None):
    """The quickstart teacher's architecture at seed 0, or the checkpoint ``teacher``."""
    import torch

    from kdlib.config.loader import load_config
    from kdlib.models import build_model, load_model

    if teacher:
        return load_model(teacher)[0].eval()
    spec = load_config(QUICKSTART).teacher.model
    torch.manual_seed(0)
    return build_model(spec.name, spec.kwargs).eval()


def _data_root() -> Path:
    from kdlib.data.root import resolve_data_root

    return Path(resolve_data_root(None))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 pairs, 1 run per worker count")
    p.add_argument("--repeats", type=int, default=None, help="runs per worker count (default 3; --quick 1)")
    p.add_argument("--utterances", type=int, default=None, help="pairs to score (default all 51; --quick 12)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    p.add_argument("--teacher", default=None, help="score this checkpoint instead of a seeded random model")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    limit = args.utterances or (12 if args.quick else None)

    import torch

    from kdlib.data import PairedCorpus
    from kdlib.evaluation import evaluate_model

    corpus = PairedCorpus(_data_root() / "vb_demand", sample_rate=16000)
    if limit:
        corpus = corpus.subset(max_utterances=limit)
    for i in range(len(corpus)):  # warm the page cache, untimed
        corpus.load(i)
    model = _model(args.teacher)
    threads = torch.get_num_threads()

    shown = " ".join(["python", "benchmarks/eval_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# command: {shown}")
    print(f"# {len(corpus)} vb_demand pairs, PESQ wb + STOI + ESTOI + SI-SDR, model "
          f"{args.teacher or 'quickstart teacher architecture (seed 0)'}, caller torch threads {threads}, "
          f"{os.cpu_count()} CPUs, median of {repeats}", flush=True)
    times: dict[int, list[float]] = {w: [] for w in args.workers}
    reference = None
    for _ in range(repeats):  # worker counts interleaved, so a load change on the machine hits each alike
        for workers in args.workers:
            start = time.perf_counter()
            summary = evaluate_model(model, corpus, "wb", num_workers=workers)
            times[workers].append(time.perf_counter() - start)
            scores = [(u["pesq"], u["stoi"], u["si_sdr"]) for u in summary.per_utterance]
            if reference is None:
                reference = scores
            elif scores != reference:
                print(f"FAIL: per-utterance scores with {workers} workers differ from the first run")
                return 1
    rates: dict[int, float] = {}
    for workers in args.workers:
        wall = statistics.median(times[workers])
        rates[workers] = len(corpus) / wall
        runs = ", ".join(f"{t:.2f}" for t in times[workers])
        print(f"workers {workers}: {rates[workers]:.2f} utterances/s (median {wall:.2f} s for {len(corpus)}; "
              f"runs {runs} s)  $ {shown}", flush=True)
    if 1 in rates and 2 in rates:
        ratio = rates[2] / rates[1]
        print(f"speed-up 2 workers / 1 worker: {ratio:.2f}x (target >= {TARGET}x: "
              f"{'met' if ratio >= TARGET else 'missed'})  $ {shown}")
    if torch.get_num_threads() != threads:
        print(f"FAIL: evaluate_model left the caller at {torch.get_num_threads()} torch threads, not {threads}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
