"""Fault tolerance on real Ray (a two-node cluster on loopback), real audio and real MLflow, no mocks.

1. One sweep in which a trial raises, a trial's worker process SIGKILLs itself mid-trial and a node is
   removed mid-trial: every trial ends terminal, retried trials continue from their checkpoint,
   MLflow holds one child run per trial, no finished result is lost.
2. A sweep driver interrupted mid-sweep (SIGINT with Optuna; SIGKILL with a plain grid), then
   ``kdlib sweep resume``: finished trials are not re-run, unfinished ones continue from their
   checkpoint, Optuna's study is kept, no duplicate MLflow run.
3. A GPU fraction per trial on a cluster without GPUs is refused right after Ray starts.

``pytest -s`` prints the figures as ``[ft] ...`` lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from kdlib.cli import main
from kdlib.errors import ConfigError
from kdlib.sweep.plan import load_plan

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
pytestmark = pytest.mark.slow

# 4 segments of 0.5 s a batch of 2 → 2 training steps per epoch: step 3 is the first of epoch 2
SWEEP = {
    "plugins": ["tests.plugins.faults"],
    "data": {
        "sample_rate": 16000,
        "train": {"speech": "speech", "noise": "noise", "snr_db": [0, 10], "segment_seconds": 0.5,
                  "segments_per_epoch": 4},
        "valid": {"corpus": "vb_demand", "speakers": ["p257"], "max_utterances": 1},
        "test": {"corpus": "vb_demand", "speakers": ["p232"], "pesq_mode": "wb", "max_utterances": 1},
    },
    "teacher": {"model": {"name": "dpcrn_lite", "kwargs": {"n_fft": 256, "hop_length": 128, "channels": [8, 12],
                                                        "rnn_hidden": 12, "n_dilated": 1, "n_dualpath": 1}},
                "epochs": 1, "batch_size": 2, "threads": 1},
    "training": {"epochs": EPOCHS, "batch_size": 2},
    "resources": {"cpu": 1},
    # the smoke form keeps the same sizes, so every sweep here shares one teacher
    "smoke": {"epochs": EPOCHS, "teacher_epochs": 1, "segments_per_epoch": 4, "segment_seconds": 0.5,
              "max_utterances": 1, "seeds": 2},
}


def _write_sweep(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump({**SWEEP, **sections}))
    return path


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + one worker node (1 CPU) on 127.0.0.1, no GPU; workers import ``tests.plugins``."""
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(REPO))  # inherited by every raylet, so trial workers find the test plugins
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1, num_gpus=0)
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """One output dir for the module: the sweeps share the teacher and the MLflow store."""
    return tmp_path_factory.mktemp("ft_out")


# ---- reading back what Ray and MLflow recorded --------------------------------------------------
def _ray_trials(experiment_dir: Path) -> dict[str, dict]:
    """trial_id → {status, num_failures, dir} from Ray's newest experiment state snapshot."""
    newest = max(experiment_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    state = json.loads(newest.read_text())
    trials = {}
    for trial_json, runtime_json in state["trial_data"]:
        t, rt = json.loads(trial_json), json.loads(runtime_json)
        trials[t["trial_id"]] = {"status": t["status"], "num_failures": rt.get("num_failures", 0)}
    for d in experiment_dir.iterdir():
        if d.is_dir() and d.name.rsplit("-", 1)[-1] in trials:
            trials[d.name.rsplit("-", 1)[-1]]["dir"] = d
    return trials


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _child_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`kdlib.role` = 'trial'", max_results=1000)


def _epoch_steps(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, "val_si_sdr"), key=lambda m: m.timestamp)]


def _restarts(rows: list[dict]) -> int:
    """Times the trial was started again with results before and after (``iterations_since_restore``
    starts over at 1 after every restore)."""
    return sum(1 for r in rows[1:] if r.get("iterations_since_restore") == 1)


