"""Tests of kdlib.data.array (simulated compact-array data, cached sets) and kdlib.data.l3das (L3DAS23 Task 1)."""

from __future__ import annotations

import csv
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.data import PairedCorpus, list_noise, list_speech, read_audio, write_audio
from kdlib.data.array import (
    ArrayMixer,
    cache_array_set,
    compact_array,
    direct_path_offset,
    simulate_rirs,
    speed_of_sound,
)
from kdlib.data.l3das import L3DAS23Corpus, extract_archive
from kdlib.errors import DataError

SR = 16000


@pytest.fixture(scope="module")
def shared_files(data_root: Path) -> tuple[list[Path], list[Path]]:
    """A few real clean speech files (one per speaker folder, 8 speakers) and real noise files."""
    speech = [files[0] for files in list(list_speech(data_root).values())[::20]][:8]
    noise = list_noise(data_root)[::17]
    return speech, noise


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Tiny synthetic 'speech' (amplitude-modulated band noise, in speaker folders) and noise files."""
    base = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(123)
    t = np.arange(int(1.5 * SR)) / SR
    speech = []
    for k in range(3):
        env = 0.5 * (1 + np.sin(2 * np.pi * (3 + k) * t))
        x = 0.2 * env * np.convolve(rng.standard_normal(t.size), np.hanning(9), mode="same")
        p = base / "speech" / f"spk{k}" / f"utt{k}.wav"
        write_audio(p, x, SR)
        speech.append(p)
    noise = []
    for k in range(2):
        p = base / "noise" / f"n{k}.wav"
        write_audio(p, 0.1 * rng.standard_normal(SR // 2 + 100 * k), SR)
        noise.append(p)
    return speech, noise


def _energy_db(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.dot(x, x)))


def _gcc_phat_lag(x: np.ndarray, ref: np.ndarray, max_lag: int) -> float:
    """Delay of ``x`` relative to ``ref`` in samples (GCC-PHAT peak, parabolic interpolation)."""
    n = x.size + ref.size
    g = np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n))
    cc = np.fft.irfft(g / (np.abs(g) + 1e-12), n)
    cc = np.concatenate([cc[-max_lag:], cc[: max_lag + 1]])
    k = int(np.argmax(cc))
    frac = 0.0
    if 0 < k < cc.size - 1:
        a, b, c = cc[k - 1], cc[k], cc[k + 1]
        frac = 0.5 * (a - c) / (a - 2 * b + c)
    return k - max_lag + frac


# -- geometry ------------------------------------------------------------------------------------


def test_compact_array_layouts():
    pos = compact_array()
    assert pos.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(pos, axis=0), 0.05)
    np.testing.assert_allclose(pos[:, 0], [0.05, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(pos[:, 1] - pos[:, 0]), 2 * 0.05 * np.sin(np.pi / 5))
    assert np.all(pos[2] == 0)

    ctr = compact_array(5, radius_m=0.04, center_mic=True)
    np.testing.assert_allclose(ctr[:, 0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(ctr[:, 1:], axis=0), 0.04)
    np.testing.assert_allclose(ctr[:, 1], [0.04, 0.0, 0.0], atol=1e-12)

    lin = compact_array(5, radius_m=0.05, layout="linear")
    np.testing.assert_allclose(lin[0], [-0.05, -0.025, 0.0, 0.025, 0.05])
    lin_c = compact_array(5, layout="linear", spacing_m=0.1, center_mic=True)
    np.testing.assert_allclose(lin_c[0], [0.0, -0.2, -0.1, 0.1, 0.2])

    with pytest.raises(ValueError, match="n_mics"):
        compact_array(1)
    with pytest.raises(ValueError, match="layout"):
        compact_array(layout="spiral")
    with pytest.raises(ValueError, match="odd"):
        compact_array(4, layout="linear", center_mic=True)
    with pytest.raises(ValueError, match="spacing_m"):
        compact_array(layout="circular", spacing_m=0.02)


@pytest.mark.parametrize(
    "array",
    [compact_array(), compact_array(5, layout="linear", spacing_m=0.1)],
    ids=["circular_r5cm", "linear_10cm"],
)
def test_direct_path_delays_match_geometry(array):
    """Anechoic (order 0) RIR peaks sit at d / c * fs + 40 and every inter-mic delay matches the geometry."""
    room = (6.0, 5.0, 3.0)
    mics = np.array([2.0, 2.5, 1.4])[:, None] + array
    src = np.array([4.7, 1.1, 1.7])
    rirs, info = simulate_rirs(room, mics, src, SR, rt60_s=0.0, max_order=17)
    assert info["max_order"] == 0 and rirs.shape[:2] == (1, 5)
    dist = np.linalg.norm(mics - src[:, None], axis=0)
    expect = dist / speed_of_sound() * SR + direct_path_offset()
    peaks = np.argmax(np.abs(rirs[0]), axis=1)
    assert np.all(np.abs(peaks - expect) <= 1.0), (peaks, expect)
    for i in range(5):
        for j in range(i + 1, 5):
            geo = (dist[i] - dist[j]) / speed_of_sound() * SR
            assert abs((peaks[i] - peaks[j]) - geo) <= 1.0, (i, j, peaks[i] - peaks[j], geo)


def test_mixer_anechoic_interchannel_delays(shared_files):
    """End to end: in an anechoic mixer the speech images are delayed copies matching the drawn positions."""
    speech, noise = shared_files
    array = compact_array(5, layout="linear", spacing_m=0.1)  # up to 18.7 samples of delay across the array
    mixer = ArrayMixer(speech, noise, segment_seconds=1.0, array=array, rt60_s=0.0, snr_db=20.0, num_items=2, seed=5)
    for i in range(2):
        d = mixer.draw(i)
        assert d["max_order"] == 0
        dist = np.linalg.norm(d["mic_pos"] - d["source_pos"][:, None], axis=0)
        assert dist.min() >= 1.0 - 0.2  # source >= 1 m from the array centre, mics within 0.2 m of it
        for m in range(1, 5):
            lag = _gcc_phat_lag(d["speech_image"][m], d["speech_image"][0], max_lag=40)
            geo = (dist[m] - dist[0]) / speed_of_sound() * SR
            assert abs(lag - geo) <= 1.0, (i, m, lag, geo)
        # anechoic: the direct-path target is exactly the speech image at the reference mic
        np.testing.assert_allclose(d["clean"], d["speech_image"][0], atol=1e-5)


# -- simulation ----------------------------------------------------------------------------------


def test_reverberation_lengthens_rir_tails():
    room = (5.0, 4.0, 3.0)
    mics = np.array([3.5, 2.0, 1.5])[:, None] + compact_array()
    src = np.array([1.2, 1.3, 1.6])
    anechoic, _ = simulate_rirs(room, mics, src, SR, rt60_s=0.0)
    short, _ = simulate_rirs(room, mics, src, SR, rt60_s=0.2)
    long, info = simulate_rirs(room, mics, src, SR, rt60_s=0.8)
    assert info["max_order"] == 17  # the default cap (Sabine would need ~114 here)
    t0 = int(np.linalg.norm(mics[:, 0] - src) / speed_of_sound() * SR) + direct_path_offset()
    after = t0 + 2 * direct_path_offset() + int(0.005 * SR)  # 5 ms after the end of the direct-path sinc

    def tail_db(h):  # energy after the direct path relative to the whole RIR
        return _energy_db(h[after:]) - _energy_db(h) if np.any(h[after:]) else -np.inf

    def decay_samples(h, drop_db=15.0):  # samples until the energy-decay curve has fallen by drop_db
        edc = np.cumsum(h[::-1] ** 2)[::-1]
        return int(np.argmax(10 * np.log10(edc / edc[0] + 1e-30) < -drop_db))

    assert anechoic.shape[-1] < short.shape[-1] <= long.shape[-1]
    for m in range(5):
        assert tail_db(anechoic[0, m]) < -60
        assert tail_db(short[0, m]) > -8
        assert tail_db(long[0, m]) > tail_db(short[0, m]) + 2
        assert decay_samples(long[0, m]) > 2 * decay_samples(short[0, m])
    # with the full Sabine order the decay matches the RT60: 15 dB of decay take a quarter of it
    full, info = simulate_rirs(room, mics[:, :1], src, SR, rt60_s=0.3, max_order=None)
    assert info["max_order"] > 17
    assert 0.8 * 0.3 < 4 * decay_samples(full[0, 0]) / SR < 1.2 * 0.3
    with pytest.raises(ValueError, match="rt60"):
        simulate_rirs(room, mics, src, SR, rt60_s=-0.1)


def test_mixer_snr_shapes_and_peak(shared_files):
    speech, noise = shared_files
    for ref in ("reverberant", "target"):
        mixer = ArrayMixer(speech, noise, segment_seconds=2.0, snr_reference=ref, num_items=3, seed=11)
        for i in range(2):
            d = mixer.draw(i)
            assert d["noisy"].shape == (5, 32000) and d["clean"].shape == (32000,)
            assert d["noisy"].dtype == np.float32 and d["clean"].dtype == np.float32
            assert -5.0 <= d["snr_db"] <= 15.0 and 0.2 <= d["rt60_s"] <= 0.8
            assert 1 <= d["noise_pos"].shape[1] <= 3 and d["mic_pos"].shape == (3, 5)
            room = d["room_dim"]
            assert np.all(room >= (3, 3, 2.5)) and np.all(room <= (8, 6, 3.5))
            for p in [d["source_pos"], *d["noise_pos"].T, *d["mic_pos"].T]:
                assert np.all(p >= 0.5 - 1e-9) and np.all(p <= room - 0.5 + 1e-9)
            for p in [d["source_pos"], *d["noise_pos"].T]:
                assert np.linalg.norm(p - d["array_center"]) >= 1.0
            np.testing.assert_allclose(d["noisy"], d["speech_image"] + d["noise_image"], atol=1e-6)
            reference = d["speech_image"][0] if ref == "reverberant" else d["clean"]
            measured = _energy_db(reference) - _energy_db(d["noise_image"][0])
            assert abs(measured - d["snr_db"]) < 0.1, (ref, i, measured, d["snr_db"])
            assert np.max(np.abs(d["noisy"])) <= 0.99 + 1e-6
    noisy, clean = mixer[0]
    assert isinstance(noisy, torch.Tensor) and noisy.dtype == torch.float32 and noisy.shape == (5, 32000)
    assert clean.dtype == torch.float32 and clean.shape == (32000,)
    with pytest.raises(IndexError):
        mixer.draw(3)


def test_early_target_holds_early_reflections(shared_files):
    """The early target (direct + first 50 ms) is far closer to the reverberant image than the dry direct path."""
    speech, noise = shared_files
    kw = dict(segment_seconds=0.5, rt60_s=0.6, num_items=1, seed=2)
    direct = ArrayMixer(speech, noise, target="direct", **kw).draw(0)
    early = ArrayMixer(speech, noise, target="early", early_ms=50, **kw).draw(0)
    np.testing.assert_array_equal(direct["mic_pos"], early["mic_pos"])  # same scene, other target

    def corr(a, b):
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))

    image = direct["speech_image"][0]
    assert corr(early["clean"], image) > 0.7
    assert corr(early["clean"], image) > corr(direct["clean"], image) + 0.25


def test_source_placement_constraints(synth_files):
    """Small rooms, many cheap draws: margins to the walls and the minimum distance to the array always hold."""
    speech, noise = synth_files
    mixer = ArrayMixer(
        speech,
        noise,
        segment_seconds=0.05,
        rt60_s=0.2,
        max_order=1,
        room_dim_m=((3.0, 3.0, 2.5), (3.3, 3.2, 2.6)),
        noise_sources=3,
        num_items=25,
        seed=9,
    )
    for i in range(len(mixer)):
        d = mixer.draw(i)
        room = d["room_dim"]
        assert d["noise_pos"].shape == (3, 3)
        for p in [d["source_pos"], *d["noise_pos"].T, *d["mic_pos"].T]:
            assert np.all(p >= 0.5 - 1e-9) and np.all(p <= room - 0.5 + 1e-9)
        for p in [d["source_pos"], *d["noise_pos"].T]:
            assert np.linalg.norm(p - d["array_center"]) >= 1.0
        np.testing.assert_allclose(np.linalg.norm(d["mic_pos"] - d["array_center"][:, None], axis=0), 0.05)


def test_mixer_determinism(synth_files):
    speech, noise = synth_files
    kw = dict(segment_seconds=0.5, num_items=4, seed=7)
    a, b = ArrayMixer(speech, noise, **kw), ArrayMixer(speech, noise, **kw)
    d0 = a.draw(1)
    np.testing.assert_array_equal(d0["noisy"], b.draw(1)["noisy"])
    np.testing.assert_array_equal(d0["clean"], a.draw(1)["clean"])
    assert not np.array_equal(d0["noisy"], a.draw(2)["noisy"])
    a.set_epoch(1)
    e1 = a.draw(1)
    assert not np.array_equal(d0["room_dim"], e1["room_dim"])
    b.set_epoch(1)
    np.testing.assert_array_equal(e1["noisy"], b.draw(1)["noisy"])
    other = ArrayMixer(speech, noise, **{**kw, "seed": 8}).draw(1)
    assert not np.array_equal(d0["source_pos"], other["source_pos"])
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_mixer_refusals(synth_files, tmp_path):
    speech, noise = synth_files
    assert ArrayMixer(speech, noise, n_mics=4).array.shape == (3, 4)  # default array follows n_mics
    with pytest.raises(ValueError, match="array"):
        ArrayMixer(speech, noise, n_mics=5, array=compact_array(3))
    with pytest.raises(ValueError, match="too small"):
        ArrayMixer(speech, noise, room_dim_m=((1.5, 1.5, 2.0), (2.0, 2.0, 2.5)))
    with pytest.raises(ValueError, match="unreachable"):
        ArrayMixer(speech, noise, rt60_s=(0.02, 0.5))
    with pytest.raises(ValueError, match="rt60_s"):
        ArrayMixer(speech, noise, rt60_s=(0.0, 0.5))
    with pytest.raises(ValueError, match="target"):
        ArrayMixer(speech, noise, target="wet")
    with pytest.raises(ValueError, match="noise_sources"):
        ArrayMixer(speech, noise, noise_sources=0)
    with pytest.raises(DataError, match="empty"):
        ArrayMixer([], noise)
    stereo = tmp_path / "stereo.wav"
    write_audio(stereo, np.zeros((2, 100)) + 0.1, SR)
    with pytest.raises(DataError, match="channels"):
        ArrayMixer(speech, [stereo])


# -- cached evaluation sets ----------------------------------------------------------------------


def test_cache_array_set_deterministic_and_idempotent(synth_files, tmp_path, monkeypatch):
    speech, noise = synth_files
    kw = dict(segment_seconds=0.5, num_items=3, seed=4, max_order=8)
    split = cache_array_set(ArrayMixer(speech, noise, **kw), tmp_path / "a", split_name="eval")
    assert split == tmp_path / "a" / "eval"
    with (split / "pairs.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"noisy", "clean", "speaker", "snr_db", "rt60_s"} <= set(rows[0])
    for row in rows:
        assert Path(row["noisy"]).name == Path(row["clean"]).name
        noisy = read_audio(split / row["noisy"], SR, allow_multichannel=True)
        clean = read_audio(split / row["clean"], SR)
        assert noisy.shape == (5, 8000) and clean.shape == (8000,)
        assert row["speaker"].startswith("spk")
    # the stored values are the draws (16-bit quantisation aside)
    d = ArrayMixer(speech, noise, **kw).draw(0)
    np.testing.assert_allclose(read_audio(split / rows[0]["noisy"], allow_multichannel=True), d["noisy"], atol=1e-4)
    assert abs(float(rows[0]["snr_db"]) - d["snr_db"]) < 1e-3

    # same settings elsewhere: identical bytes
    split_b = cache_array_set(ArrayMixer(speech, noise, **kw), tmp_path / "b", split_name="eval")
    for row in rows:
        for col in ("noisy", "clean"):
            assert (split / row[col]).read_bytes() == (split_b / row[col]).read_bytes()

    # complete: nothing is drawn or rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in split.rglob("*")}
    again = ArrayMixer(speech, noise, **kw)
    monkeypatch.setattr(again, "draw", lambda i: (_ for _ in ()).throw(AssertionError("redrawn")))
    cache_array_set(again, tmp_path / "a", split_name="eval")
    assert mtimes == {p: p.stat().st_mtime_ns for p in split.rglob("*")}

    # written atomically: no temporary folder is left next to the set
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["eval"]

    # a folder without pairs.csv (written by hand or by an older, non-atomic writer) is refused, not guessed at
    (split / "pairs.csv").unlink()
    (split / "noisy" / Path(rows[1]["noisy"]).name).unlink()
    with pytest.raises(DataError, match=r"cached array set '.*eval' is incomplete \(no pairs.csv\): delete the folder"):
        cache_array_set(ArrayMixer(speech, noise, **kw), tmp_path / "a", split_name="eval")
    shutil.rmtree(split)  # as the message says: then it is written again, to the same content
    cache_array_set(ArrayMixer(speech, noise, **kw), tmp_path / "a", split_name="eval")
    assert (split / rows[1]["noisy"]).read_bytes() == (split_b / rows[1]["noisy"]).read_bytes()

    # a function that builds the mixer is called only when the set must be written
    built = []

    def make():
        built.append(1)
        return ArrayMixer(speech, noise, **kw)

    assert cache_array_set(make, tmp_path / "a", split_name="eval") == split and not built
    assert cache_array_set(make, tmp_path / "d", split_name="eval") == tmp_path / "d" / "eval" and built == [1]
    assert (tmp_path / "d" / "eval" / rows[2]["noisy"]).read_bytes() == (split_b / rows[2]["noisy"]).read_bytes()

    # other settings in the same folder are refused
    with pytest.raises(DataError, match="other settings"):
        cache_array_set(ArrayMixer(speech, noise, **{**kw, "seed": 5}), tmp_path / "a", split_name="eval")
    with pytest.raises(ValueError, match="n_items"):
        cache_array_set(ArrayMixer(speech, noise, **kw), tmp_path / "c", n_items=4)

    # PairedCorpus lists the pairs from pairs.csv (header checks need multi-channel support there)
    corpus = PairedCorpus(split, layout="csv", check=False)
    assert len(corpus) == 3 and corpus.speakers() == sorted({r["speaker"] for r in rows})


# -- L3DAS23 -------------------------------------------------------------------------------------


def _write_l3das_split(base: Path, split: str, ids: list[str], n: int = 1600, with_b: bool = True) -> dict:
    """Write a tiny L3DAS23 Task 1 split; returns the written arrays per id."""
    rng = np.random.default_rng(0)
    out = {}
    for id_ in ids:
        a = (0.1 * rng.standard_normal((4, n))).astype(np.float32)
        b = (0.1 * rng.standard_normal((4, n))).astype(np.float32)
        clean = (0.1 * rng.standard_normal(n)).astype(np.float32)
        write_audio(base / f"L3DAS23_Task1_{split}" / "data" / f"{id_}_A.wav", a, SR)
        if with_b:
            write_audio(base / f"L3DAS23_Task1_{split}" / "data" / f"{id_}_B.wav", b, SR)
        write_audio(base / f"L3DAS23_Task1_{split}" / "labels" / f"{id_}.wav", clean, SR)
        (base / f"L3DAS23_Task1_{split}" / "labels" / f"{id_}.txt").write_text(f"TEXT OF {id_}\n")
        out[id_] = (a, b, clean)
    return out


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(folder)))
    return archive


def test_l3das23_loader_on_built_archive(tmp_path):
    src = tmp_path / "src"
    written = _write_l3das_split(src, "dev", ["1089-134686-0000", "121-121726-0001"])
    archive = _zip_folder(src, tmp_path / "L3DAS23_Task1_dev.zip")
    root = extract_archive(archive, tmp_path / "data")
    corpus = L3DAS23Corpus(root, "dev")
    assert len(corpus) == 2 and corpus.ids == sorted(written) and corpus.channels == 4
    noisy, clean = corpus[0]
    a, b, ref = written[corpus.ids[0]]
    assert noisy.shape == (4, 1600) and clean.shape == (1600,) and noisy.dtype == torch.float32
    np.testing.assert_allclose(noisy.numpy(), a, atol=1e-4)
    np.testing.assert_allclose(clean.numpy(), ref, atol=1e-4)
    assert corpus.transcript(0) == f"TEXT OF {corpus.ids[0]}"

    both = L3DAS23Corpus(root, "dev", mics=("A", "B"))
    noisy8, _ = both.load(1)
    a, b, _ = written[both.ids[1]]
    assert noisy8.shape == (8, 1600)
    np.testing.assert_allclose(noisy8, np.concatenate([a, b]), atol=1e-4)

    # Kaggle archives unpack one level deeper and name the training parts train_100 / train_360_part*
    kaggle_src = tmp_path / "kaggle"
    _write_l3das_split(kaggle_src, "train_100", ["19-198-0000"], with_b=False)
    tgz = tmp_path / "L3DAS23_Task1_train_100.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(kaggle_src / "L3DAS23_Task1_train_100", arcname="L3DAS23_Task1_train_100/L3DAS23_Task1_train_100")
    root2 = extract_archive(tgz, tmp_path / "kaggle_out")
    assert len(L3DAS23Corpus(root2, "train100")) == 1


def test_l3das23_speakers_subset_and_kept_channels(tmp_path):
    ids = ["1089-134686-0000", "1089-134686-0001", "1089-134686-0002", "121-121726-0000"]
    written = _write_l3das_split(tmp_path, "dev", ids)
    corpus = L3DAS23Corpus(tmp_path, "dev")
    assert corpus.speakers() == ["1089", "121"] and corpus.speaker(3) == "121" and corpus.pesq_mode_hint == "wb"
    sub = corpus.subset(["1089"], max_utterances=2)  # first and last of the speaker's scenes
    assert sub.ids == ["1089-134686-0000", "1089-134686-0002"] and len(corpus) == 4
    np.testing.assert_allclose(sub.load(1)[1], written[ids[2]][2], atol=1e-4)
    with pytest.raises(DataError, match=r"no speaker\(s\) \['999'\]"):
        corpus.subset(["999"])
    with pytest.raises(ValueError, match="max_utterances"):
        corpus.subset(max_utterances=0)

    picked = L3DAS23Corpus(tmp_path, "dev", mics=("A", "B"), keep_channels=[5, 0])
    noisy, _ = picked.load(0)
    a, b, _ = written[ids[0]]
    assert picked.channels == 2 and noisy.shape == (2, 1600)
    np.testing.assert_allclose(noisy, np.stack([b[1], a[0]]), atol=1e-4)
    mono = L3DAS23Corpus(tmp_path, "dev", keep_channels=[0])
    x, _ = mono[0]
    assert mono.channels == 1 and tuple(x.shape) == (1600,)
    for bad in ([], [4], [1, 1]):
        with pytest.raises(ValueError, match="keep_channels"):
            L3DAS23Corpus(tmp_path, "dev", keep_channels=bad)


def test_l3das23_refusals(tmp_path):
    base = tmp_path / "d"
    _write_l3das_split(base, "dev", ["a-0", "b-1"], with_b=False)
    split = base / "L3DAS23_Task1_dev"
    with pytest.raises(DataError, match=r"data/a-0_B\.wav"):
        L3DAS23Corpus(base, "dev", mics=("A", "B"))
    with pytest.raises(DataError, match="no L3DAS23"):
        L3DAS23Corpus(base, "train360")
    with pytest.raises(ValueError, match="mics"):
        L3DAS23Corpus(base, "dev", mics=("C",))

    (split / "labels" / "b-1.wav").unlink()
    with pytest.raises(DataError, match=r"labels/b-1\.wav"):
        L3DAS23Corpus(base, "dev")
    write_audio(split / "labels" / "b-1.wav", np.zeros((2, 1600)), SR)  # stereo label
    with pytest.raises(DataError, match="channels"):
        L3DAS23Corpus(base, "dev")
    write_audio(split / "labels" / "b-1.wav", np.zeros(1599), SR)  # one sample short
    with pytest.raises(DataError, match="equal length"):
        L3DAS23Corpus(base, "dev")
    write_audio(split / "labels" / "b-1.wav", np.zeros(1600), SR)
    write_audio(split / "data" / "b-1_A.wav", np.zeros((2, 1600)), SR)  # 2 channels instead of 4
    with pytest.raises(DataError, match="4"):
        L3DAS23Corpus(base, "dev")
    corpus = L3DAS23Corpus(base, "dev", check=False)  # the same checks happen on load
    with pytest.raises(DataError, match="channels"):
        corpus.load(1)
    write_audio(split / "data" / "b-1_A.wav", np.zeros((4, 1600)), 8000)
    with pytest.raises(DataError, match="8000 Hz"):
        L3DAS23Corpus(base, "dev")


def test_extract_archive_refuses_unsafe_members(tmp_path):
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "bad")
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="outside"):
        extract_archive(evil_zip, dest)
    assert not (tmp_path / "escaped.txt").exists() and not (dest / "ok.txt").exists()

    abs_zip = tmp_path / "abs.zip"
    with zipfile.ZipFile(abs_zip, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/etc/evil.txt"), "bad")
    with pytest.raises(DataError, match="absolute|outside"):
        extract_archive(abs_zip, dest)

    link_tar = tmp_path / "link.tar.gz"
    with tarfile.open(link_tar, "w:gz") as tf:
        info = tarfile.TarInfo("data/link.wav")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link"):
        extract_archive(link_tar, dest)

    dotdot_tar = tmp_path / "dotdot.tar"
    with tarfile.open(dotdot_tar, "w") as tf:
        payload = b"bad"
        info = tarfile.TarInfo("a/../../escaped2.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="outside"):
        extract_archive(dotdot_tar, dest)
    assert not (tmp_path / "escaped2.txt").exists()

    with pytest.raises(DataError, match="not a .zip or tar"):
        (tmp_path / "x.rar").write_bytes(b"Rar!")
        extract_archive(tmp_path / "x.rar", dest)
    with pytest.raises(DataError, match="cannot be extracted"):
        (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
        extract_archive(tmp_path / "broken.zip", dest)
    with pytest.raises(DataError, match="does not exist"):
        extract_archive(tmp_path / "missing.zip", dest)
