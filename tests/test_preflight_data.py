"""Tests of the pre-flight data scan (:mod:`kdlib.data.scan`, ``DataSource.scan``): every fault kind of the
training, valid and test audio is refused before any work, with one line naming the file and the fault.

Each test builds a small data root in the layout of the shared corpus (``speech/<speaker>/*.wav``,
``noise/*.wav`` and a paired corpus ``pairs/{clean,noisy}/<speaker>_<n>.wav``), breaks one thing and scans.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from kdlib.config.data import DataConfig
from kdlib.data.scan import SILENT_PEAK, ScanReport, scan_audio
from kdlib.data.sources import ArraySource, L3DAS23Source, PairedMixSource, data_source
from kdlib.errors import ConfigError, DataError
from kdlib.validation import validate
from tests.test_data_sources import build_l3das23_archives, l3das23_data, write_l3das23_split

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def _tone(seconds: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Speech-like test audio: ``(n,)`` (or ``(n, channels)`` for soundfile) float32, peak about 0.3."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    x = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * (150 + 10 * seed) * np.arange(n) / SR)
    x = x.astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _wav(path: Path, x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return path


def _build_root(root: Path) -> Path:
    """speech/{spk_a,spk_b,spk_c,spk_d} (2 x 1.5 s each), noise/n{1,2,3}.wav (3, 2.5, 1 s) and a paired corpus
    ``pairs`` whose speakers ``pa`` (valid) and ``pb`` (test) have two 1 s pairs each."""
    for k, spk in enumerate(("spk_a", "spk_b", "spk_c", "spk_d")):
        for j in range(2):
            _wav(root / "speech" / spk / f"{spk}_{j}.wav", _tone(1.5, seed=10 * k + j))
    for j, seconds in enumerate((3.0, 2.5, 1.0)):
        _wav(root / "noise" / f"n{j + 1}.wav", _tone(seconds, seed=100 + j))
    for spk in ("pa", "pb"):
        for j in range(2):
            clean = _tone(1.0, seed=200 + j)
            _wav(root / "pairs" / "clean" / f"{spk}_{j}.wav", clean)
            _wav(root / "pairs" / "noisy" / f"{spk}_{j}.wav", clean + 0.1 * _tone(1.0, seed=300 + j))
    return root


def _raw(root: Path, **train: Any) -> dict[str, Any]:
    return {"root": str(root), "train": {"segment_seconds": 1.0, "segments_per_epoch": 4, **train},
            "valid": {"corpus": "pairs", "speakers": ["pa"]}, "test": {"corpus": "pairs", "speakers": ["pb"]}}


def _source(raw: dict[str, Any], out: Path) -> Any:
    return data_source(validate(DataConfig, raw, prefix="data"), None, out)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _build_root(tmp_path / "data")


def _refused(source: Any, *words: str, depth: str | None = None) -> str:
    """Scan and return the DataError's message after checking it is one line holding every word."""
    with pytest.raises(DataError) as err:
        source.scan() if depth is None else source.scan(depth)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def _tree(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# -- the clean root passes, and a scan writes nothing ------------------------------------------------


def test_clean_root_passes_and_scan_writes_nothing(root, tmp_path):
    out = tmp_path / "out"
    before = _tree(root)
    report = _source(_raw(root), out).scan()
    assert isinstance(report, ScanReport) and report.depth == "full" and not report.notes
    # 8 speech (spk_*) + 3 noise + 2 valid pairs + 2 test pairs
    assert report.files == 8 + 3 + 4 + 4
    assert report.seconds == pytest.approx(8 * 1.5 + 6.5 + 8 * 1.0)
    assert report.longest_seconds == pytest.approx(3.0) and report.elapsed_s >= 0
    headers = _source(_raw(root), out).scan("headers")
    assert headers.files == report.files and headers.depth == "headers"
    assert _tree(root) == before and not out.exists()


# -- speech ------------------------------------------------------------------------------------------


def test_empty_speech_folder(root, tmp_path):
    for spk in (root / "speech").iterdir():
        shutil.rmtree(spk)
    _refused(_source(_raw(root), tmp_path), f"'{root / 'speech'}'", "has no <speaker>/*.wav|*.flac files")


def test_speaker_folder_without_audio(root, tmp_path):
    (root / "speech" / "spk_e").mkdir()
    (root / "speech" / "spk_e" / "notes.txt").write_text("no audio")
    msg = _refused(_source(_raw(root), tmp_path), f"speech speaker folder '{root / 'speech' / 'spk_e'}'",
                   "has no *.wav|*.flac files", "data.train.speech")
    assert "sub-folders" not in msg
    # audio one level too deep (LibriSpeech's speaker/chapter/ layout) is named as such
    shutil.move(root / "speech" / "spk_a" / "spk_a_0.wav", _mk(root / "speech" / "spk_e" / "121") / "x.wav")
    _refused(_source(_raw(root), tmp_path), "spk_e", "sub-folders")
    # an excluded speaker's folder and hidden folders are not read, so not refused
    (root / "speech" / ".cache").mkdir()
    _source(_raw(root, exclude_speakers=["spk_e"]), tmp_path).scan()


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_zero_byte_speech_file(root, tmp_path):
    bad = root / "speech" / "spk_b" / "empty.wav"
    bad.write_bytes(b"")
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "cannot be read", "(0 bytes: the file is empty)",
             "data.train.speech")
    bad.write_bytes(b"RIFF garbage, not audio" * 10)
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "cannot be read",
             "not a wav/flac file soundfile can open")


