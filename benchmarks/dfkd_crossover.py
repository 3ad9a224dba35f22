"""Where DFKD's crossover falls on real speech: the per-utterance rule (kdlib's reconstruction, arXiv 2502.04711,
methods.md §2.3) against the per-frame rule of the DISPATCH reading (``rlaehghks5/DISPATCH`` ``dispatch_DFKD.py``,
methods.md §9.2), on VoiceBank+DEMAND test pairs (speaker p232, the quickstart's primary test set).

The crossovers are computed by :class:`kdlib.kd.dfkd.DFKD` itself (its forward pass, ``profile_from: teacher``)
and summarised by its :meth:`~kdlib.kd.dfkd.DFKD.stats` (the figures the Trainer logs as ``kd_crossover_*``):
median / p10 / p90 crossover in Hz, the share at a guard bin and the share that is degenerate (f_c = 1, a low
band of the DC bin alone, or f_c = F − 1). Counted per utterance (utterance rule) or per frame (frame rule).
The "teacher" signal is (a) the teacher's output on each noisy file when ``--teacher`` gives a checkpoint, and
(b) the clean speech, always (what a perfect teacher would output).

    python benchmarks/dfkd_crossover.py                                   # clean speech, all 27 p232 pairs
    python benchmarks/dfkd_crossover.py --teacher runs/teachers/X.pt      # + a trained teacher's outputs
    python benchmarks/dfkd_crossover.py --quick                           # 3 pairs: CI's check that it runs

Data root: ``$KDLIB_DATA``, else ``../shared/data``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time


def measure(signals, rule: str, n_fft: int, hop_length: int, sample_rate: int) -> dict[str, float]:
    """DFKD's crossover statistics of ``rule`` over ``signals`` (1-D float32 tensors, one per utterance), plus
    ``units`` (utterances or frames counted), ``at_lower_guard`` / ``le_2khz`` (shares) from the same f_c."""
    import numpy as np
    import torch

    from kdlib.kd import KDInputs
    from kdlib.kd.dfkd import DFKD

    class _Rate(torch.nn.Module):  # DFKD reads only the models' sample rate
        def __init__(self) -> None:
            super().__init__()
            self.sample_rate = sample_rate

    model = _Rate()
    method = DFKD(model, model, crossover=rule, n_fft=n_fft, hop_length=hop_length)
    values = []
    with torch.no_grad():
        for x in signals:
            x = x[None]
            method(KDInputs(x, x, x, x))  # records the crossovers of this utterance
            mag = method.stft(x).abs()
            values.append(method.crossover(mag, mag).reshape(-1))
    out = method.stats()
    f_c = torch.cat(values).numpy()
    hz = sample_rate / n_fft
    # the stats' median is the inverted-CDF percentile of the same f_c: a check of the histogram bookkeeping
    assert out["crossover_median_hz"] == float(np.percentile(f_c, 50, method="inverted_cdf")) * hz
    out.update(units=float(f_c.size), at_lower_guard=float(np.mean(f_c == method.search_range[0])),
               le_2khz=float(np.mean(f_c * hz <= 2000.0)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="a teacher checkpoint (kdlib format): also measure on its outputs")
    parser.add_argument("--quick", action="store_true", help="3 pairs only (CI)")
    parser.add_argument("--speakers", nargs="*", default=["p232"], help="VoiceBank+DEMAND speakers (default p232)")
    parser.add_argument("--max-utterances", type=int, help="at most this many pairs, evenly spread")
    parser.add_argument("--n-fft", type=int, default=512)
    parser.add_argument("--hop-length", type=int, default=128)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_utterances = args.max_utterances or 3

    import torch

    from kdlib.data.paired import PairedCorpus
    from kdlib.data.root import resolve_data_root
    from kdlib.models import load_model

    torch.set_num_threads(1)
    start = time.perf_counter()
    corpus = PairedCorpus(resolve_data_root() / "vb_demand").subset(args.speakers, args.max_utterances)
    pairs = [corpus.load(i) for i in range(len(corpus))]
    sources = {"clean speech": [torch.from_numpy(clean) for _, clean in pairs]}
    if args.teacher:
        teacher, _ = load_model(args.teacher)
        with torch.no_grad():
            sources["teacher outputs"] = [teacher(torch.from_numpy(noisy)[None])[0] for noisy, _ in pairs]
    command = "python benchmarks/dfkd_crossover.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"# command: {command.strip()}")
    print(f"# {len(pairs)} VoiceBank+DEMAND pairs of {', '.join(args.speakers)} at {corpus.sample_rate} Hz; "
          f"STFT n_fft {args.n_fft} / hop {args.hop_length}; DFKD defaults otherwise (utterance rule: guard "
          "[0.1, 0.9]); teacher: " + (args.teacher or "none (clean speech only)"))
    for source, signals in sources.items():
        for rule in ("utterance", "frame"):
            s = measure(signals, rule, args.n_fft, args.hop_length, corpus.sample_rate)
            unit = "utterances" if rule == "utterance" else "frames"
            tag = f"{source}, {rule} rule ({int(s['units'])} {unit}):"
            print(f"{tag} median crossover {s['crossover_median_hz']:.0f} Hz")
            print(f"{tag} p10 / p90 crossover {s['crossover_p10_hz']:.0f} / {s['crossover_p90_hz']:.0f} Hz")
            print(f"{tag} share at a guard bin {s['crossover_at_guard']:.3f} (lower guard {s['at_lower_guard']:.3f})")
            print(f"{tag} share degenerate (f_c = 1 or F-1) {s['crossover_degenerate']:.3f}")
            print(f"{tag} share at <= 2 kHz {s['le_2khz']:.3f}")
    print(f"# {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
