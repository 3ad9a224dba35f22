"""Tests of kdlib.report against a real MLflow sqlite store laid out as the sweep writes it."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlib.errors import KdlibError
from kdlib.report import build_report, load_runs, pareto_front, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPERIMENT = "kd-sweep"
TEACHER_PARAMS = 1_000_000
NOISY = {"noisy_pesq": 1.97, "noisy_stoi": 0.861, "noisy_estoi": 0.780, "noisy_si_sdr": 8.4}
TEACHER_METRICS = {"test_pesq": 3.10, "test_stoi": 0.940, "test_estoi": 0.880, "test_si_sdr": 17.5}

# (key, method, ratio, seed, test pesq, stoi, calibration, valid pesq). Params = ratio * teacher params;
# valid STOI = test STOI.
# Per-run test fronts (pareto_front on trials): PESQ output@0.04 seed 1 (2.55) and output@0.25 seed 0 (2.90);
# STOI self_similarity@0.04 (0.885) and self_similarity@0.25 (0.920).
# The report's fronts are of grid cells chosen on validation: PESQ self_similarity@0.04 (valid 2.50, although
# output@0.04 is better on test: 2.45 vs 2.40) and output@0.25 (valid 2.85); STOI as on test.
TRIALS = [
    ("none_25_0", "none", 0.25, 0, 2.60, 0.900, "off", 2.62),
    ("none_25_1", "none", 0.25, 1, 2.70, 0.905, "off", 2.72),
    ("out_25_0", "output", 0.25, 0, 2.90, 0.910, "off", 2.85),
    ("ss_25_0", "self_similarity", 0.25, 0, 2.80, 0.920, "on", 2.70),
    ("none_04_0", "none", 0.04, 0, 2.25, 0.870, "off", 2.20),
    ("out_04_0", "output", 0.04, 0, 2.35, 0.880, "off", 2.30),
    ("out_04_1", "output", 0.04, 1, 2.55, 0.875, "off", 2.32),
    ("ss_04_0", "self_similarity", 0.04, 0, 2.40, 0.885, "on", 2.50),
]
#: the quality columns of load_runs' frame, in the order of kdlib.metrics.specs.METRICS
METRIC_ORDER = ["pesq", "stoi", "estoi", "si_sdr"]
PESQ_FRONT = {"out_04_1", "out_25_0"}
STOI_FRONT = {"ss_04_0", "ss_25_0"}
#: the trials of the cells the report's fronts choose on validation
PESQ_CELLS = {"ss_04_0", "out_25_0"}
STOI_CELLS = {"ss_04_0", "ss_25_0"}


@dataclass
class Store:
    """Handles to the MLflow store the module fixture builds."""

    uri: str
    parent_old: str
    parent_new: str
    runs: dict[str, str]  # trial key / "teacher" / "failed" -> run id (children of parent_new)
    old_trial: str  # the single trial under parent_old


def _child(client, exp_id: str, parent: str, role: str, name: str, start: int) -> str:
    run = client.create_run(
        exp_id,
        start_time=start,
        run_name=name,
        tags={"kdlib.role": role, "mlflow.parentRunId": parent},
    )
    return run.info.run_id


def _log(client, run_id: str, params: dict, metrics: dict) -> None:
    from mlflow.entities import Metric, Param

    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )


def _parent(client, exp_id: str, name: str, start: int, config_hash: str) -> str:
    tags = {"kdlib.role": "sweep", "kdlib.smoke_test": "False"}
    run = client.create_run(exp_id, start_time=start, run_name=name, tags=tags)
    _log(
        client,
        run.info.run_id,
        {
            "config_hash": config_hash,
            "git_commit": "0123abcd",
            "sample_rate": "16000",
            "pesq_mode": "wb",
            "test_set": "vctk-demand/test",
        },
        {},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _common(method: str, ratio: float) -> dict:
    return {
        "method": method,
        "student_ratio": str(ratio),
        "model": "convtasnet_tiny",
        "sample_rate": "16000",
        "pesq_mode": "wb",
        "config_hash": "hash-new",
        "git_commit": "0123abcd",
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db.as_posix()}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=db.parent.joinpath("art").as_uri())
    client.create_experiment("other-sweep", artifact_location=db.parent.joinpath("art2").as_uri())

    # An older sweep with a single trial.
    parent_old = _parent(client, exp_id, "sweep-old", 1_000, "hash-old")
    old_trial = _child(client, exp_id, parent_old, "trial", "old-trial", 1_100)
    _log(
        client,
        old_trial,
        {**_common("output", 0.25), "seed": "0", "lr": "0.001", "kd_weight": "0.5"},
        {"params": 250_000, "params_pct": 25.0, "test_pesq": 2.0, "test_stoi": 0.8, "best_val_si_sdr": 7.5},
    )
    client.set_terminated(old_trial)

    # The newer sweep: teacher, 8 trials, 1 failed trial.
    parent_new = _parent(client, exp_id, "sweep-new", 10_000, "hash-new")
    runs: dict[str, str] = {}
    teacher = _child(client, exp_id, parent_new, "teacher", "teacher", 10_100)
    _log(
        client,
        teacher,
        {"method": "teacher", "student_ratio": "1.0", "model": "convtasnet"},
        {
            "params": TEACHER_PARAMS,
            "macs": 5.2e9,
            "params_pct": 100.0,
            **TEACHER_METRICS,
            **NOISY,
        },
    )
    client.set_terminated(teacher)
    runs["teacher"] = teacher
    for i, (key, method, ratio, seed, pesq, stoi, calib, valid_pesq) in enumerate(TRIALS):
        rid = _child(client, exp_id, parent_new, "trial", key, 10_200 + i)
        params = {
            **_common(method, ratio),
            "seed": str(seed),
            "lr": "0.0005",
            "kd_weight": "0.0" if method == "none" else "0.7",
            "kd.calibration": calib,
        }
        metrics = {
            "params": ratio * TEACHER_PARAMS,
            "macs": ratio * 5.2e9,
            "params_pct": ratio * 100.0,
            "kd_extra_params": 0 if method == "none" else 1024,
            "test_pesq": pesq,
            "test_stoi": stoi,
            "test_estoi": stoi - 0.07,
            "test_si_sdr": 10.0 + 10 * (pesq - 2.0),
            "valid_pesq": valid_pesq,
            "valid_stoi": stoi,
        }
        _log(client, rid, params, metrics)
        history = [Metric("val_si_sdr", 5.0 + epoch, 0, epoch) for epoch in range(3)]
        client.log_batch(rid, metrics=history)
        client.set_terminated(rid)
        runs[key] = rid
    failed = _child(client, exp_id, parent_new, "trial", "ss_04_1", 10_900)
    _log(
        client,
        failed,
        {
            **_common("self_similarity", 0.04),
            "seed": "1",
            "lr": "0.0005",
            "kd_weight": "0.7",
            "kd.layers": "['encoder']",  # one value, on one run only: not a varying knob
        },
        {"params": 40_000, "params_pct": 4.0, "train_loss": 1.3},
    )
    client.set_terminated(failed, status="FAILED")
    runs["failed"] = failed
    return Store(uri=uri, parent_old=parent_old, parent_new=parent_new, runs=runs, old_trial=old_trial)


@pytest.fixture(scope="module")
def runs_df(store: Store) -> pd.DataFrame:
    return load_runs(store.uri, EXPERIMENT)


def _key_of(store: Store, run_id: str) -> str:
    return {v: k for k, v in store.runs.items()}[run_id]


# ----------------------------------------------------------------------------------------------
# load_runs


def test_load_runs_rows_columns_and_types(store: Store, runs_df: pd.DataFrame) -> None:
    df = runs_df
    assert len(df) == 1 + len(TRIALS) + 1
    assert set(df["run_id"]) == set(store.runs.values())
    expected = [
        "run_id", "run_name", "role", "status", "method", "student_ratio", "seed", "lr", "kd_weight",
        "params", "macs", "params_pct", "kd_extra_params", "pesq", "stoi", "estoi", "si_sdr",
        "noisy_pesq", "noisy_stoi", "noisy_estoi", "noisy_si_sdr",
    ]  # fmt: skip
    assert list(df.columns[: len(expected)]) == expected
    assert {"param.model", "param.kd.calibration", "param.config_hash"} <= set(df.columns)
    assert not any(c.startswith(("params.", "metrics.", "tags.")) for c in df.columns)
    assert "param.method" not in df.columns

    assert df.iloc[0]["role"] == "teacher"
    assert df["role"].value_counts().to_dict() == {"trial": 9, "teacher": 1}
    for col in ("student_ratio", "lr", "kd_weight", "params", "macs", "pesq", "stoi", "si_sdr"):
        assert df[col].dtype == np.float64, col
    assert str(df["seed"].dtype) == "Int64"

    by_name = df.set_index("run_name")
    teacher = by_name.loc["teacher"]
    assert teacher["student_ratio"] == 1.0 and teacher["method"] == "teacher"
    assert pd.isna(teacher["seed"])
    assert teacher["noisy_pesq"] == pytest.approx(NOISY["noisy_pesq"])
    assert teacher["pesq"] == pytest.approx(TEACHER_METRICS["test_pesq"])
    row = by_name.loc["out_04_1"]
    assert row["method"] == "output" and row["student_ratio"] == pytest.approx(0.04)
    assert row["seed"] == 1 and isinstance(row["seed"], (int, np.integer))
    assert row["pesq"] == pytest.approx(2.55) and row["params"] == pytest.approx(40_000)
    assert row["valid_pesq"] == pytest.approx(2.32) and row["valid_stoi"] == pytest.approx(0.875)
    assert row["kd_weight"] == pytest.approx(0.7) and row["lr"] == pytest.approx(5e-4)
    assert row["param.kd.calibration"] == "off" and row["param.model"] == "convtasnet_tiny"
    failed = by_name.loc["ss_04_1"]
    assert failed["status"] == "FAILED" and np.isnan(failed["pesq"])
    assert df.attrs["parent_run_id"] == store.parent_new
    prov = df.attrs["provenance"]
    assert prov["config_hash"] == "hash-new" and prov["parent_run_name"] == "sweep-new"
    assert prov["smoke_test"] == "False" and prov["parent_run_id"] == store.parent_new


def test_load_runs_parent_selection(store: Store) -> None:
    explicit_new = load_runs(store.uri, EXPERIMENT, parent_run_id=store.parent_new)
    assert set(explicit_new["run_id"]) == set(store.runs.values())
    old = load_runs(store.uri, EXPERIMENT, parent_run_id=store.parent_old)
    assert list(old["run_id"]) == [store.old_trial]
    assert old.attrs["provenance"]["config_hash"] == "hash-old"
    with pytest.raises(KdlibError, match="not a sweep parent"):
        load_runs(store.uri, EXPERIMENT, parent_run_id=store.runs["teacher"])
    with pytest.raises(KdlibError, match="not a run of experiment"):
        load_runs(store.uri, EXPERIMENT, parent_run_id="0" * 32)


def test_load_runs_unknown_experiment_lists_existing(store: Store) -> None:
    with pytest.raises(KdlibError) as err:
        load_runs(store.uri, "no-such-sweep")
    msg = str(err.value)
    assert "no-such-sweep" in msg and EXPERIMENT in msg and "other-sweep" in msg
    assert "\n" not in msg
    with pytest.raises(KdlibError, match="no sweep parent run"):
        load_runs(store.uri, "other-sweep")


def test_load_runs_missing_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.db"
    with pytest.raises(KdlibError, match="does not exist"):
        load_runs(f"sqlite:///{missing.as_posix()}", EXPERIMENT)
    assert not missing.exists()


def test_load_runs_restores_tracking_uri(store: Store, tmp_path: Path) -> None:
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    sentinel = (tmp_path / "elsewhere").as_uri()
    mlflow.set_tracking_uri(sentinel)
    try:
        load_runs(store.uri, EXPERIMENT)
        assert mlflow.get_tracking_uri() == sentinel
        assert os.environ.get("MLFLOW_TRACKING_URI") == sentinel
    finally:
        mlflow.set_tracking_uri(None)  # back to "not set" (also unsets the env var)
        if env_before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


# ----------------------------------------------------------------------------------------------
# pareto_front


def _dominated(values: np.ndarray, i: int) -> bool:
    """Brute force: is row i dominated (objective max in column 0, cost min in column 1)?"""
    obj, cost = values[:, 0], values[:, 1]
    better_eq = (obj >= obj[i]) & (cost <= cost[i])
    strictly = (obj > obj[i]) | (cost < cost[i])
    return bool((better_eq & strictly).any())


@pytest.mark.parametrize(("metric", "expected"), [("pesq", PESQ_FRONT), ("stoi", STOI_FRONT)])
def test_pareto_front_on_trials(store: Store, runs_df: pd.DataFrame, metric: str, expected: set) -> None:
    trials = runs_df[runs_df["role"] == "trial"]
    mask = pareto_front(trials, metric)
    assert mask.dtype == bool and mask.index.equals(trials.index)
    assert {_key_of(store, r) for r in trials.loc[mask, "run_id"]} == expected
    assert not mask[trials["status"] == "FAILED"].any()
    finite = trials[np.isfinite(trials[[metric, "params"]]).all(axis=1)]
    values = finite[[metric, "params"]].to_numpy()
    for pos, idx in enumerate(finite.index):
        assert mask[idx] == (not _dominated(values, pos)), trials.loc[idx, "run_name"]


def test_pareto_front_random_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "q": np.round(rng.normal(3.0, 0.3, 60), 1),  # rounding creates ties
            "c": rng.choice([1e4, 4e4, 1e5, 2.5e5], 60),
        }
    )
    df.loc[[3, 7], "q"] = np.nan
    df.loc[11, "c"] = np.inf
    df.index = df.index * 10  # non-default index
    mask = pareto_front(df, "q", cost="c")
    assert not mask.loc[[30, 70, 110]].any()
    finite = df.drop(index=[30, 70, 110])
    values = finite.to_numpy()
    for pos, idx in enumerate(finite.index):
        assert mask[idx] == (not _dominated(values, pos))
    assert mask.sum() >= 1


def test_pareto_front_keeps_ties_and_skips_non_finite() -> None:
    df = pd.DataFrame(
        {
            "pesq": [2.5, 2.5, 2.4, 3.0, np.nan, 9.9],
            "params": [4e4, 4e4, 4e4, 2.5e5, 1e3, np.nan],
        },
        index=list("abcdef"),
    )
    mask = pareto_front(df, "pesq")
    assert mask.to_dict() == {"a": True, "b": True, "c": False, "d": True, "e": False, "f": False}


def test_pareto_front_errors_and_empty() -> None:
    empty = pd.DataFrame({"pesq": [], "params": []})
    assert pareto_front(empty, "pesq").empty
    with pytest.raises(KdlibError, match="no column 'macs'"):
        pareto_front(empty, "pesq", cost="macs")


# ----------------------------------------------------------------------------------------------
# build_report / write_report


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 10_000 and path.read_bytes()[:8] == PNG_MAGIC


def test_build_report_files_and_content(store: Store, runs_df: pd.DataFrame, tmp_path: Path) -> None:
    out = build_report(runs_df, tmp_path / "rep", title="Test sweep", provenance=runs_df.attrs["provenance"])
    assert set(out) == {"pareto", "pareto_stoi", "report", "summary", "html"}
    assert out["pareto"].name == "pareto.png" and out["pareto_stoi"].name == "pareto_stoi.png"
    assert _is_png(out["pareto"]) and _is_png(out["pareto_stoi"])
    text = out["report"].read_text(encoding="utf-8")

    assert text.startswith("# Test sweep\n")
    for needle in (store.parent_new, "hash-new", "0123abcd", "16000", "wb", "vctk-demand/test"):
        assert needle in text
    assert "(pareto.png)" in text and "(pareto_stoi.png)" in text

    pesq_sec = text.split("## Non-dominated grid cells: PESQ")[1].split("## Non-dominated grid cells: STOI")[0]
    stoi_sec = text.split("## Non-dominated grid cells: STOI")[1].split("## Per method")[0]
    for key in PESQ_CELLS:
        assert store.runs[key] in pesq_sec
    for key in STOI_CELLS:
        assert store.runs[key] in stoi_sec
    # chosen on validation: output@0.04 has the better test PESQ (2.45 vs 2.40) but is not on the front
    off_front = set(store.runs) - PESQ_CELLS - {"teacher", "failed"}
    assert not any(store.runs[k] in pesq_sec for k in off_front)
    assert "selected on: valid_pesq (mean)" in pesq_sec and "the test set chose nothing" in pesq_sec

    # ΔPESQ (test) vs mean none of the same ratio: output@0.25 = 2.90 - mean(2.60, 2.70) = +0.250,
    # self_similarity@0.04 = 2.40 - 2.25 = +0.150; one trial each, so no std
    row_25 = next(line for line in pesq_sec.splitlines() if store.runs["out_25_0"] in line)
    row_04 = next(line for line in pesq_sec.splitlines() if store.runs["ss_04_0"] in line)
    assert "| +0.250 |" in row_25 and "| 2.900 ± — |" in row_25 and "| 2.850 |" in row_25
    assert "| +0.150 |" in row_04 and "| 2.400 ± — |" in row_04 and "| 2.500 |" in row_04
    # the ablation knob varies across trials, so it is a column; the constant model name is not
    assert "kd.calibration" in pesq_sec and "convtasnet_tiny" not in pesq_sec
    assert "kd.layers" not in text

    failed_sec = text.split("## Failed or unfinished runs")[1]
    failed_row = next(line for line in failed_sec.splitlines() if store.runs["failed"] in line)
    assert "FAILED" in failed_row
    assert sum(store.runs["failed"] in line for line in text.splitlines()) == 1

    summary = text.split("## Per method")[1].split("## Failed")[0]
    none_25 = next(line for line in summary.splitlines() if line.startswith("| none | 0.25 |"))
    assert "2.650 ± 0.071" in none_25 and "| 2 |" in none_25

    ref = text.split("## Reference points")[1].split("## Non-dominated")[0]
    assert "noisy input" in ref and "1.970" in ref and "3.100" in ref and "1,000,000" in ref


def test_build_report_delta_dash_without_baseline(runs_df: pd.DataFrame, tmp_path: Path) -> None:
    no_none_04 = runs_df[~((runs_df["method"] == "none") & (runs_df["student_ratio"] == 0.04))]
    text = build_report(no_none_04, tmp_path, title="t")["report"].read_text(encoding="utf-8")
    pesq_sec = text.split("## Non-dominated grid cells: PESQ")[1].split("## Non-dominated grid cells: STOI")[0]
    row_04 = next(line for line in pesq_sec.splitlines() if line.startswith("| self_similarity | 0.04 |"))
    assert "| — |" in row_04
    assert "hash-new" in text  # provenance taken from df.attrs when not given


def test_build_report_hand_made_frame_excludes_unfinished(tmp_path: Path) -> None:
    """A run that is not FINISHED is never ranked, even when it logged a (best) PESQ."""
    rows = [
        {"run_id": "t", "role": "teacher", "status": "FINISHED", "method": "teacher", "params": 1e6,
         "pesq": 3.0, "stoi": 0.95, "noisy_pesq": 1.9, "noisy_stoi": 0.9},
        {"run_id": "kd-a", "role": "trial", "status": "FINISHED", "method": "output", "student_ratio": 0.1,
         "seed": 2.0, "params": 1e5, "params_pct": 10.0, "pesq": 2.6, "stoi": 0.91, "valid_pesq": 2.5,
         "valid_stoi": 0.9},
        {"run_id": "kd-killed", "role": "trial", "status": "KILLED", "method": "output", "student_ratio": 0.1,
         "seed": 3.0, "params": 1e5, "params_pct": 10.0, "pesq": 2.9, "stoi": 0.93, "valid_pesq": 2.9,
         "valid_stoi": 0.95},
    ]  # fmt: skip
    out = build_report(pd.DataFrame(rows), tmp_path, title="hand made", provenance={"pesq_mode": "nb"})
    assert set(out) == {"pareto", "pareto_stoi", "report", "summary", "html"}
    text = out["report"].read_text(encoding="utf-8")
    ranked = text.split("## Failed or unfinished runs")[0]
    assert "kd-a" in ranked and "kd-killed" not in ranked
    row = next(line for line in ranked.splitlines() if line.endswith("| kd-a |"))
    assert row.endswith("| — | kd-a |")  # no `none` student at ratio 0.1 -> ΔPESQ is a dash
    assert row.startswith("| output | 0.1 | 1 |")  # one trial in the cell
    failed = text.split("## Failed or unfinished runs")[1]
    killed = next(line for line in failed.splitlines() if "kd-killed" in line)
    assert "KILLED" in killed and "| 3 |" in killed  # seed logged as 3.0 is shown as an integer


def test_no_front_is_chosen_without_validation_scores(tmp_path: Path) -> None:
    """Trials that logged no validation score get no front (choosing it on test would not be fair)."""
    rows = [
        {"run_id": "kd-a", "role": "trial", "status": "FINISHED", "method": "output", "student_ratio": 0.1,
         "seed": 0, "params": 1e5, "params_pct": 10.0, "pesq": 2.6, "stoi": 0.91},
    ]  # fmt: skip
    text = build_report(pd.DataFrame(rows), tmp_path, title="t")["report"].read_text(encoding="utf-8")
    section = text.split("## Non-dominated grid cells: PESQ")[1].split("## Non-dominated grid cells: STOI")[0]
    assert "No validation scores to choose on" in section and "kd-a" not in section


def test_build_report_empty(tmp_path: Path) -> None:
    out = build_report(pd.DataFrame(), tmp_path / "empty", title="Empty sweep")
    assert set(out) == {"report", "html"}
    text = out["report"].read_text(encoding="utf-8")
    assert "No finished trials" in text
    assert not (tmp_path / "empty" / "pareto.png").exists()


def test_build_report_only_failed(runs_df: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "pareto.png").write_bytes(PNG_MAGIC)  # stale plot of an earlier report
    only = runs_df[(runs_df["role"] == "teacher") | (runs_df["status"] == "FAILED")]
    out = build_report(only, tmp_path, title="t", provenance={})
    assert set(out) == {"report", "html"}
    text = out["report"].read_text(encoding="utf-8")
    assert "No finished trials" in text and "FAILED" in text
    assert not (tmp_path / "pareto.png").exists()


def test_write_report_end_to_end(store: Store, tmp_path: Path) -> None:
    out = write_report(store.uri, EXPERIMENT, tmp_path / "w")
    assert set(out) == {"pareto", "pareto_stoi", "report", "summary", "significance", "html"}
    text = out["report"].read_text(encoding="utf-8")
    assert EXPERIMENT in text and store.parent_new in text
    old = write_report(store.uri, EXPERIMENT, tmp_path / "old", parent_run_id=store.parent_old)
    assert store.old_trial in old["report"].read_text(encoding="utf-8")


def test_methods_share_colours_across_plots() -> None:
    from kdlib.report.plots import method_styles

    methods = ["output", "none", "self_similarity", "none"]
    styles = method_styles(methods)
    assert styles == method_styles(reversed(methods))
    assert styles["none"][1] == "s"
    assert len({c for c, _ in styles.values()}) == len(styles)
    assert list(itertools.islice(styles, 1)) == ["none"]


# ----------------------------------------------------------------------------------------------
# columns follow the metric table


def _mae_scorer(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str
) -> tuple[float | None, str | None]:
    """Toy metric: mean absolute error."""
    return float(np.mean(np.abs(reference - estimate))), None


def test_a_new_metric_becomes_mlflow_keys_and_report_columns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One MetricSpec entry: evaluate_pairs scores it, its flat keys are the MLflow keys the report reads,
    and it is a column of load_runs' frame and of every table of build_report."""
    from mlflow import MlflowClient

    from kdlib.metrics import evaluate_pairs, specs

    mae = specs.MetricSpec("mae", "MAE", fmt=".4f", higher_is_better=False, score=_mae_scorer)
    monkeypatch.setattr(specs, "METRICS", (*specs.METRICS, mae))
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1600)

    def scores(prefix: str, error: float) -> dict[str, float]:
        summary = evaluate_pairs([ref], [ref + error], 16000, "wb", metrics=["mae", "si_sdr"])
        return summary.as_flat_dict(prefix)

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db.as_posix()}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("toy", artifact_location=(tmp_path / "art").as_uri())
    parent = _parent(client, exp_id, "sweep", 1_000, "hash-toy")
    teacher = _child(client, exp_id, parent, "teacher", "teacher", 1_100)
    _log(client, teacher, {"method": "teacher", "student_ratio": "1.0"},
         {"params": 1e6, "test_pesq": 3.0, "test_stoi": 0.95, **scores("test_", 0.01), **scores("noisy_", 0.5)})
    client.set_terminated(teacher)
    for i, (method, error) in enumerate((("none", 0.2), ("output", 0.1))):
        rid = _child(client, exp_id, parent, "trial", method, 1_200 + i)
        _log(client, rid, {**_common(method, 0.25), "seed": "0"},
             {"params": 2.5e5, "params_pct": 25.0, "test_pesq": 2.5 + i, "test_stoi": 0.9, **scores("test_", error),
              "valid_pesq": 2.4 + i, "valid_stoi": 0.9})
        client.set_terminated(rid)

    df = load_runs(uri, "toy")
    names = [*METRIC_ORDER, "mae"]
    assert [c for c in df.columns if c in names or c.startswith("noisy_")] == [
        *names, *[f"noisy_{n}" for n in names]
    ]
    by_name = df.set_index("run_name")
    assert by_name.loc["output", "mae"] == pytest.approx(0.1)
    assert by_name.loc["teacher", "noisy_mae"] == pytest.approx(0.5)

    text = build_report(df, tmp_path / "rep", title="toy")["report"].read_text(encoding="utf-8")
    ref_sec = text.split("## Reference points")[1].split("## Non-dominated")[0]
    assert "| SI-SDR (dB) | MAE |" in ref_sec and "| 0.5000 |" in ref_sec and "| 0.0100 |" in ref_sec
    pesq_sec = text.split("## Non-dominated grid cells: PESQ")[1].split("## Non-dominated grid cells: STOI")[0]
    assert "| MAE | ΔPESQ vs none |" in pesq_sec and "| 0.1000 | +1.000 |" in pesq_sec
    summary = text.split("## Per method")[1].split("## Failed")[0]
    assert "| MAE | ΔPESQ vs none (mean) |" in summary and "| 0.2000 | +0.000 |" in summary
