"""FT-JNF model family (arXiv 2206.13310; official sp-uhh/deep-non-linear-filter FTJNF): shapes, taps,
the methods.md §4.3 parameter table, size builder, checkpoints, every KD method, the reference mic,
the official cIRM decompression, MACs and arg validation."""

from __future__ import annotations

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.models import build_model, count_params, load_model, macs_per_second, save_checkpoint, size_student
from kdlib.models.ftjnf import decompress_cirm

#: the small teacher of these tests: M = 5 mics, 64/32 hidden → 80,514 params (methods.md §4.3 row)
TEACHER = {"n_channels": 5, "n_lstm_hidden1": 64, "n_lstm_hidden2": 32}
TEACHER_PARAMS = 80_514
#: a tiny config for the slower checks
TINY = {"n_channels": 3, "n_lstm_hidden1": 8, "n_lstm_hidden2": 4, "n_fft": 128, "hop_length": 64}


def _wav(m: int, length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, m, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("h1", "h2", "params"), [
    (512, 128, 3_328_514), (256, 128, 1_206_786), (256, 64, 845_058), (128, 64, 308_482),
    (128, 32, 217_730), (96, 32, 140_930), (64, 32, 80_514),
])
def test_param_table_of_methods_md_for_five_mics(h1, h2, params):
    with torch.device("meta"):
        model = build_model("ftjnf", {"n_channels": 5, "n_lstm_hidden1": h1, "n_lstm_hidden2": h2})
    assert count_params(model) == params


def test_default_config_is_the_official_teacher():
    with torch.device("meta"):
        model = build_model("ftjnf")
    assert count_params(model) == 3_328_514
    assert model.n_channels == 5 and model.sample_rate == 16000
    assert model.lstm1.hidden_size == 512 and model.lstm2.hidden_size == 128


@pytest.mark.parametrize("length", [4000, 4321])
@pytest.mark.parametrize("kwargs", [
    {},
    {"freq_first": False, "window": "hann"},
    {"bidirectional": False, "mask_compression": "none", "reference_channel": 4},
])
def test_forward_keeps_length_and_is_finite(length, kwargs):
    torch.manual_seed(0)
    model = build_model("ftjnf", {**TEACHER, **kwargs})
    out = model(_wav(5, length))
    assert out.shape == (2, length)
    assert torch.isfinite(out).all()


def test_mono_model_takes_2d_input_and_wrong_mics_are_refused():
    model = build_model("ftjnf", {**TINY, "n_channels": 1})
    assert model(torch.randn(2, 1000)).shape == (2, 1000)
    assert model(torch.randn(2, 1, 1000)).shape == (2, 1000)
    with pytest.raises(ValueError, match=r"\(B, 3, L\)"):
        build_model("ftjnf", TINY)(torch.randn(2, 2, 1000))


@pytest.mark.parametrize("freq_first", [True, False])
def test_taps_are_4d_and_sets_follow_the_lstm_order(freq_first):
    model = build_model("ftjnf", {**TEACHER, "freq_first": freq_first})
    sets = model.feature_sets
    assert all(sets[k] for k in ("encoder", "middle", "decoder", "mask"))
    first, second = ("wideband", "narrowband") if freq_first else ("narrowband", "wideband")
    assert sets["encoder"] == [first] and sets["middle"] == [second]
    shapes = probe_feature_shapes(model, model.feature_taps(), n_samples=4000)
    t, f = 4000 // 256 + 1, 257
    assert {n: tuple(s) for n, s in shapes.items()} == {
        first: (1, 128, t, f), second: (1, 64, t, f), "decoder": (1, 2, t, f), "mask": (1, 2, t, f)}


def test_wideband_tap_is_the_frequency_lstm_output():
    """The wide-band tap of frame t depends on every bin of frame t only; the narrow-band tap of bin f
    on every frame of bin f only (unidirectional LSTMs keep the check one-sided and exact)."""
    model = build_model("ftjnf", {**TINY, "bidirectional": False}).eval()
    x = _wav(3, 64 * 9, batch=1)
    spec = model.stft(x)
    base = torch.cat([spec.real, spec.imag], dim=1).transpose(2, 3)
    bumped = base.clone()
    bumped[:, :, 4, 10] += 1.0  # frame 4, bin 10
    with torch.no_grad():
        wb = [model._freq_lstm(model.lstm1, z) for z in (base, bumped)]
        nb = [model._time_lstm(model.lstm1, z) for z in (base, bumped)]
    wdiff = (wb[0] - wb[1]).abs().sum(dim=1)[0]  # (T, F)
    ndiff = (nb[0] - nb[1]).abs().sum(dim=1)[0]
    # forward along F from bin 10 within frame 4 only (the change fades out over later bins)
    assert wdiff[4, 10:12].min() > 0 and wdiff[4, :10].max() == 0
    assert wdiff[torch.arange(wdiff.shape[0]) != 4].max() == 0
    # forward along T from frame 4 within bin 10 only
    assert ndiff[4:6, 10].min() > 0 and ndiff[:4, 10].max() == 0
    assert ndiff[:, torch.arange(ndiff.shape[1]) != 10].max() == 0


@pytest.mark.parametrize("ratio", [1.0, 0.25, 0.1, 0.04])
def test_size_builder_hits_each_ratio(ratio):
    sized = size_student("ftjnf", TEACHER, ratio)
    assert sized.teacher_params == TEACHER_PARAMS
    assert abs(sized.achieved_ratio - ratio) <= 0.10 * ratio
    assert sized.depth_reduction == 0
    assert sized.model_args["n_lstm_hidden1"] >= 1 and sized.model_args["n_lstm_hidden2"] >= 1