def test_header_only_speech_file(root, tmp_path):
    bad = _wav(root / "speech" / "spk_a" / "nothing.wav", np.zeros(0, dtype=np.float32))
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "has no samples", depth="headers")


def test_silent_speech(root, tmp_path):
    bad = _wav(root / "speech" / "spk_c" / "silent.wav", np.zeros(SR, dtype=np.float32))
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "is silent (all samples zero)",
             "remove it from data.train.speech")
    # near-silent float file: below the threshold, but not all zero
    _wav(bad, np.full(SR, SILENT_PEAK / 5, dtype=np.float32), subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "is silent (peak 2.0e-07")
    # headers only: the samples are not read
    assert _source(_raw(root), tmp_path).scan("headers").files == 9 + 3 + 8


def test_speech_with_nan_samples(root, tmp_path):
    x = _tone(1.0, seed=5)
    x[1234] = np.nan
    bad = _wav(root / "speech" / "spk_d" / "nan.wav", x, subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), f"speech file '{bad}'", "NaN or infinite samples at sample 1234",
             "(0.077 s)")
    x[1234], x[50] = 0.1, np.inf
    _wav(bad, x, subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), f"'{bad}'", "NaN or infinite samples at sample 50")
    _source(_raw(root), tmp_path).scan("headers")  # headers only: not read


def test_bad_file_of_a_held_out_speaker_is_not_read(root, tmp_path):
    x = _tone(1.0)
    x[3] = np.nan
    _wav(root / "speech" / "spk_b" / "nan.wav", x, subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), "spk_b")
    # spk_b left out of training: the mixer never reads it, neither does the scan
    assert _source(_raw(root, exclude_speakers=["spk_b"]), tmp_path).scan().files == 6 + 3 + 8


def test_too_little_speech(root, tmp_path):
    msg = _refused(_source(_raw(root, segment_seconds=12.5), tmp_path), "data.train.speech",
                   f"'{root / 'speech'}'", "12.00 s of audio", "less than one training segment (12.5 s")
    assert "the 8 training speech files" in msg
    _source(_raw(root, segment_seconds=2.5), tmp_path).scan()  # 12 s of speech, one 3 s noise file


# -- noise -------------------------------------------------------------------------------------------


