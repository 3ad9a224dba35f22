"""The README's "Bad input" table, row by row: one test per row, feeding the bad input and asserting
what the user sees (the error type; one line naming the key or file; from the CLI, exit code 2 and a
single ``kdlib: error:`` line) and that nothing ran before the refusal.

The row "a trial that raises or whose loss goes NaN" is the end-to-end sweep
``tests/test_sweep.py::test_failed_trials_are_marked_failed_and_the_sweep_goes_on`` (the exploding plugin);
it is not repeated here.
"""

from __future__ import annotations

import json
import signal
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml

from kdlib.cli import main
from kdlib.config import apply_overrides
from kdlib.data import PairedCorpus, read_audio, resolve_data_root, write_audio
from kdlib.errors import CheckpointError, ConfigError, DataError
from kdlib.evaluation import enhance
from kdlib.metrics import MetricWarning
from kdlib.models import build_model, load_model, save_checkpoint
from kdlib.sweep.plan import load_plan
from tests.test_cli import TINY
from tests.test_config import BASE, _write
from tests.test_data import SR, _make_vb, _tone

#: a teacher small enough that nothing here waits on a real model
TINY_SWEEP = {"teacher.model.kwargs": {"n_fft": 512, "hop_length": 256, **TINY},
              "search.method": ["none"], "search.student_ratio": [0.5]}


