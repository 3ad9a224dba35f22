"""Tests of kdlib.data.sources (the sweep's data sources as a registry) and of the ``data`` schema's choices:
paired on-the-fly mixing, the simulated array with its one cache, and the L3DAS23 corpus from archives.

:func:`build_l3das23_archives` and :func:`l3das23_sweep` build an L3DAS23-layout corpus and a sweep YAML
on it, for the end-to-end smoke test at the bottom (and for anyone who needs such a corpus)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kdlib.config.data import DataConfig
from kdlib.config.schema import SmokeConfig
from kdlib.data import PairedCorpus, SpeechNoiseMixer, list_noise, list_speech, speaker_matches, write_audio
from kdlib.data.l3das import L3DAS23Corpus, L3DAS23Segments
from kdlib.data.sources import (
    ARRAY_CACHE_DIR,
    DATA_SOURCES,
    L3DAS23_CACHE_DIR,
    ArraySource,
    DataSource,
    L3DAS23Source,
    PairedMixSource,
    data_source,
    register_data_source,
    source_class,
)
from kdlib.errors import ConfigError, DataError, RegistryError
from kdlib.validation import validate

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def _data(raw: dict[str, Any]) -> DataConfig:
    return validate(DataConfig, raw, prefix="data")


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _speechlike(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Amplitude-modulated smoothed noise, never near-silent (envelope >= 0.2)."""
    t = np.arange(n) / SR
    env = 0.6 + 0.4 * np.sin(2 * np.pi * rate_hz * t)
    return (0.05 * env * np.convolve(rng.standard_normal(n), np.hanning(9), mode="same")).astype(np.float32)


# -- L3DAS23 corpus builders (also for the end-to-end smoke test) ------------------------------------

#: scene ids per split: LibriSpeech ids, speaker = first field
L3DAS23_SCENES = {
    "train100": ["19-198-0000", "19-198-0001", "26-495-0000", "26-495-0001", "32-21625-0000", "32-21625-0001"],
    "dev": ["1089-134686-0000", "1089-134686-0001", "121-121726-0000", "121-121726-0001"],
}


