"""Issue 13, fail fast in one line: values that used to skip validation, configs that cost unbounded
memory or time, and bad CLI arguments. Every case: exit code 2, one ``kdlib: error:`` line naming the
key or the file, no traceback, nothing created. Time and peak memory of the worst configs are measured
by ``benchmarks/validate_bounds.py``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kdlib.cli import main
from kdlib.config.loader import MAX_BYTES, MAX_DEPTH, MAX_NODES
from kdlib.config.schema import SearchConfig
from kdlib.errors import ConfigError
from kdlib.sweep.plan import load_plan
from tests.test_config import _with, _write

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
TEXT = (SWEEPS / "quickstart.yaml").read_text()


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "out"
    monkeypatch.setenv("KDLIB_OUTPUT", str(path))
    return path


def _refused(capsys, out: Path, argv: list[str], *needles: str) -> str:
    """``main(argv)`` exits 2 with stderr one ``kdlib: error:`` line holding every needle, no
    traceback, nothing created under ``$KDLIB_OUTPUT``."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv, err)
    assert err.startswith("kdlib: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err + captured.out, captured
    assert len(err) < 500, len(err)
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    return err


def _sweep_refused(capsys, out: Path, path: Path, expected: str) -> str:
    """Both ``load_plan`` and ``kdlib sweep validate`` refuse ``path`` with ``<path>: <expected>``."""
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)
    return _refused(capsys, out, ["sweep", "validate", str(path)], f"{path}: {expected}")


# ---- values that used to skip validation ------------------------------------------------------------
@pytest.mark.parametrize("key,value,expected", [
    pytest.param("search.grid", {"kd_weight": [-10]},
                 "search.grid.kd_weight: Input should be greater than or equal to 0 (got -10)", id="grid-kd_weight"),
    pytest.param("search.grid", {"lr": [-1, float("nan")]},
                 "search.grid.lr: Input should be greater than 0 (got -1)", id="grid-lr-negative"),
    pytest.param("search.grid", {"lr": [1e-3, float("nan")]},
                 "search.grid.lr: Input should be a finite number (got nan)", id="grid-lr-nan"),
    pytest.param("search.grid", {"kd_weight": [1.0, float("inf")]},
                 "search.grid.kd_weight: Input should be a finite number (got inf)", id="grid-kd_weight-inf"),
    pytest.param("search.optuna", {"kd_weight": {"choice": [1.0, -1.0]}},
                 "search.optuna.kd_weight: Input should be greater than or equal to 0 (got -1.0)",
                 id="optuna-kd_weight-choice"),
    pytest.param("search.optuna", {"lr": {"uniform": [-0.1, 0.1]}},
                 "search.optuna.lr: Input should be greater than 0 (got -0.1)", id="optuna-lr-uniform"),
    pytest.param("search.optuna", {"lr": {"uniform": [1e-4, float("inf")]}},
                 "search.optuna.lr.uniform.1: Input should be a finite number (got inf)", id="optuna-bound-inf"),
    pytest.param("training.lr", float("nan"), "training.lr: Input should be a finite number (got nan)",
                 id="training-lr-nan"),
    pytest.param("training.kd_weight", float("inf"),
                 "training.kd_weight: Input should be a finite number (got inf)", id="training-kd_weight-inf"),
    pytest.param("training.grad_clip", float("inf"),
                 "training.grad_clip: Input should be a finite number (got inf)", id="grad_clip-inf"),
    pytest.param("teacher.lr", float("nan"), "teacher.lr: Input should be a finite number (got nan)",
                 id="teacher-lr-nan"),
    pytest.param("data.train.snr_db", [-5, float("inf")],
                 "data.train.snr_db.1: Input should be a finite number (got inf)", id="snr_db-inf"),
    pytest.param("training.device", "banana",
                 "training.device: expected auto, cpu, cuda, cuda:N or mps (got 'banana')", id="device"),
    pytest.param("search.max_trials", 0,
                 "search.max_trials: Input should be greater than or equal to 1 (got 0)", id="max_trials-0"),
])
def test_value_is_refused_naming_the_key(tmp_path, out, capsys, key, value, expected):
    _sweep_refused(capsys, out, _write(tmp_path, _with(key, value)), expected)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_device_form_is_accepted(tmp_path, out, device):
    assert load_plan(_write(tmp_path, _with("training.device", device)), smoke=False).cfg.training.device == device


