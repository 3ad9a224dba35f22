"""DPDCRN (arXiv 2506.13127; authors' JMCheng-SEU/I2RF-TFCKD-SE DPDCRN.py): the authors' teacher and student
param counts, forward shapes, taps, the polar mask, causality, the cumulative norms, the size builder,
checkpoints and arg validation. Forward tests use small widths; the full layouts are only counted."""

from __future__ import annotations

import pytest
import torch

import kdlib.models.dpdcrn as dpdcrn_mod
from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.models import MODELS, build_model, count_params, load_model, macs_per_second, save_checkpoint, size_student

#: counts of the authors' DPDCRN_Tea / DPDCRN_Stu_M (methods.md §9.1, counted on a re-typed copy)
TEACHER_PARAMS = 3_218_118
STUDENT_PARAMS = 595_494
STUDENT = {"channels": 64, "n_aia_blocks": 1}
SMALL = {"channels": 16, "n_aia_blocks": 2}


def _wav(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


def _naive_params(c: int, n_blocks: int, depth: int = 4) -> int:
    """Params re-derived layer by layer from the authors' file (weights + biases of each layer)."""
    d = c // 2
    inorm_prelu = 2 * c + c  # InstanceNorm2d(affine) weight/bias + PReLU(c)
    total = 0
    total += (2 * c * 1 * 3 + c) + inorm_prelu  # encoder conv_1: 2 → c, kernel 1×3
    total += (c * c * 1 * 3 + c) + inorm_prelu  # encoder conv_2
    dense = 0
    for i in range(depth):
        dense += (c * (i + 1) * c * 2 * 3 + c) + inorm_prelu  # conv (2, 3) on c·(i+1) inputs
    total += 2 * dense  # encoder and decoder dense blocks
    total += (c * d + d) + 1  # AIA input 1×1 conv + PReLU()
    for _ in range(n_blocks):
        for bidir in (True, False):
            dirs = 2 if bidir else 1
            mha = 3 * (d * d + d) + (d * d + d)  # in_proj q/k/v + out_proj
            h = 2 * d
            gru = dirs * (3 * h * d + 3 * h * h + 3 * h + 3 * h)  # W_ih, W_hh, b_ih, b_hh
            linear = dirs * h * d + d
            norms = 3 * 2 * d
            total += mha + gru + linear + norms
        total += 2 * 2 * d  # row / col GroupNorm
    total += 2  # k1, k2 (shared by all blocks)
    total += 1 + (d * c + c)  # output PReLU() + 1×1 conv
    total += (c * c * 3 + c) + inorm_prelu  # Trans_conv_1
    total += c * 2 * 3 + 2  # Trans_conv_2
    return total


def test_defaults_are_the_authors_teacher_and_student():
    with torch.device("meta"):
        teacher = build_model("dpdcrn")
        student = build_model("dpdcrn", STUDENT)
        causal = build_model("dpdcrn", {"causal": True})
    t, s = count_params(teacher), count_params(student)
    print(f"dpdcrn params: teacher {t:,}, student {s:,} ({100 * s / t:.1f} %)")
    assert t == TEACHER_PARAMS == _naive_params(128, 4)
    assert s == STUDENT_PARAMS == _naive_params(64, 1)
    assert count_params(causal) == TEACHER_PARAMS  # the causal norms keep the same affine params
    args = teacher.get_model_args()
    assert args["channels"] == 128 and args["n_aia_blocks"] == 4 and args["n_heads"] == 4
    assert teacher.stft.n_fft == 512 and teacher.stft.n_freqs == 257 and teacher.sample_rate == 16000
    assert "dpdcrn" in MODELS and "dpcrn_lite" in MODELS


@pytest.mark.parametrize("length", [16000, 12345, 301])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_keeps_length_and_is_finite(length, causal):
    torch.manual_seed(0)
    model = build_model("dpdcrn", {**SMALL, "causal": causal})
    out = model(_wav(length))
    assert out.shape == (2, length) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_refuses_a_non_batch_waveform():
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        build_model("dpdcrn", SMALL)(torch.randn(2, 1, 4000))


def test_taps_follow_the_authors_layers_and_are_btcf():
    model = build_model("dpdcrn", SMALL)
    sets = model.feature_sets
    assert set(sets) == {"encoder", "middle", "decoder", "mask"}
    shapes = {k: tuple(v) for k, v in probe_feature_shapes(model, model.feature_taps(), n_samples=4000).items()}
    t = 4000 // 256 + 1
    assert [shapes[n] for n in sets["encoder"]] == [(1, 16, t, 129), (1, 16, t, 64), (1, 16, t, 64)]
    assert sets["middle"] == ["aia.taps.0", "aia.taps.1"]
    assert all(shapes[n] == (1, 16, t, 64) for n in sets["middle"])
    assert [shapes[n] for n in sets["decoder"]] == [(1, 16, t, 64), (1, 16, t, 129)]
    assert shapes["mask"] == (1, 2, t, 257)


def test_middle_taps_are_each_blocks_output_and_the_last_feeds_the_decoder():
    torch.manual_seed(0)
    model = build_model("dpdcrn", SMALL).eval()
    taps = FeatureTaps(model, ["encoder.dense", "aia.taps.0", "aia.taps.1", "mask"])
    with torch.no_grad():
        model(_wav(3000))
        assert not torch.allclose(taps.features["aia.taps.0"], taps.features["aia.taps.1"])
        assert torch.allclose(model.decoder(taps.features["aia.taps.1"]), taps.features["mask"])
        # block 0 alone: x + k1·GN(freq(x)) + k2·GN(time(x)) through the shared head, re-derived here
        aia = model.aia
        x = aia.inp(taps.features["encoder.dense"])
        b, d, t, f = x.shape
        row = aia.freq_layers[0](x.permute(0, 2, 3, 1).reshape(b * t, f, d)).reshape(b, t, f, d).permute(0, 3, 1, 2)
        col = aia.time_layers[0](x.permute(0, 3, 2, 1).reshape(b * f, t, d)).reshape(b, f, t, d).permute(0, 3, 2, 1)
        ref = aia.out(x + aia.k1 * aia.freq_norms[0](row) + aia.k2 * aia.time_norms[0](col))
        assert torch.allclose(taps.features["aia.taps.0"], ref, atol=1e-5)
    assert aia.freq_layers[0].gru.bidirectional and not aia.time_layers[0].gru.bidirectional


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_torch_multihead_attention(causal):
    torch.manual_seed(0)
    ours = dpdcrn_mod.SelfAttention(8, 4, causal)
    ref = torch.nn.MultiheadAttention(8, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 7, 8)
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None
    expected = ref(x, x, x, attn_mask=mask, need_weights=False)[0]
    assert torch.allclose(ours(x), expected, atol=1e-5)
    assert count_params(ours) == count_params(ref)


def _expected_macs(c: int, n_blocks: int, sr: int = 16000, hop: int = 256, depth: int = 4) -> int:
    """Per frame: convs C_in·C_out·k per output bin (transposed convs per input bin); per sequence
    position: attention 4d² + 2·S·d (S = sequence length), GRU (hidden 2d) 3·2d·(d + 2d) per
    direction, Linear in·out; norms and activations are not multiplies the counter sees."""
    t, d, f1, f2 = sr // hop + 1, c // 2, 129, 64
    conv = 2 * c * 3 * f1 + c * c * 3 * f2  # encoder convs
    conv += 2 * sum(c * (i + 1) * c * 6 * f2 for i in range(depth))  # two dense blocks
    conv += c * c * 3 * f2 + c * 2 * 3 * f1  # transposed convs
    conv += c * d * f2 + n_blocks * d * c * f2  # AIA in, shared head after every block
    gru = 3 * 2 * d * (d + 2 * d)
    freq = f2 * (4 * d * d + 2 * f2 * d + 2 * gru + 4 * d * d)  # bidirectional over F2 bins
    time = f2 * (4 * d * d + 2 * t * d + gru + 2 * d * d)  # forward-only over T frames
    return t * (conv + n_blocks * freq) + n_blocks * t * time


def test_macs_per_second_known_value():
    model = build_model("dpdcrn", SMALL)
    assert macs_per_second(model) == _expected_macs(16, 2) > 0


def test_output_is_the_authors_polar_mask_on_the_noisy_spectrum():
    """|Ŝ| = tanh(|M|)·|Y|, ∠Ŝ = ∠Y + ∠M, written with atan2/cos/sin as in the authors' forward()."""
    torch.manual_seed(0)
    model = build_model("dpdcrn", SMALL).eval()
    x = _wav(4000)
    taps = FeatureTaps(model, ["mask"])
    with torch.no_grad():
        out = model(x)
    m = taps.features["mask"].double()
    spec = model.stft(x).transpose(1, 2)  # (B, T, F)
    yr, yi = spec.real.double(), spec.imag.double()
    mags = torch.tanh(torch.sqrt(m[:, 0] ** 2 + m[:, 1] ** 2)) * torch.sqrt(yr**2 + yi**2)
    phase = torch.atan2(yi, yr) + torch.atan2(m[:, 1], m[:, 0])
    est = torch.complex(mags * torch.cos(phase), mags * torch.sin(phase))
    expected = model.stft.inverse(est.transpose(1, 2).to(spec.dtype), x.shape[-1])
    assert torch.allclose(out, expected, atol=1e-5)


def _change_after(n: int, length: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    x = _wav(length, batch=1)
    y = x.clone()
    y[:, n:] += _wav(length - n, batch=1, seed=1)
    return x, y


def test_causal_network_ignores_future_samples():
    """causal=True: a change from sample n reaches the mask no earlier than frame ceil((n − 256)/hop)
    (the centred STFT frame) and the waveform no earlier than n − n_fft (plus the iSTFT overlap)."""
    torch.manual_seed(0)
    model = build_model("dpdcrn", {"channels": 16, "n_aia_blocks": 1, "causal": True}).eval()
    n = 5000
    x, y = _change_after(n)
    taps = FeatureTaps(model, ["mask", "aia.taps.0"])
    with torch.no_grad():
        a = model(x)
        ma, ha = taps.features["mask"], taps.features["aia.taps.0"]
        b = model(y)
        mb, hb = taps.features["mask"], taps.features["aia.taps.0"]
    first = -(-(n - 256) // 256)  # the first frame whose window reaches sample n
    assert torch.equal(ma[:, :, :first], mb[:, :, :first]) and torch.equal(ha[:, :, :first], hb[:, :, :first])
    assert not torch.equal(ma[:, :, first:], mb[:, :, first:])
    assert torch.equal(a[:, : n - 512], b[:, : n - 512])
    assert not torch.equal(a[:, n - 512:], b[:, n - 512:])


def test_authors_network_is_not_causal():
    """causal=False: utterance-level InstanceNorm/GroupNorm and the unmasked time attention let a
    future change reach the first frames (why ``causal`` exists)."""
    torch.manual_seed(0)
    model = build_model("dpdcrn", {"channels": 16, "n_aia_blocks": 1}).eval()
    x, y = _change_after(5000)
    with torch.no_grad():
        a, b = model(x), model(y)
    assert (a[:, :2000] - b[:, :2000]).abs().max() > 1e-4


def test_dilated_dense_block_is_causal_with_the_authors_receptive_field():
    torch.manual_seed(0)
    block = dpdcrn_mod.DilatedDenseBlock(4, 4, causal=True).eval()
    x = torch.randn(1, 4, 40, 9)
    y = x.clone()
    y[:, :, 30] += 1.0
    with torch.no_grad():
        diff = (block(x) - block(y)).abs().amax(dim=(0, 1, 3))
    assert diff[:30].max() == 0 and diff[30] > 0
    assert [c.dilation for c in block.convs] == [(1, 1), (2, 1), (4, 1), (8, 1)]
    assert [c.in_channels for c in block.convs] == [4, 8, 12, 16]


@pytest.mark.parametrize("per_channel", [True, False])
def test_cumulative_norm_matches_a_per_frame_loop(per_channel):
    torch.manual_seed(0)
    norm = dpdcrn_mod.CumulativeNorm(3, per_channel, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = torch.randn(2, 3, 6, 5) * 4 + 2
    out = norm(x)
    ref = torch.empty_like(x)
    for t in range(6):
        past = x[:, :, : t + 1].double()
        dims = (2, 3) if per_channel else (1, 2, 3)
        mean, var = past.mean(dim=dims, keepdim=True), past.var(dim=dims, unbiased=False, keepdim=True)
        z = (x[:, :, t : t + 1].double() - mean) / torch.sqrt(var + 1e-5)
        ref[:, :, t : t + 1] = (z * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)).float()
    assert torch.allclose(out, ref, atol=1e-4)
    # at the last frame the statistics are the whole utterance's: the authors' norm there
    full = torch.nn.InstanceNorm2d(3, affine=True, eps=1e-5) if per_channel else torch.nn.GroupNorm(1, 3, eps=1e-5)
    full.load_state_dict(norm.state_dict())
    assert torch.allclose(out[:, :, -1], full(x)[:, :, -1], atol=1e-4)


def test_causal_and_authors_models_share_state_dict_keys():
    a, b = build_model("dpdcrn", SMALL), build_model("dpdcrn", {**SMALL, "causal": True})
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_size_builder_picks_the_authors_student_at_their_ratio():
    sized = size_student("dpdcrn", {}, STUDENT_PARAMS / TEACHER_PARAMS)
    assert (sized.model_args["channels"], sized.model_args["n_aia_blocks"], sized.model_args["n_heads"]) == (64, 1, 4)
    assert sized.params == STUDENT_PARAMS and sized.teacher_params == TEACHER_PARAMS
    assert sized.depth_reduction == 3
    assert size_student("dpdcrn", {}, 0.185).model_args["channels"] == 64


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.1, 0.04])
def test_size_builder_hits_ratio_within_10_percent(ratio):
    with torch.device("meta"):
        teacher_args = build_model("dpdcrn").get_model_args()  # as the sweep passes them
        sized = size_student("dpdcrn", teacher_args, ratio)
        achieved = count_params(build_model("dpdcrn", sized.model_args)) / TEACHER_PARAMS
    assert abs(achieved - ratio) / ratio <= 0.10 and sized.achieved_ratio == pytest.approx(achieved)
    args = sized.model_args
    assert (args["channels"] // 2) % args["n_heads"] == 0
    assert args["n_aia_blocks"] == dpdcrn_mod.DPDCRN.blocks_for_width(args["channels"], 128, 4)


def test_size_candidates_tie_depth_to_width():
    cands = list(dpdcrn_mod.DPDCRN.size_candidates({}))
    widths = [a["channels"] for a, _ in cands]
    assert widths == list(range(128, 1, -2))
    reductions = [r for _, r in cands]
    assert reductions == sorted(reductions) and reductions[0] == 0 and reductions[-1] == 3
    assert all(r == 4 - a["n_aia_blocks"] for a, r in cands)
    by_width = {a["channels"]: a for a, _ in cands}
    assert by_width[128]["n_aia_blocks"] == 4 and by_width[64]["n_aia_blocks"] == 1
    assert by_width[96]["n_aia_blocks"] == 3 and by_width[80]["n_aia_blocks"] == 2  # 2.5 → 3, 1.75 → 2
    # heads stay 4 at multiples of 8, else the largest divisor of 4 that divides C/2
    assert by_width[64]["n_heads"] == 4 and by_width[68]["n_heads"] == 2 and by_width[66]["n_heads"] == 1
    with torch.device("meta"):
        for args in (by_width[66], by_width[68], by_width[2]):
            build_model("dpdcrn", args)


def test_checkpoint_round_trip_rebuilds_identical_outputs(tmp_path):
    torch.manual_seed(0)
    args = {"channels": 12, "n_heads": 2, "n_aia_blocks": 2, "hop_length": 128, "causal": True}
    model = build_model("dpdcrn", args).eval()
    path = save_checkpoint(model, tmp_path / "s.pt", {"method": "none"})
    rebuilt, meta = load_model(path)
    x = _wav(5000, seed=1)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.get_model_args() == model.get_model_args() and meta == {"method": "none"}
    torch.load(path, weights_only=True)


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"n_fft": 500}, "n_fft"),
    ({"n_fft": 8}, "n_fft"),
    ({"hop_length": 0}, "hop_length"),
    ({"hop_length": 512}, "hop_length"),
    ({"channels": 15}, "channels"),
    ({"channels": 12}, "channels"),  # C/2 = 6 not divisible by 4 heads
    ({"channels": 64.0}, "channels"),
    ({"n_aia_blocks": 0}, "n_aia_blocks"),
    ({"n_heads": 0}, "n_heads"),
    ({"dense_depth": 0}, "dense_depth"),
    ({"causal": "yes"}, "causal"),
    ({"sample_rate": 0}, "sample_rate"),
])
def test_bad_args_raise_config_error_naming_the_arg(kwargs, arg):
    with pytest.raises(ConfigError, match=f"dpdcrn.{arg}"):
        build_model("dpdcrn", kwargs)
