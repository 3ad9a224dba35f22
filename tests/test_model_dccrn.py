"""DCCRN model family (arXiv 2008.00264; official huyanxin/DeepComplexCRN dc_crn.py): shapes, taps, the
complex conv / LSTM / BN maths, masking modes, causality, size builder, checkpoints, every KD method,
MACs and arg validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdlib.models.dccrn as dccrn_mod  # registers "dccrn" (also imported by kdlib.models once registered)
from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.models import build_model, count_params, load_model, macs_per_second, save_checkpoint, size_student

#: the small teacher of these tests (DCCRN-CL layout, 4 layers): 133,673 params
TEACHER = {"channels": [8, 16, 32, 32], "rnn_units": 64}
TEACHER_PARAMS = 133_673
#: a tiny config for the slower checks
TINY = {"channels": [4, 8], "rnn_units": 8, "rnn_layers": 1}


def _wav(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


def test_default_is_dccrn_cl_with_about_3_7m_params():
    with torch.device("meta"):
        model = build_model("dccrn")
        small = build_model("dccrn", TEACHER)
    assert count_params(model) == 3_671_053  # paper: 3.7M
    assert count_params(small) == TEACHER_PARAMS
    args = model.get_model_args()
    assert args["channels"] == [32, 64, 128, 256, 256, 256] and args["rnn_units"] == 256
    assert args["use_clstm"] and args["masking_mode"] == "E" and model.sample_rate == 16000
    assert model.stft.win_length == 400 and model.stft.hop_length == 100 and model.stft.n_fft == 512


@pytest.mark.parametrize("length", [16000, 12345, 301])
@pytest.mark.parametrize("kwargs", [
    {},
    {"masking_mode": "C", "use_cbn": True},
    {"masking_mode": "R", "use_clstm": False, "rnn_layers": 1},
])
def test_forward_keeps_length_and_is_finite(length, kwargs):
    torch.manual_seed(0)
    model = build_model("dccrn", {**TEACHER, **kwargs})
    out = model(_wav(length))
    assert out.shape == (2, length)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(_wav(length, batch=1))).all()


def test_taps_are_4d_btcf_with_the_expected_shapes():
    model = build_model("dccrn", TEACHER)
    sets = model.feature_sets
    assert set(sets) == {"encoder", "middle", "decoder", "mask"} and all(sets.values())
    shapes = probe_feature_shapes(model, model.feature_taps(), n_samples=4000)
    t = 4000 // 100 + 1
    assert all(len(s) == 4 for s in shapes.values())
    # DC dropped: 256 bins, halved per layer
    assert [tuple(shapes[n]) for n in sets["encoder"]] == [(1, 8, t, 128), (1, 16, t, 64), (1, 32, t, 32),
                                                          (1, 32, t, 16)]
    assert tuple(shapes["tap_middle"]) == (1, 32, t, 16)
    assert [tuple(shapes[n]) for n in sets["decoder"]] == [(1, 32, t, 32), (1, 16, t, 64), (1, 8, t, 128)]
    assert tuple(shapes["mask"]) == (1, 2, t, 257)


def test_one_layer_model_still_has_a_decoder_tap():
    model = build_model("dccrn", {"channels": [4], "rnn_units": 4, "rnn_layers": 1})
    assert model.feature_sets["decoder"] == ["decoder.0"]
    assert model(_wav(1000)).shape == (2, 1000)


@pytest.mark.parametrize("mode", ["E", "C", "R"])
def test_masking_modes_match_the_official_formulas(mode):
    """The mask tap is the mask applied to Y; E equals the official polar form with the raw decoder output."""
    torch.manual_seed(0)
    model = build_model("dccrn", {**TINY, "masking_mode": mode}).eval()
    x = _wav(3000)
    taps = FeatureTaps(model, ["mask", "decoder.1"])  # decoder.1 = last layer: the raw (B, 2, T, F-1) mask
    with torch.no_grad():
        out = model(x)
    mask, raw = taps.features["mask"], F.pad(taps.features["decoder.1"], (1, 0))
    assert mask[..., 0].abs().max() == 0  # DC bin
    spec = model.stft(x).transpose(1, 2)  # (B, T, F)
    mr, mi = raw[:, 0].double(), raw[:, 1].double()
    if mode == "E":  # dc_crn.py: tanh(|M|)·|Y| magnitude, ∠Y + ∠M phase
        mags = torch.tanh(torch.sqrt(mr**2 + mi**2)) * spec.abs().double()
        phase = torch.angle(spec).double() + torch.atan2(mi, mr)
        est = torch.polar(mags, phase)
        assert mask.pow(2).sum(1).sqrt().max() <= 1 + 1e-6
    elif mode == "C":
        est = torch.complex(mr, mi) * spec.to(torch.complex128)
    else:
        est = torch.complex(mr * spec.real.double(), mi * spec.imag.double())
    expected = model.stft.inverse(est.transpose(1, 2).to(spec.dtype), x.shape[-1])
    assert torch.allclose(out, expected, atol=1e-5)


def test_complex_conv_is_a_complex_valued_conv():
    torch.manual_seed(0)
    conv = dccrn_mod.ComplexConv2d(6, 8, (5, 2))
    for c in (conv.real, conv.imag):
        torch.nn.init.zeros_(c.bias)
    x = torch.randn(2, 6, 7, 16)
    w = torch.complex(conv.real.weight, conv.imag.weight)  # (4, 3, k_t, k_f)
    xc = torch.complex(x[:, :3], x[:, 3:])
    xc = F.pad(xc, (0, 0, 1, 0))  # causal: one past frame
    y = F.conv2d(xc.real, w.real, stride=(1, 2), padding=(0, 2)) - F.conv2d(xc.imag, w.imag, stride=(1, 2),
                                                                             padding=(0, 2))
    yi = F.conv2d(xc.imag, w.real, stride=(1, 2), padding=(0, 2)) + F.conv2d(xc.real, w.imag, stride=(1, 2),
                                                                              padding=(0, 2))
    # same as one complex multiply-accumulate per tap: check against an explicit complex einsum
    patches = F.unfold(xc.real, (2, 5), padding=(0, 2), stride=(1, 2)) + 1j * F.unfold(
        xc.imag, (2, 5), padding=(0, 2), stride=(1, 2))
    ref = torch.einsum("ok,bkl->bol", w.reshape(4, -1), patches).reshape(2, 4, 7, 8)
    out = conv(x)
    assert out.shape == (2, 8, 7, 8)
    assert torch.allclose(out[:, :4], y, atol=1e-5) and torch.allclose(out[:, 4:], yi, atol=1e-5)
    assert torch.allclose(out[:, :4], ref.real, atol=1e-5) and torch.allclose(out[:, 4:], ref.imag, atol=1e-5)


def test_complex_lstm_combines_real_and_imag_lstms():
    torch.manual_seed(0)
    layer = dccrn_mod.ComplexLSTM(6, 5, 7)
    xr, xi = torch.randn(2, 9, 6), torch.randn(2, 9, 6)
    yr, yi = layer(xr, xi)
    lr, li = (lambda z: layer.real(z)[0]), (lambda z: layer.imag(z)[0])
    assert torch.allclose(yr, layer.proj_r(lr(xr) - li(xi)), atol=1e-6)
    assert torch.allclose(yi, layer.proj_i(lr(xi) + li(xr)), atol=1e-6)


def test_complex_batch_norm_whitens_each_complex_channel():
    torch.manual_seed(0)
    bn = dccrn_mod.ComplexBatchNorm(4)
    xr = torch.randn(8, 2, 5, 6) * 3 + 1
    xi = 0.5 * xr + torch.randn(8, 2, 5, 6)  # correlated with the real part
    y = bn(torch.cat([xr, xi], dim=1))
    yr, yi = y[:, :2].transpose(0, 1).reshape(2, -1), y[:, 2:].transpose(0, 1).reshape(2, -1)
    assert yr.mean(1).abs().max() < 1e-5 and yi.mean(1).abs().max() < 1e-5
    # default γ = I/√2 → covariance I/2
    assert torch.allclose((yr * yr).mean(1), torch.full((2,), 0.5), atol=1e-3)
    assert torch.allclose((yi * yi).mean(1), torch.full((2,), 0.5), atol=1e-3)
    assert (yr * yi).mean(1).abs().max() < 1e-3
    assert not torch.equal(bn.running_mean, torch.zeros(2, 2))  # running stats updated
    bn.eval()
    assert torch.isfinite(bn(torch.cat([xr, xi], dim=1))).all()


def test_network_is_causal_over_frames():
    """A change at sample n reaches the output no earlier than n − n_fft (the centred STFT frame and the
    iSTFT overlap); the official decoder's one-frame look-ahead per layer would reach ~4 hops earlier."""
    torch.manual_seed(0)
    model = build_model("dccrn", TEACHER).eval()
    x = _wav(8000, batch=1)
    y = x.clone()
    n = 6000
    y[:, n:] += torch.randn(1, 8000 - n)
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, : n - 512], b[:, : n - 512])
    assert not torch.equal(a[:, n - 512:], b[:, n - 512:])


