"""End to end on real audio with real Ray and MLflow: the quickstart smoke sweep, then a sweep with
Optuna + ASHA in which one method crashes every trial."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from kdlib.cli import main

REPO = Path(__file__).resolve().parents[1]
TRIAL_PARAMS = {"method", "student_ratio", "lr", "kd_weight", "seed", "sample_rate", "pesq_mode", "config_hash",
                "git_commit", "model"}
FINAL = ["test_pesq", "test_stoi", "test_estoi", "test_si_sdr", "params", "macs", "params_pct"]

pytestmark = pytest.mark.slow


def _runs(output: Path, experiment: str):
    """All runs of ``experiment`` in ``output``'s store (global tracking URI restored afterwards)."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{output / 'mlflow.db'}")
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(before)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def quickstart_smoke(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDLIB_OUTPUT", str(out))
    try:
        code = main(["sweep", "run", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke-test"])
    finally:
        mp.undo()
    return code, out, _runs(out, "quickstart-smoke")


def test_smoke_sweep_logs_one_parent_and_one_child_per_trial(quickstart_smoke):
    code, _, runs = quickstart_smoke
    assert code == 0
    roles = runs["tags.kdlib.role"].value_counts().to_dict()
    assert roles == {"sweep": 1, "teacher": 1, "trial": 6}
    parent = runs.loc[runs["tags.kdlib.role"] == "sweep", "run_id"].item()
    children = runs[runs["tags.kdlib.role"] != "sweep"]
    assert (children["tags.mlflow.parentRunId"] == parent).all()
    trials = runs[runs["tags.kdlib.role"] == "trial"]
    assert (trials["status"] == "FINISHED").all()
    assert {(m, float(r)) for m, r in zip(trials["params.method"], trials["params.student_ratio"], strict=True)} == {
        (m, r) for m in ("none", "output", "self_similarity") for r in (0.25, 0.04)}
    for p in TRIAL_PARAMS:
        assert trials[f"params.{p}"].notna().all(), p
    assert (trials["params.pesq_mode"] == "wb").all() and (trials["params.sample_rate"] == "16000").all()
    for m in FINAL + ["val_si_sdr"]:
        assert trials[f"metrics.{m}"].notna().all(), m
    # the size builder's promise, as logged
    for ratio, pct in zip(trials["params.student_ratio"].astype(float), trials["metrics.params_pct"], strict=True):
        assert abs(pct / 100 - ratio) / ratio <= 0.10
    teacher = runs[runs["tags.kdlib.role"] == "teacher"].iloc[0]
    assert teacher["metrics.params_pct"] == 100 and teacher["metrics.noisy_pesq"] > 1


def test_per_epoch_history_is_in_mlflow(quickstart_smoke):
    _, out, runs = quickstart_smoke
    run_id = runs[runs["tags.kdlib.role"] == "trial"]["run_id"].iloc[0]
    history = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_metric_history(run_id, "val_si_sdr")
    assert [h.step for h in history] == [1]


def test_report_front_is_chosen_on_validation(quickstart_smoke):
    """The front's cells are non-dominated in (mean validation PESQ ↑, params ↓), whatever their test scores."""
    _, out, runs = quickstart_smoke
    report_dir = out / "reports" / "quickstart-smoke"
    for name in ("pareto.png", "pareto_stoi.png", "report.md"):
        assert (report_dir / name).stat().st_size > 1000, name
    text = (report_dir / "report.md").read_text()
    trials = runs[runs["tags.kdlib.role"] == "trial"]
    assert trials["metrics.valid_pesq"].notna().all() and trials["metrics.valid_stoi"].notna().all()
    section = text.split("## Non-dominated grid cells: PESQ")[1].split("## ")[0]
    assert "selected on: valid_pesq (mean)" in section
    cells = trials.groupby(["params.method", "params.student_ratio"]).agg(
        valid=("metrics.valid_pesq", "mean"), params=("metrics.params", "mean"), ids=("run_id", list))
    front = [key for key, c in cells.iterrows() if any(rid in section for rid in c["ids"])]
    assert front
    for key in front:
        v0, n0 = cells.loc[key, "valid"], cells.loc[key, "params"]
        at_least = (cells["valid"] >= v0) & (cells["params"] <= n0)
        dominated = at_least & ((cells["valid"] > v0) | (cells["params"] < n0))
        assert not dominated.any(), f"{key} is dominated on validation"
    assert "## Significance against `none`" in text and "## Teacher quality" in text
    # the report sits in MLflow next to the runs, and the experiment opens as a model-training one
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent = runs.loc[runs["tags.kdlib.role"] == "sweep", "run_id"].item()
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/pareto.png", "report/pareto_stoi.png"} <= logged
    exp = client.get_experiment_by_name("quickstart-smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize("reference", ["tag", "run"])
def test_eval_of_a_trial_checkpoint_reproduces_its_logged_test_metrics(quickstart_smoke, capsys, data_root,
                                                                       reference):
    """The best student of a finished trial is an MLflow artifact of its run: its ``kdlib.checkpoint`` tag
    points at that durable copy under the sweep's output (not Ray's session folder), and both the path and
    ``runs:/<run id>`` score to the logged test metrics."""
    _, out, runs = quickstart_smoke
    trial = runs[(runs["tags.kdlib.role"] == "trial") & (runs["params.method"] == "output")].iloc[0]
    checkpoint = Path(trial["tags.kdlib.checkpoint"])
    assert checkpoint.is_file() and checkpoint.is_relative_to(out / "mlartifacts"), checkpoint
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert sorted(a.path for a in client.list_artifacts(trial["run_id"])) == [
        "student.pt", "test_scores.csv", "test_scores_noizeus.csv", "test_scores_vb_demand.csv"]
    target = str(checkpoint) if reference == "tag" else f"runs:/{trial['run_id']}"
    capsys.readouterr()
    code = main(["eval", target, "--data", str(data_root / "vb_demand"), "--speakers", "p232",
                 "--max-utterances", "2", "--json", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["utterances"] == 2 and result["pesq_mode"] == "wb"
    for m in ("pesq", "stoi", "estoi", "si_sdr"):
        assert result[m] == pytest.approx(trial[f"metrics.test_{m}"], rel=1e-6), m


def test_each_named_test_set_is_scored_logged_and_reported(quickstart_smoke, capsys, data_root):
    """The quickstart's two test sets: VoiceBank+DEMAND (primary, PESQ wb) and NOIZEUS (PESQ nb), each logged
    under its name, with headline ``key/`` metrics for MLflow's chart view, a report section each and the HTML
    report (listening examples included) next to the markdown in the parent run."""
    _, out, runs = quickstart_smoke
    trials = runs[runs["tags.kdlib.role"] == "trial"]
    assert (trials["metrics.test_vb_demand_pesq"] == trials["metrics.test_pesq"]).all()
    assert trials["metrics.test_noizeus_pesq"].notna().all() and trials["metrics.key/test_noizeus_pesq"].notna().all()
    assert (trials["metrics.key/test_pesq"] == trials["metrics.test_pesq"]).all()
    teacher = runs[runs["tags.kdlib.role"] == "teacher"].iloc[0]
    assert teacher["metrics.noisy_noizeus_pesq"] > 1 and teacher["metrics.key/params"] == teacher["metrics.params"]
    parent = runs[runs["tags.kdlib.role"] == "sweep"].iloc[0]
    assert parent["params.test_sets"] == "vb_demand,noizeus" and parent["params.pesq_mode.noizeus"] == "nb"
    assert parent["params.version.torch"].startswith("2.13")
    # the nb scores logged for noizeus are what `kdlib eval` gives on the same two utterances
    trial = trials[trials["params.method"] == "none"].iloc[0]
    capsys.readouterr()
    assert main(["eval", trial["tags.kdlib.checkpoint"], "--data", str(data_root / "noizeus"), "--speakers",
                 "noizeus_spk3", "--max-utterances", "2", "--pesq-mode", "nb", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pesq_mode"] == "nb" and result["pesq"] == pytest.approx(trial["metrics.test_noizeus_pesq"])
    report = out / "reports" / "quickstart-smoke"
    text = (report / "report.md").read_text()
    assert "## Test set `noizeus` (noizeus:noizeus_spk3, PESQ nb)" in text
    page = (report / "report.html").read_text()
    assert page.count("<audio") >= 2 * 3 and "Listening examples" in page  # noisy, clean, teacher (+ students)
    logged = {a.path for a in mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").list_artifacts(
        parent["run_id"], "report")}
    assert {"report/report.html", "report/summary.csv", "report/significance.csv"} <= logged


def test_every_model_run_holds_its_checkpoint_and_runs_refs_are_checked(quickstart_smoke, capsys):
    from kdlib.models import read_checkpoint

    _, out, runs = quickstart_smoke
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for _, run in runs[runs["tags.kdlib.role"] != "sweep"].iterrows():
        names = [a.path for a in client.list_artifacts(run["run_id"])]
        models = [n for n in names if n.endswith(".pt")]
        assert len(models) == 1 and "test_scores.csv" in names, names
        meta = read_checkpoint(run["tags.kdlib.checkpoint"])["meta"]
        if run["tags.kdlib.role"] == "trial":  # the student carries its complexity and the scores it got
            for key in ("params", "macs", "test_pesq"):
                assert meta[key] == pytest.approx(run[f"metrics.{key}"]), key
            assert meta["val_si_sdr"] == pytest.approx(run["metrics.best_val_si_sdr"])  # the saved epoch's
            scores = pd.read_csv(client.download_artifacts(run["run_id"], "test_scores.csv", str(out)))
            assert len(scores) == 2 and scores["pesq"].mean() == pytest.approx(run["metrics.test_pesq"])
        else:  # the teacher keeps its own and the noisy input's per-utterance scores
            assert "noisy_scores.csv" in names
    parent = runs.loc[runs["tags.kdlib.role"] == "sweep", "run_id"].item()
    for ref, needle in ((f"runs:/{parent}", "holds no model artifact"), ("runs:/0123abcd", "no MLflow run '0123abcd'")):
        capsys.readouterr()
        assert main(["profile", ref, "--tracking-uri", uri, "--repeats", "1", "--seconds", "0.5"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kdlib: error: ") and needle in err and "\n" not in err, err


def test_two_sweeps_starting_together_on_a_fresh_store_both_finish(data_root, tmp_path):
    """Two ``kdlib sweep run`` processes, started at the same moment on one fresh output folder (so one new
    SQLite store, and one teacher both need): both finish, one store, every run of both sweeps in it."""
    import subprocess
    import sys
    import time

    start = time.time() + 8
    script = ("import sys, time; from kdlib.cli import main; t = float(sys.argv[1])\n"
              "while time.time() < t: time.sleep(0.001)\nsys.exit(main(sys.argv[2:]))")
    env = {**os.environ, "KDLIB_OUTPUT": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen(
        [sys.executable, "-c", script, str(start), "sweep", "run", str(REPO / "sweeps" / "quickstart.yaml"),
         "--smoke-test", "--no-report", "--set", f"name=together{i}", "--set", "search.method=[none]",
         "--set", "search.student_ratio=[0.25]"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    assert sorted(f.name for f in tmp_path.glob("*.db")) == ["mlflow.db"]
    for i in range(2):
        runs = _runs(tmp_path, f"together{i}-smoke")
        assert sorted(runs["tags.kdlib.role"]) == ["sweep", "teacher", "trial"]
        assert (runs["status"] == "FINISHED").all()


def test_failed_trials_are_marked_failed_and_the_sweep_goes_on(data_root, tmp_path, monkeypatch):
    sweep = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    sweep.update(name="crashy", plugins=["tests.plugins.exploding"], methods={})
    sweep["search"] = {"method": ["none", "exploding"], "student_ratio": [0.25], "seed": [0, 1],
                       "optuna": {"lr": {"loguniform": [3e-4, 3e-3]}}}
    sweep["scheduler"] = {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    sweep["ray"] = {"num_cpus": 2, "max_failures": 0}
    sweep["smoke"]["seeds"] = 2
    path = tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump(sweep))
    monkeypatch.setenv("KDLIB_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # Ray workers import the test plugin
    code = main(["sweep", "run", str(path), "--smoke-test"])
    assert code == 1  # the sweep ran to the end, but a smoke test with crashed trials must not pass
    runs = _runs(tmp_path / "out", "crashy-smoke")
    trials = runs[runs["tags.kdlib.role"] == "trial"]
    assert len(trials) == 4
    status = dict(zip(trials["params.method"] + trials["params.seed"], trials["status"], strict=True))
    assert status == {"none0": "FINISHED", "none1": "FINISHED", "exploding0": "FAILED", "exploding1": "FAILED"}
    lrs = trials["params.lr"].astype(float)
    assert ((lrs >= 3e-4) & (lrs <= 3e-3)).all() and lrs.nunique() == 4  # Optuna sampled within every cell
    report = (tmp_path / "out" / "reports" / "crashy-smoke" / "report.md").read_text()
    assert "FAILED" in report
