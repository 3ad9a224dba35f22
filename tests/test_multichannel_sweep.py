"""The sweep-level multi-channel path (``data.array``): config refusals, simulated valid/test sets
cached once under the output dir, speaker- and noise-disjoint splits, a Trainer epoch on
``(B, M, L)`` batches with an FT-JNF KD method, and the shipped FT-JNF study YAML."""

from __future__ import annotations

import copy
import math
import os
import threading
from pathlib import Path

import pytest
import torch
import yaml

from kdlib.config import SweepConfig
from kdlib.data import speaker_matches
from kdlib.data.sources import ARRAY_CACHE_DIR, ArraySource, data_source
from kdlib.errors import ConfigError, DataError
from kdlib.kd import build_kd_method
from kdlib.losses import task_loss_for
from kdlib.models import build_model
from kdlib.sweep.plan import load_plan, make_plan
from kdlib.train.trainer import Trainer, TrainSettings
from kdlib.validation import validate

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "ftjnf_multichannel.yaml"
FULL = yaml.safe_load(SWEEP.read_text())
TEACHER = {"n_channels": 5, "n_fft": 128, "hop_length": 64, "n_lstm_hidden1": 8, "n_lstm_hidden2": 4}
STUDENT = {**TEACHER, "n_lstm_hidden1": 4, "n_lstm_hidden2": 2}
SMALL_TEACHER = [f"teacher.model.kwargs.{k}={v}" for k, v in TEACHER.items() if k != "n_channels"]
VALID, TEST = ["vctk_p226"], ["vctk_p225", "cmu_arctic_slt"]


def _raw(**array) -> dict:
    """The study YAML shrunk to tiny models, 0.5 s training segments and 2 + 2 short eval items."""
    raw = copy.deepcopy(FULL)
    raw["teacher"]["model"]["kwargs"] = dict(TEACHER)
    raw["teacher"]["batch_size"] = raw["training"]["batch_size"] = 2
    raw["data"]["train"].update(segment_seconds=0.5, segments_per_epoch=4)
    raw["data"]["array"].update({"valid": {"speakers": VALID, "items": 2}, "test": {"speakers": TEST, "items": 2},
                                 "eval_segment_seconds": 1.0, "max_order": 3, **array})
    raw["search"].update(method=["none", "ss_narrowband"], student_ratio=[0.25], seed=[0])
    return raw


def _cfg(**array) -> SweepConfig:
    return validate(SweepConfig, _raw(**array))


def _source(cfg: SweepConfig, output: Path | None = None) -> ArraySource:
    """The sweep's data source; the output folder defaults to ``$KDLIB_OUTPUT`` (the module's)."""
    source = data_source(cfg.data, None, output or Path(os.environ["KDLIB_OUTPUT"]))
    assert isinstance(source, ArraySource)
    return source


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("mc_out")
        mp.setenv("KDLIB_OUTPUT", str(path))
        yield path


@pytest.fixture(scope="module")
def sweep(data_root, out_dir) -> SweepConfig:
    return _cfg()