@pytest.mark.parametrize("ratio", [0.25, 0.04])
def test_size_builder_on_the_official_teacher(ratio):
    sized = size_student("ftjnf", {}, ratio)  # 512/128, 3,328,514 params
    assert abs(sized.achieved_ratio - ratio) <= 0.10 * ratio
    h1, h2 = sized.model_args["n_lstm_hidden1"], sized.model_args["n_lstm_hidden2"]
    assert abs(h1 / h2 - 4) < 0.2  # both widths scaled together


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("ftjnf", {**TINY, "freq_first": False, "window": "hann", "reference_channel": 1}).eval()
    path = save_checkpoint(model, tmp_path / "ftjnf.pt", meta={"note": "test"})
    loaded, meta = load_model(path)
    assert meta == {"note": "test"}
    assert loaded.get_model_args() == model.get_model_args()
    x = _wav(3, 1500)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.stft.window, torch.hann_window(128))


def _unit_mask(model) -> None:
    """Linear weights 0 and bias (0.5, 0): tanh → y = tanh(0.5), so the decompressed mask is
    2·atanh(tanh(0.5)) = 1 + 0j and the model passes its reference mic through."""
    with torch.no_grad():
        model.ff.weight.zero_()
        model.ff.bias.copy_(torch.tensor([0.5, 0.0]))


@pytest.mark.parametrize("window", ["sqrt_hann", "hann"])
@pytest.mark.parametrize("ref", [0, 2])
def test_unit_mask_passes_the_reference_mic_through(window, ref):
    model = build_model("ftjnf", {**TINY, "window": window, "reference_channel": ref}).eval()
    _unit_mask(model)
    x = _wav(3, 1000)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, x[:, ref], atol=1e-4)
    assert not torch.allclose(out, x[:, 1 - ref // 2], atol=1e-1)  # not another mic


@pytest.mark.parametrize("compression", ["cirm", "none"])
def test_mask_is_applied_to_the_reference_mic(compression):
    torch.manual_seed(0)
    models = [build_model("ftjnf", {**TINY, "reference_channel": r, "mask_compression": compression}).eval()
              for r in (0, 2)]
    models[1].load_state_dict(models[0].state_dict())
    x = _wav(3, 1200)
    outs = []
    for model, ref in zip(models, (0, 2), strict=True):
        taps = FeatureTaps(model, ["mask"])
        with torch.no_grad():
            out = model(x)
        mask = taps.features["mask"]
        taps.remove()
        assert mask.abs().max() <= 1
        re, im = decompress_cirm(mask) if compression == "cirm" else (mask[:, 0], mask[:, 1])
        m = torch.complex(re, im).transpose(1, 2)  # (B, F, T)
        expected = model.stft.inverse(model.stft(x[:, ref]) * m, x.shape[-1])
        assert torch.allclose(out, expected, atol=1e-5)
        outs.append(out)
    assert not torch.allclose(outs[0], outs[1])  # same mask, different mic


def test_official_cirm_decompression():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, 2, 3, 5, generator=g) * 1.98 - 0.99
    re, im = decompress_cirm(y)
    z = torch.complex(y[:, 0].double(), y[:, 1].double())
    official = -torch.log((1 - z) / (1 + z))  # exp_enhancement.py get_complex_masks_from_stacked, K = C = 1
    assert torch.allclose(re.double(), official.real, atol=1e-5)
    assert torch.allclose(im.double(), official.imag, atol=1e-5)
    # real masks: the inverse of c = (1 − e^{−M}) / (1 + e^{−M})
    mask = torch.linspace(-5, 5, 21)
    c = (1 - torch.exp(-mask)) / (1 + torch.exp(-mask))
    re, im = decompress_cirm(torch.stack([c, torch.zeros_like(c)])[None])
    assert torch.allclose(re[0], mask, atol=1e-4) and im.abs().max() == 0
    # saturated tanh stays finite
    re, im = decompress_cirm(torch.tensor([[[[1.0, -1.0]], [[0.0, 1.0]]]]))  # y = 1 and y = −1 + j
    assert torch.isfinite(re).all() and torch.isfinite(im).all()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_macs_per_second_known_value(bidirectional):
    """Per TF bin and direction an LSTM costs 4h·(input + h) MACs; the linear layer D·h2·2."""
    m, h1, h2, sr, hop = 3, 8, 4, 4000, 64
    model = build_model("ftjnf", {**TINY, "bidirectional": bidirectional, "sample_rate": sr})
    d = 2 if bidirectional else 1
    bins = (sr // hop + 1) * (128 // 2 + 1)
    expected = bins * (d * 4 * h1 * (2 * m + h1) + d * 4 * h2 * (d * h1 + h2) + d * h2 * 2)
    assert macs_per_second(model, n_channels=m) == expected > 0


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"n_channels": 0}, "n_channels"),
    ({"n_lstm_hidden1": 0}, "n_lstm_hidden1"),
    ({"n_lstm_hidden2": -3}, "n_lstm_hidden2"),
    ({"n_lstm_hidden1": 12.5}, "n_lstm_hidden1"),
    ({"hop_length": 0}, "hop_length"),
    ({"hop_length": 1024}, "hop_length"),
    ({"n_fft": 1}, "n_fft"),
    ({"window": "hamming"}, "window"),
    ({"mask_compression": "tanh"}, "mask_compression"),
    ({"reference_channel": 5}, "reference_channel"),
    ({"reference_channel": -1}, "reference_channel"),
    ({"freq_first": "yes"}, "freq_first"),
    ({"bidirectional": 1}, "bidirectional"),
    ({"sample_rate": 0}, "sample_rate"),
    ({"dropout": 0.1}, "dropout"),
])
def test_bad_args_raise_config_error_naming_the_arg(kwargs, arg):
    with pytest.raises(ConfigError, match=arg):
        build_model("ftjnf", kwargs)
