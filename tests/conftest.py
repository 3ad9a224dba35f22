"""Test session settings: real shared data, Ray kept on loopback, no telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("KDLIB_DATA", str(DEFAULT_DATA))
#: the shared evaluation corpus every real-data test reads (KDLIB_DATA, else ../shared/data)
SHARED_DATA = Path(os.environ["KDLIB_DATA"])
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1 (stack.md)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# 2-core machines: torch's default thread pool fights pytest, Ray workers and the metric pool
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED_DATA / "vb_demand").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set KDLIB_DATA)")
    return SHARED_DATA
