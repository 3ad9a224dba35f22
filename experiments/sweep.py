"""Entry script for a kdlib sweep: what ``ray submit cluster.yaml experiments/sweep.py SWEEP.yaml`` runs.

Connects to the running Ray cluster when ``RAY_ADDRESS`` (or ``ray.address`` in the YAML) is set,
else starts a local Ray instance. ``--smoke-test`` runs the same code paths on a few seconds of data.

    python experiments/sweep.py sweeps/quickstart.yaml --smoke-test

``ray submit`` copies only this file into the head node's home directory and runs it there, so a
relative SWEEP path that does not exist under the current directory is also looked up in the
repository this script sits in and in the checkout kdlib is installed from (``pip install -e``;
``~/kdlib`` on the cluster, see cluster.yaml): ``sweeps/methods.yaml`` works in both places.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import kdlib
from kdlib.cli import report_outcome
from kdlib.errors import KdlibError
from kdlib.sweep.plan import load_plan


def resolve_sweep_path(sweep: str | Path) -> Path:
    """``sweep`` as given when it exists (or is absolute), else the first existing match under the
    repository of this script or the kdlib checkout; unchanged when none matches (so the loader
    reports the path the user typed)."""
    path = Path(sweep).expanduser()
    if path.is_absolute() or path.exists():
        return path
    roots = (Path(__file__).resolve().parents[1], Path(kdlib.__file__).resolve().parents[1])
    for root in roots:
        if (root / path).is_file():
            return root / path
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep YAML (relative paths also resolve against the kdlib checkout)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny epochs and data (CI)")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(resolve_sweep_path(args.sweep), smoke=args.smoke_test)
        from kdlib.sweep.runner import run_sweep  # imports Ray: only once the YAML is valid

        outcome = run_sweep(plan)
    except KdlibError as exc:
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return 2
    # same summary and exit code as `kdlib sweep run`: 130 when interrupted (resume it with
    # `kdlib sweep resume`), 1 when a smoke trial or every trial errored, else 0
    return report_outcome(outcome)


if __name__ == "__main__":
    sys.exit(main())