def test_zero_byte_noise_file(root, tmp_path):
    bad = root / "noise" / "n0.wav"
    bad.write_bytes(b"")
    _refused(_source(_raw(root), tmp_path), f"noise file '{bad}'", "cannot be read", "(0 bytes: the file is empty)",
             "data.train.noise", depth="headers")


def test_stereo_noise(root, tmp_path):
    bad = _wav(root / "noise" / "stereo.wav", _tone(2.0, channels=2))
    _refused(_source(_raw(root), tmp_path), f"noise file '{bad}'", "has 2 channels but mono is expected",
             "downmix it to one channel", depth="headers")


def test_8khz_noise_in_a_16khz_sweep(root, tmp_path):
    bad = _wav(root / "noise" / "narrow.wav", _tone(2.0), sr=8000)
    _refused(_source(_raw(root), tmp_path), f"noise file '{bad}'", "sample rate 8000 Hz but 16000 Hz is expected",
             "resample it to 16000 Hz", depth="headers")


def test_silent_noise(root, tmp_path):
    bad = _wav(root / "noise" / "quiet.wav", np.zeros(2 * SR, dtype=np.float32))
    _refused(_source(_raw(root), tmp_path), f"noise file '{bad}'", "is silent (all samples zero)",
             "remove it from data.train.noise")
    assert _source(_raw(root), tmp_path).scan("headers").files == 8 + 4 + 8


def test_every_noise_file_shorter_than_a_segment(root, tmp_path):
    _refused(_source(_raw(root, segment_seconds=3.5), tmp_path), "data.train.noise", f"'{root / 'noise'}'",
             "every one of the 3 noise files", "the longest is 3.00 s", "loop a short clip")
    _source(_raw(root, segment_seconds=3.0), tmp_path).scan()  # one file is exactly a segment long


def test_every_bad_file_is_counted(root, tmp_path):
    first = _wav(root / "noise" / "a_quiet.wav", np.zeros(SR, dtype=np.float32))
    _wav(root / "noise" / "b_stereo.wav", _tone(1.0, channels=2))
    (root / "noise" / "c_empty.wav").write_bytes(b"")
    _refused(_source(_raw(root), tmp_path), f"noise file '{first}' is silent", "(and 2 more bad noise files)")


# -- valid / test corpora ----------------------------------------------------------------------------


def test_nan_sample_in_a_valid_or_test_file(root, tmp_path):
    clean, _ = sf.read(str(root / "pairs" / "clean" / "pa_1.wav"), dtype="float32")
    clean[777] = np.nan
    bad = _wav(root / "pairs" / "clean" / "pa_1.wav", clean, subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), f"valid clean file '{bad}'", "NaN or infinite samples at sample 777",
             "remove the pair from the corpus 'pairs' (data.valid.corpus)")
    shutil.copy(root / "pairs" / "clean" / "pa_0.wav", bad)
    noisy, _ = sf.read(str(root / "pairs" / "noisy" / "pb_0.wav"), dtype="float32")
    noisy[5] = -np.inf
    bad = _wav(root / "pairs" / "noisy" / "pb_0.wav", noisy, subtype="FLOAT")
    _refused(_source(_raw(root), tmp_path), f"test noisy file '{bad}'", "at sample 5", "data.test.corpus")
    _source(_raw(root), tmp_path).scan("headers")


def test_silent_valid_reference(root, tmp_path):
    bad = _wav(root / "pairs" / "clean" / "pa_0.wav", np.zeros(SR, dtype=np.float32))
    _refused(_source(_raw(root), tmp_path), f"valid clean file '{bad}'", "silent")


# -- depth: the data.scan knob, and the argument ------------------------------------------------------


