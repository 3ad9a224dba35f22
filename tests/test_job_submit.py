"""``ray start --head`` on 127.0.0.1, then ``ray job submit`` of ``experiments/sweep.py`` in smoke
mode (real Ray job server, real audio, real MLflow, no mocks).

The head runs as ``ray start --head --block`` and is stopped with SIGTERM to that one process, which
kills exactly the Ray processes it started. ``ray stop`` is not used: it kills every Ray process on
the machine by name (other sessions' clusters included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.test_fault_tolerance import SWEEP as FT_SWEEP

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.slow

# the fault-tolerance tests' tiny sweep (same data and teacher), one epoch, no fault plugins
SWEEP = {**FT_SWEEP, "name": "jobsweep", "plugins": [], "training": {"epochs": 1, "batch_size": 2},
         "search": {"method": ["none", "output"], "student_ratio": [0.25], "seed": [0]},
         "smoke": {**FT_SWEEP["smoke"], "epochs": 1, "seeds": 1}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing_job_server() -> str | None:
    for module in ("ray.dashboard", "aiohttp", "aiohttp_cors", "opencensus", "prometheus_client", "grpc"):
        if importlib.util.find_spec(module) is None:
            return f"ray[default] is not installed ({module} missing): no dashboard/job server for `ray job submit`"
    return None


def _wait_for_http(port: int, proc: subprocess.Popen, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"`ray start` exited with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 without the auth token: token auth is on, stack.md G9)
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer on 127.0.0.1:{port} within {timeout} s")


def test_ray_job_submit_of_the_sweep_script_in_smoke_mode(data_root, tmp_path):
    reason = _missing_job_server()
    if reason:
        pytest.skip(reason)
    # Ray's unix sockets live under the temp dir: keep its path short (AF_UNIX paths ≤ 107 bytes)
    ray_tmp = Path(tempfile.mkdtemp(prefix="kdjob", dir="/tmp"))
    out = tmp_path / "out"
    gcs_port, dash_port = _free_port(), _free_port()
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PATH=f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}")  # the job's `python` is this venv's
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=2",
         "--num-gpus=0", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", "--disable-usage-stats",
         f"--temp-dir={ray_tmp}"],
        cwd=tmp_path, env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT)
    start = time.perf_counter()
    try:
        _wait_for_http(dash_port, head, timeout=120)
        started = time.perf_counter() - start
        # a small working dir: the entry script as it is in the repository, and the sweep YAML
        work = tmp_path / "job"
        (work / "experiments").mkdir(parents=True)
        shutil.copy(REPO / "experiments" / "sweep.py", work / "experiments" / "sweep.py")
        (work / "jobsweep.yaml").write_text(yaml.safe_dump(SWEEP))
        runtime_env = {"env_vars": {"KDLIB_DATA": str(data_root), "KDLIB_OUTPUT": str(out),
                                    "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}}
        address = f"http://127.0.0.1:{dash_port}"
        job = subprocess.run(
            [str(RAY), "job", "submit", "--address", address, "--submission-id", "kdlib-smoke",
             "--working-dir", str(work), "--runtime-env-json", json.dumps(runtime_env),
             "--", "python", "experiments/sweep.py", "jobsweep.yaml", "--smoke-test"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        submitted = time.perf_counter() - start - started
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        status = subprocess.run([str(RAY), "job", "status", "--address", address, "kdlib-smoke"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert "Job 'kdlib-smoke' succeeded" in status.stdout, status.stdout + status.stderr  # JobStatus.SUCCEEDED
        assert "[sweep] 2 trial(s), 0 errored" in job.stdout, job.stdout[-3000:]
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` then kills every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jobsweep-smoke")
    runs = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags.get("kdlib.role") for r in runs)
    assert roles == ["sweep", "teacher", "trial", "trial"]
    trials = [r for r in runs if r.data.tags["kdlib.role"] == "trial"]
    assert all(r.info.status == "FINISHED" and "test_pesq" in r.data.metrics for r in trials)
    assert (out / "reports" / "jobsweep-smoke" / "report.md").is_file()
    print(f"\n[ft] ray job submit: head up in {started:.1f} s, job (submit → SUCCEEDED) {submitted:.1f} s, "
          f"{len(trials)} trials FINISHED")