def _sweep(tmp_path: Path, changes: dict) -> Path:
    """The quickstart sweep with ``{dotted.key: value}`` changes, written to ``tmp_path/sweep.yaml``."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    return _write(tmp_path, apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in changes.items()]))


def _output(tmp_path: Path, monkeypatch) -> Path:
    out = tmp_path / "out"
    monkeypatch.setenv("KDLIB_OUTPUT", str(out))
    return out


def _refused(capsys, argv: list[str], *needles: str, alone: bool = True) -> str:
    """Run the CLI; assert exit code 2 and one ``kdlib: error:`` line holding every needle.

    ``alone``: that line is all of stderr (False where Ray or MLflow log to stderr first).
    """
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    lines = err.splitlines()
    assert [ln for ln in lines if "kdlib: error:" in ln] == lines[-1:], err
    line = lines[-1]
    assert line.startswith("kdlib: error: ") and (len(lines) == 1 or not alone), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _nothing_ran(out: Path) -> None:
    """No teacher, no MLflow store, no Ray results and no report: the refusal came before any work.
    (``kdlib sweep run`` makes the output folder itself first, so an empty one may be left.)"""
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


class _TooSlow(BaseException):
    """Not an Exception, so no library retry loop swallows it."""


@contextmanager
def _within(seconds: int, what: str):
    def late(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    except _TooSlow:
        pytest.fail(f"{what} took more than {seconds} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(build_model("dpcrn_lite", TINY).eval(), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# -- row: malformed YAML, a YAML tag ---------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    pytest.param("name: x\ndata: [unclosed\n",
                 "malformed YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'", id="malformed"),
    pytest.param("name: !!python/object/apply:os.system ['touch {marker}']\n",
                 "malformed YAML at line 1, column 7: could not determine a constructor for the tag "
                 "'tag:yaml.org,2002:python/object/apply:os.system'", id="python-tag"),
])
def test_malformed_yaml_or_a_yaml_tag_is_refused_and_runs_nothing(tmp_path, monkeypatch, capsys, text, expected):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, text.format(marker=marker))
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert str(err.value) == f"{path}: {expected}"
    out = _output(tmp_path, monkeypatch)
    _refused(capsys, ["sweep", "run", str(path)], f"{path}: {expected}")
    assert not marker.exists() and not out.exists()


# -- row: unknown key, wrong type, ratio outside (0, 1], unknown method/model, bad KD knob, bad tap ---

@pytest.mark.parametrize("key,value,expected", [
    pytest.param("learning_rate", 0.1, "unknown key 'learning_rate'", id="unknown-key"),
    pytest.param("training.epochz", 3, "unknown key 'training.epochz'", id="unknown-nested-key"),
    pytest.param("training.epochs", "four", "training.epochs: Input should be a valid integer, unable to parse "
                 "string as an integer (got 'four')", id="wrong-type"),
    pytest.param("search.student_ratio", [0.25, 1.5], "search.student_ratio: every ratio must be in (0, 1], "
                 "got 1.5 (got [0.25, 1.5])", id="ratio-1.5"),
    pytest.param("search.student_ratio", [0.0], "search.student_ratio: every ratio must be in (0, 1], got 0.0 "
                 "(got [0.0])", id="ratio-0"),
    pytest.param("search.method", ["none", "hinton_classic"], "search.method: unknown KD method 'hinton_classic' "
                 "(registered: dfkd, ", id="unknown-method"),
    pytest.param("teacher.model.name", "transformer9000", "teacher.model.name: unknown model 'transformer9000' "
                 "(registered: convtasnet, ", id="unknown-model"),
    pytest.param("methods.output", {"wav_weigth": 1}, "unknown key 'methods.output.wav_weigth'",
                 id="unknown-kd-knob"),
    pytest.param("search.grid", {"kd.wav_weight": [1, 10]},
                 "search.grid.kd.wav_weight: KD method 'none' has no knob 'wav_weight'", id="grid-knob-a-method-lacks"),
    pytest.param("methods.self_similarity", {"layers": ["no_such_layer"]},
                 "methods.self_similarity: feature tap 'no_such_layer' is neither a feature set "
                 "(encoder, middle, decoder, mask) nor a module of DPCRNLite", id="bad-layer-tap"),
])
def test_bad_sweep_value_is_refused_naming_the_key(tmp_path, monkeypatch, capsys, key, value, expected):
    path = _sweep(tmp_path, {key: value})
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"{path}: {expected}") and "\n" not in str(err.value)
    out = _output(tmp_path, monkeypatch)
    _refused(capsys, ["sweep", "run", str(path), "--smoke-test"], f"{path}: {expected}")
    assert not out.exists() and not ray.is_initialized()


# -- row: missing data root --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["data.root", "KDLIB_DATA", "default"])
def test_missing_data_root_names_it_and_how_to_set_it(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)  # the default root ../shared/data does not exist next to tmp_path
    monkeypatch.delenv("KDLIB_DATA", raising=False)
    missing = tmp_path / "nope"
    if how == "KDLIB_DATA":
        monkeypatch.setenv("KDLIB_DATA", str(missing))
    path = _sweep(tmp_path, {**TINY_SWEEP, "data.root": str(missing) if how == "data.root" else None})
    shown, source = {
        "data.root": (missing, "data.root"),
        "KDLIB_DATA": (missing, "$KDLIB_DATA"),
        "default": ((tmp_path.parent / "shared" / "data").resolve(), "default, relative to the working directory"),
    }[how]
    expected = (f"data root '{shown}' ({source}) does not exist: set KDLIB_DATA=/path/to/data "
                "or data.root in the sweep YAML")
    with pytest.raises(DataError) as err:
        resolve_data_root(missing if how == "data.root" else None)
    assert str(err.value) == expected
    out = _output(tmp_path, monkeypatch)
    _refused(capsys, ["sweep", "run", str(path), "--smoke-test"], expected)
    _nothing_ran(out)


# -- row: a corpus with unpaired or unequal-length files, or a wrong sample rate -----------------------


def _unpaired(root: Path) -> tuple[str, str]:
    write_audio(root / "noisy" / "p1_002.wav", _tone(800), SR)
    return f"noisy file '{root / 'noisy' / 'p1_002.wav'}' has no clean partner '{root / 'clean' / 'p1_002.wav'}'", ""


def _unequal(root: Path) -> tuple[str, str]:
    write_audio(root / "clean" / "p1_001.wav", _tone(700), SR)
    return (f"pair 'p1_001': noisy '{root / 'noisy' / 'p1_001.wav'}' has 800 samples but clean "
            f"'{root / 'clean' / 'p1_001.wav'}' has 700", "the files of a pair must be of equal length")


def _rate(root: Path) -> tuple[str, str]:
    for side in ("clean", "noisy"):
        write_audio(root / side / "p1_001.wav", _tone(400, sr=8000), 8000)
    return (f"audio file '{root / 'noisy' / 'p1_001.wav'}' has sample rate 8000 Hz but the corpus expects "
            "16000 Hz: resample it or set sample_rate", "has sample rate 8000 Hz but 16000 Hz is expected")


@pytest.mark.parametrize("spoil", [_unpaired, _unequal, _rate], ids=["unpaired", "unequal-length", "sample-rate"])
def test_bad_corpus_names_the_file(tmp_path, capsys, checkpoint, spoil):
    root = _make_vb(tmp_path / "corpus", ["p1_001"])
    expected, at_load = spoil(root)
    with pytest.raises(DataError) as err:
        PairedCorpus(root)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    _refused(capsys, ["eval", str(checkpoint), "--data", str(root)], expected)
    if at_load:  # a corpus built without reading headers still refuses the pair when it is read
        with pytest.raises(DataError, match=at_load):
            PairedCorpus(root, check=False).load(0)
    if spoil is _rate:
        assert len(PairedCorpus(root, sample_rate=8000)) == 1  # the rate it has is fine


# -- row: silent or 0.1 s audio at evaluation ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["silent", "0.1s"])
def test_silent_or_short_audio_is_scored_as_missing_at_evaluation(tmp_path, capsys, checkpoint, data_root, kind):
    root = tmp_path / "corpus"
    clean = read_audio(data_root / "vb_demand" / "clean" / "p232_001.wav", SR)
    noisy = read_audio(data_root / "vb_demand" / "noisy" / "p232_001.wav", SR)
    write_audio(root / "clean" / "p232_001.wav", clean, SR)
    write_audio(root / "noisy" / "p232_001.wav", noisy, SR)
    if kind == "silent":
        bad_clean = bad_noisy = np.zeros(SR, dtype=np.float32)
    else:
        peak = int(np.argmax(np.abs(clean)))  # 0.1 s inside speech, not just silence
        bad_clean, bad_noisy = clean[peak - 800: peak + 800], noisy[peak - 800: peak + 800]
    write_audio(root / "clean" / "p232_999.wav", bad_clean, SR)
    write_audio(root / "noisy" / "p232_999.wav", bad_noisy, SR)

    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["eval", str(checkpoint), "--data", str(root), "--json", "--noisy"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["utterances"] == 2
    si_sdr_missing = 1 if kind == "silent" else 0  # SI-SDR still scores 0.1 s of speech
    for prefix in ("", "noisy_"):
        assert result[f"{prefix}pesq_missing"] == result[f"{prefix}stoi_missing"] == 1, result
        assert result[f"{prefix}estoi_missing"] == 1 and result[f"{prefix}si_sdr_missing"] == si_sdr_missing
        for metric in ("pesq", "stoi", "estoi", "si_sdr"):  # the good utterance is still scored
            assert np.isfinite(result[f"{prefix}{metric}"]), (prefix, metric)
    notes = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    assert any("PESQ could not score 1 of 2 utterances" in n and "utterance 1" in n for n in notes), notes


@pytest.mark.parametrize(("family", "kwargs", "shape"), [
    ("dpcrn_lite", TINY, (100,)),
    ("dccrn", {"channels": [8, 16], "rnn_units": 16, "rnn_layers": 1}, (100,)),
    ("convtasnet", {"n_filters": 16, "bn_chan": 8, "hid_chan": 16, "skip_chan": 8, "n_blocks": 1, "n_repeats": 1},
     (100,)),
    ("dptnet", {"n_filters": 8, "n_heads": 2, "ff_hid": 8, "n_repeats": 1}, (100,)),
    ("ftjnf", {"n_channels": 3, "n_lstm_hidden1": 8, "n_lstm_hidden2": 4}, (3, 100)),
    ("subband", {"hidden": 8}, (100,)),
])
def test_a_few_samples_still_enhance_to_the_input_length(family, kwargs, shape):
    # shorter than one STFT frame: enhance() pads for the model and crops back instead of a shape error
    out = enhance(build_model(family, kwargs), np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    assert out.shape == (100,) and np.isfinite(out).all()


# -- row: truncated or foreign checkpoint --------------------------------------------------------------


def _truncated(good: Path, path: Path) -> str:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return f"checkpoint '{path}' is truncated or not a torch file: "


def _empty(good: Path, path: Path) -> str:
    path.write_bytes(b"")
    return f"checkpoint '{path}' is truncated or not a torch file: EOFError"


def _not_torch(good: Path, path: Path) -> str:
    path.write_text("weights: none\n")
    return f"checkpoint '{path}' is truncated or not a torch file: "


def _state_dict(good: Path, path: Path) -> str:
    torch.save(build_model("dpcrn_lite", TINY).state_dict(), path)
    return f"'{path}' is not a kdlib checkpoint (no 'kdlib-checkpoint-v1' format tag)"


def _pickled_model(good: Path, path: Path) -> str:
    torch.save(build_model("dpcrn_lite", TINY), path)
    return (f"'{path}' is not a kdlib checkpoint: it holds pickled Python objects (kdlib.models.dpcrn_lite.DPCRNLite), "
            "which kdlib never loads (weights_only=True); write it with kdlib.models.save_checkpoint")


@pytest.mark.parametrize("spoil", [_truncated, _empty, _not_torch, _state_dict, _pickled_model],
                         ids=["truncated", "empty", "not-torch", "bare-state-dict", "pickled-model"])
def test_bad_checkpoint_is_refused_naming_the_file(tmp_path, capsys, checkpoint, data_root, spoil):
    bad = tmp_path / "bad.pt"
    expected = spoil(checkpoint, bad)
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    _refused(capsys, ["eval", str(bad), "--data", str(data_root / "vb_demand")], expected)


# -- row: unreachable MLflow store ---------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_is_refused_before_the_teacher_or_ray(tmp_path, monkeypatch, capsys, data_root):
    uri = f"http://127.0.0.1:{_closed_port()}"
    path = _sweep(tmp_path, {**TINY_SWEEP, "data.root": str(data_root), "mlflow.tracking_uri": uri})
    out = _output(tmp_path, monkeypatch)
    with _within(20, "refusing an unreachable MLflow server"):
        _refused(capsys, ["sweep", "run", str(path), "--smoke-test"],
                 f"MLflow tracking store '{uri}' is unreachable: ")
    _nothing_ran(out)
    assert not ray.is_initialized()


# -- row: a GPU fraction on a cluster without GPUs -------------------------------------------------------


def test_gpu_fraction_on_a_cluster_without_gpus_is_refused_before_any_trial(tmp_path, monkeypatch, capsys,
                                                                           data_root):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the local Ray cluster gets no GPU, even on a GPU machine
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = _sweep(tmp_path, {**TINY_SWEEP, "data.root": str(data_root)})
    out = _output(tmp_path, monkeypatch)
    try:
        with _within(120, "refusing resources.gpu on a cluster without GPUs"):
            _refused(capsys, ["sweep", "run", str(path), "--smoke-test", "--set", "resources.gpu=0.25"],
                     "resources.gpu: 0.25 GPU per trial asked, but the Ray cluster has no GPU", alone=False)
        assert not ray.is_initialized()  # the Ray instance the sweep started is shut down again
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not (out / "teachers").exists() and not (out / "ray").exists() and not (out / "reports").exists()