def test_depth_knob(root, tmp_path):
    x = _tone(1.0)
    x[0] = np.nan
    _wav(root / "speech" / "spk_a" / "nan.wav", x, subtype="FLOAT")
    (root / "noise" / "empty.wav").write_bytes(b"")
    headers = _raw(root) | {"scan": "headers"}
    _refused(_source(headers, tmp_path), "empty.wav")  # the header fault is still found
    (root / "noise" / "empty.wav").unlink()
    assert _source(headers, tmp_path).scan().depth == "headers"  # data.scan: headers skips the samples
    _refused(_source(headers, tmp_path), "nan.wav", depth="full")  # an explicit depth wins
    _refused(_source(_raw(root), tmp_path), "nan.wav")  # default: full
    # off: nothing is read, not even the listing
    shutil.rmtree(root / "speech")
    off = _source(_raw(root) | {"scan": "off"}, tmp_path).scan()
    assert off.files == 0 and off.depth == "off"
    with pytest.raises(ValueError, match="scan depth must be one of"):
        _source(_raw(root), tmp_path).scan("deep")


def test_scan_knob_schema(root):
    data = validate(DataConfig, _raw(root), prefix="data")
    assert data.scan == "full" and "scan" not in data.model_dump()  # dumps and hashes as before the knob
    data = validate(DataConfig, _raw(root) | {"scan": "headers"}, prefix="data")
    assert data.model_dump()["scan"] == "headers"
    assert DataConfig.model_validate(data.model_dump()) == data
    with pytest.raises(ConfigError, match="scan"):
        validate(DataConfig, _raw(root) | {"scan": "quick"}, prefix="data")


# -- scan_audio itself ---------------------------------------------------------------------------------


def test_scan_audio_messages(tmp_path):
    good = _wav(tmp_path / "good.wav", _tone(0.5))
    report = scan_audio([good], sample_rate=SR)
    assert report.files == 1 and report.seconds == pytest.approx(0.5)
    with pytest.raises(DataError, match=r"^noise file '.*missing.wav' does not exist"):
        scan_audio([tmp_path / "missing.wav"], sample_rate=SR, kind="noise")
    with pytest.raises(DataError, match="no noise files to scan"):
        scan_audio([], sample_rate=SR, kind="noise", where="data.train.noise")
    four = _wav(tmp_path / "four.wav", _tone(0.5, channels=4))
    with pytest.raises(DataError, match="has 4 channels but mono is expected: downmix"):
        scan_audio([four], sample_rate=SR)
    assert scan_audio([four], sample_rate=SR, channels=4).files == 1
    with pytest.raises(DataError, match="has 1 channel but 4 channels are expected"):
        scan_audio([good], sample_rate=SR, channels=4)
    x = _tone(0.5, channels=2)
    x[100, 1] = np.nan
    stereo = _wav(tmp_path / "nan2.wav", x, subtype="FLOAT")
    with pytest.raises(DataError, match="at sample 100 of channel 1"):
        scan_audio([stereo], sample_rate=SR, channels=2)
    assert scan_audio([stereo], sample_rate=SR, channels=2, depth="headers").files == 1


def test_blocks_cover_long_files(tmp_path, monkeypatch):
    """A NaN in a later block is found at its position in the file (small blocks to keep the test quick)."""
    from kdlib.data import scan as scan_module

    monkeypatch.setattr(scan_module, "BLOCK_FRAMES", 1000)
    x = _tone(1.0)
    x[4321] = np.nan
    path = _wav(tmp_path / "late.wav", x, subtype="FLOAT")
    with pytest.raises(DataError, match="at sample 4321 "):
        scan_audio([path], sample_rate=SR)


# -- the other sources ---------------------------------------------------------------------------------


def _array_raw(root: Path) -> dict[str, Any]:
    return {"root": str(root), "train": {"segment_seconds": 1.0, "segments_per_epoch": 4},
            "array": {"n_mics": 3, "valid": {"speakers": ["spk_c"], "items": 2},
                      "test": {"speakers": ["spk_d"], "items": 2}, "eval_noise": ["n3.wav"]}}