def _continues_from_checkpoint(rows: list[dict]) -> bool:
    """Epochs 1..EPOCHS each reported once: a restart from scratch would report epoch 1 again."""
    return [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))


def _fingerprint(trial_dir: Path) -> dict[str, str]:
    """Content hash of every file of a trial dir (results, checkpoint, student), except TensorBoard
    event files: Ray's TensorBoard logger opens a new one each time a trial's actor starts, also for
    the no-op restart of a trial that had finished after the killed driver's last state snapshot."""
    return {str(p.relative_to(trial_dir)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(trial_dir.rglob("*")) if p.is_file() and not p.name.startswith("events.out.tfevents")}


def _one_run_per_trial(runs) -> tuple[int, int]:
    ids = [r.data.tags["kdlib.trial_id"] for r in runs]
    return len(set(ids)), len(ids) - len(set(ids))


# ---- 1. raise + SIGKILL + node removal on a two-node cluster -----------------------------------
def test_raise_sigkill_and_node_loss_on_a_two_node_cluster(cluster, output, data_root, tmp_path, monkeypatch):
    from kdlib.sweep.runner import run_sweep
    from tests.plugins.faults import CLUSTERS, RemoveNodeCallback

    marker, node_log = tmp_path / "killed", tmp_path / "node_removed"
    path = _write_sweep(
        tmp_path / "ft.yaml", name="ft",
        methods={"fault_raise": {"at_step": 3}, "fault_sigkill": {"at_step": 3, "marker": str(marker)}},
        search={"method": ["none", "fault_raise", "fault_sigkill"], "student_ratio": [0.25], "seed": [0, 1],
                "exclude": [{"method": "fault_raise", "seed": 1}, {"method": "fault_sigkill", "seed": 1}]},
        ray={"address": cluster.address, "max_failures": 2},
    )
    monkeypatch.setenv("KDLIB_OUTPUT", str(output))
    plan = load_plan(path)
    CLUSTERS["ft"] = cluster
    start = time.perf_counter()
    try:
        outcome = run_sweep(plan, report=False,
                            callbacks=[RemoveNodeCallback("ft", str(node_log), before_epoch=EPOCHS)])
    finally:
        CLUSTERS.pop("ft", None)
    seconds = time.perf_counter() - start

    assert (outcome.trials, outcome.errored, outcome.unfinished) == (4, 1, 0)
    trials = _ray_trials(outcome.experiment_dir)
    assert sorted(t["status"] for t in trials.values()) == ["ERROR", "TERMINATED", "TERMINATED", "TERMINATED"]
    assert marker.is_file(), "the SIGKILL trial never killed itself"
    assert node_log.is_file(), "no node was removed mid-trial"
    removed_id = node_log.read_text().split()[0]
    assert len([n for n in cluster.list_all_nodes() if n.remaining_processes_alive()]) == 2  # replaced

    client = MlflowClient(outcome.tracking_uri)
    runs = _child_runs(client, "ft")
    by_trial = {r.data.tags["kdlib.trial_id"]: r for r in runs}
    distinct, duplicates = _one_run_per_trial(runs)
    assert (distinct, duplicates) == (4, 0) and set(by_trial) == set(trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {outcome.parent_run_id}

    method = {tid: r.data.params["method"] for tid, r in by_trial.items()}
    killed_id = next(tid for tid, m in method.items() if m == "fault_sigkill")
    raised_id = next(tid for tid, m in method.items() if m == "fault_raise")
    assert removed_id not in (raised_id,)
    for tid, t in trials.items():
        run, rows = by_trial[tid], _rows(t["dir"])
        if tid == raised_id:
            # raised at its 3rd step (epoch 2) on every attempt: 1 + max_failures attempts, each resumed
            # from the epoch-1 checkpoint (the step counter lives in the checkpoint)
            assert t["status"] == "ERROR" and t["num_failures"] == 3
            assert run.info.status == "FAILED"
            assert [r["epoch"] for r in rows] == [1] and "test_pesq" not in run.data.metrics
            continue
        assert t["status"] == "TERMINATED" and run.info.status == "FINISHED", tid
        # no finished result lost: the final epoch with its test scores, in Ray and in MLflow
        assert rows[-1]["epoch"] == EPOCHS and rows[-1]["test_pesq"] == pytest.approx(run.data.metrics["test_pesq"])
        assert _continues_from_checkpoint(rows), (tid, [r["epoch"] for r in rows])
        assert _epoch_steps(client, run.info.run_id) == list(range(1, EPOCHS + 1)), tid
        assert Path(run.data.tags["kdlib.checkpoint"]).is_file()
        if tid in (killed_id, removed_id):
            assert t["num_failures"] == 1 and _restarts(rows) == 1, (tid, t, rows)
    for tid in (killed_id, removed_id):
        first_after = next(r for r in _rows(trials[tid]["dir"])[1:] if r["iterations_since_restore"] == 1)
        assert first_after["epoch"] > 1  # continued from its checkpoint, not from epoch 1

    retried = sum(1 for t in trials.values() if t["num_failures"])
    print(f"\n[ft] cluster sweep: {len(trials)} trials run, {retried} retried "
          f"(sigkill {trials[killed_id]['num_failures']}x, node removed {trials[removed_id]['num_failures']}x, "
          f"raise {trials[raised_id]['num_failures']}x -> ERROR/FAILED), 0 resumed, lost 0, duplicate runs "
          f"{duplicates}, {seconds:.0f} s")

    # `kdlib sweep resume --restart-errored` on the same cluster: only the errored trial runs again,
    # from scratch and under a new trial id (Ray's Trial.reset); its old run is retired, not doubled
    from mlflow.entities import ViewType

    from kdlib.sweep.resume import resume_sweep

    start = time.perf_counter()
    again = resume_sweep(outcome.experiment_dir, restart_errored=True, report=False)
    seconds = time.perf_counter() - start
    assert (again.trials, again.errored, again.unfinished) == (4, 1, 0)
    after = _ray_trials(outcome.experiment_dir)
    (new_raised,) = set(after) - set(trials)
    assert set(after) - {new_raised} == set(trials) - {raised_id}
    assert after[new_raised]["status"] == "ERROR" and [r["epoch"] for r in _rows(after[new_raised]["dir"])] == [1]
    runs_after = {r.data.tags["kdlib.trial_id"]: r for r in _child_runs(client, "ft")}
    assert set(runs_after) == set(after) and len(_child_runs(client, "ft")) == 4
    assert runs_after[new_raised].info.status == "FAILED"
    for tid in set(trials) - {raised_id}:  # finished: untouched
        assert runs_after[tid].info.run_id == by_trial[tid].info.run_id
        assert runs_after[tid].data.metrics == by_trial[tid].data.metrics
    exp_id = client.get_experiment_by_name("ft").experiment_id
    (retired,) = client.search_runs([exp_id], "tags.`kdlib.role` = 'trial'", run_view_type=ViewType.DELETED_ONLY)
    assert retired.data.tags["kdlib.trial_id"] == raised_id and retired.data.tags["kdlib.replaced"] == "restart-errored"
    print(f"[ft] resume --restart-errored: 1 errored trial restarted from scratch (new id, "
          f"{after[new_raised]['num_failures']} failures -> ERROR), 3 finished not re-run, duplicate runs 0, "
          f"{seconds:.0f} s")


# ---- 2. driver interrupted mid-sweep, then `kdlib sweep resume` ---------------------------------
def _driver_env(cluster, output: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_ADDRESS=cluster.address, KDLIB_OUTPUT=str(output), PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _saved_mid_trial(output: Path, experiment: str) -> bool:
    """Ray's saved state (what a resume reads) holds an unfinished trial with an epoch checkpoint."""
    for experiment_dir in (output / "ray").glob(f"{experiment}-*"):
        try:
            trials = _ray_trials(experiment_dir)
        except (ValueError, OSError):  # no snapshot yet, or one being written
            continue
        if any(t["status"] != "TERMINATED" and "dir" in t and _saved_epoch(t["dir"]) > 0 for t in trials.values()):
            return True
    return False


def _wait_mid_sweep(proc, client: MlflowClient, experiment: str, timeout: float, output: Path) -> None:
    """Until one trial has finished and another, still running, has reported (and so checkpointed)
    at least one epoch, in MLflow and in Ray's saved experiment state (the driver logs a result to
    MLflow before Ray snapshots it, so MLflow alone can run ahead of what a resume finds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the driver exited early with code {proc.returncode}"
        if client.get_experiment_by_name(experiment) is not None:
            runs = _child_runs(client, experiment)
            if any(r.info.status == "FINISHED" for r in runs) and any(
                    r.info.status == "RUNNING" and "val_si_sdr" in r.data.metrics for r in runs
            ) and _saved_mid_trial(output, experiment):
                return
        time.sleep(0.3)
    raise AssertionError(f"no finished trial next to a running one with a checkpoint within {timeout} s")


def _saved_epoch(trial_dir: Path) -> int:
    """The last epoch Ray's saved state holds for a trial (its rows in result.json are synced with the
    experiment snapshot, and so is the checkpoint a restore continues from), 0 without one. A newer
    checkpoint dir may exist on disk: the worker writes it before the driver registers it, and an
    interrupted driver never does, so that epoch is trained again (the counter does not go back)."""
    return max([r["epoch"] for r in _rows(trial_dir)], default=0)


@pytest.mark.parametrize("sig,optuna", [(signal.SIGINT, True), (signal.SIGKILL, False)], ids=["sigint-optuna",
                                                                                             "sigkill-grid"])
def test_interrupted_driver_resumes_without_rerun_or_duplicates(cluster, output, data_root, tmp_path, sig, optuna):
    name = f"ftint{'opt' if optuna else 'grid'}"
    search = {"method": ["fault_slow", "none"], "student_ratio": [0.25], "seed": [0]}
    if optuna:
        search["optuna"] = {"lr": {"loguniform": [5e-4, 5e-3]}}
    # fault_slow: 2 steps x 1.5 s per epoch, so it is mid-run when the `none` trial finishes
    path = _write_sweep(tmp_path / f"{name}.yaml", name=name, methods={"fault_slow": {"sleep_s": 1.5}},
                        search=search, ray={"max_failures": 1})
    env = _driver_env(cluster, output)
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    experiment = f"{name}-smoke"
    log = (tmp_path / "driver.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kdlib.cli", "sweep", "run", str(path), "--smoke-test"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_mid_sweep(proc, client, experiment, timeout=240, output=output)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.close()
    driver_log = (tmp_path / "driver.log").read_text()
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), driver_log[-3000:]

    (experiment_dir,) = (output / "ray").glob(f"{experiment}-*")
    before = _ray_trials(experiment_dir)
    runs_before = {r.data.tags["kdlib.trial_id"]: r for r in _child_runs(client, experiment)}
    # finished = FINISHED in MLflow; after a SIGKILL, Ray's last snapshot may still call it RUNNING
    done_before = {tid for tid, r in runs_before.items() if r.info.status == "FINISHED"}
    ray_done_before = {tid for tid, t in before.items() if t["status"] == "TERMINATED"}
    assert done_before and len(done_before) < len(before), before
    assert ray_done_before <= done_before
    finished = {tid: (runs_before[tid].info.run_id, runs_before[tid].data.metrics, _fingerprint(before[tid]["dir"]))
                for tid in done_before}
    ckpt_epoch = {tid: _saved_epoch(t["dir"]) for tid, t in before.items() if tid not in done_before}
    assert all(0 < e < EPOCHS for e in ckpt_epoch.values()), ckpt_epoch

    resume = subprocess.run([sys.executable, "-m", "kdlib.cli", "sweep", "resume", experiment_dir.name],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert resume.returncode == 0, (resume.stdout + resume.stderr)[-4000:]

    after = _ray_trials(experiment_dir)
    assert set(after) == set(before) and all(t["status"] == "TERMINATED" for t in after.values()), after
    runs = _child_runs(client, experiment)
    distinct, duplicates = _one_run_per_trial(runs)
    assert (distinct, duplicates) == (len(after), 0)
    by_trial = {r.data.tags["kdlib.trial_id"]: r for r in runs}
    assert all(r.info.status == "FINISHED" and "test_pesq" in r.data.metrics for r in runs)
    for tid, (run_id, metrics, fingerprint) in finished.items():  # finished before: not re-run
        assert by_trial[tid].info.run_id == run_id and by_trial[tid].data.metrics == metrics
        assert _fingerprint(after[tid]["dir"]) == fingerprint
    for tid, epoch in ckpt_epoch.items():  # unfinished: continued from its last checkpoint
        rows = _rows(after[tid]["dir"])
        assert _continues_from_checkpoint(rows), [r["epoch"] for r in rows]
        restored = [r for r in rows if r["iterations_since_restore"] == 1]
        assert [r["epoch"] for r in restored] == [1, epoch + 1], rows  # the resumed run began at epoch+1
        assert _epoch_steps(client, by_trial[tid].info.run_id) == list(range(1, EPOCHS + 1))
    parent = client.get_run(by_trial[next(iter(by_trial))].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert (output / "reports" / experiment / "report.md").is_file()
    if optuna:
        # the study came back with the searcher: one Optuna trial per Tune trial, all told COMPLETE,
        # with the lr each run logged (a fresh study would hold only the resumed trial, or new ones)
        newest = max(experiment_dir.glob("searcher-state-*.pkl"), key=lambda p: p.name)  # session time in the name
        study = pickle.loads(newest.read_bytes())["_ot_study"]
        assert len(study.trials) == len(after)
        assert all(t.state.name == "COMPLETE" for t in study.trials)
        assert sorted(t.params["lr"] for t in study.trials) == pytest.approx(
            sorted(float(r.data.params["lr"]) for r in runs))
    print(f"\n[ft] {sig.name} {'optuna' if optuna else 'grid'}: {len(after)} trials run, "
          f"{len(done_before)} finished before the interrupt and not re-run (Ray's saved state knew "
          f"{len(ray_done_before)}), {len(ckpt_epoch)} unfinished resumed "
          f"(from their checkpoints after epoch {sorted(ckpt_epoch.values())}), retried 0, lost 0, "
          f"duplicate runs {duplicates}, {seconds:.0f} s")


# ---- 3. GPU fraction on a cluster without GPUs ------------------------------------------------
def test_gpu_fraction_on_a_cluster_without_gpu_is_refused_before_any_work(cluster, tmp_path, monkeypatch, capsys,
                                                                           data_root):
    path = _write_sweep(tmp_path / "gpu.yaml", name="ftgpu", search={"method": ["none"], "student_ratio": [0.25]},
                        resources={"cpu": 1, "gpu": 0.25}, ray={"address": cluster.address})
    monkeypatch.setenv("KDLIB_OUTPUT", str(tmp_path / "out"))
    from kdlib.sweep.runner import run_sweep

    refused = r"^resources\.gpu: 0\.25 GPU per trial asked, but the Ray cluster has no GPU$"
    with pytest.raises(ConfigError, match=refused):
        run_sweep(load_plan(path))
    assert not ray.is_initialized()  # its connection was shut down again
    assert main(["sweep", "run", str(path)]) == 2
    assert "kdlib: error: resources.gpu: 0.25 GPU per trial asked" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    assert client.get_experiment_by_name("ftgpu") is None  # no experiment, parent run or teacher
    assert not (tmp_path / "out" / "teachers").exists()