def write_l3das23_split(base: Path, split: str, ids: list[str], seconds: float = 0.6,
                        sample_rate: int = SR) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write ``base/L3DAS23_Task1_<split>/{data/<id>_A.wav, data/<id>_B.wav, labels/<id>.wav}``: 4-channel
    mixtures at mics A and B (clean + noise, per channel), mono clean labels; returns ``{id: (a, b, clean)}``."""
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    folder = base / f"L3DAS23_Task1_{split}"
    out = {}
    for k, id_ in enumerate(ids):
        n = round(seconds * sample_rate) + 160 * k  # unequal scene lengths
        clean = _speechlike(rng, n, 3.0 + k)
        a = (np.outer([1.0, 0.5, 0.4, 0.3], clean) + 0.05 * rng.standard_normal((4, n))).astype(np.float32)
        b = (np.outer([0.9, 0.4, 0.5, 0.2], clean) + 0.05 * rng.standard_normal((4, n))).astype(np.float32)
        write_audio(folder / "data" / f"{id_}_A.wav", a, sample_rate)
        write_audio(folder / "data" / f"{id_}_B.wav", b, sample_rate)
        write_audio(folder / "labels" / f"{id_}.wav", clean, sample_rate)
        out[id_] = (a, b, clean)
    return out


def build_l3das23_archives(base: Path, seconds: float = 0.6) -> tuple[list[Path], dict[str, dict]]:
    """The splits of :data:`L3DAS23_SCENES` written under ``base/src`` and packed as the challenge ships them:
    ``base/archives/L3DAS23_Task1_train100.tar.gz`` and ``base/archives/L3DAS23_Task1_dev.zip``.

    Returns:
        ``([tar, zip], {split: {id: (a, b, clean)}})``.
    """
    src, out = base / "src", base / "archives"
    out.mkdir(parents=True, exist_ok=True)
    written = {split: write_l3das23_split(src, split, ids, seconds) for split, ids in L3DAS23_SCENES.items()}
    tgz = out / "L3DAS23_Task1_train100.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src / "L3DAS23_Task1_train100", arcname="L3DAS23_Task1_train100")
    zpath = out / "L3DAS23_Task1_dev.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted((src / "L3DAS23_Task1_dev").rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(src)))
    return [tgz, zpath], written


def l3das23_data(root: Path, path: str | list[str], **section: Any) -> dict[str, Any]:
    """A raw ``data`` section on an L3DAS23 layout: train100 for training, dev speakers 1089 / 121 for
    valid / test, 0.25 s training segments."""
    return {"root": str(root), "train": {"segment_seconds": 0.25, "segments_per_epoch": 4},
            "l3das23": {"path": path, "train": ["train100"], "valid": {"split": "dev", "speakers": ["1089"]},
                        "test": {"split": "dev", "speakers": ["121"]}, **section}}


def l3das23_sweep(base: Path, mono: bool = False) -> dict[str, Any]:
    """Build an L3DAS23-layout corpus of 1.5 s scenes (two archives under ``base/data/l3das23``) and return a
    tiny sweep YAML dict on it (``data.root = base/data``, ``output_dir = base/out``).

    Multi-channel (default): mic A's 4 Ambisonics channels into a tiny ``ftjnf`` (``n_channels: 4``), KD
    methods ``none`` and ``ss_narrowband``. ``mono``: only channel 0 (W) into a tiny ``dpcrn_lite``, methods
    ``none`` and ``output``.
    """
    archives, _ = build_l3das23_archives(base / "build", seconds=1.5)
    data_dir = base / "data" / "l3das23"
    data_dir.mkdir(parents=True, exist_ok=True)
    for p in archives:
        (data_dir / p.name).write_bytes(p.read_bytes())
    data = l3das23_data(base / "data", [f"l3das23/{p.name}" for p in archives])
    data["train"] = {"segment_seconds": 0.5, "segments_per_epoch": 4}
    if mono:
        data["l3das23"]["channels"] = [0]
        teacher = {"name": "dpcrn_lite", "kwargs": {"n_fft": 256, "hop_length": 128, "channels": [4, 6],
                                                "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}}
        methods = ["none", "output"]
    else:
        teacher = {"name": "ftjnf", "kwargs": {"n_channels": 4, "n_fft": 128, "hop_length": 64,
                                               "n_lstm_hidden1": 8, "n_lstm_hidden2": 4}}
        methods = ["none", "ss_narrowband"]
    return {
        "name": f"l3das23_{'mono' if mono else 'foa'}",
        "output_dir": str(base / "out"),
        "data": data,
        "teacher": {"model": teacher, "epochs": 1, "batch_size": 2, "lr": 1e-3, "threads": 1},
        "training": {"epochs": 1, "batch_size": 2, "lr": 1e-3},
        "methods": {"ss_narrowband": {"layer": "middle", "distance": "mse"}} if not mono else {},
        "search": {"method": methods, "student_ratio": [0.25], "seed": [0]},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1, "gpu": 0},
        "ray": {"num_cpus": 2, "max_failures": 0},
        "smoke": {"epochs": 1, "teacher_epochs": 1, "segments_per_epoch": 2, "segment_seconds": 0.5,
                  "max_utterances": 2},
    }


@pytest.fixture(scope="module")
def l3das23_archives(tmp_path_factory) -> tuple[Path, list[Path], dict[str, dict]]:
    """``(data root, [tar.gz, zip] relative to it, written arrays)``."""
    base = tmp_path_factory.mktemp("l3das23")
    archives, written = build_l3das23_archives(base)
    return base, [p.relative_to(base) for p in archives], written


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """A tiny data root: ``speech/spk{0..3}/u{0,1}.wav`` (1 s each) and ``noise/n{0..2}.wav``."""
    root = tmp_path_factory.mktemp("synth_root")
    rng = np.random.default_rng(7)
    for k in range(4):
        for u in range(2):
            write_audio(root / "speech" / f"spk{k}" / f"u{u}.wav", _speechlike(rng, SR, 3.0 + k + u), SR)
    for k in range(3):
        write_audio(root / "noise" / f"n{k}.wav", 0.1 * rng.standard_normal(SR // 2 + 200 * k), SR)
    return root


def _array_data(root: Path, **array: Any) -> DataConfig:
    return _data({"root": str(root), "train": {"segment_seconds": 0.25, "segments_per_epoch": 2},
                  "array": {"n_mics": 3, "valid": {"speakers": ["spk0"], "items": 2},
                            "test": {"speakers": ["spk1"], "items": 2}, "eval_segment_seconds": 0.25,
                            "max_order": 2, "rt60_s": [0.2, 0.3], **array}})


def _quickstart_data() -> DataConfig:
    return _data(yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["data"])


# -- registry and schema ---------------------------------------------------------------------------


def test_registry_lists_the_three_sources_and_picks_one_per_section(synth_root, l3das23_archives, tmp_path,
                                                                    monkeypatch):
    assert DATA_SOURCES.names() == ["array", "l3das23", "paired_mix"]
    assert {n: c.name for n, c in DATA_SOURCES.items()} == {"array": "array", "l3das23": "l3das23",
                                                            "paired_mix": "paired_mix"}
    paired = _quickstart_data()
    array = _array_data(synth_root)
    root, archives, _ = l3das23_archives
    l3 = _data(l3das23_data(root, [str(a) for a in archives]))
    l3_mono = _data(l3das23_data(root, [str(a) for a in archives], channels=[0]))
    l3_both = _data(l3das23_data(root, [str(a) for a in archives], mics=["A", "B"]))
    picked = {name: source_class(d) for name, d in
              (("paired", paired), ("array", array), ("l3", l3), ("l3_mono", l3_mono), ("l3_both", l3_both))}
    assert picked == {"paired": PairedMixSource, "array": ArraySource, "l3": L3DAS23Source,
                      "l3_mono": L3DAS23Source, "l3_both": L3DAS23Source}
    channels = {name: data_source(d, None, tmp_path).input_channels for name, d in
                (("paired", paired), ("array", array), ("l3", l3), ("l3_mono", l3_mono), ("l3_both", l3_both))}
    assert channels == {"paired": 1, "array": 3, "l3": 4, "l3_mono": 1, "l3_both": 8}
    assert ArraySource.channels_key == "data.array.n_mics" and PairedMixSource.channels_key is None
    source = data_source(array, synth_root, tmp_path)
    assert source.root == synth_root and source.output == tmp_path

    with pytest.raises(RegistryError, match="registered twice"):
        @register_data_source("array")
        class Again(DataSource):
            pass

    class Overlapping(DataSource):  # a plugin source that claims paired sections as well
        @classmethod
        def selected_by(cls, data: DataConfig) -> bool:
            return data.array is None

    Overlapping.name = "overlapping"
    # registered for this test only (the registry has no unregister)
    monkeypatch.setitem(DATA_SOURCES._items, "overlapping", Overlapping)
    with pytest.raises(ConfigError, match="exactly one data source.*paired_mix"):
        source_class(paired)


@pytest.mark.parametrize("edit,expected", [
    (lambda d: d.update(array={"valid": {"speakers": ["a"], "items": 1}, "test": {"speakers": ["b"], "items": 1}}),
     "give either data.array or data.l3das23, not both"),
    (lambda d: d.update(valid={"corpus": "vb_demand"}), "data.valid: give either data.l3das23 or paired data.valid"),
    (lambda d: d.update(test={"corpus": "vb_demand"}), "data.test: give either data.l3das23 or paired data.test"),
    (lambda d: d.pop("l3das23"), "data.valid: missing: give a paired corpus {corpus: ...} as data.valid, "
                                 "or a data.array section"),
    (lambda d: d["l3das23"]["test"].update(speakers=None), "valid and test both use split 'dev'"),
    (lambda d: d["l3das23"]["test"].update(speakers=["1089", "121"]), "valid and test share speaker(s) ['1089']"),
    (lambda d: d["l3das23"].update(valid={"split": "train100"}), "valid.split 'train100' is also a training split"),
    (lambda d: d["l3das23"].update(channels=[4]), "channels [4] out of range: mics ['A'] give channels 0..3"),
    (lambda d: d["l3das23"].update(channels=[0, 0]), "channels lists a channel twice"),
    (lambda d: d["l3das23"].update(mics=["B", "A"]), "data.l3das23.mics: must be [A], [B] or [A, B]"),
    (lambda d: d["l3das23"].update(mics=["C"]), "data.l3das23.mics.0"),
    (lambda d: d["l3das23"].update(train=["train100", "train100"]), "data.l3das23.train: a split is listed twice"),
    (lambda d: d["l3das23"].update(path=[]), "data.l3das23.path"),
    (lambda d: d["l3das23"]["valid"].update(max_utterances=0), "data.l3das23.valid.max_utterances"),
    (lambda d: d["l3das23"].update(mic=["A"]), "unknown key 'data.l3das23.mic'"),
    (lambda d: d["l3das23"].pop("test"), "missing key 'data.l3das23.test'"),
], ids=["array+l3das23", "l3das23+valid", "l3das23+test", "neither", "same-split", "shared", "train-split",
        "channel-range", "channel-twice", "mic-order", "mic-name", "train-twice", "no-path", "max-utt", "typo",
        "no-test"])
def test_l3das23_section_refusals_name_the_key(edit, expected, tmp_path):
    raw = l3das23_data(tmp_path, "l3das23")
    edit(raw)
    with pytest.raises(ConfigError) as err:
        _data(raw)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_l3das23_section_fills_valid_and_test_and_round_trips(tmp_path):
    data = _data(l3das23_data(tmp_path, "l3das23", pesq_mode="wb", channels=[0, 1]))
    assert data.valid.corpus == "l3das23:valid" and data.valid.speakers == ["1089"]
    assert data.test.corpus == "l3das23:test" and data.test.pesq_mode == "wb" and data.test.max_utterances is None
    assert data.l3das23.n_channels() == 2 and data.l3das23.train == ["train100"]
    assert DataConfig.model_validate(data.model_dump()) == data  # the derived entries survive a round trip
    # a valid split that is also a training split is fine with its speakers (they leave training)
    data = _data(l3das23_data(tmp_path, "l3das23", valid={"split": "train100", "speakers": ["19"],
                                                          "max_utterances": 1}))
    assert data.valid.max_utterances == 1


def test_paired_and_array_sections_dump_and_hash_as_before():
    """The dump of a data section feeds the config hash and the teacher hash: byte-identical to before the
    l3das23 option (values captured from the code before issue 9), for the quickstart's data section as it
    was then (one unnamed test set)."""
    raw = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["data"]
    raw["test"] = {"corpus": "vb_demand", "speakers": ["p232"], "pesq_mode": "wb"}
    quick = _data(raw)
    assert json.dumps(quick.model_dump(mode="json")) == (
        '{"root": null, "sample_rate": 16000, "train": {"speech": "speech", "noise": "noise", "snr_db": [-5.0, 15.0], '
        '"segment_seconds": 2.0, "segments_per_epoch": 320, "exclude_speakers": []}, "valid": {"corpus": '
        '"vb_demand", "speakers": ["p257"], "max_utterances": null, "pesq_mode": "auto"}, "test": {"corpus": '
        '"vb_demand", "speakers": ["p232"], "max_utterances": null, "pesq_mode": "wb"}}')
    import hashlib

    def digest(d: DataConfig, **kw: Any) -> str:
        return hashlib.sha256(json.dumps(d.model_dump(mode="json", **kw), sort_keys=True).encode()).hexdigest()[:16]

    array = _data(yaml.safe_load((REPO / "sweeps" / "ftjnf_multichannel.yaml").read_text())["data"])
    assert (digest(quick), digest(quick, exclude={"root"})) == ("ef038e8761b6eab9", "6df020ea8015b159")
    assert (digest(array), digest(array, exclude={"root"})) == ("a8ece9690298c531", "5e4098b78ab94823")


def test_the_data_schema_imports_no_torch_even_for_an_impossible_room():
    code = ("import sys; from kdlib.config.data import DataConfig; "
            "DataConfig.model_validate({'array': {'room_dim_m': [[2, 2, 2], [3, 3, 3]], "
            "'valid': {'speakers': ['a'], 'items': 1}, 'test': {'speakers': ['b'], 'items': 1}}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("array,expected", [
    ({"room_dim_m": [[2, 2, 2], [3, 3, 3]]}, "data.array: the smallest room (np.float64(2.0), np.float64(2.0), "
                                             "np.float64(2.0)) m is too small for wall_margin_m=0.5"),
    ({"spacing_m": 0.03}, "data.array: spacing_m is only for layout='linear' (the circle uses radius_m)"),
    ({"rt60_s": [0.02, 0.5]}, "data.array: rt60_s low end 0.02 s is unreachable"),
    ({"layout": "linear", "center_mic": True, "n_mics": 4}, "data.array: a linear array with center_mic needs an odd"),
])
def test_array_check_refuses_what_the_simulator_refuses(array, expected, synth_root, tmp_path):
    source = data_source(_array_data(synth_root, **array), None, tmp_path)  # the schema accepts it
    with pytest.raises(ConfigError) as err:
        source.check()
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_array_check_passes_a_possible_room_and_the_others_check_nothing(synth_root, tmp_path):
    data_source(_array_data(synth_root), None, tmp_path).check()
    data_source(_quickstart_data(), None, tmp_path).check()
    data_source(_data(l3das23_data(tmp_path, "nowhere")), None, tmp_path).check()  # reads no file


def test_smoke_shrinks_each_source_as_with_smoke_did(synth_root, tmp_path):
    s = SmokeConfig(segments_per_epoch=3, segment_seconds=0.5, max_utterances=1)
    quick = _quickstart_data()
    shrunk = source_class(quick).smoke(quick, s)
    assert (shrunk.train.segments_per_epoch, shrunk.train.segment_seconds) == (3, 0.5)
    assert shrunk.valid.max_utterances == shrunk.test.max_utterances == 1
    assert quick.train.segments_per_epoch == 320 and quick.valid.max_utterances is None  # a copy

    array = _array_data(synth_root, eval_segment_seconds=0.25)
    shrunk = source_class(array).smoke(array, s)
    assert shrunk.array.valid.items == shrunk.array.test.items == shrunk.valid.max_utterances == 1
    assert shrunk.array.eval_segment_seconds == 0.25  # min(0.25, 0.5)
    assert array.array.valid.items == 2

    l3 = _data(l3das23_data(tmp_path, "l3das23", test={"split": "dev", "speakers": ["121"], "max_utterances": 5}))
    shrunk = source_class(l3).smoke(l3, SmokeConfig(max_utterances=2))
    assert shrunk.l3das23.valid.max_utterances == shrunk.l3das23.test.max_utterances == 2
    assert shrunk.valid.max_utterances == shrunk.test.max_utterances == 2
    assert (shrunk.train.segments_per_epoch, shrunk.train.segment_seconds) == (4, 1.0)


# -- paired_mix ------------------------------------------------------------------------------------


def test_paired_mix_gives_the_mixtures_of_a_mixer_built_directly(data_root, tmp_path):
    raw = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["data"]
    raw["train"].update(segment_seconds=0.5, segments_per_epoch=3)
    source = data_source(_data(raw), None, tmp_path)
    assert isinstance(source, PairedMixSource) and source.root == data_root.resolve()
    data = source.build(seed=5)

    # the pre-registry code path, spelled out: speakers of valid/test left out, files in listing order
    valid = PairedCorpus(data_root / "vb_demand").subset(["p257"])
    test = PairedCorpus(data_root / "vb_demand").subset(["p232"])
    assert [p.noisy for p in data.valid] == [p.noisy for p in valid] and [p.noisy for p in data.test] == [
        p.noisy for p in test]
    speech = list_speech(data_root)
    kept = [s for s in speech if not any(speaker_matches(s, h) for h in ("p257", "p232"))]
    assert data.train_speakers == kept and "vctk_p232" not in kept
    mixer = SpeechNoiseMixer([f for s in kept for f in speech[s]], list_noise(data_root), sample_rate=SR,
                             segment_seconds=0.5, snr_db=(-5.0, 15.0), num_segments=3, seed=5)
    for epoch in (0, 1):
        data.train.set_epoch(epoch)
        mixer.set_epoch(epoch)
        for i in range(3):
            got, want = data.train.draw(i), mixer.draw(i)
            np.testing.assert_array_equal(got["noisy"], want["noisy"])
            np.testing.assert_array_equal(got["clean"], want["clean"])
            assert (got["speech_file"], got["noise_file"], got["snr_db"]) == (
                want["speech_file"], want["noise_file"], want["snr_db"])


def test_paired_mix_refuses_unknown_speakers_and_a_missing_root(data_root, tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["data"]
    raw["test"][0]["speakers"] = ["p999"]
    with pytest.raises(DataError, match=r"corpus 'vb_demand' has no speaker\(s\) \['p999'\]"):
        data_source(_data(raw), None, tmp_path).eval_sets()
    raw["root"] = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="data root .*nowhere.* does not exist"):
        data_source(_data(raw), None, tmp_path).eval_sets()


# -- array: one cache ------------------------------------------------------------------------------


def test_array_sets_are_written_once_then_only_read(synth_root, tmp_path, monkeypatch):
    data = _array_data(synth_root)
    source = data_source(data, None, tmp_path)
    assert isinstance(source, ArraySource)
    valid, test = source.eval_sets()
    base = source.cache_dir()
    assert base == tmp_path / ARRAY_CACHE_DIR / source.cache_key() and len(source.cache_key()) == 12
    assert valid.path == base / "valid" and test.path == base / "test"
    assert len(valid) == len(test) == 2 and valid.speakers() == ["spk0"] and test.speakers() == ["spk1"]
    noisy, clean = valid.load(0)
    assert noisy.shape == (3, 4000) and clean.shape == (4000,)
    assert sorted(p.name for p in base.iterdir()) == ["test", "valid"]  # no temporary folder left
    before = _mtimes(base)

    # a second source (another trial) only reads: the simulator is not even built
    from kdlib.data import array as array_module

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated again")

    with monkeypatch.context() as mp:
        mp.setattr(array_module.ArrayMixer, "__init__", no_simulation)
        again = data_source(data, None, tmp_path)
        assert again.cache_key() == source.cache_key()
        v2, t2 = again.eval_sets()
    assert _mtimes(base) == before and [p.utt_id for p in v2] == [p.utt_id for p in valid]

    # what determines the sets changes the key; the data root's location does not
    assert data_source(_array_data(synth_root, eval_seed=3), None, tmp_path).cache_key() != source.cache_key()
    assert data_source(data, synth_root, tmp_path / "elsewhere").cache_key() == source.cache_key()

    # training: the other speakers, the other noise files, (M, L) items
    train = source.build(seed=0)
    plan = source.plan()
    assert train.train_speakers == ["spk2", "spk3"] and not set(train.train.noise_files) & set(plan.eval_noise)
    x, y = train.train[0]
    assert tuple(x.shape) == (3, 4000) and tuple(y.shape) == (4000,)
    assert _mtimes(base) == before

    # a set folder without pairs.csv is refused with the one message of the cache
    (base / "valid" / "pairs.csv").unlink()
    incomplete = r"cached array set '.*valid' is incomplete \(no pairs.csv\): delete the folder"
    with pytest.raises(DataError, match=incomplete):
        data_source(data, None, tmp_path).eval_sets()


# -- l3das23 ---------------------------------------------------------------------------------------


def test_l3das23_archives_are_extracted_once_and_read(l3das23_archives, tmp_path, monkeypatch):
    root, archives, written = l3das23_archives
    data = _data(l3das23_data(root, [str(a) for a in archives]))
    source = data_source(data, None, tmp_path / "out")
    valid, test = source.eval_sets()
    extracted = source.corpus_root()
    assert extracted.parent == tmp_path / "out" / L3DAS23_CACHE_DIR
    assert sorted(p.name for p in extracted.iterdir()) == ["L3DAS23_Task1_dev", "L3DAS23_Task1_train100",
                                                          "archives.json"]
    assert valid.ids == ["1089-134686-0000", "1089-134686-0001"] and test.speakers() == ["121"]
    assert valid.channels == 4 and valid.pesq_mode_hint == "wb" and valid.sample_rate == SR
    noisy, clean = test.load(1)
    a, _, ref = written["dev"]["121-121726-0001"]
    assert noisy.shape == a.shape and clean.shape == ref.shape
    np.testing.assert_allclose(noisy, a, atol=1e-4)
    np.testing.assert_allclose(clean, ref, atol=1e-4)

    # later calls (trials) only read
    before = _mtimes(extracted)
    from kdlib.data.sources import l3das23 as l3_module

    monkeypatch.setattr(l3_module, "extract_archive", lambda *a, **k: (_ for _ in ()).throw(AssertionError("again")))
    assert data_source(data, None, tmp_path / "out").corpus_root() == extracted
    assert _mtimes(extracted) == before

    # an extracted folder is read in place; max_utterances and kept channels apply
    folder = _data(l3das23_data(extracted, ".", mics=["A", "B"], channels=[4],
                                valid={"split": "dev", "speakers": ["1089"], "max_utterances": 1}))
    v, _ = data_source(folder, None, tmp_path / "out2").eval_sets()
    assert not (tmp_path / "out2").exists()
    noisy, _ = v.load(0)
    _, b, _ = written["dev"]["1089-134686-0000"]
    assert len(v) == 1 and noisy.shape == (b.shape[1],)  # one kept channel: mono
    np.testing.assert_allclose(noisy, b[0], atol=1e-4)  # channel 4 = mic B's W

    with pytest.raises(DataError, match=r"data.l3das23.path: '.*missing.zip' does not exist"):
        data_source(_data(l3das23_data(root, "missing.zip")), None, tmp_path).eval_sets()
    (root / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="are not .zip/tar archives"):
        data_source(_data(l3das23_data(root, [str(archives[0]), "notes.txt"])), None, tmp_path).eval_sets()


def test_l3das23_training_segments_are_deterministic_per_seed_and_epoch(l3das23_archives, tmp_path):
    root, archives, written = l3das23_archives
    raw = l3das23_data(root, [str(a) for a in archives], valid={"split": "train100", "speakers": ["19"]})
    data = _data(raw)
    train = data_source(data, None, tmp_path).build(seed=3)
    assert train.train_speakers == ["26", "32"]  # valid's train100 speaker and dev's test speaker left out
    assert isinstance(train.train, L3DAS23Segments) and len(train.train) == 4
    assert train.valid.ids == ["19-198-0000", "19-198-0001"]
    again = data_source(data, None, tmp_path).build(seed=3).train
    other_seed = data_source(data, None, tmp_path).build(seed=4).train

    def items(ds: L3DAS23Segments) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(ds.draw(i)["noisy"], ds.draw(i)["clean"]) for i in range(len(ds))]

    first = items(train.train)
    for (n1, c1), (n2, c2) in zip(first, items(again), strict=True):
        np.testing.assert_array_equal(n1, n2)
        np.testing.assert_array_equal(c1, c2)
    assert not all(np.array_equal(c1, c2) for (_, c1), (_, c2) in zip(first, items(other_seed), strict=True))
    train.train.set_epoch(1)
    assert not all(np.array_equal(c1, c2) for (_, c1), (_, c2) in zip(first, items(train.train), strict=True))
    train.train.set_epoch(0)
    np.testing.assert_array_equal(items(train.train)[2][1], first[2][1])

    # every item is one window of one training scene, noisy and clean cut at the same place
    L = 4000
    for i in range(len(train.train)):
        d = train.train.draw(i)
        assert d["noisy"].shape == (4, L) and d["clean"].shape == (L,) and d["noisy"].dtype == np.float32
        assert d["scene"].split("-")[0] in ("26", "32")
        a, _, clean = written["train100"][d["scene"]]
        corpus = L3DAS23Corpus(root / "src", "train100")
        scene_noisy, scene_clean = corpus.load(corpus.ids.index(d["scene"]))
        windows = np.lib.stride_tricks.sliding_window_view(scene_clean, L)
        (start,) = np.flatnonzero((windows == d["clean"]).all(axis=1))
        np.testing.assert_array_equal(d["noisy"], scene_noisy[:, start : start + L])
    x, y = train.train[0]
    assert tuple(x.shape) == (4, L) and tuple(y.shape) == (L,)

    mono = _data({**raw, "l3das23": {**raw["l3das23"], "channels": [0]}})
    seg = data_source(mono, None, tmp_path).build(seed=3).train.draw(0)
    assert seg["noisy"].shape == (L,)
    np.testing.assert_array_equal(seg["noisy"], first[0][0][0])  # the same draw, channel 0 only

    exclude = _data({**raw, "train": {**raw["train"], "exclude_speakers": ["26", "32"]}})
    with pytest.raises(DataError, match="no training speaker left"):
        data_source(exclude, None, tmp_path).build(seed=0)


def test_l3das23_wrong_rate_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "data"
    for split, ids in L3DAS23_SCENES.items():
        write_l3das23_split(root / "l3", split, ids)
    bad = root / "l3" / "L3DAS23_Task1_dev" / "data" / "121-121726-0000_A.wav"
    write_audio(bad, np.zeros((4, 4800)) + 0.1, 8000)
    data = _data(l3das23_data(root, "l3"))
    with pytest.raises(DataError, match=r"L3DAS23 file '.*121-121726-0000_A\.wav' has sample rate 8000 Hz but "
                                        r"16000 Hz is expected"):
        data_source(data, None, tmp_path).eval_sets()
    write_audio(bad, np.zeros((4, 9920)) + 0.1, SR)  # back to 16 kHz: now a training file at 8 kHz
    train_bad = root / "l3" / "L3DAS23_Task1_train100" / "labels" / "26-495-0001.wav"
    write_audio(train_bad, np.zeros(4800) + 0.1, 8000)
    data_source(data, None, tmp_path).eval_sets()  # valid/test are fine
    with pytest.raises(DataError, match=r"'.*26-495-0001\.wav' has sample rate 8000 Hz"):
        data_source(data, None, tmp_path).build(seed=0)
    # a sweep at 8 kHz on the 16 kHz corpus: refused, naming a file
    with pytest.raises(DataError, match=r"L3DAS23 file '.*\.wav' has sample rate 16000 Hz but 8000 Hz is expected"):
        data_source(_data({**l3das23_data(root, "l3"), "sample_rate": 8000}), None, tmp_path).eval_sets()


def test_l3das23_segments_refusals(l3das23_archives):
    root, _, _ = l3das23_archives
    corpus = L3DAS23Corpus(root / "src", "dev")
    with pytest.raises(ValueError, match="at least one corpus"):
        L3DAS23Segments([])
    with pytest.raises(ValueError, match="channel count"):
        L3DAS23Segments([corpus, L3DAS23Corpus(root / "src", "dev", keep_channels=[0])])
    with pytest.raises(ValueError, match="num_segments"):
        L3DAS23Segments([corpus], num_segments=0)
    seg = L3DAS23Segments([corpus], segment_seconds=2.0, num_segments=2)  # longer than every scene: zero-padded
    d = seg.draw(1)
    assert d["clean"].shape == (32000,) and np.count_nonzero(d["clean"]) < 32000
    with pytest.raises(IndexError):
        seg.draw(2)
    with pytest.raises(ValueError, match="keep_channels"):
        L3DAS23Corpus(root / "src", "dev", keep_channels=[4])


# -- end to end (wired by the sweep layer) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mono", [False, True], ids=["foa-ftjnf", "mono-dpcrn_lite"])
def test_l3das23_sweep_smoke(mono, tmp_path, monkeypatch):
    """An L3DAS23-layout corpus (two archives) runs through ``kdlib sweep run --smoke-test``: mic A's four
    Ambisonics channels into FT-JNF, or its W channel alone into DPDCRN."""
    from kdlib.cli import main

    sweep = l3das23_sweep(tmp_path, mono=mono)
    path = tmp_path / "l3das23.yaml"
    path.write_text(yaml.safe_dump(sweep))
    monkeypatch.setenv("KDLIB_OUTPUT", str(tmp_path / "out"))
    assert main(["sweep", "run", str(path), "--smoke-test"]) == 0
    out = tmp_path / "out"
    assert (out / L3DAS23_CACHE_DIR).is_dir()  # the archives were extracted once, under the output dir
    assert (out / "reports" / f"{sweep['name']}-smoke" / "report.md").is_file()
    assert os.path.getsize(out / "mlflow.db") > 0
