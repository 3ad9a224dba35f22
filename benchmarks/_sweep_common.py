"""What the sweep benchmarks (``sweep_overhead.py``, ``asha_savings.py``) share: running ``kdlib`` in a
subprocess on a fresh local Ray and MLflow store, with the teacher trained once or given."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "sweeps/quickstart.yaml"
KDLIB = [sys.executable, "-m", "kdlib.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a fresh local Ray (no ``RAY_ADDRESS``), without telemetry or Ray's log
    de-duplication."""
    # RAY_DEDUP_LOGS=0: every worker line reaches the log (the benchmarks read some of them)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DEDUP_LOGS": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def run(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``argv`` with its output in ``log``; its wall seconds.

    Raises:
        RuntimeError: it exited non-zero (the message holds the log's last 25 lines).
    """
    start = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(argv[2:])} exited {rc}:\n{tail}")
    return wall


def teacher_sets(out: Path, given: str | None) -> list[str]:
    """``--set`` values that point the sweep at the teacher: ``given`` (a checkpoint of the quickstart
    teacher's architecture), else ``out/teacher.pt`` trained for one epoch by :func:`train_teacher`."""
    if given:
        return [f"teacher.checkpoint={Path(given).resolve()}"]
    return [f"teacher.checkpoint={out / 'teacher.pt'}", "teacher.epochs=1"]


def train_teacher(overrides: list[str], flags: list[str], env: dict[str, str], log: Path, shown: str) -> None:
    """Train the sweep's teacher (``kdlib train-teacher``) and print its time, which no benchmark counts."""
    wall = run([*KDLIB, "train-teacher", SWEEP, *flags, *overrides], env, log)
    print(f"teacher (1 epoch, not counted): {wall:.1f} s  $ {shown}", flush=True)