@pytest.fixture(scope="module")
def data(sweep, out_dir):
    torch.set_num_threads(1)
    return _source(sweep, out_dir).build(seed=0)


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit,expected", [
    (lambda d: None, None),  # array only: accepted
    (lambda d: d.pop("array"), "data.valid: missing"),  # neither array nor paired valid/test
    (lambda d: d.update(valid={"corpus": "vb_demand"}, test={"corpus": "vb_demand"}), "not both"),
    (lambda d: d.update(test={"corpus": "vb_demand", "speakers": ["p232"]}), "data.test: give either data.array"),
    (lambda d: (d.pop("array"), d.update(valid={"corpus": "vb_demand"})), "data.test: missing"),
], ids=["array", "neither", "both", "array+test", "valid-only"])
def test_either_array_or_paired_valid_test(edit, expected):
    raw = _raw()
    edit(raw["data"])
    if expected is None:
        cfg = validate(SweepConfig, raw)
        assert cfg.data.valid.corpus == "array:valid" and cfg.data.test.speakers == TEST
        assert cfg.data.test.pesq_mode == "wb" and cfg.data.test.max_utterances == 2
        # the derived entries survive a dump/validate round trip
        assert SweepConfig.model_validate(cfg.model_dump()).data == cfg.data
        return
    with pytest.raises(ConfigError) as err:
        validate(SweepConfig, raw)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("array,expected", [
    ({"rt60_s": [0.8, 0.2]}, "data.array.rt60_s: low must not exceed high"),
    ({"noise_sources": [3, 1]}, "data.array.noise_sources"),
    ({"room_dim_m": [[6, 3, 2.5], [4, 6, 3.5]]}, "data.array.room_dim_m"),
    ({"room_dim_m": [[2, 2, 2], [3, 3, 3]]}, "too small"),
    ({"valid": {"speakers": VALID, "items": 0}}, "data.array.valid.items"),
    ({"test": {"speakers": TEST, "items": 2, "snr_db": [5, -5]}}, "data.array.test.snr_db"),
    ({"test": {"speakers": VALID, "items": 2}}, "speaker-disjoint"),
    ({"eval_noise_fraction": 1.0}, "data.array.eval_noise_fraction"),
    ({"n_mics": 1}, "data.array.n_mics"),
    ({"spacing_m": 0.03}, "spacing_m is only for layout='linear'"),
    ({"n_micz": 4}, "unknown key 'data.array.n_micz'"),
])
def test_impossible_array_values_are_refused_with_the_key_named(array, expected):
    with pytest.raises(ConfigError) as err:
        _source(_cfg(**array), Path(".")).check()  # the schema's checks, then the simulator's (at load time)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_the_study_yaml_loads_and_validates_also_in_smoke_form():
    raw = FULL
    assert raw["teacher"]["model"]["name"] == "ftjnf"
    assert raw["teacher"]["model"]["kwargs"]["n_lstm_hidden1"] == 512  # methods.md §4.3 teacher
    # the full-size teacher is validated by test_config's every-shipped-sweep test; here a tiny one
    for smoke in (False, True):
        cfg = load_plan(SWEEP, smoke=smoke, overrides=SMALL_TEACHER).cfg
        assert cfg.data.array.n_mics == cfg.teacher.model.kwargs["n_channels"] == 5
        assert cfg.search.method == ["none", "mask_matching", "signal_matching", "ss_wideband",
                                     "ss_narrowband", "fused_multilayer"]
        assert cfg.methods["ss_wideband"]["layer"] == "encoder"
        if not smoke:
            assert {0.25, 0.04} <= set(cfg.search.student_ratio) and cfg.search.seed == [0, 1, 2]
            assert len(cfg.search.points()) == 54
        else:
            assert cfg.search.student_ratio == [0.04] and cfg.search.seed == [0]
            assert cfg.data.array.valid.items == cfg.data.array.test.items == 1
            assert cfg.data.valid.max_utterances == 1 and cfg.data.array.eval_segment_seconds == 1.0
            assert cfg.teacher.batch_size == cfg.training.batch_size == cfg.data.train.segments_per_epoch == 1
            assert cfg.teacher.epochs == cfg.training.epochs == 1


def test_unknown_speakers_and_noise_files_are_data_errors(data_root, out_dir):
    with pytest.raises(DataError, match=r"data.array.test.speakers: no speaker folder \['p232'\]"):
        _source(_cfg(test={"speakers": ["p232"], "items": 2})).eval_sets()
    with pytest.raises(DataError, match="data.array.eval_noise: no file"):
        _source(_cfg(eval_noise=["no_such_noise.wav"])).eval_sets()
    with pytest.raises(ConfigError, match="data.array.n_mics is 4"):  # the 5-channel teacher, refused by the plan
        make_plan(_cfg(n_mics=4))


# -- data ---------------------------------------------------------------------------------------