def test_array_source_scans_what_the_simulator_reads(root, tmp_path):
    out = tmp_path / "out"
    source = _source(_array_raw(root), out)
    assert isinstance(source, ArraySource)
    report = source.scan()
    assert report.files == 8 + 3 and not out.exists()  # no simulated set was written
    x = _tone(1.0)
    x[10] = np.nan
    bad = _wav(root / "speech" / "spk_c" / "nan.wav", x, subtype="FLOAT")
    _refused(_source(_array_raw(root), out), f"valid speech file '{bad}'", "NaN")
    bad.unlink()
    bad = _wav(root / "noise" / "n3.wav", np.zeros(SR, dtype=np.float32))
    _refused(_source(_array_raw(root), out), f"held-out noise file '{bad}'", "silent")
    _wav(bad, _tone(1.0, channels=2))
    _refused(_source(_array_raw(root), out), f"'{bad}'", "downmix", depth="headers")
    assert not out.exists()


def test_l3das23_source_scans_scenes(tmp_path):
    base = tmp_path / "data"
    write_l3das23_split(base / "l3", "train100", ["19-198-0000", "26-495-0000"])
    write_l3das23_split(base / "l3", "dev", ["1089-134686-0000", "121-121726-0000"])
    raw = l3das23_data(base, "l3")
    source = _source(raw, tmp_path / "out")
    assert isinstance(source, L3DAS23Source)
    report = source.scan()
    assert report.files == 4 * 2 and report.seconds == pytest.approx(4 * 0.6 + 0.01 * 2, abs=0.02)
    label = base / "l3" / "L3DAS23_Task1_dev" / "labels" / "121-121726-0000.wav"
    clean, _ = sf.read(str(label), dtype="float32")
    clean[42] = np.nan
    _wav(label, clean, subtype="FLOAT")
    _refused(_source(raw, tmp_path / "out"), f"L3DAS23 test label file '{label}'",
             "NaN or infinite samples at sample 42")
    _source(raw, tmp_path / "out").scan("headers")
    mic = base / "l3" / "L3DAS23_Task1_train100" / "data" / "26-495-0000_A.wav"
    _wav(mic, np.zeros((9600, 4), dtype=np.float32))
    _refused(_source(raw, tmp_path / "out"), f"L3DAS23 training mic file '{mic}'", "has 9600 samples but its label",
             depth="headers")
    _wav(mic, np.zeros((9600, 2), dtype=np.float32))
    _refused(_source(raw, tmp_path / "out"), f"'{mic}'", "has 2 channels but 4 channels are expected",
             depth="headers")
    assert not (tmp_path / "out").exists()


def test_l3das23_archives_not_extracted_are_not_unpacked(tmp_path):
    archives, _ = build_l3das23_archives(tmp_path / "build")
    raw = l3das23_data(tmp_path, [str(a) for a in archives])
    report = _source(raw, tmp_path / "out").scan()
    assert report.files == 0 and "not extracted yet" in report.notes[0] and not (tmp_path / "out").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archives[1].read_bytes()[:100])
    _refused(_source(l3das23_data(tmp_path, [str(archives[0]), str(broken)]), tmp_path / "out"),
             f"archive '{broken}'", "not a readable zip/tar file")
    # once extracted (by eval_sets), the scan reads the extracted scenes
    _source(raw, tmp_path / "out").eval_sets()
    assert _source(raw, tmp_path / "out").scan().files > 0


# -- the real shared data ------------------------------------------------------------------------------


def test_shared_data_passes_the_quickstart_scan():
    data = os.environ.get("KDLIB_DATA")
    if not data or not (Path(data) / "speech").is_dir():
        pytest.skip("KDLIB_DATA is unset or has no speech/ folder")
    from kdlib.sweep.plan import load_plan

    source = load_plan(REPO / "sweeps" / "quickstart.yaml").data_source()
    assert isinstance(source, PairedMixSource)
    report = source.scan()
    assert report.depth == "full" and report.files > 500 and report.seconds > 60 * 60