@pytest.mark.parametrize("ratio", [1.0, 0.25, 0.1, 0.04])
def test_size_builder_hits_ratio_within_10_percent(ratio):
    sized = size_student("dccrn", TEACHER, ratio)
    with torch.device("meta"):
        achieved = count_params(build_model("dccrn", sized.model_args)) / TEACHER_PARAMS
    assert abs(achieved - ratio) / ratio <= 0.10
    assert sized.achieved_ratio == pytest.approx(achieved)
    assert len(sized.model_args["channels"]) == len(TEACHER["channels"])  # widths alone suffice here
    assert build_model("dccrn", sized.model_args)(_wav(2000)).shape == (2, 2000)


def test_size_candidates_scale_widths_before_depth():
    cands = list(dccrn_mod.DCCRN.size_candidates(TEACHER))
    reductions = [r for _, r in cands]
    assert reductions == sorted(reductions) and reductions[0] == 0 and max(reductions) > 0
    for args, r in cands:
        assert all(c % 2 == 0 and c >= 2 for c in args["channels"]) and args["rnn_units"] % 2 == 0
        assert r == (4 - len(args["channels"])) + (2 - args["rnn_layers"])  # blocks removed
    assert all(c <= t for c, t in zip(cands[0][0]["channels"], TEACHER["channels"], strict=True))
    # one block less: an encoder/decoder layer pair before an LSTM layer
    first_depth = [a for a, r in cands if r == 1]
    assert len(first_depth[0]["channels"]) == 3 and first_depth[-1]["rnn_layers"] == 1


