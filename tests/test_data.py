"""Tests of kdlib.data: data root, audio I/O, paired corpora, speech/noise listing, splits, mixing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.data import (
    Pair,
    PairedCorpus,
    SpeechNoiseMixer,
    audio_info,
    list_noise,
    list_speech,
    mix_at_snr,
    read_audio,
    resolve_data_root,
    speaker_matches,
    split_by_speaker,
    write_audio,
)
from kdlib.errors import DataError

SR = 16000

def _tone(n: int, freq: float = 440.0, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def _snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    c = clean.astype(np.float64)
    e = noisy.astype(np.float64) - c
    return float(10 * np.log10(np.dot(c, c) / np.dot(e, e)))


# -- data root -------------------------------------------------------------------------------------


def test_resolve_data_root_precedence(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    default = tmp_path / "shared" / "data"
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    for d in (repo, default, env_dir, arg_dir):
        d.mkdir(parents=True)
    monkeypatch.chdir(repo)
    monkeypatch.delenv("KDLIB_DATA", raising=False)
    assert resolve_data_root() == default.resolve()
    monkeypatch.setenv("KDLIB_DATA", str(env_dir))
    assert resolve_data_root() == env_dir.resolve()
    assert resolve_data_root(arg_dir) == arg_dir.resolve()
    assert resolve_data_root(str(arg_dir)) == arg_dir.resolve()


# -- audio I/O -------------------------------------------------------------------------------------


def test_write_read_roundtrip_clips_and_accepts_tensors(tmp_path):
    wav = _tone(1600)
    wav[10] = 3.0  # out of range: clipped on write
    path = tmp_path / "sub" / "dir" / "a.wav"
    write_audio(path, torch.from_numpy(wav), SR)
    back = read_audio(path, SR)
    assert back.dtype == np.float32 and back.shape == (1600,)
    assert back[10] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(np.delete(back, 10), np.delete(wav, 10), atol=1 / 32768 + 1e-6)
    assert audio_info(path) == (SR, 1600, 1)
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.full(10, np.nan), SR)


def test_read_audio_rate_and_channel_checks(tmp_path):
    write_audio(tmp_path / "nb.wav", _tone(800, sr=8000), 8000)
    with pytest.raises(DataError, match=r"nb\.wav.*8000.*16000"):
        read_audio(tmp_path / "nb.wav", SR)
    assert read_audio(tmp_path / "nb.wav").shape == (800,)

    stereo = np.stack([_tone(400), _tone(400, 880.0)])
    write_audio(tmp_path / "st.wav", stereo, SR)
    with pytest.raises(DataError, match="mono"):
        read_audio(tmp_path / "st.wav")
    both = read_audio(tmp_path / "st.wav", allow_multichannel=True)
    assert both.shape == (2, 400)
    with pytest.raises(DataError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_text("not audio")
    with pytest.raises(DataError, match="junk.wav"):
        audio_info(tmp_path / "junk.wav")


# -- paired corpora on the shared data -------------------------------------------------------------


def test_vb_demand_csv(data_root):
    corpus = PairedCorpus(data_root / "vb_demand")
    assert corpus.layout == "csv"
    assert len(corpus) == 51
    assert corpus.speakers() == ["p232", "p257"]
    assert corpus.pesq_mode_hint == "wb"
    assert [p.noisy for p in corpus.pairs] == sorted(p.noisy for p in corpus.pairs)
    first = corpus[0]
    assert isinstance(first, Pair) and first.noisy.name == first.clean.name
    assert first.noisy.parent.name == "noisy" and first.clean.parent.name == "clean"
    noisy, clean = corpus.load(0)
    assert noisy.dtype == clean.dtype == np.float32
    assert noisy.ndim == 1 and noisy.shape == clean.shape
    # noisy really is noisier than clean: the pair is not swapped
    assert 0 < _snr_db(noisy, clean) < 30


def test_vb_demand_forced_layout_matches_csv(data_root):
    from_csv = PairedCorpus(data_root / "vb_demand", layout="csv")
    from_dirs = PairedCorpus(data_root / "vb_demand", layout="vb_demand")
    assert from_dirs.layout == "vb_demand"
    assert from_dirs.pairs == from_csv.pairs


def test_noizeus_layout_ignores_csv(data_root):
    corpus = PairedCorpus(data_root / "noizeus", layout="noizeus")
    assert corpus.layout == "noizeus"
    assert len(corpus) == 800
    assert corpus.pesq_mode_hint == "nb"
    for p in corpus.pairs:
        assert p.clean.name == p.noisy.name.split("_", 1)[0] + ".wav"
        assert p.clean.parent.name == "clean"
        n = int(p.clean.stem[2:])
        assert p.speaker == f"noizeus_spk{(n - 1) // 5 + 1}"
    by_utt = {p.utt_id: p for p in corpus.pairs}
    assert by_utt["sp06_babble_sn5"].speaker == "noizeus_spk2"
    assert by_utt["sp25_train_sn15"].speaker == "noizeus_spk5"
    assert corpus.speakers() == [f"noizeus_spk{k}" for k in range(1, 6)]
    # the csv manifest (orig_sr 8000 everywhere) agrees and is also flagged narrowband
    from_csv = PairedCorpus(data_root / "noizeus", check=False)
    assert from_csv.layout == "csv" and from_csv.pesq_mode_hint == "nb"
    assert from_csv.pairs == corpus.pairs


def test_subset_speakers_and_even_spread(data_root):
    corpus = PairedCorpus(data_root / "noizeus", layout="noizeus", check=False)
    sub = corpus.subset(speakers=["noizeus_spk3"])
    assert len(sub) == 160 and sub.speakers() == ["noizeus_spk3"]
    assert sub.pesq_mode_hint == "nb" and sub.path == corpus.path
    spread = corpus.subset(max_utterances=5)
    assert len(spread) == 5
    assert spread[0] == corpus[0] and spread[4] == corpus[len(corpus) - 1]
    assert len(spread.speakers()) == 5  # spread over the sorted list, not the first five
    assert spread.pairs == corpus.subset(max_utterances=5).pairs
    idx = [corpus.pairs.index(p) for p in spread.pairs]
    assert idx == sorted(idx)
    assert len(corpus.subset(max_utterances=10_000)) == 800
    with pytest.raises(DataError, match="p232"):
        corpus.subset(speakers=["p232"])
    with pytest.raises(ValueError, match="max_utterances"):
        corpus.subset(max_utterances=0)


# -- paired corpora built in tmp_path ---------------------------------------------------------------


def _make_vb(root: Path, names: list[str], n: int = 800) -> Path:
    for name in names:
        write_audio(root / "clean" / f"{name}.wav", _tone(n), SR)
        write_audio(root / "noisy" / f"{name}.wav", _tone(n) + _tone(n, 1234.0, 0.05), SR)
    return root


def test_tmp_corpus_ok_and_auto_layouts(tmp_path):
    vb = PairedCorpus(_make_vb(tmp_path / "vb", ["p1_001", "p1_002", "p2_001"]))
    assert vb.layout == "vb_demand" and vb.speakers() == ["p1", "p2"]
    assert [p.utt_id for p in vb] == ["p1_001", "p1_002", "p2_001"]
    assert vb.pesq_mode_hint == "wb"

    nz = tmp_path / "nz"
    write_audio(nz / "clean" / "sp07.wav", _tone(500), SR)
    write_audio(nz / "noisy" / "sp07_car_sn-5.wav", _tone(500), SR)
    write_audio(nz / "noisy" / "sp07_car_sn10.wav", _tone(500), SR)
    corpus = PairedCorpus(nz)
    assert corpus.layout == "noizeus" and len(corpus) == 2
    assert corpus.speakers() == ["noizeus_spk2"] and corpus.pesq_mode_hint == "nb"


def test_csv_layout_errors_and_nb_hint(tmp_path):
    root = _make_vb(tmp_path / "c", ["p1_001", "p1_002"])
    (root / "pairs.csv").write_text("noisy,clean,orig_sr\nnoisy/p1_001.wav,clean/p1_001.wav,8000\n")
    corpus = PairedCorpus(root)
    assert corpus.layout == "csv" and len(corpus) == 1  # the csv, not the folder, defines the pairs
    assert corpus.speakers() == ["p1"] and corpus.pesq_mode_hint == "nb"
    (root / "pairs.csv").write_text("noisy,clean\nnoisy/p1_001.wav,clean/p1_009.wav\n")
    with pytest.raises(DataError, match="p1_009.wav.*does not exist"):
        PairedCorpus(root)
    (root / "pairs.csv").write_text("noisy_path,clean_path\nnoisy/p1_001.wav,clean/p1_001.wav\n")
    with pytest.raises(DataError, match="pairs.csv.*'noisy' and 'clean'"):
        PairedCorpus(root)


def test_empty_missing_and_unknown_layout(tmp_path):
    (tmp_path / "e" / "noisy").mkdir(parents=True)
    (tmp_path / "e" / "clean").mkdir()
    with pytest.raises(DataError, match="no pairs"):
        PairedCorpus(tmp_path / "e")
    with pytest.raises(DataError, match="does not exist"):
        PairedCorpus(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown corpus layout 'dns'"):
        PairedCorpus(tmp_path / "e", layout="dns")


# -- unpaired speech / noise and splits -------------------------------------------------------------


def test_list_speech_and_noise(data_root, tmp_path):
    speech = list_speech(data_root)
    assert len(speech) >= 100 and list(speech) == sorted(speech)
    assert "vctk_p232" in speech and "librispeech_27" in speech
    for files in speech.values():
        assert files == sorted(files) and all(f.suffix in (".wav", ".flac") for f in files)
    noise = list_noise(data_root)
    assert len(noise) == 104 and noise == sorted(noise)
    with pytest.raises(DataError, match="speech"):
        list_speech(tmp_path)
    (tmp_path / "noise").mkdir()
    with pytest.raises(DataError, match="no"):
        list_noise(tmp_path)


def test_speaker_matches():
    assert speaker_matches("vctk_p232", "p232")
    assert speaker_matches("p232", "vctk_p232")
    assert speaker_matches("p232", "p232")
    assert not speaker_matches("p2321", "p232")
    assert not speaker_matches("vctk_p2321", "p232")
    assert not speaker_matches("xp232", "p232")  # only a "_" prefix marks a corpus


def test_split_by_speaker_real_folders(data_root):
    speech = list_speech(data_root)
    train, valid, test = split_by_speaker(speech, 0.1, 0.1, seed=3)
    sets = [set(train), set(valid), set(test)]
    assert all(sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(speech)
    assert len(valid) == len(test) == round(0.1 * len(speech))
    assert all(train[s] == speech[s] for s in train)
    assert split_by_speaker(speech, 0.1, 0.1, seed=3) == (train, valid, test)
    assert split_by_speaker(speech, 0.1, 0.1, seed=4)[1] != valid
    tr, va, te = split_by_speaker({"a": [1], "b": [2], "c": [3]}, 0.05, 0.05, seed=0)
    assert len(tr) == len(va) == len(te) == 1  # tiny fractions still get one speaker each
    tr, va, te = split_by_speaker(speech, 0.0, 0.0, seed=0)
    assert tr == speech and va == te == {}


def test_split_one_speaker_warns_and_splits_by_utterance():
    items = {"solo": [f"u{k:02d}" for k in range(20)]}
    with pytest.warns(UserWarning, match="one speaker"):
        train, valid, test = split_by_speaker(items, 0.2, 0.1, seed=0)
    assert len(train["solo"]) == 14 and len(valid["solo"]) == 4 and len(test["solo"]) == 2
    utts = train["solo"] + valid["solo"] + test["solo"]
    assert sorted(utts) == items["solo"] and len(set(utts)) == 20
    with pytest.raises(ValueError, match="valid_fraction"):
        split_by_speaker(items, 1.5, 0.0, seed=0)


def test_split_two_speakers_warns_and_keeps_train():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, valid, test = split_by_speaker({"a": [1], "b": [2]}, 0.3, 0.3, seed=0)
    assert len(train) == 1 and len(valid) == 1 and test == {}
    assert any("valid gets 1 and test 0" in str(w.message) for w in caught)


# -- mixing ----------------------------------------------------------------------------------------


def test_mix_at_snr_exact_and_silent_clean():
    rng = np.random.default_rng(0)
    clean, noise = rng.standard_normal(4000), rng.standard_normal(4000) * 3.0
    for snr in (-7.5, 0.0, 12.3):
        noisy, scaled = mix_at_snr(clean, noise, snr)
        np.testing.assert_allclose(noisy - clean, scaled, atol=1e-12)
        assert 10 * np.log10(np.sum(clean**2) / np.sum(scaled**2)) == pytest.approx(snr, abs=1e-9)
    n32, _ = mix_at_snr(clean.astype(np.float32), noise.astype(np.float32), 5.0)
    assert n32.dtype == np.float32
    with pytest.raises(DataError, match="silent"):
        mix_at_snr(np.zeros(100), noise[:100], 0.0)
    with pytest.raises(ValueError, match="shape"):
        mix_at_snr(clean, noise[:10], 0.0)


@pytest.fixture(scope="module")
def real_mixer_files(data_root):
    speech = list_speech(data_root)
    files = [f for spk in ("vctk_p225", "vcc2016_sm1", "cmu_arctic_aew") for f in speech[spk][:4]]
    files += speech["librispeech_27"]
    return files, list_noise(data_root)[::8]


def test_mixer_measured_snr_matches_draw(real_mixer_files):
    speech, noise = real_mixer_files
    mixer = SpeechNoiseMixer(speech, noise, segment_seconds=1.0, snr_db=(-5.0, 15.0), num_segments=50, seed=1)
    assert len(mixer) == 50
    snrs = []
    for i in range(len(mixer)):
        d = mixer.draw(i)
        assert d["noisy"].shape == d["clean"].shape == (SR,)
        assert d["noisy"].dtype == d["clean"].dtype == np.float32
        assert -5.0 <= d["snr_db"] <= 15.0
        assert abs(_snr_db(d["noisy"], d["clean"]) - d["snr_db"]) < 0.1
        assert np.max(np.abs(d["noisy"])) <= 0.99 + 1e-6
        assert d["speech_file"] in speech and d["noise_file"] in noise
        snrs.append(d["snr_db"])
    assert np.ptp(snrs) > 10  # draws cover the range, not one value
    assert len({d for d in (mixer.draw(i)["speech_file"] for i in range(50))}) > 3


def test_mixer_deterministic_per_seed_epoch_index(real_mixer_files):
    speech, noise = real_mixer_files
    kw = dict(segment_seconds=0.5, num_segments=8, seed=7)
    a, b = SpeechNoiseMixer(speech, noise, **kw), SpeechNoiseMixer(speech, noise, **kw)
    noisy, clean = a[3]
    assert isinstance(noisy, torch.Tensor) and noisy.dtype == torch.float32
    assert noisy.shape == clean.shape == (8000,)
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][1], b[3][1])
    assert torch.equal(a[3][0], a[3][0])  # repeated access is stable
    assert not torch.equal(a[3][0], a[4][0])
    a.set_epoch(1)
    assert not torch.equal(a[3][0], b[3][0])
    b.set_epoch(1)
    assert torch.equal(a[3][0], b[3][0])
    c = SpeechNoiseMixer(speech, noise, segment_seconds=0.5, num_segments=8, seed=8)
    assert not torch.equal(c[3][0], b[3][0])
    with pytest.raises(IndexError):
        a[8]


def test_mixer_short_files_silence_and_validation(tmp_path):
    # speech shorter than the segment (zero-padded), a file that is mostly silent, short noise (looped)
    write_audio(tmp_path / "short.wav", _tone(3000), SR)
    gap = np.zeros(5 * SR, dtype=np.float32)
    gap[-2000:] = _tone(2000, 300.0)
    write_audio(tmp_path / "gap.wav", gap, SR)
    write_audio(tmp_path / "n.wav", _tone(700, 2500.0, 0.5), SR)
    speech, noise = [tmp_path / "short.wav", tmp_path / "gap.wav"], [tmp_path / "n.wav"]
    mixer = SpeechNoiseMixer(speech, noise, segment_seconds=0.5, snr_db=3.0, num_segments=30, seed=0)
    for i in range(30):
        d = mixer.draw(i)
        assert d["clean"].shape == (8000,) and np.any(d["clean"])
        assert _snr_db(d["noisy"], d["clean"]) == pytest.approx(3.0, abs=0.01)
        noise_part = d["noisy"] - d["clean"]
        assert np.count_nonzero(np.abs(noise_part) > 1e-3) > 7000  # the short noise was looped

    write_audio(tmp_path / "silent.wav", np.zeros(800), SR)
    with pytest.raises(DataError, match="silent.wav"):
        SpeechNoiseMixer([tmp_path / "silent.wav"], noise)
    write_audio(tmp_path / "nb.wav", _tone(800, sr=8000), 8000)
    with pytest.raises(DataError, match="nb.wav"):
        SpeechNoiseMixer(speech, [tmp_path / "nb.wav"])
    with pytest.raises(DataError, match="speech_files"):
        SpeechNoiseMixer([], noise)
    with pytest.raises(DataError, match="noise_files"):
        SpeechNoiseMixer(speech, [])
    for bad, name in (
        (dict(segment_seconds=0.0), "segment_seconds"),
        (dict(snr_db=(10.0, 0.0)), "snr_db"),
        (dict(num_segments=0), "num_segments"),
    ):
        with pytest.raises(ValueError, match=name):
            SpeechNoiseMixer(speech, noise, **bad)