def test_duplicate_key_is_refused_naming_it_and_both_lines(tmp_path, out, capsys):
    text = TEXT + "\ntraining:\n  epochs: 1\n"
    first = 1 + TEXT.splitlines().index(next(ln for ln in TEXT.splitlines() if ln.startswith("training:")))
    second = len(TEXT.splitlines()) + 2
    path = _write(tmp_path, text)
    _sweep_refused(capsys, out, path, f"malformed YAML at line {second}, column 1: duplicate key 'training' "
                                      f"(first at line {first})")


def test_duplicate_nested_key_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT.replace("  epochs: 4\n", "  epochs: 4\n  epochs: 5\n"))
    _refused(capsys, out, ["sweep", "validate", str(path)], str(path), "duplicate key 'epochs'")


def test_merge_keys_may_still_be_overridden(tmp_path, out):
    text = TEXT.replace("training:                          # every student trial\n  epochs: 4\n  batch_size: 8\n",
                        "x_defaults: &d {epochs: 4, batch_size: 8}\ntraining:\n  <<: *d\n  epochs: 3\n")
    assert "<<: *d" in text
    # the YAML is read (a merged key overridden is no duplicate); the unknown key is refused after
    with pytest.raises(ConfigError) as err:
        load_plan(_write(tmp_path, text))
    assert str(err.value).endswith("unknown key 'x_defaults'"), str(err.value)


# ---- configs that would cost unbounded memory or time -------------------------------------------------
def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["bomb:", "  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return TEXT + "\n" + "\n".join(lines) + "\n"


def test_alias_bomb_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, _alias_bomb())
    err = _refused(capsys, out, ["sweep", "validate", str(path)], str(path), "YAML over kdlib's limits",
                   f"expands to more than {MAX_NODES} nodes")
    assert "lol" not in err


def test_alias_bomb_in_a_set_override_is_refused(tmp_path, out, capsys):
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x, x]"]
                           + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]) + "]"
    _refused(capsys, out, ["sweep", "validate", str(SWEEPS / "quickstart.yaml"), "--set", f"search.seed={bomb}"],
             "--set 'search.seed=", "the value is over kdlib's YAML limits: the document expands to more than")


def test_recursive_alias_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT + "\nbomb: &r [*r]\n")
    _refused(capsys, out, ["sweep", "validate", str(path)], str(path), "recursive document")


def test_deep_nesting_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT + "\nbomb: " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(capsys, out, ["sweep", "validate", str(path)], str(path), f"nests deeper than {MAX_DEPTH} levels")


def test_too_many_nodes_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT + "\nbomb: [" + "0," * (MAX_NODES + 10) + "]\n")
    _refused(capsys, out, ["sweep", "validate", str(path)], str(path), f"has more than {MAX_NODES} nodes")


def test_file_too_large_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT + "\n# " + "x" * MAX_BYTES + "\n")
    _refused(capsys, out, ["sweep", "validate", str(path)], str(path), "the file is larger than")


def test_huge_repeats_is_refused_before_any_point_is_built(tmp_path, out, capsys):
    path = _write(tmp_path, _with("search.repeats", 10**12))
    _sweep_refused(capsys, out, path, "search.max_trials: the sweep has up to 12000000000000 trials "
                                      "(method 3 × student_ratio 2 × seed 2 × repeats 1000000000000), more than "
                                      "search.max_trials (10000)")


def test_huge_grid_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, _with("search.seed", list(range(2000))))
    _sweep_refused(capsys, out, path, "search.max_trials: the sweep has up to 12000 trials")


def test_max_trials_can_be_raised_or_lowered(tmp_path, out, capsys):
    quick = str(SWEEPS / "quickstart.yaml")
    _refused(capsys, out, ["sweep", "validate", quick, "--set", "search.max_trials=5"],
             "search.max_trials: the sweep has up to 12 trials", "more than search.max_trials (5)")
    assert main(["sweep", "validate", quick, "--set", "search.repeats=1000", "--set", "search.max_trials=12000"]) == 0
    assert "12000 trial(s)" in capsys.readouterr().out


def test_too_many_exclusion_key_sets_is_refused(tmp_path, out, capsys):
    knobs = [f"kd.k{i}" for i in range(11)]
    rules = [{k: 1 for k in combo} for n in range(1, 12) for combo in itertools.combinations(knobs, n)]
    data = _with("search.seed", list(range(1666)))
    data["search"]["grid"] = {k: [1] for k in knobs}
    data["search"]["exclude"] = rules
    _sweep_refused(capsys, out, _write(tmp_path, data),
                   "search.exclude: 2047 different key sets × 9996 grid cells are too many to check")


