"""Time-domain families Conv-TasNet and DPTNet: shapes, taps, sizing, checkpoints, KD steps, args, MACs."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from kdlib.errors import ConfigError
from kdlib.kd.hooks import probe_feature_shapes
from kdlib.models import MODELS, build_model, count_params, load_model, macs_per_second, save_checkpoint, size_student
from kdlib.models.convtasnet import frame_padding

# small teachers: Conv-TasNet 60,657 params (0.114 G MACs/s at 16 kHz), DPTNet 97,569 params (0.449 G MACs/s)
TEACHERS = {
    "convtasnet": {"n_filters": 64, "bn_chan": 32, "hid_chan": 64, "skip_chan": 32, "n_blocks": 4, "n_repeats": 2},
    "dptnet": {"n_filters": 32, "ff_hid": 32, "n_repeats": 2, "chunk_size": 50, "hop_size": 25},
}
TEACHER_PARAMS = {"convtasnet": 60_657, "dptnet": 97_569}
FAMILIES = sorted(TEACHERS)


def _small(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(family, TEACHERS[family])


@functools.cache
def _student_args(family: str) -> tuple[tuple[str, object], ...]:
    """A 25 % student of the small teacher (sized once per session)."""
    return tuple(size_student(family, TEACHERS[family], 0.25).model_args.items())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [4000, 4003, 1001, 9])
def test_forward_keeps_length_and_is_finite(family, length):
    model = _small(family)
    x = torch.randn(2, length)
    y = model(x)
    assert y.shape == (2, length)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_refuses_other_layouts(family):
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        _small(family)(torch.randn(1, 1, 400))


@pytest.mark.parametrize(("length", "kernel", "stride"), [(4000, 16, 8), (4003, 16, 8), (5, 16, 8), (997, 20, 6)])
def test_frame_padding_covers_every_sample_equally(length, kernel, stride):
    left, right, n_frames = frame_padding(length, kernel, stride)
    padded = left + length + right
    assert padded == (n_frames - 1) * stride + kernel and left == kernel - stride
    cover = F.fold(torch.ones(1, kernel, n_frames), (padded, 1), (kernel, 1), stride=(stride, 1))[0, 0, :, 0]
    inside = cover[left:left + length]
    if kernel % stride == 0:
        assert torch.all(inside == kernel // stride)
    else:  # floor or ceil of kernel / stride, as inside any long signal
        assert inside.min() == kernel // stride and inside.max() == kernel // stride + 1


def test_dptnet_overlap_add_inverts_chunking():
    model = build_model("dptnet", {**TEACHERS["dptnet"], "chunk_size": 7, "hop_size": 3})  # hop does not divide K
    x = torch.randn(2, 5, 61)
    chunks = model._chunk(x)
    _, _, n_chunks = model.chunk_padding(61)
    assert chunks.shape == (2, 5, 7, n_chunks)
    torch.testing.assert_close(model._overlap_add(chunks, 61), x)


@pytest.mark.parametrize("family", FAMILIES)
def test_taps_are_4d_and_sets_non_empty(family):
    model = _small(family)
    sets = model.feature_sets
    assert set(sets) == {"encoder", "middle", "decoder"} and all(sets.values())
    shapes = probe_feature_shapes(model, model.feature_taps(), n_samples=4000)
    n_frames = frame_padding(4000, 16, 8)[2]  # 501
    assert all(len(s) == 4 and s[0] == 1 for s in shapes.values())
    if family == "convtasnet":
        assert sets["middle"] == ["tap_repeat.0", "tap_repeat.1"]
        assert shapes["tap_encoder"] == (1, 64, n_frames, 1) and shapes["tap_score"] == (1, 64, n_frames, 1)
        assert shapes["tap_bottleneck"] == shapes["tap_repeat.1"] == shapes["tap_skip"] == (1, 32, n_frames, 1)
    else:
        n_chunks = frame_padding(n_frames, 50, 25)[2]
        assert sets["middle"] == ["blocks.0", "blocks.1"]
        assert shapes["blocks.1"] == (1, 32, 50, n_chunks)
        assert shapes["tap_encoder"] == shapes["tap_overlap_add"] == shapes["tap_gated"] == (1, 32, n_frames, 1)


def test_convtasnet_without_skip_path_masks_from_the_residual_stream():
    model = build_model("convtasnet", {**TEACHERS["convtasnet"], "skip_chan": 0})
    assert model.feature_sets["decoder"] == ["tap_score"]
    assert model(torch.randn(1, 800)).shape == (1, 800)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("args", [{}, {"n_repeats": 1}])
def test_analytic_params_match_the_built_model(family, args):
    variants = [TEACHERS[family], {**TEACHERS[family], **args}]
    variants.append({**TEACHERS[family], "skip_chan": 0} if family == "convtasnet"
                    else {**TEACHERS[family], "bidirectional": False, "n_heads": 8})
    for variant in variants:
        with torch.device("meta"):
            model = build_model(family, variant)
        assert MODELS.get(family).analytic_params(variant) == count_params(model)
    assert count_params(_small(family)) == TEACHER_PARAMS[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("teacher", "ratios"), [("small", (1.0, 0.25, 0.1, 0.04)), ("default", (0.04,))])
def test_size_builder_hits_each_ratio(family, teacher, ratios):
    args = TEACHERS[family] if teacher == "small" else {}  # default: the asteroid config (5.0 M / 8.5 M params)
    for ratio in ratios:
        sized = size_student(family, args, ratio)
        assert abs(sized.achieved_ratio - ratio) <= 0.1 * ratio, (ratio, sized)
        assert sized.depth_reduction == 0  # widths alone reach 4 % for these teachers
        with torch.device("meta"):
            assert count_params(MODELS.get(family)(**sized.model_args)) == sized.params
        if family == "dptnet":
            assert sized.model_args.get("n_filters", 64) % sized.model_args.get("n_heads", 4) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip(family, tmp_path):
    model = build_model(family, dict(_student_args(family))).eval()
    x = torch.randn(2, 3001)
    path = save_checkpoint(model, tmp_path / f"{family}.pt", meta={"note": "test"})
    loaded, meta = load_model(path)
    assert meta == {"note": "test"} and loaded.get_model_args() == model.get_model_args()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "bad", "arg"), [
    ("convtasnet", {"n_filters": 0}, "n_filters"),
    ("convtasnet", {"bn_chan": 12.5}, "bn_chan"),
    ("convtasnet", {"skip_chan": -1}, "skip_chan"),
    ("convtasnet", {"stride": 17}, "stride"),
    ("convtasnet", {"conv_kernel": 4}, "conv_kernel"),
    ("convtasnet", {"n_blocks": True}, "n_blocks"),
    ("convtasnet", {"mask_act": "tanh"}, "mask_act"),
    ("dptnet", {"n_filters": 30}, "n_filters"),
    ("dptnet", {"n_heads": 0}, "n_heads"),
    ("dptnet", {"ff_hid": 0}, "ff_hid"),
    ("dptnet", {"hop_size": 60}, "hop_size"),
    ("dptnet", {"chunk_size": "100"}, "chunk_size"),
    ("dptnet", {"bidirectional": "yes"}, "bidirectional"),
    ("dptnet", {"mask_act": "softmax"}, "mask_act"),
    ("dptnet", {"sample_rate": 0}, "sample_rate"),
])
def test_bad_args_raise_config_error_naming_the_arg(family, bad, arg):
    with pytest.raises(ConfigError, match=rf"{family}\.{arg}\b"):
        build_model(family, {**TEACHERS[family], **bad})


def test_unknown_kwarg_is_a_config_error():
    with pytest.raises(ConfigError, match="n_src"):
        build_model("convtasnet", {"n_src": 2})


def test_convtasnet_macs_match_the_closed_form():
    args = TEACHERS["convtasnet"]
    model = build_model("convtasnet", args)
    sr = 2000
    t = frame_padding(sr, 16, 8)[2]
    n, b, h, sc, p = 64, 32, 64, 32, 3
    per_block = b * h + h * p + h * b + h * sc  # 1x1 in, depthwise, residual, skip convs
    per_frame = n * 16 + n * b + 2 * 4 * per_block + sc * n + n * 16  # encoder, bottleneck, TCN, mask, decoder
    assert macs_per_second(model, sample_rate=sr) == t * per_frame


def test_dptnet_macs_match_the_closed_form():
    args = TEACHERS["dptnet"]
    model = build_model("dptnet", args)
    sr = 2000
    t = frame_padding(sr, 16, 8)[2]
    n, ff, k = 32, 32, 50
    s = frame_padding(t, k, 25)[2]
    tokens = k * s

    def layer(n_seq: int, seq: int) -> int:  # qkv + out projections, QK^T and AV, bi-LSTM, linear
        return tokens * (4 * n * n) + 2 * n_seq * seq * seq * n + 2 * tokens * 4 * ff * (n + ff) + tokens * 2 * ff * n

    blocks = 2 * (layer(s, k) + layer(k, s))
    expected = 2 * t * n * 16 + blocks + tokens * n * n + 2 * t * n * n  # enc + dec, blocks, first_out, gates
    assert macs_per_second(model, sample_rate=sr) == expected
    assert macs_per_second(build_model("convtasnet", TEACHERS["convtasnet"]), sample_rate=sr) > 0
