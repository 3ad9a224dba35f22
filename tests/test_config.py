"""Sweep YAML validation: every bad input is refused with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdlib.cli import main
from kdlib.config import SweepConfig
from kdlib.errors import ConfigError
from kdlib.sweep.plan import config_hash, load_plan
from kdlib.sweep.space import grid_points
from kdlib.validation import validate

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
BASE = yaml.safe_load((SWEEPS / "quickstart.yaml").read_text())


def _write(tmp_path: Path, data, name: str = "sweep.yaml") -> Path:
    """``data`` (a mapping, YAML text or raw bytes) as ``tmp_path/name``."""
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _with(path_keys: str, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    *parents, last = path_keys.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates(path):
    cfg = load_plan(path).cfg
    assert grid_points(cfg.search)
    smoke = load_plan(path, smoke=True).cfg
    assert smoke.name.endswith("-smoke") and smoke.training.epochs <= cfg.training.epochs
    # `kdlib sweep resume` re-validates the dumped config: it must come back identical
    for c in (cfg, smoke):
        again = validate(SweepConfig, c.model_dump(mode="json"))
        assert again.model_dump(mode="json") == c.model_dump(mode="json") and config_hash(again) == config_hash(c)


def test_quickstart_is_the_issue_grid():
    cfg = load_plan(SWEEPS / "quickstart.yaml").cfg
    assert cfg.search.method == ["none", "output", "self_similarity"]
    assert cfg.search.student_ratio == [0.25, 0.04]
    assert cfg.search.seed == [0, 1] and len(grid_points(cfg.search)) == 12
    assert cfg.data.test.corpus == "vb_demand" and cfg.data.test.pesq_mode == "wb"
    assert [(t.name, t.corpus, t.pesq_mode) for t in cfg.data.test_sets] == [("vb_demand", "vb_demand", "wb"),
                                                                              ("noizeus", "noizeus", "nb")]
    assert cfg.training.kd_weight == "auto"


@pytest.mark.parametrize("key,value,expected", [
    ("training.epochs", 0, "training.epochs"),
    ("training.lr", -1e-3, "training.lr"),
    ("search.method", [], "search.method"),
    ("teacher.model.kwargs", {"widht": 3}, "teacher.model.kwargs"),
    ("methods.output", {"wav_weigth": 1}, "wav_weigth"),
    ("data.train.snr_db", [20, 5], "data.train.snr_db"),
    ("data.sample_rate", 44100, "data.sample_rate"),
    ("resources.gpu", 1.5, "resources.gpu"),
    ("scheduler.name", "hyperband9", "scheduler.name"),
    ("search.optuna", {"lr": {"loguniform": [1e-2, 1e-4]}}, "search.optuna.lr"),
    ("search.optuna", {"lr": {"uniform": [0, 1], "loguniform": [1, 2]}}, "search.optuna.lr"),
    ("search.optuna", {"batch_size": {"int": [2, 8]}}, "search.optuna.batch_size"),
    ("name", "has spaces", "name"),
])
def test_bad_values_are_refused_with_the_key_named(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load_plan(_write(tmp_path, _with(key, value)))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_required_section_is_named(tmp_path):
    data = dict(BASE)
    data.pop("search")
    with pytest.raises(ConfigError, match="missing key 'search'"):
        load_plan(_write(tmp_path, data))


def test_unimportable_plugin_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_kdlib_plugin'"):
        load_plan(_write(tmp_path, _with("plugins", ["no_such_kdlib_plugin"])))


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    code = main(["sweep", "validate", str(_write(tmp_path, _with("training.epochs", -2)))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("kdlib: error:") and "training.epochs" in err and "\n" not in err


def test_grid_with_kd_knob_and_optuna_space_counts_every_cell(tmp_path):
    data = _with("search.method", ["self_similarity"])
    data["search"].update({"student_ratio": [0.5, 0.1], "seed": [0, 1], "repeats": 2,
                           "grid": {"kd.distance": ["mse", "kl"]},
                           "optuna": {"kd_weight": {"loguniform": [0.1, 10]}}})
    cfg = load_plan(_write(tmp_path, data)).cfg
    points = grid_points(cfg.search)
    assert len(points) == 1 * 2 * 2 * 2 * 2
    assert {(p["student_ratio"], p["seed"], p["kd.distance"]) for p in points} == {
        (r, s, d) for r in (0.5, 0.1) for s in (0, 1) for d in ("mse", "kl")}


def test_variants_are_one_grid_dimension_and_are_validated(tmp_path):
    data = _with("search.method", ["self_similarity"])
    data["search"]["variants"] = {"full": {}, "time_only": {"streams": ["time"]}, "kl": {"distance": "kl"}}
    cfg = load_plan(_write(tmp_path, data)).cfg
    points = grid_points(cfg.search)
    assert len(points) == 2 * 2 * 3 and {p["variant"] for p in points} == {"full", "time_only", "kl"}
    data["search"]["variants"]["bad"] = {"streams": ["space"]}
    with pytest.raises(ConfigError, match="search.variants.bad"):
        load_plan(_write(tmp_path, data))


def test_two_step_needs_a_supervised_phase(tmp_path):
    data = _with("training.schedule", "two_step")
    data["training"]["kd_only_epochs"] = data["training"]["epochs"]
    with pytest.raises(ConfigError, match="kd_only_epochs"):
        load_plan(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="search.grid.schedule"):
        load_plan(_write(tmp_path, _with("search.grid", {"schedule": ["joint", "three_step"]})))


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["search"].update(exclude=[{"colour": "red"}]), "search.exclude"),
    (lambda d: d["search"].update(exclude=[{"method": m} for m in d["search"]["method"]]), "every grid cell"),
    (lambda d: d["search"].update(student=["ghost"]), "search.student"),
    (lambda d: d.update(students={"x": {"model": "nope"}}), "students.x.model"),
    (lambda d: d.update(students={"x": {"kwargs": {"widht": 2}}}), "students.x.kwargs"),
    (lambda d: d["search"].update(method=["subband_kd"]), "n_bands"),  # a DPDCRN teacher cannot do it
])
def test_student_and_exclusion_errors_name_the_key(tmp_path, mutate, expected):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    mutate(data)
    with pytest.raises(ConfigError, match=expected):
        load_plan(_write(tmp_path, data))


def test_excluded_cells_are_not_run(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["search"]["exclude"] = [{"method": "output", "student_ratio": 0.04}]
    points = load_plan(_write(tmp_path, data)).cfg.search.points()
    assert len(points) == 10 and {"method": "output", "student_ratio": 0.04, "seed": 0} not in points


def test_set_overrides_apply_before_validation():
    cfg = load_plan(SWEEPS / "quickstart.yaml", overrides=["search.student_ratio=[0.1]", "training.epochs=2",
                                                           "methods.output.wav_weight=3.5"]).cfg
    assert cfg.search.student_ratio == [0.1] and cfg.training.epochs == 2
    assert cfg.methods["output"]["wav_weight"] == 3.5
    with pytest.raises(ConfigError, match="unknown key 'search.colour'"):
        load_plan(SWEEPS / "quickstart.yaml", overrides=["search.colour=red"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_plan(SWEEPS / "quickstart.yaml", overrides=["training.epochs"])


@pytest.mark.parametrize("search,needle", [
    ({"grid": {"kd.distance": ["mse", "cosine"]}}, "search.grid.kd.distance: value 'cosine' refused by KD method "
                                                  "'self_similarity'"),
    ({"grid": {"kd.temperature": [1.0, -2.0]}}, "search.grid.kd.temperature: value -2.0 refused"),
    ({"optuna": {"kd.temperature": {"uniform": [-1.0, 2.0]}}}, "search.optuna.kd.temperature: value -1.0 refused"),
    ({"optuna": {"kd.distance": {"choice": ["kl", "l1"]}}}, "search.optuna.kd.distance: value 'l1' refused"),
    ({"grid": {"kd.no_such_knob": [1]}}, "search.grid.kd.no_such_knob: KD method 'self_similarity' has no knob"),
])
def test_bad_searched_kd_values_are_refused_at_validate_naming_the_key(tmp_path, capsys, search, needle):
    data = _with("search.method", ["self_similarity"])
    data["search"].update(search)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_plan(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    # the same line from `kdlib sweep validate`, before anything runs
    assert main(["sweep", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlib: error:") and needle in err and "\n" not in err


def test_good_searched_kd_values_pass(tmp_path):
    data = _with("search.method", ["self_similarity"])
    data["search"].update(grid={"kd.distance": ["mse", "kl"]}, optuna={"kd.temperature": {"loguniform": [0.1, 4]}})
    assert load_plan(_write(tmp_path, data)).cfg.search.grid["kd.distance"] == ["mse", "kl"]


@pytest.mark.parametrize("key,value,needle", [
    ("training.task_loss", {"nam": "si_snr"}, "training.task_loss.nam"),
    ("training.task_loss", {"name": "si_snrr"}, "training.task_loss.name: unknown task loss 'si_snrr'"),
    ("training.task_loss", {"name": "si_snr", "kwargs": {"epsilon": 1e-6}},
     "unknown key 'training.task_loss.kwargs.epsilon'"),
    ("training.task_loss", {"name": "compressed_spectral", "kwargs": {"compress": 0}},
     "training.task_loss.kwargs.compress"),
    ("training.task_loss", "band_spectral", "training.task_loss: task loss 'band_spectral' cannot train dpcrn_lite"),
    ("teacher.task_loss", {"name": "si_snr", "kwargs": {"eps": -1}}, "teacher.task_loss.kwargs.eps"),
])
def test_bad_task_losses_are_refused_at_load_naming_the_key(tmp_path, key, value, needle):
    with pytest.raises(ConfigError) as err:
        load_plan(_write(tmp_path, _with(key, value)))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_task_loss_overrides_load_and_an_unset_one_leaves_the_config_as_before(tmp_path):
    cfg = load_plan(_write(tmp_path, _with("training.task_loss", "si_snr"))).cfg
    assert (cfg.training.task_loss.name, cfg.training.task_loss.kwargs) == ("si_snr", {})
    assert cfg.teacher.task_loss is None  # the teacher keeps its family's default
    teacher = load_plan(_write(tmp_path, _with("teacher.task_loss", {"name": "compressed_spectral",
                                                                     "kwargs": {"wav_weight": 0.0}}))).cfg
    assert teacher.teacher.task_loss.kwargs == {"wav_weight": 0.0}
    again = validate(SweepConfig, teacher.model_dump(mode="json"))  # `kdlib sweep resume` reloads the dump
    assert again.teacher.task_loss == teacher.teacher.task_loss
    # no key in the dump when unset: config and teacher hashes are those of sweeps written before it existed
    plain = load_plan(SWEEPS / "quickstart.yaml").cfg.model_dump(mode="json")
    assert "task_loss" not in plain["training"] and "task_loss" not in plain["teacher"]