def test_eval_sets_are_cached_once_and_reused(sweep, data, out_dir):
    source = _source(sweep)
    base = source.cache_dir()
    assert base.parent == out_dir / ARRAY_CACHE_DIR
    assert data.valid.path == base / "valid" and data.test.path == base / "test"
    before = _files(base)
    assert len(before) == 2 * (2 * 2 + 2)  # per split: 2 noisy + 2 clean + pairs.csv + meta.json
    valid, test = source.eval_sets()  # what every trial does: read, never rewrite
    _source(sweep).build(seed=1)
    assert _files(base) == before
    assert [p.utt_id for p in valid] == [p.utt_id for p in data.valid] == ["valid_00000", "valid_00001"]
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # another array config gets its own folder
    assert _source(_cfg(rt60_s=[0.3, 0.6])).cache_dir() != base


def test_concurrent_first_writers_leave_one_complete_set(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_OUTPUT", str(tmp_path))
    cfg = _cfg(eval_seed=7)
    results, errors = [], []

    def call():
        try:
            results.append(_source(cfg, tmp_path).eval_sets())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    base = _source(cfg, tmp_path).cache_dir()
    assert sorted(p.name for p in base.iterdir()) == ["test", "valid"]
    assert [len(v) for v, _ in results] == [2, 2]


def test_valid_test_and_train_speakers_are_disjoint(sweep, data):
    assert set(data.valid.speakers()) == set(VALID) and set(data.test.speakers()) == set(TEST)
    held_out = set(VALID) | set(TEST)
    assert not any(speaker_matches(s, h) for s in data.train_speakers for h in held_out)
    assert len(data.train_speakers) > 150
    train_speakers = {p.parent.name for p in data.train.speech_files}
    assert train_speakers == set(data.train_speakers)
    excluded = _source(_cfg()).plan().train_speakers  # exclude_speakers also leaves training
    raw = _raw()
    raw["data"]["train"]["exclude_speakers"] = ["vctk_p227"]
    assert "vctk_p227" in excluded and "vctk_p227" not in _source(validate(SweepConfig, raw)).plan().train_speakers


def test_held_out_noise_files_never_train(sweep, data):
    source = _source(sweep)
    plan = source.plan()
    assert plan.eval_noise and not set(plan.eval_noise) & set(plan.train_noise)
    assert len(plan.eval_noise) == round(0.2 * (len(plan.eval_noise) + len(plan.train_noise)))
    assert not set(data.train.noise_files) & set(plan.eval_noise)
    for split in ("valid", "test"):
        assert source.eval_mixer(split, plan).noise_files == plan.eval_noise
    chosen = sorted(p.name for p in plan.train_noise[:2])
    explicit = _source(_cfg(eval_noise=chosen)).plan()
    assert [p.name for p in explicit.eval_noise] == chosen and not set(explicit.eval_noise) & set(explicit.train_noise)


# -- training on (B, M, L) ----------------------------------------------------------------------


def test_trainer_epoch_validate_and_test_on_multichannel_batches(sweep, data):
    noisy, clean = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))
    assert noisy.shape == (2, 5, 8000) and clean.shape == (2, 8000)
    assert data.valid.load(0)[0].shape == (5, 16000)
    torch.manual_seed(0)
    teacher = build_model("ftjnf", TEACHER).eval()
    student = build_model("ftjnf", STUDENT)
    kd = build_kd_method("fused_multilayer", student, teacher, sweep.methods.get("fused_multilayer", {}))
    settings = TrainSettings(epochs=1, batch_size=2, lr=1e-3, grad_clip=sweep.training.grad_clip,
                             selection_metric="val_si_sdr")
    trainer = Trainer(student, teacher, kd, task_loss_for(student), data, settings, "cpu", log=lambda _: None)
    stats = trainer.train_epoch()
    assert all(math.isfinite(stats[k]) for k in ("train_loss", "task_loss", "kd_loss")) and stats["kd_loss"] > 0
    val = trainer.validate()
    assert math.isfinite(val["val_si_sdr"])
    test = trainer.test().as_flat_dict("test_")
    assert math.isfinite(test["test_si_sdr"]) and math.isfinite(test["test_stoi"])
    assert math.isfinite(test["test_pesq"]) or test["test_pesq_missing"] > 0
    assert trainer.complexity(sum(p.numel() for p in teacher.parameters()))["kd_extra_params"] > 0
