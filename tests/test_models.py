"""Models: forward shapes, size builder, complexity counts, checkpoints, STFT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlib.errors import CheckpointError, ConfigError, RegistryError
from kdlib.kd import FeatureTaps
from kdlib.models import MODELS, build_model, count_params, load_model, macs_per_second, save_checkpoint, size_student
from kdlib.models.base import SEModel, register_model
from kdlib.models.stft import STFT

TEACHER_ARGS = {"channels": [32, 48, 48], "rnn_hidden": 64, "n_dilated": 2, "n_dualpath": 2}


@pytest.mark.parametrize("length", [16000, 12345])
def test_dpdcrn_forward_shape_any_length(length):
    model = build_model("dpcrn_lite", {"channels": [8, 8], "rnn_hidden": 8})
    out = model(torch.randn(3, length))
    assert out.shape == (3, length)
    assert torch.isfinite(out).all()


def test_feature_taps_are_btcf_and_sets_cover_every_block():
    model = build_model("dpcrn_lite", TEACHER_ARGS)
    taps = FeatureTaps(model, model.feature_taps())
    model(torch.randn(2, 16000))
    t = 16000 // 256 + 1
    assert taps.features["encoder.0"].shape == (2, 32, t, 129)
    assert taps.features["encoder.2"].shape == (2, 48, t, 33)
    assert taps.features["dualpath.1"].shape == (2, 48, t, 33)
    assert taps.features["decoder.1"].shape == (2, 32, t, 129)
    assert set(model.feature_sets) == {"encoder", "middle", "decoder", "mask"}
    assert taps.features["mask"].shape == (2, 2, t, 257) and taps.features["mask"].abs().max() <= 1
    assert len(model.feature_sets["middle"]) == 4  # 2 dilated + 2 dual-path


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.1, 0.04])
def test_size_builder_hits_ratio_within_10_percent(ratio):
    sized = size_student("dpcrn_lite", TEACHER_ARGS, ratio)
    student = build_model("dpcrn_lite", sized.model_args)
    teacher = build_model("dpcrn_lite", TEACHER_ARGS)
    achieved = count_params(student) / count_params(teacher)
    assert abs(achieved - ratio) / ratio <= 0.10
    assert sized.achieved_ratio == pytest.approx(achieved)
    assert student(torch.randn(1, 8000)).shape == (1, 8000)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_size_builder_refuses_impossible_ratio(ratio):
    with pytest.raises(ConfigError, match="student_ratio"):
        size_student("dpcrn_lite", TEACHER_ARGS, ratio)


def test_size_builder_reduces_depth_only_when_widths_cannot_fit():
    tiny = {"channels": [4, 4], "rnn_hidden": 4, "n_dilated": 2, "n_dualpath": 2}
    # 50 %: width 3 lands within ±10 %, so every block stays
    half = size_student("dpcrn_lite", tiny, 0.5)
    assert half.depth_reduction == 0 and half.model_args["channels"] == [3, 3]
    assert (half.model_args["n_dilated"], half.model_args["n_dualpath"]) == (2, 2)
    # 90 %: the next integer width down is ~54 %, so no width-only config fits and a block goes
    most = size_student("dpcrn_lite", tiny, 0.9)
    assert most.depth_reduction > 0
    assert most.model_args["n_dilated"] + most.model_args["n_dualpath"] < 4
    assert abs(most.achieved_ratio - 0.9) <= 0.09


class _Conv(SEModel):
    """1-D conv of known cost for checking the MAC counter."""

    def __init__(self, sample_rate: int = 16000) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        self.sample_rate = sample_rate
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.rnn = nn.LSTM(4, 5, batch_first=True)

    def forward(self, wav):
        y = self.conv(wav.unsqueeze(1))  # (B, 4, L)
        y, _ = self.rnn(y.transpose(1, 2))
        return y.sum(-1)


def test_macs_count_conv_and_lstm_exactly():
    m = _Conv()
    expected_conv = 16000 * 4 * 1 * 3
    expected_lstm = 16000 * 4 * (4 * 5 + 5 * 5)  # gates × (input + recurrent) per step
    assert macs_per_second(m) == expected_conv + expected_lstm


def test_checkpoint_round_trip_rebuilds_identical_outputs(tmp_path):
    sized = size_student("dpcrn_lite", TEACHER_ARGS, 0.1)
    model = build_model("dpcrn_lite", sized.model_args).eval()
    path = save_checkpoint(model, tmp_path / "s.pt", {"method": "none", "val_si_sdr": 1.5})
    # the file alone rebuilds the right size, with weights_only loading
    rebuilt, meta = load_model(path)
    x = torch.randn(2, 9000)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.get_model_args()["channels"] == sized.model_args["channels"]
    assert meta == {"method": "none", "val_si_sdr": 1.5}
    torch.load(path, weights_only=True)  # plain types only


def test_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    model = build_model("dpcrn_lite", {"channels": [4, 4], "rnn_hidden": 4})
    path = save_checkpoint(model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a kdlib checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_stft_istft_reconstructs_below_1e4():
    stft = STFT(512, 256)
    x = torch.randn(2, 16000)
    y = stft.inverse(stft(x), 16000)
    assert (x - y).abs().max() < 1e-4


def test_registry_refuses_unknown_and_duplicates():
    with pytest.raises(RegistryError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(RegistryError, match="twice"):
        register_model("dpcrn_lite")(_Conv)
    assert "dpcrn_lite" in MODELS


@pytest.mark.parametrize("kwargs,key", [({"channels": []}, "channels"), ({"n_fft": 500}, "n_fft"),
                                        ({"compress": 0}, "compress"), ({"kernel": [2, 3]}, "kernel")])
def test_dpdcrn_refuses_impossible_args(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        build_model("dpcrn_lite", kwargs)


def test_unknown_model_kwarg_is_a_config_error():
    with pytest.raises(ConfigError, match="width"):
        build_model("dpcrn_lite", {"width": 3})
