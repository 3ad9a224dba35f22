"""Named teachers (``teachers:``): one teacher per backbone swept as the grid dimension ``teacher``,
each trained once, each student of its own teacher's family, one Pareto report per teacher."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import yaml

from kdlib.config import SweepConfig
from kdlib.errors import ConfigError
from kdlib.models import build_model, count_params
from kdlib.sweep.plan import load_plan, make_plan
from kdlib.validation import validate

REPO = Path(__file__).resolve().parents[1]
DPDCRN = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}
DCCRN = {"channels": [8, 16], "rnn_units": 16, "rnn_layers": 1}
CONVTASNET = {"n_filters": 32, "bn_chan": 16, "hid_chan": 32, "skip_chan": 16, "n_blocks": 2, "n_repeats": 1}


def _raw(**over) -> dict:
    raw = {
        "name": "two-teachers",
        "data": {"train": {"segments_per_epoch": 4, "segment_seconds": 0.5},
                 "valid": {"corpus": "vb_demand", "speakers": ["p257"], "max_utterances": 1},
                 "test": {"corpus": "vb_demand", "speakers": ["p232"], "max_utterances": 1}},
        "teachers": {"small": {"model": {"name": "dpcrn_lite", "kwargs": DPDCRN}, "epochs": 1, "batch_size": 2},
                     "complex": {"model": {"name": "dccrn", "kwargs": DCCRN}, "epochs": 1, "batch_size": 2}},
        "training": {"epochs": 1, "batch_size": 2},
        "search": {"method": ["none", "output"], "student_ratio": [0.5]},
        "resources": {"cpu": 1}, "ray": {"num_cpus": 2},
    }
    raw.update(over)
    return raw


def test_named_teachers_become_a_grid_dimension_with_their_own_families():
    cfg = validate(SweepConfig, _raw())
    assert cfg.search.teacher == ["small", "complex"] and cfg.teacher_names() == ["small", "complex"]
    cells = cfg.search.points()
    assert len(cells) == 4 and {c["teacher"] for c in cells} == {"small", "complex"}
    assert cfg.student_base(None, DCCRN, "complex") == ("dccrn", DCCRN)
    assert cfg.student_base(None, DPDCRN, "small")[0] == "dpcrn_lite"
    # each teacher its own checkpoint, keyed by its own config
    plan = make_plan(cfg)
    assert plan.teacher("small").path != plan.teacher("complex").path
    assert plan.teacher("complex").path.name.startswith("dccrn-")
    # smoke epochs reach every named teacher
    smoke = make_plan(cfg, smoke=True).cfg
    assert all(smoke.teacher_cfg(n).epochs == cfg.smoke.teacher_epochs for n in smoke.teacher_names())


def test_search_teacher_picks_a_subset():
    cfg = validate(SweepConfig, _raw(search={"method": ["none"], "student_ratio": [0.5], "teacher": ["complex"]}))
    assert {c["teacher"] for c in cfg.search.points()} == {"complex"}


@pytest.mark.parametrize(("over", "needle"), [
    ({"teacher": {"model": {"name": "dccrn"}}}, "teacher: give either one teacher or named teachers"),
    ({"search": {"method": ["none"], "student_ratio": [0.5], "teacher": ["nope"]}}, "search.teacher: ['nope']"),
    ({"teachers": {"x": {"model": {"name": "nope"}}}}, "teachers.x.model.name: unknown model 'nope'"),
    ({"teachers": {"x": {"model": {"name": "dccrn", "kwargs": {"bogus": 1}}}}}, "teachers.x.model.kwargs"),
    ({"teachers": {"x": {"model": {"name": "dpcrn_lite", "kwargs": DPDCRN}, "batch_size": 9}}},
     "teachers.x.batch_size: 9 is more than data.train.segments_per_epoch (4)"),
])
def test_bad_named_teachers_are_refused_naming_the_key(over, needle):
    with pytest.raises(ConfigError) as exc:
        make_plan(validate(SweepConfig, _raw(**over)))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_method_that_cannot_apply_to_one_teacher_names_that_teacher():
    raw = _raw(teachers={"tasnet": {"model": {"name": "convtasnet", "kwargs": CONVTASNET}, "batch_size": 2}},
               search={"method": ["mask_matching"], "student_ratio": [0.5]})
    with pytest.raises(ConfigError, match=r"methods.mask_matching \(teacher 'tasnet'\)"):
        make_plan(validate(SweepConfig, raw))


def test_shipped_dfkd_backbones_sweep_has_three_backbone_teachers():
    cfg = load_plan(REPO / "sweeps" / "dfkd_backbones.yaml").cfg
    families = {cfg.teacher_cfg(n).model.name for n in cfg.teacher_names()}
    assert families == {"dccrn", "convtasnet", "dptnet"}
    assert set(cfg.search.method) >= {"dfkd", "output"}
    assert {0.25, 0.04} <= set(cfg.search.student_ratio)
    smoke = load_plan(REPO / "sweeps" / "dfkd_backbones.yaml", smoke=True).cfg
    assert {c["teacher"] for c in smoke.search.points()} == {"dccrn", "convtasnet", "dptnet"}
    # smoke.teacher_ratio: each smoke teacher is its own family at 10 % (±10 %) of the full teacher
    for name in cfg.teacher_names():
        full, small = cfg.teacher_cfg(name).model, smoke.teacher_cfg(name).model
        assert small.name == full.name
        ratio = count_params(build_model(small.name, small.kwargs)) / count_params(build_model(full.name, full.kwargs))
        assert abs(ratio - 0.1) <= 0.01, (name, ratio)


@pytest.mark.slow
def test_two_teacher_sweep_end_to_end(data_root, tmp_path, monkeypatch):
    from kdlib.cli import main

    path = tmp_path / "two.yaml"
    # two cheap families: a DPDCRN and a sub-band model, output KD only (so both teachers are loaded)
    path.write_text(yaml.safe_dump(_raw(
        teachers={"small": {"model": {"name": "dpcrn_lite", "kwargs": DPDCRN}, "epochs": 1, "batch_size": 2},
                  "band": {"model": {"name": "subband"}, "epochs": 1, "batch_size": 2}},
        search={"method": ["output"], "student_ratio": [0.5]})))
    monkeypatch.setenv("KDLIB_OUTPUT", str(tmp_path / "out"))
    assert main(["sweep", "run", str(path)]) == 0
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["two-teachers"])
    finally:
        mlflow.set_tracking_uri(before)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    teachers = runs[runs["tags.kdlib.role"] == "teacher"]
    assert sorted(zip(teachers["params.teacher"], teachers["params.model"], strict=True)) == [
        ("band", "subband"), ("small", "dpcrn_lite")]
    trials = runs[runs["tags.kdlib.role"] == "trial"]
    assert len(trials) == 2 and (trials["status"] == "FINISHED").all()
    assert sorted(zip(trials["params.teacher"], trials["params.model"], strict=True)) == [
        ("band", "subband"), ("small", "dpcrn_lite")]
    # each student is half of its own teacher, not of the other one
    for _, t in trials.iterrows():
        assert abs(t["metrics.params_pct"] - 50) <= 5
    assert len(list((tmp_path / "out" / "teachers").glob("*.pt"))) == 2
    report = tmp_path / "out" / "reports" / "two-teachers"
    assert (report / "small" / "report.md").is_file() and (report / "band" / "pareto.png").is_file()
    assert "[band](band/report.md)" in (report / "report.md").read_text()
