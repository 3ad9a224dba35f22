"""CLI: eval and enhance on a saved checkpoint, listings, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pesq
import pytest
from pystoi import stoi

from kdlib.cli import main
from kdlib.data import PairedCorpus, read_audio
from kdlib.evaluation import enhance
from kdlib.models import build_model, save_checkpoint

TINY = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model("dpcrn_lite", TINY).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", {"method": "none"})


def test_eval_json_equals_pesq_and_pystoi_called_directly(checkpoint, data_root, capsys):
    code = main(["eval", str(checkpoint), "--data", str(data_root / "vb_demand"), "--speakers", "p257",
                 "--max-utterances", "2", "--json", "--noisy"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    corpus = PairedCorpus(data_root / "vb_demand").subset(["p257"], 2)
    from kdlib.models import load_model

    model, _ = load_model(checkpoint)
    pesqs, stois = [], []
    for i in range(2):
        noisy, clean = corpus.load(i)
        est = enhance(model, noisy)
        pesqs.append(pesq.pesq(16000, clean, est, "wb"))
        stois.append(stoi(clean, est, 16000))
    assert result["utterances"] == 2 and result["pesq_mode"] == "wb"
    assert result["pesq"] == pytest.approx(np.mean(pesqs), abs=1e-9)
    assert result["stoi"] == pytest.approx(np.mean(stois), abs=1e-9)
    assert result["noisy_pesq"] > 1.0 and result["pesq_missing"] == 0


def test_eval_on_noizeus_uses_narrowband_pesq(checkpoint, data_root, capsys):
    code = main(["eval", str(checkpoint), "--data", str(data_root / "noizeus"), "--max-utterances", "1", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["pesq_mode"] == "nb"


def test_enhance_writes_a_file_of_the_input_length(checkpoint, data_root, tmp_path, capsys):
    src = data_root / "vb_demand" / "noisy" / "p232_001.wav"
    out = tmp_path / "enhanced.wav"
    assert main(["enhance", str(checkpoint), str(src), str(out)]) == 0
    assert read_audio(out).shape == read_audio(src).shape


def test_bad_inputs_end_with_one_error_line(checkpoint, tmp_path, capsys):
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(checkpoint.read_bytes()[:100])
    cases = [
        (["eval", str(trunc), "--data", str(tmp_path)], "truncated"),
        (["eval", str(checkpoint), "--data", str(tmp_path / "nowhere")], "nowhere"),
        (["report", "no_such_experiment", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], "none.db"),
        (["sweep", "validate", str(tmp_path / "missing.yaml")], "does not exist"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("kdlib: error:") and needle in err and "\n" not in err, err


def test_methods_and_models_list_knobs_and_sources(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "self_similarity" in text and "arXiv 2506.13127" in text and "streams" in text
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "dpcrn_lite" in text and "size knob channels" in text
