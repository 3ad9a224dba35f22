"""Tests of kdlib.metrics on real audio (VoiceBank+DEMAND and NOIZEUS from the shared data folder).

The data root is ``$KDLIB_DATA`` or ``<repo>/../shared/data``; tests that need it are skipped if absent.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pesq
import pystoi
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from kdlib.errors import ConfigError, DataError
from kdlib.metrics import (
    METRIC_NAMES,
    MetricSummary,
    MetricWarning,
    evaluate_pairs,
    pesq_score,
    score_utterance,
    si_sdr,
    si_sdr_torch,
    specs,
    stoi_score,
)
from tests.conftest import SHARED_DATA

VB = SHARED_DATA / "vb_demand"
NOIZEUS = SHARED_DATA / "noizeus"
SR = 16000

needs_vb = pytest.mark.skipif(
    not (VB / "clean").is_dir(), reason=f"VoiceBank+DEMAND subset not found at {VB}"
)
# pystoi's ESTOI varies by a few ulps between identical calls (numpy SIMD sums depend on memory alignment),
# so ESTOI is compared to this relative tolerance; PESQ, STOI and SI-SDR are compared exactly.
ESTOI_REL = 1e-12
needs_noizeus = pytest.mark.skipif(
    not (NOIZEUS / "clean").is_dir(), reason=f"NOIZEUS subset not found at {NOIZEUS}"
)


def _read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float64")
    assert rate == SR and audio.ndim == 1, f"{path}: expected 16 kHz mono"
    return audio


def _vb_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    return _read(VB / "clean" / name), _read(VB / "noisy" / name)


def _vb_names() -> list[str]:
    return sorted(p.name for p in (VB / "clean").glob("*.wav"))


# ----------------------------------------------------------------------------- equality with the libraries


@needs_vb
def test_pesq_wb_equals_pesq_package_on_real_pair() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    expected = pesq.pesq(SR, clean, noisy, "wb")
    assert pesq_score(clean, noisy, SR, "wb") == expected
    assert 1.0 < expected < 4.7


@needs_vb
def test_pesq_wb_resamples_higher_rates_with_resample_poly() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    clean48, noisy48 = resample_poly(clean, 3, 1), resample_poly(noisy, 3, 1)
    expected = pesq.pesq(SR, resample_poly(clean48, 1, 3), resample_poly(noisy48, 1, 3), "wb")
    assert pesq_score(clean48, noisy48, 48000, "wb") == expected


@needs_noizeus
def test_pesq_nb_scores_noizeus_at_8k() -> None:
    clean = _read(NOIZEUS / "clean" / "sp01.wav")
    noisy = _read(NOIZEUS / "noisy" / "sp01_babble_sn5.wav")
    expected = pesq.pesq(8000, resample_poly(clean, 1, 2), resample_poly(noisy, 1, 2), "nb")
    assert pesq_score(clean, noisy, SR, "nb") == expected
    # the same audio already at 8 kHz is scored as is
    assert pesq_score(resample_poly(clean, 1, 2), resample_poly(noisy, 1, 2), 8000, "nb") == expected


@needs_vb
@needs_noizeus
@pytest.mark.parametrize("extended", [False, True])
def test_stoi_and_estoi_equal_pystoi(extended: bool) -> None:
    pairs = [
        _vb_pair("p232_001.wav"),
        (_read(NOIZEUS / "clean" / "sp03.wav"), _read(NOIZEUS / "noisy" / "sp03_car_sn0.wav")),
    ]
    for clean, noisy in pairs:
        expected = pystoi.stoi(clean, noisy, SR, extended=extended)
        assert stoi_score(clean, noisy, SR, extended=extended) == pytest.approx(
            expected, rel=ESTOI_REL if extended else 0.0, abs=0.0
        )
        assert 0.1 < expected < 1.0


@needs_vb
def test_score_utterance_equals_the_single_metric_functions() -> None:
    clean, noisy = _vb_pair("p232_003.wav")
    scores = score_utterance(clean, noisy, SR, "wb")
    assert list(scores) == list(METRIC_NAMES)
    assert scores["pesq"] == pesq_score(clean, noisy, SR, "wb")
    assert scores["stoi"] == stoi_score(clean, noisy, SR)
    assert scores["estoi"] == pytest.approx(stoi_score(clean, noisy, SR, extended=True), rel=ESTOI_REL)
    assert scores["si_sdr"] == si_sdr(noisy, clean)
    assert list(score_utterance(clean, noisy, SR, "wb", metrics=("si_sdr", "stoi"))) == ["si_sdr", "stoi"]


# -------------------------------------------------------------------------------------------- SI-SDR


def _orthogonal_construction(reference: np.ndarray, sdr_db: float, seed: int = 0) -> np.ndarray:
    """An estimate whose SI-SDR against ``reference`` is exactly ``sdr_db`` (up to rounding).

    ``estimate = gain * (r0 + n) + offset`` where ``r0`` is the zero-mean reference and ``n`` is zero-mean
    noise orthogonal to ``r0`` with ``||r0||^2 / ||n||^2 = 10^(sdr_db / 10)``.
    """
    r0 = reference - reference.mean()
    n = np.random.default_rng(seed).standard_normal(reference.shape)
    n -= n.mean()
    n -= (n @ r0) / (r0 @ r0) * r0
    n -= n.mean()  # r0 is zero-mean, so this keeps n orthogonal to it
    n *= math.sqrt((r0 @ r0) / (n @ n) / 10.0 ** (sdr_db / 10.0))
    return 2.7 * (r0 + n) + 0.05


@needs_vb
@pytest.mark.parametrize("sdr_db", [-5.0, 0.0, 7.5, 20.0])
def test_si_sdr_known_value_on_orthogonal_construction(sdr_db: float) -> None:
    clean, _ = _vb_pair("p232_001.wav")
    estimate = _orthogonal_construction(clean, sdr_db)
    assert si_sdr(estimate, clean) == pytest.approx(sdr_db, abs=1e-6)


@needs_vb
def test_si_sdr_scale_invariance_and_perfect_estimate() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    value = si_sdr(noisy, clean)
    assert si_sdr(3.0 * noisy, clean) == pytest.approx(value, abs=1e-9)
    assert si_sdr(noisy, 0.2 * clean) == pytest.approx(value, abs=1e-9)
    # independent form: with rho the correlation coefficient, SI-SDR = 10 log10(rho^2 / (1 - rho^2))
    rho = np.corrcoef(noisy, clean)[0, 1]
    assert value == pytest.approx(10 * math.log10(rho**2 / (1 - rho**2)), abs=1e-9)
    assert si_sdr(clean, clean) > 100.0
    assert math.isfinite(si_sdr(clean, clean))
    assert si_sdr(-noisy, clean) == pytest.approx(value, abs=1e-9)  # alpha may be negative


@needs_vb
def test_si_sdr_torch_matches_numpy_and_is_differentiable() -> None:
    names = _vb_names()[:2]
    length = min(len(_vb_pair(n)[0]) for n in names)
    pairs = [_vb_pair(n) for n in names]
    refs = np.stack([c[:length] for c, _ in pairs])
    ests = np.stack([d[:length] for _, d in pairs])
    expected = [si_sdr(e, r) for e, r in zip(ests, refs, strict=True)]

    est_t = torch.tensor(ests, requires_grad=True)
    value = si_sdr_torch(est_t, torch.tensor(refs))
    assert value.shape == (2,)
    np.testing.assert_allclose(value.detach().numpy(), expected, atol=1e-6)
    (-value.sum()).backward()
    assert est_t.grad is not None
    assert torch.isfinite(est_t.grad).all() and est_t.grad.abs().sum() > 0

    value32 = si_sdr_torch(torch.tensor(ests, dtype=torch.float32), torch.tensor(refs, dtype=torch.float32))
    np.testing.assert_allclose(value32.numpy(), expected, atol=1e-3)

    # perfect and silent estimates stay finite, with finite gradients (usable as a loss)
    silent = torch.zeros(1, length, dtype=torch.float64, requires_grad=True)
    out = si_sdr_torch(torch.cat([silent, torch.tensor(refs[:1])]), torch.tensor(refs[:2]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(silent.grad).all()


def test_si_sdr_torch_rejects_bad_shapes() -> None:
    with pytest.raises(DataError, match=r"\(B, L\)"):
        si_sdr_torch(torch.zeros(10), torch.zeros(10))
    with pytest.raises(DataError, match=r"\(B, L\)"):
        si_sdr_torch(torch.zeros(2, 10), torch.zeros(2, 11))


# ------------------------------------------------------------------------------------ unscorable input


@needs_vb
def test_silent_and_too_short_inputs_give_none_with_a_warning() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    silent = np.zeros_like(clean)
    with pytest.warns(MetricWarning, match="PESQ could not score.*silent"):
        assert pesq_score(clean, silent, SR, "wb") is None
    with pytest.warns(MetricWarning, match="PESQ could not score.*silent"):
        assert pesq_score(silent, noisy, SR, "wb") is None
    with pytest.warns(MetricWarning, match="STOI could not score.*silent"):
        assert stoi_score(clean, silent, SR) is None
    with pytest.warns(MetricWarning, match="ESTOI could not score.*silent"):
        assert stoi_score(silent, noisy, SR, extended=True) is None
    with pytest.warns(MetricWarning, match="SI-SDR could not score"):
        assert math.isnan(si_sdr(silent, clean))

    start = int(np.argmax(np.abs(clean)))  # inside speech, so this is not just silence
    short = slice(start - 800, start + 800)  # 0.1 s
    with pytest.warns(MetricWarning, match="BufferTooShortError"):
        assert pesq_score(clean[short], noisy[short], SR, "wb") is None
    with pytest.warns(MetricWarning, match="STOI could not score.*active speech"):
        assert stoi_score(clean[short], noisy[short], SR) is None


@needs_vb
def test_stoi_none_where_pystoi_silently_returns_1e_05() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    start = int(np.argmax(np.abs(clean)))
    short = slice(start - 2800, start + 2800)  # 0.35 s of speech: fewer than 30 STFT frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert pystoi.stoi(clean[short], noisy[short], SR) == 1e-05  # the pitfall itself
    with pytest.warns(MetricWarning, match="not enough STFT frames"):
        assert stoi_score(clean[short], noisy[short], SR) is None
    with pytest.warns(MetricWarning, match="not enough STFT frames"):
        assert stoi_score(clean[short], noisy[short], SR, extended=True) is None


@needs_vb
def test_evaluate_pairs_counts_missing_and_averages_over_scored_only() -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    silent = np.zeros_like(clean)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate_pairs([clean, clean], [noisy, silent], SR, "wb")
    metric_warnings = [w for w in caught if issubclass(w.category, MetricWarning)]
    assert len(metric_warnings) == 1, [str(w.message) for w in caught]
    message = str(metric_warnings[0].message)
    assert "PESQ could not score 1 of 2 utterances" in message
    assert "utterance 1" in message

    assert summary.count == 2
    assert summary.missing == {"pesq": 1, "stoi": 1, "estoi": 1, "si_sdr": 1}
    assert summary.means["pesq"] == pesq.pesq(SR, clean, noisy, "wb")
    assert summary.means["stoi"] == pystoi.stoi(clean, noisy, SR)
    assert summary.means["si_sdr"] == si_sdr(noisy, clean)
    assert summary.per_utterance[1] == {"pesq": None, "stoi": None, "estoi": None, "si_sdr": None}
    assert summary.per_utterance[0]["pesq"] == summary.means["pesq"]

    flat = summary.as_flat_dict("val/")
    assert set(flat) == {f"val/{m}{s}" for m in METRIC_NAMES for s in ("", "_missing")}
    assert flat["val/pesq"] == summary.means["pesq"] and flat["val/pesq_missing"] == 1


def test_metric_summary_nan_mean_when_nothing_scored() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(SR)
    with pytest.warns(MetricWarning, match="SI-SDR could not score 2 of 2 utterances"):
        summary = evaluate_pairs([ref, ref], [np.zeros(SR), np.ones(SR)], SR, "wb", metrics=["si_sdr"])
    assert isinstance(summary, MetricSummary)
    assert math.isnan(summary.means["si_sdr"]) and summary.missing == {"si_sdr": 2}
    assert summary.as_flat_dict() == {"si_sdr": summary.means["si_sdr"], "si_sdr_missing": 2}


# ------------------------------------------------------------------------------------------ workers


@needs_vb
def test_workers_give_identical_results_in_input_order() -> None:
    names = _vb_names()[:4]
    pairs = [_vb_pair(n) for n in names]
    refs, ests = [c for c, _ in pairs], [d for _, d in pairs]
    serial = evaluate_pairs(refs, ests, SR, "wb", num_workers=1)
    parallel = evaluate_pairs(refs, ests, SR, "wb", num_workers=2)
    for par, ser in zip(parallel.per_utterance, serial.per_utterance, strict=True):
        assert list(par) == list(ser) == list(METRIC_NAMES)
        assert (par["pesq"], par["stoi"], par["si_sdr"]) == (ser["pesq"], ser["stoi"], ser["si_sdr"])
        assert par["estoi"] == pytest.approx(ser["estoi"], rel=ESTOI_REL)
    assert parallel.missing == serial.missing == {m: 0 for m in METRIC_NAMES}
    assert parallel.means["pesq"] == serial.means["pesq"] and parallel.means["stoi"] == serial.means["stoi"]
    assert serial.per_utterance[2]["pesq"] == pesq.pesq(SR, refs[2], ests[2], "wb")  # order kept
    assert len({u["pesq"] for u in serial.per_utterance}) == 4


@needs_vb
def test_spawn_start_method_gives_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    clean, noisy = _vb_pair("p232_001.wav")
    refs, ests = [clean, noisy], [noisy, clean]
    metrics = ("pesq", "stoi", "si_sdr")  # no ESTOI: not bit-reproducible even in-process
    serial = evaluate_pairs(refs, ests, SR, "wb", metrics=metrics)
    monkeypatch.setenv("KDLIB_METRICS_START_METHOD", "spawn")
    assert evaluate_pairs(refs, ests, SR, "wb", metrics=metrics, num_workers=2) == serial
    monkeypatch.setenv("KDLIB_METRICS_START_METHOD", "teleport")
    with pytest.raises(ConfigError, match="KDLIB_METRICS_START_METHOD"):
        evaluate_pairs(refs, ests, SR, "wb", metrics=metrics, num_workers=2)


@needs_vb
def test_known_baseline_of_noisy_vb_demand_subset() -> None:
    """The data README gives noisy PESQ-WB 1.52 and STOI 0.882 over all 51 VoiceBank+DEMAND pairs."""
    names = _vb_names()
    assert len(names) == 51
    pairs = [_vb_pair(n) for n in names]
    summary = evaluate_pairs(
        [c for c, _ in pairs], [d for _, d in pairs], SR, "wb", metrics=("pesq", "stoi"), num_workers=2
    )
    assert summary.count == 51 and summary.missing == {"pesq": 0, "stoi": 0}
    assert summary.means["pesq"] == pytest.approx(1.52, abs=0.02)
    assert summary.means["stoi"] == pytest.approx(0.882, abs=0.02)


# ------------------------------------------------------------------------------------------ the metric table


def _mae_scorer(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, pesq_mode: str
) -> tuple[float | None, str | None]:
    """Toy metric: mean absolute error (module level, so worker processes can unpickle it)."""
    return float(np.mean(np.abs(reference - estimate))), None


MAE = specs.MetricSpec("mae", "MAE", fmt=".4f", higher_is_better=False, score=_mae_scorer)


@needs_vb
def test_a_new_metric_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specs, "METRICS", (*specs.METRICS, MAE))
    pairs = [_vb_pair("p232_001.wav"), _vb_pair("p232_003.wav")]
    refs, ests = [c for c, _ in pairs], [d for _, d in pairs]
    expected = float(np.mean([np.mean(np.abs(c - d)) for c, d in pairs]))

    summary = evaluate_pairs(refs, ests, SR, "wb")  # the default list is the table
    assert list(summary.means) == [*METRIC_NAMES, "mae"] and summary.missing["mae"] == 0
    assert summary.means["mae"] == pytest.approx(expected)
    assert list(summary.as_flat_dict("test_"))[-2:] == ["test_mae", "test_mae_missing"]  # the MLflow keys
    assert specs.metric_keys("noisy_")[-1] == "noisy_mae"
    assert list(score_utterance(refs[0], ests[0], SR, "wb")) == [*METRIC_NAMES, "mae"]

    # a table of the new metric alone: its function travels to worker processes, and a PESQ mode that no
    # requested metric uses is not checked
    monkeypatch.setattr(specs, "METRICS", (MAE,))
    parallel = evaluate_pairs(refs, ests, SR, "unused", num_workers=2)
    assert list(parallel.means) == ["mae"] and parallel.means["mae"] == pytest.approx(expected)
    with pytest.raises(DataError, match="unknown metric.*'pesq'.*valid: mae"):
        evaluate_pairs(refs, ests, SR, "wb", metrics=("pesq",))


def test_metric_table_shape() -> None:
    assert METRIC_NAMES == tuple(m.name for m in specs.METRICS) == ("pesq", "stoi", "estoi", "si_sdr")
    assert all(m.score is not None for m in specs.METRICS)
    assert [c.name for c in specs.COSTS] == ["params", "macs"] and not any(c.higher_is_better for c in specs.COSTS)
    assert specs.metric("si_sdr").column_label == "SI-SDR (dB)"
    assert specs.metric("pesq").axis_label("nb") == "PESQ (nb, MOS-LQO, unitless)"
    assert specs.metric("stoi").axis_label("nb") == "STOI (0-1, unitless)"
    with pytest.raises(DataError, match="unknown metric 'sdr'"):
        specs.metric("sdr")


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_raises_data_error() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(SR), rng.standard_normal(SR)
    with pytest.raises(DataError, match="at least 16000 Hz"):
        pesq_score(x[::2], y[::2], 8000, "wb")
    with pytest.raises(DataError, match="unknown PESQ mode 'swb'"):
        pesq_score(x, y, SR, "swb")
    with pytest.raises(DataError, match="differ in length: 16000 vs 15999"):
        pesq_score(x, y[:-1], SR, "wb")
    with pytest.raises(DataError, match="differ in length"):
        stoi_score(x, y[:-1], SR)
    with pytest.raises(DataError, match="differ in length"):
        si_sdr(x[:-1], y)
    with pytest.raises(DataError, match=r"1-D signal of shape \(L,\)"):
        pesq_score(x.reshape(2, -1), y.reshape(2, -1), SR, "wb")
    with pytest.raises(DataError, match="NaN"):
        stoi_score(x, np.where(y > 2, np.nan, y), SR)
    with pytest.raises(DataError, match="sample_rate"):
        stoi_score(x, y, 16000.0)  # type: ignore[arg-type]


def test_evaluate_pairs_rejects_bad_requests() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(SR), rng.standard_normal(SR)
    with pytest.raises(DataError, match="unknown metric.*'sdr'.*valid: pesq, stoi, estoi, si_sdr"):
        evaluate_pairs([x], [y], SR, "wb", metrics=("sdr",))
    with pytest.raises(DataError, match="utterance 1: .*differ in length"):
        evaluate_pairs([x, x], [y, y[:-5]], SR, "wb", metrics=("si_sdr",))
    with pytest.raises(DataError, match="2 references but 1 estimates"):
        evaluate_pairs([x, x], [y], SR, "wb")
    with pytest.raises(DataError, match="no utterances"):
        evaluate_pairs([], [], SR, "wb")
    with pytest.raises(DataError, match="at least 16000 Hz"):
        evaluate_pairs([x], [y], 8000, "wb")
    # the PESQ mode only matters when PESQ is asked for
    assert evaluate_pairs([x], [y], 8000, "wb", metrics=("si_sdr",)).count == 1