def test_exclusion_matches_values_as_before():
    search = SearchConfig(method=["a", "b"], student_ratio=[0.5, 1], seed=[0, 1],
                          grid={"kd.layers": [["x", "y"], ["x"]], "kd.w": [1, {"p": 1}]},
                          exclude=[{"method": "a", "kd.layers": ["x", "y"]}, {"student_ratio": 1.0, "kd.w": {"p": 1}},
                                   {"seed": True, "method": "b"}])
    dims = search.dims()
    every = [dict(zip(dims, v, strict=True)) for v in itertools.product(*dims.values())]
    expected = [c for c in every if not any(all(c.get(k) == v for k, v in ex.items()) for ex in search.exclude)]
    assert search.cells() == expected and 0 < len(expected) < len(every)


def test_huge_integer_is_refused(tmp_path, out, capsys):
    assert "  seed: [0, 1]" in TEXT
    path = _write(tmp_path, TEXT.replace("  seed: [0, 1]", "  seed: [" + "9" * 5000 + "]"))
    _sweep_refused(capsys, out, path, "malformed YAML: an integer of more than")


def test_error_message_stays_short_for_a_huge_value(tmp_path, out, capsys):
    path = _write(tmp_path, _with("training.epochs", ["a" * 1000] * 500))
    err = _refused(capsys, out, ["sweep", "validate", str(path)], str(path), "training.epochs: Input should be")
    assert len(err) < 300 + len(str(path)), err


# ---- file encodings --------------------------------------------------------------------------------
def test_utf16_yaml_is_refused_naming_the_file(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT.encode("utf-16"))
    _sweep_refused(capsys, out, path, "not UTF-8 text: UTF-16/32 (it starts with a byte-order mark); "
                                      "save the sweep YAML as UTF-8")


def test_utf16_without_bom_is_refused(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT.encode("utf-16-le"))
    _sweep_refused(capsys, out, path, "not UTF-8 text: it holds NUL bytes")


def test_latin1_yaml_is_refused_naming_the_file(tmp_path, out, capsys):
    path = _write(tmp_path, TEXT.replace("description: none", "description: n\u00e9").encode("latin-1"))
    _sweep_refused(capsys, out, path, "not UTF-8 text: invalid UTF-8 byte 0xe9 at offset")


def test_utf8_with_bom_is_read(tmp_path, out):
    assert load_plan(_write(tmp_path, b"\xef\xbb\xbf" + TEXT.encode())).cfg.name == "quickstart"


# ---- command-line arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("argv,expected", [
    pytest.param(["eval", "x.pt", "--data", "d", "--max-utterances", "0"],
                 "kdlib: error: argument --max-utterances: must be >= 1, got 0", id="eval-max-utterances-0"),
    pytest.param(["eval", "x.pt", "--data", "d", "--workers", "0"],
                 "kdlib: error: argument --workers: must be >= 1, got 0", id="eval-workers-0"),
    pytest.param(["eval", "x.pt", "--data", "d", "--device", "banana"],
                 "kdlib: error: argument --device: expected auto, cpu, cuda, cuda:N or mps, got 'banana'",
                 id="eval-device"),
    pytest.param(["profile", "m.yaml", "--repeats", "0"], "kdlib: error: argument --repeats: must be >= 1, got 0",
                 id="profile-repeats-0"),
    pytest.param(["profile", "m.yaml", "--seconds", "0"], "kdlib: error: argument --seconds: must be > 0, got 0",
                 id="profile-seconds-0"),
    pytest.param(["profile", "m.yaml", "--seconds", "nan"],
                 "kdlib: error: argument --seconds: expected a finite number, got 'nan'", id="profile-seconds-nan"),
    pytest.param(["profile", "m.yaml", "--ratios", "0.25", "-1"],
                 "kdlib: error: argument --ratios: must be > 0, got -1", id="profile-ratio-negative"),
    pytest.param(["profile", "m.yaml", "--repeats", "two"],
                 "kdlib: error: argument --repeats: expected an integer, got 'two'", id="profile-repeats-text"),
    pytest.param(["sweep", "validate"], "kdlib: error: the following arguments are required: sweep",
                 id="missing-argument"),
])
def test_bad_argument_is_one_error_line(out, capsys, argv, expected):
    assert _refused(capsys, out, argv) == expected
