"""Entry script for a kdlib sweep: what ``ray submit cluster.yaml experiments/sweep.py SWEEP.yaml`` runs.

Connects to the running Ray cluster when ``RAY_ADDRESS`` (or ``ray.address`` in the YAML) is set,
else starts a local Ray instance. ``--smoke-test`` runs the same code paths on a few seconds of data.

    python experiments/sweep.py sweeps/quickstart.yaml --smoke-test
"""

from __future__ import annotations

import argparse
import sys

from kdlib.config import load_config
from kdlib.errors import KdlibError
from kdlib.sweep.runner import run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep YAML")
    parser.add_argument("--smoke-test", action="store_true", help="tiny epochs and data (CI)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.sweep, smoke=args.smoke_test)
        outcome = run_sweep(cfg, smoke=args.smoke_test)
    except KdlibError as exc:
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{outcome.trials} trials ({outcome.errored} errored) in {outcome.seconds / 60:.1f} min; "
          f"report: {outcome.report.get('report', '-')}")
    # a real sweep survives crashed trials; in a smoke test any crash is a bug
    return 1 if outcome.errored and (args.smoke_test or outcome.errored == outcome.trials) else 0


if __name__ == "__main__":
    sys.exit(main())