@pytest.mark.parametrize("kwargs", [{}, {"use_cbn": True, "use_clstm": False, "masking_mode": "C"}])
def test_checkpoint_round_trip_rebuilds_identical_outputs(tmp_path, kwargs):
    torch.manual_seed(0)
    args = {**size_student("dccrn", TEACHER, 0.25).model_args, **kwargs}
    model = build_model("dccrn", args)
    model.train()
    model(_wav(4000))  # move BN running stats off their init
    model.eval()
    path = save_checkpoint(model, tmp_path / "s.pt", {"method": "none"})
    rebuilt, meta = load_model(path)
    x = _wav(5000, seed=1)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.get_model_args() == model.get_model_args() and meta == {"method": "none"}
    torch.load(path, weights_only=True)


def _expected_macs(channels, rnn_units, rnn_layers, use_clstm, sr=16000, hop=100, n_fft=512, k=(5, 2)):
    """Complex conv C_in→C_out (totals) = 4 real convs of C_in/2·C_out/2·k_f·k_t MACs per output bin;
    transposed convs are counted per input bin; an LSTM step costs 4h·(in + h), a Linear in·out."""
    t, kk, f0 = sr // hop + 1, k[0] * k[1], n_fft // 2
    widths = [2, *channels]
    macs = 0
    for i in range(len(channels)):
        f_out = f0 // 2 ** (i + 1)
        macs += widths[i] * widths[i + 1] * kk * t * f_out  # encoder layer i
        macs += 2 * widths[i + 1] * widths[i] * kk * t * f_out  # its mirrored decoder layer (2× input: skip)
    feat = channels[-1] * (f0 // 2 ** len(channels))
    if use_clstm:
        h = rnn_units // 2
        for j in range(rnn_layers):
            macs += 2 * 2 * t * 4 * h * ((feat // 2 if j == 0 else h) + h)  # L_r, L_i each on real and imag
        macs += 2 * t * h * feat // 2  # per-part projections
    else:
        for j in range(rnn_layers):
            macs += t * 4 * rnn_units * ((feat if j == 0 else rnn_units) + rnn_units)
        macs += t * rnn_units * feat
    return macs


@pytest.mark.parametrize("use_clstm", [True, False])
def test_macs_per_second_known_value(use_clstm):
    model = build_model("dccrn", {**TEACHER, "use_clstm": use_clstm})
    expected = _expected_macs(TEACHER["channels"], TEACHER["rnn_units"], 2, use_clstm)
    assert macs_per_second(model) == expected > 0


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"channels": []}, "channels"),
    ({"channels": [8, 15]}, "channels"),
    ({"channels": [8, 16.0]}, "channels"),
    ({"n_fft": 500}, "n_fft"),
    ({"n_fft": 64, "win_length": 64, "hop_length": 16}, "n_fft"),  # 32 bins not divisible by 2^6
    ({"win_length": 600}, "win_length"),
    ({"hop_length": 0}, "hop_length"),
    ({"hop_length": 400}, "hop_length"),
    ({"kernel_size": [4, 2]}, "kernel_size"),
    ({"kernel_size": [5]}, "kernel_size"),
    ({"rnn_units": 7}, "rnn_units"),
    ({"rnn_units": 0, "use_clstm": False}, "rnn_units"),
    ({"rnn_layers": 0}, "rnn_layers"),
    ({"use_clstm": "yes"}, "use_clstm"),
    ({"use_cbn": 1}, "use_cbn"),
    ({"masking_mode": "P"}, "masking_mode"),
    ({"sample_rate": 0}, "sample_rate"),
])
def test_bad_args_raise_config_error_naming_the_arg(kwargs, arg):
    with pytest.raises(ConfigError, match=f"dccrn.{arg}"):
        build_model("dccrn", kwargs)


def test_unknown_arg_raises_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        build_model("dccrn", {"bogus": 1})
