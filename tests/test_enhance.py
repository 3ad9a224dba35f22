"""enhance_file / enhance_path: the library behind ``kdlib enhance`` for mono and multi-channel
checkpoints, single files and folders, and the one-line refusals of input that breaks a model's contract."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from kdlib.data import read_audio
from kdlib.errors import DataError
from kdlib.evaluation import enhance, enhance_file, enhance_path
from kdlib.models import build_model, load_model, save_checkpoint

SR = 16000
MONO_ARGS = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}
ARRAY_ARGS = {"n_channels": 3, "n_lstm_hidden1": 8, "n_lstm_hidden2": 4}
#: one PCM-16 step: outputs are compared with enhance() after the 16-bit round trip
PCM_STEP = 1 / 32768


@pytest.fixture(scope="module")
def mono_model(tmp_path_factory):
    """A tiny DPDCRN reloaded from its checkpoint, as ``kdlib enhance`` gets it."""
    path = save_checkpoint(build_model("dpcrn_lite", MONO_ARGS), tmp_path_factory.mktemp("ckpt") / "mono.pt")
    return load_model(path)[0]


@pytest.fixture(scope="module")
def array_model(tmp_path_factory):
    """A tiny 3-microphone FT-JNF reloaded from its checkpoint."""
    path = save_checkpoint(build_model("ftjnf", ARRAY_ARGS), tmp_path_factory.mktemp("ckpt") / "array.pt")
    return load_model(path)[0]


def _write(path, seconds=0.3, channels=1, sr=SR, seed=0, subtype="PCM_16"):
    """A noisy synthetic test file: a 440 Hz tone plus noise, ``channels`` slightly different mics."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)
    data = np.stack([tone + 0.05 * rng.standard_normal(n) for _ in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data if channels > 1 else data[:, 0], sr, subtype=subtype)
    return path


def _check_output(out, length, expected=None):
    data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    assert sr == SR and data.shape == (length, 1)
    assert np.all(np.isfinite(data))
    if expected is not None:
        assert np.max(np.abs(data[:, 0] - np.clip(expected, -1, 1))) <= PCM_STEP


# ---- files ----------------------------------------------------------------------------------------
def test_mono_real_speech_is_enhanced_to_the_same_length_and_rate(mono_model, data_root, tmp_path):
    src = data_root / "noizeus" / "noisy" / "sp01_airport_sn5.wav"
    noisy = read_audio(src, SR)
    out = tmp_path / "enhanced.wav"
    seconds = enhance_file(mono_model, src, out)
    assert seconds == pytest.approx(len(noisy) / SR)
    _check_output(out, len(noisy), enhance(mono_model, noisy))


def test_multichannel_model_writes_a_mono_output_of_the_input_length(array_model, tmp_path):
    src = _write(tmp_path / "array.wav", seconds=0.5, channels=3)
    out = tmp_path / "out" / "enhanced.wav"  # parent folder created
    assert enhance_file(array_model, src, out) == pytest.approx(0.5)
    noisy = read_audio(src, SR, allow_multichannel=True)
    assert noisy.shape == (3, 8000)
    _check_output(out, 8000, enhance(array_model, noisy))


def test_multichannel_model_refuses_a_mono_file(array_model, tmp_path):
    src = _write(tmp_path / "mono.wav")
    with pytest.raises(DataError, match=r"model 'ftjnf' expects 3-channel input .*'.*mono\.wav' has 1 channel") as e:
        enhance_file(array_model, src, tmp_path / "out.wav")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.wav").exists()


def test_multichannel_model_refuses_another_channel_count(array_model, tmp_path):
    src = _write(tmp_path / "five.wav", channels=5)
    with pytest.raises(DataError, match=r"expects 3-channel input .*'.*five\.wav' has 5 channels"):
        enhance_file(array_model, src, tmp_path / "out.wav")


def test_mono_model_refuses_a_stereo_file(mono_model, tmp_path):
    src = _write(tmp_path / "stereo.wav", channels=2)
    with pytest.raises(DataError, match=r"model 'dpcrn_lite' expects mono \(1-channel\) input, '.*stereo\.wav' has "
                                        r"2 channels: downmix"):
        enhance_file(mono_model, src, tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists()


def test_a_file_with_no_samples_is_refused_by_name(mono_model, array_model, tmp_path):
    src = tmp_path / "empty.wav"
    sf.write(str(src), np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    for model in (mono_model, array_model):  # the empty file is the problem, whatever the model
        with pytest.raises(DataError, match=r"audio file '.*empty\.wav' has 0 samples") as e:
            enhance_file(model, src, tmp_path / "out.wav")
        assert "\n" not in str(e.value)


def test_a_wrong_sample_rate_is_refused(mono_model, tmp_path):
    src = _write(tmp_path / "narrow.wav", sr=8000)
    with pytest.raises(DataError, match=r"'.*narrow\.wav' has sample rate 8000 Hz but 16000 Hz is expected"):
        enhance_file(mono_model, src, tmp_path / "out.wav")


def test_nan_or_inf_samples_are_refused(mono_model, tmp_path):
    src = tmp_path / "nan.wav"
    wav = np.zeros(4000, dtype=np.float32)
    wav[[10, 20]] = [np.nan, np.inf]
    sf.write(str(src), wav, SR, subtype="FLOAT")  # only a float file can hold NaN
    with pytest.raises(DataError, match=r"audio file '.*nan\.wav' has 2 NaN or inf sample"):
        enhance_file(mono_model, src, tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists()


def test_path_single_file_into_an_existing_folder_and_not_onto_itself(mono_model, tmp_path):
    src = _write(tmp_path / "in" / "clip.flac")
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    assert enhance_path(mono_model, src, outdir) == [(src, outdir / "clip.wav")]
    _check_output(outdir / "clip.wav", int(0.3 * SR))
    wav = _write(tmp_path / "in" / "self.wav")
    with pytest.raises(DataError, match="is the input file itself"):
        enhance_path(mono_model, wav, tmp_path / "in")  # would write in/self.wav over itself


def test_path_refuses_a_missing_input(mono_model, tmp_path):
    with pytest.raises(DataError, match=r"input '.*nowhere' does not exist"):
        enhance_path(mono_model, tmp_path / "nowhere", tmp_path / "out")


# ---- folders --------------------------------------------------------------------------------------
def test_folder_keeps_the_relative_layout(mono_model, tmp_path):
    src = tmp_path / "noisy"
    lengths = {"a.wav": 0.3, "b.flac": 0.2, "sub/c.wav": 0.25, "sub/deeper/d.WAV": 0.1}
    for i, (rel, seconds) in enumerate(lengths.items()):
        _write(src / rel, seconds=seconds, seed=i)
    (src / "notes.txt").write_text("not audio")
    dst = tmp_path / "enhanced"
    done = enhance_path(mono_model, src, dst, progress=False)
    expected = {"a.wav", "b.wav", "sub/c.wav", "sub/deeper/d.wav"}
    assert len(done) == 4
    assert {o.relative_to(dst).as_posix() for _, o in done} == expected
    assert {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()} == expected
    for (i, o), seconds in zip(sorted(done), [lengths[k] for k in sorted(lengths)], strict=True):
        _check_output(o, int(seconds * SR), enhance(mono_model, read_audio(i, SR)))


def test_progress_bar_counts_files_and_audio_seconds(mono_model, tmp_path, capsys):
    src = tmp_path / "noisy"
    _write(src / "a.wav", seconds=0.5)
    _write(src / "b.wav", seconds=0.7)
    enhance_path(mono_model, src, tmp_path / "out")
    err = capsys.readouterr().err
    assert "2/2" in err and "1.2 s audio" in err
    enhance_path(mono_model, src, tmp_path / "out2", progress=False)
    assert capsys.readouterr().err == ""


def test_multichannel_folder(array_model, tmp_path):
    src = tmp_path / "mics"
    _write(src / "x.wav", channels=3)
    _write(src / "room" / "y.wav", seconds=0.4, channels=3)
    done = enhance_path(array_model, src, tmp_path / "out", progress=False)
    assert [o.relative_to(tmp_path / "out").as_posix() for _, o in done] == ["room/y.wav", "x.wav"]
    _check_output(tmp_path / "out" / "room" / "y.wav", int(0.4 * SR))


def test_folder_without_audio_is_refused(mono_model, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"input folder '.*empty' holds no audio files"):
        enhance_path(mono_model, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_or_equal_to_the_input_is_refused(mono_model, tmp_path):
    src = tmp_path / "noisy"
    _write(src / "a.wav")
    for dst in (src / "enhanced", src, src / "sub" / ".." / "x"):
        with pytest.raises(DataError, match="is inside input folder"):
            enhance_path(mono_model, src, dst)
    assert [p.name for p in src.rglob("*")] == ["a.wav"]


def test_folder_into_an_existing_file_is_refused(mono_model, tmp_path):
    _write(tmp_path / "noisy" / "a.wav")
    target = _write(tmp_path / "taken.wav")
    with pytest.raises(DataError, match=r"output '.*taken\.wav' is an existing file"):
        enhance_path(mono_model, tmp_path / "noisy", target)


def test_two_inputs_with_one_output_name_are_refused_before_any_work(mono_model, tmp_path):
    _write(tmp_path / "noisy" / "a.wav")
    _write(tmp_path / "noisy" / "a.flac")
    with pytest.raises(DataError, match=r"would both be written to '.*a\.wav'"):
        enhance_path(mono_model, tmp_path / "noisy", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bad_file_stops_the_folder_and_keeps_earlier_outputs(mono_model, tmp_path):
    src = tmp_path / "noisy"
    _write(src / "a.wav")
    _write(src / "b.wav", channels=2)
    _write(src / "c.wav")
    with pytest.raises(DataError, match=r"'.*b\.wav' has 2 channels") as e:
        enhance_path(mono_model, src, tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav"]


# ---- the command line ---------------------------------------------------------------------------------------
def test_cli_enhances_a_folder_with_a_multichannel_checkpoint(tmp_path, capsys):
    from kdlib.cli import main

    ckpt = save_checkpoint(build_model("ftjnf", ARRAY_ARGS), tmp_path / "array.pt")
    for i in range(3):
        _write(tmp_path / "in" / f"sub{i % 2}" / f"u{i}.wav", channels=3, seed=i)
    assert main(["enhance", str(ckpt), str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"]) == 0
    assert "wrote 3 file(s)" in capsys.readouterr().out
    for i in range(3):
        _check_output(tmp_path / "out" / f"sub{i % 2}" / f"u{i}.wav", int(0.3 * SR))


@pytest.mark.parametrize("channels,content,needle", [
    (1, "tone", "model 'ftjnf' expects 3-channel input (one channel per microphone of its array), "),
    (3, "empty", "has 0 samples: nothing to enhance"),
])
def test_cli_refuses_input_that_does_not_fit_in_one_line(tmp_path, capsys, channels, content, needle):
    from kdlib.cli import main

    ckpt = save_checkpoint(build_model("ftjnf", ARRAY_ARGS), tmp_path / "array.pt")
    src = tmp_path / "in.wav"
    if content == "empty":
        sf.write(str(src), np.zeros((0, channels), dtype=np.float32), SR)
    else:
        _write(src, channels=channels)
    capsys.readouterr()
    assert main(["enhance", str(ckpt), str(src), str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlib: error: ") and "\n" not in err and needle in err and f"'{src}'" in err, err
    assert not (tmp_path / "out.wav").exists()
