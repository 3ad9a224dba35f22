"""``evaluate_model(num_workers=N)``: N single-threaded scorers, each enhancing and scoring its share of real
VoiceBank+DEMAND pairs; the per-utterance scores are the same whatever N is, in corpus order, and the
caller's torch thread count is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import threadpoolctl
import torch

import kdlib.evaluation as evaluation
from kdlib.data import PairedCorpus
from kdlib.errors import DataError
from kdlib.evaluation import evaluate_model
from kdlib.metrics import METRIC_NAMES, evaluate_generated, score_utterance
from kdlib.models import build_model

SMALL = {"channels": [8, 12], "rnn_hidden": 12, "n_dilated": 1, "n_dualpath": 1}
# pystoi's ESTOI varies by a few ulps between identical calls (numpy SIMD sums depend on memory alignment)
ESTOI_REL = 1e-12


@pytest.fixture(scope="module")
def corpus(data_root) -> PairedCorpus:
    return PairedCorpus(data_root / "vb_demand").subset(max_utterances=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("dpcrn_lite", SMALL).eval()


@pytest.fixture
def two_threads():
    """The caller runs torch on 2 threads (the session default is 1); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_scores_are_identical_with_1_and_2_workers_in_corpus_order(corpus, model, two_threads) -> None:
    one = evaluate_model(model, corpus, "wb", num_workers=1)
    two = evaluate_model(model, corpus, "wb", num_workers=2)
    assert one.count == two.count == 4 and one.missing == two.missing == {m: 0 for m in METRIC_NAMES}
    for a, b in zip(one.per_utterance, two.per_utterance, strict=True):
        assert list(a) == list(b) == list(METRIC_NAMES)
        assert (a["pesq"], a["stoi"], a["si_sdr"]) == (b["pesq"], b["stoi"], b["si_sdr"])
        assert a["estoi"] == pytest.approx(b["estoi"], rel=ESTOI_REL)
    assert len({u["si_sdr"] for u in two.per_utterance}) == 4  # four different utterances
    # utterance 2 of the 2-worker run is corpus pair 2, enhanced and scored on one torch thread and one BLAS
    # thread as every scorer does (numpy's multi-threaded dot products round differently: last-digit changes)
    noisy, clean = corpus.load(2)
    with evaluation._torch_threads(1), threadpoolctl.threadpool_limits(1, user_api="blas"):
        expected = score_utterance(clean, evaluation.enhance(model, noisy), 16000, "wb")
    assert two.per_utterance[2] == expected | {"estoi": pytest.approx(expected["estoi"], rel=ESTOI_REL)}
    assert torch.get_num_threads() == 2  # the caller's count, restored


@pytest.mark.parametrize("workers", [1, 2])
def test_each_scorer_runs_torch_and_blas_on_one_thread(corpus, model, two_threads, monkeypatch, workers) -> None:
    def spy(model, noisy, device=None):
        # raised in a worker process, the error comes back to the caller through the pool
        blas = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
        if torch.get_num_threads() != 1 or blas - {1}:
            raise RuntimeError(f"scorer on {torch.get_num_threads()} torch threads, BLAS {blas}")
        return real(model, noisy, device)

    real = evaluation.enhance
    monkeypatch.setattr(evaluation, "enhance", spy)
    blas_before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    summary = evaluate_model(model, corpus, "wb", metrics=("si_sdr",), num_workers=workers)
    assert summary.count == 4
    assert torch.get_num_threads() == 2
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == blas_before


def test_caller_thread_count_is_restored_when_a_scorer_fails(corpus, model, two_threads, monkeypatch) -> None:
    def broken(model, noisy, device=None):
        return np.full(noisy.shape[-1], np.nan, dtype=np.float32)

    monkeypatch.setattr(evaluation, "enhance", broken)
    for workers in (1, 2):
        with pytest.raises(DataError, match="utterance 0: .*NaN"):
            evaluate_model(model, corpus, "wb", metrics=("si_sdr",), num_workers=workers)
        assert torch.get_num_threads() == 2


def _scaled_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (reference, estimate) pair per index (module level: picklable)."""
    t = np.linspace(0.0, 1.0, 16000)
    reference = np.sin(2 * np.pi * (200 + 50 * i) * t)
    return reference, reference + 0.1 * (i + 1) * np.cos(2 * np.pi * 1000 * t)


def test_evaluate_generated_keeps_index_order_with_more_workers_than_items() -> None:
    serial = evaluate_generated(3, _scaled_pair, 16000, "wb", metrics=("si_sdr",))
    parallel = evaluate_generated(3, _scaled_pair, 16000, "wb", metrics=("si_sdr",), num_workers=8)
    assert serial == parallel
    values = [u["si_sdr"] for u in serial.per_utterance]
    assert values == sorted(values, reverse=True)  # more added noise with each index: order kept
    with pytest.raises(DataError, match="no utterances"):
        evaluate_generated(0, _scaled_pair, 16000, "wb")
