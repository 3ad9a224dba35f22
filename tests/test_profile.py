"""kdlib profile: params, MACs and RTF for checkpoints, model YAMLs and sweep YAMLs."""

from __future__ import annotations

import json

import pytest
import yaml

from kdlib.cli import main
from kdlib.errors import ConfigError
from kdlib.models import build_model, count_params, macs_per_second, save_checkpoint
from kdlib.profile import profile

TINY = {"name": "dpcrn_lite", "kwargs": {"channels": [8, 8], "rnn_hidden": 8, "n_dilated": 1, "n_dualpath": 1}}


def test_profile_model_yaml_at_several_ratios(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(TINY))
    rows = profile(path, [1.0, 0.25], seconds=0.5, repeats=2)
    teacher = build_model("dpcrn_lite", TINY["kwargs"])
    assert rows[0]["params"] == count_params(teacher) and rows[0]["macs"] == macs_per_second(teacher)
    assert rows[0]["params_pct"] == 100.0 and abs(rows[1]["params_pct"] - 25) <= 2.5
    assert all(r["rtf"] > 0 for r in rows) and rows[1]["macs"] < rows[0]["macs"]
    # the full-size reference row is always profiled, so "% teacher" is filled in for students alone
    only_student = profile(path, [0.25], seconds=0.5, repeats=1)
    assert [r["ratio"] for r in only_student] == [1.0, 0.25] and only_student[1]["params"] == rows[1]["params"]


def test_profile_checkpoint_and_multichannel_model_via_cli(tmp_path, capsys):
    model = build_model("ftjnf", {"n_channels": 3, "n_lstm_hidden1": 8, "n_lstm_hidden2": 4})
    path = save_checkpoint(model, tmp_path / "ftjnf.pt")
    assert main(["profile", str(path), "--seconds", "0.5", "--repeats", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["params"] == count_params(model) and row["macs"] == macs_per_second(model, n_channels=3)


def test_profile_refuses_what_it_cannot_read(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("just: a mapping\n")
    with pytest.raises(ConfigError, match="model YAML"):
        profile(bad)
