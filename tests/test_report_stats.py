"""The report's statistics (issue 10): Holm against a hand-computed case, Wilcoxon against the exact
null distribution, the hierarchical bootstrap against a one-level one, and the significance table and
report section on constructed per-utterance scores."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdlib.report.build import build_report
from kdlib.report.significance import significance_table
from kdlib.report.stats import Comparison, compare, hierarchical_interval, holm, verdict, wilcoxon_p


# ---- Holm ------------------------------------------------------------------------------------------------
def test_holm_matches_a_hand_computed_case():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan():
    out = holm([0.5, float("nan"), 0.6])
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)
    assert holm([]) == []


# ---- Wilcoxon ----------------------------------------------------------------------------------------------
def test_wilcoxon_matches_the_exact_null_distribution():
    """Exact two-sided p of the signed-rank statistic, enumerated over all 2^n sign patterns."""
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, -0.05, 0.25])
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    total = ranks.sum()
    w = [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in itertools.product([0, 1], repeat=d.size)]
    extreme = min(observed, total - observed)
    exact = np.mean([min(x, total - x) <= extreme for x in w])
    assert wilcoxon_p(d) == pytest.approx(exact, rel=1e-9)


def test_wilcoxon_of_no_difference_is_one_and_of_nothing_is_nan():
    assert wilcoxon_p(np.zeros(5)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([np.nan])))


# ---- the hierarchical bootstrap ------------------------------------------------------------------------------
def test_bootstrap_carries_the_seed_variance_a_pooled_bootstrap_misses():
    """Three seeds whose Δ differ a lot, small utterance noise: pooling the utterances (one level, scipy)
    gives a narrow interval; resampling seeds first gives one as wide as the seeds' spread."""
    rng = np.random.default_rng(3)
    table = np.stack([m + 0.01 * rng.standard_normal(40) for m in (-0.2, 0.1, 0.4)])
    low, high = hierarchical_interval(table, n_boot=3000)
    pooled = sps.bootstrap((table.ravel(),), np.mean, n_resamples=3000, random_state=0,
                           method="percentile").confidence_interval
    assert high - low > 3 * (pooled.high - pooled.low)
    assert low < 0.1 < high and low >= -0.21 and high <= 0.41  # inside the range of the seed means


def test_bootstrap_shares_the_utterance_draw_across_seeds():
    """Every seed is scored on the same utterances: an utterance effect common to all seeds must keep its full
    variance in the interval (independent utterance draws per seed would shrink it by the number of seeds)."""
    rng = np.random.default_rng(5)
    shared = rng.normal(0, 0.3, 30)
    table = np.stack([shared + 0.001 * s for s in range(4)])
    low, high = hierarchical_interval(table, n_boot=3000)
    pooled = sps.bootstrap((shared,), np.mean, n_resamples=3000, random_state=0, method="percentile")
    width = pooled.confidence_interval.high - pooled.confidence_interval.low
    assert high - low == pytest.approx(width, rel=0.25)


@pytest.mark.parametrize("seed_sd,utterance_sd", [(0.03, 0.0), (0.0, 0.1)], ids=["seed-shift", "shared-utterance"])
def test_no_effect_is_rarely_called_significant_and_the_interval_covers_it(seed_sd, utterance_sd):
    """False-positive rate and coverage under no true effect, 3 seeds × 27 utterances (200 simulated sweeps)."""
    rng = np.random.default_rng(11)
    called = covered = 0
    n = 200
    for r in range(n):
        base = {s: rng.uniform(1.5, 3.0, 27) for s in range(3)}
        effect = rng.normal(0, utterance_sd, 27)
        method = {s: v + rng.normal(0, seed_sd) + effect + rng.normal(0, 0.02, 27) for s, v in base.items()}
        c = compare(method, base, n_boot=200, seed=r)
        called += verdict(c, c.p_value).startswith("significant")
        covered += c.ci_low <= 0 <= c.ci_high
    assert called / n <= 0.08 and covered / n >= 0.88, (called, covered)


def test_bootstrap_of_a_constant_difference_is_that_difference():
    low, high = hierarchical_interval(np.full((3, 10), 0.25), n_boot=200)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


# ---- one comparison ----------------------------------------------------------------------------------------------
def _scores(seeds, n=20, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.5, 3.0, n)
    return {s: base + shift + 0.001 * s for s in seeds}


def test_a_consistent_gain_over_three_seeds_is_significant():
    baseline = _scores([0, 1, 2])
    gain = 0.1 + 0.001 * (np.arange(20) - 9.5)  # distinct per utterance (no ties), mean 0.1, same every seed
    method = {s: v + gain for s, v in baseline.items()}
    c = compare(method, baseline, n_boot=500)
    assert c.delta == pytest.approx(0.1) and c.delta_std == pytest.approx(0.0, abs=1e-12)
    assert 0.09 < c.ci_low < 0.1 < c.ci_high < 0.11
    assert c.p_value == pytest.approx(2 / 2**20)  # every one of 20 differences positive: exact two-sided p
    assert c.seeds == (0, 1, 2) and c.utterances == 20 and c.missing == 0
    assert verdict(c, c.p_value) == "significant gain"
    assert verdict(Comparison(-0.1, 0, -0.2, -0.05, 1e-4, (0, 1, 2), 20, 0), 1e-4) == "significant loss"


def test_one_seed_never_makes_a_method_claim():
    baseline = _scores([0])
    c = compare({0: baseline[0] + 0.1}, baseline, n_boot=200)
    assert c.p_value < 1e-5  # a "significant" test over utterances ...
    assert verdict(c, c.p_value) == "1 seed(s): these models, not the method"  # ... is about one model


def test_only_matched_seeds_are_compared_and_missing_scores_are_counted():
    baseline = _scores([1, 2, 3])
    method = {s: v + 0.05 for s, v in _scores([0, 1, 2]).items()}
    method[2] = method[2].copy()
    method[2][4] = np.nan
    c = compare(method, baseline, n_boot=200)
    assert c.seeds == (1, 2) and c.missing == 1 and c.utterances == 19
    assert c.delta == pytest.approx(0.05)


def test_a_gain_within_the_seed_noise_is_not_significant():
    rng = np.random.default_rng(7)
    baseline = _scores([0, 1, 2])
    method = {s: v + d + 0.02 * rng.standard_normal(20) for (s, v), d in zip(baseline.items(), (-0.2, 0.05, 0.25),
                                                                              strict=True)}
    c = compare(method, baseline, n_boot=1000)
    assert c.ci_low < 0 < c.ci_high
    assert verdict(c, 1e-6) == "not significant"  # even with a tiny p, the interval holds 0


# ---- the table and the report section ----------------------------------------------------------------------------
def _runs_and_scores(n_utts=15):
    rows, scores = [], {}
    utts = [f"u{i:02d}" for i in range(n_utts)]
    base = np.random.default_rng(0).uniform(1.5, 3.0, n_utts)
    distinct = 0.001 * (np.arange(n_utts) - (n_utts - 1) / 2)  # no tied differences: Wilcoxon stays exact
    for method, shift in (("none", 0.0), ("output", 0.2 + distinct), ("fitnets", 0.0)):
        for seed in (0, 1, 2):
            run_id = f"{method}-{seed}"
            pesq = base + shift + 0.01 * seed
            rows.append({"run_id": run_id, "run_name": run_id, "role": "trial", "status": "FINISHED",
                         "method": method, "student_ratio": 0.1, "seed": seed, "pesq": float(pesq.mean()),
                         "stoi": 0.9, "params": 1000, "macs": 1e6, "params_pct": 10.0})
            scores[run_id] = pd.DataFrame({"utterance": utts[::-1], "pesq": pesq[::-1],
                                           "stoi": np.full(n_utts, 0.9)})
    rows.append({"run_id": "t", "run_name": "teacher", "role": "teacher", "status": "FINISHED", "method": "teacher",
                 "student_ratio": 1.0, "pesq": 3.0, "stoi": 0.95, "params": 10000, "macs": 1e7, "params_pct": 100.0})
    return pd.DataFrame(rows), scores


def test_significance_table_pairs_by_seed_and_utterance_and_corrects_across_rows():
    df, scores = _runs_and_scores()
    scores["fitnets-1"].loc[3, "pesq"] = np.nan  # one utterance fitnets could not score
    finished = df[df["role"] == "trial"]
    table = significance_table(finished, scores, extras=[], metrics=("pesq",), n_boot=300)
    assert list(table["method"]) == ["output", "fitnets"]
    out = table.iloc[0]
    assert out["delta"] == pytest.approx(0.2) and out["seeds"] == 3 and out["verdict"] == "significant gain"
    assert out["delta_std"] == pytest.approx(0.0, abs=1e-12)  # seed k of output is paired with seed k of none
    assert out["p"] == pytest.approx(2 / 2**15)
    assert out["p_holm"] == pytest.approx(min(1.0, 2 * out["p"]))  # two comparisons
    fit = table.iloc[1]
    assert fit["delta"] == pytest.approx(0.0, abs=1e-12) and fit["missing"] == 1 and fit["p"] == 1.0
    assert fit["verdict"] == "not significant"


def test_report_has_the_significance_section(tmp_path):
    df, scores = _runs_and_scores()
    paths = build_report(df, tmp_path, "t", provenance={"test_set": "vb_demand:p232"}, scores=scores)
    text = paths["report"].read_text()
    section = text.split("## Significance against `none` (test set vb_demand:p232)")[1].split("\n## ")[0]
    assert "| output | 0.1 |" in section and "significant gain" in section
    assert "hierarchical bootstrap" in section and "Holm" in section
    assert "Significance" not in build_report(df, tmp_path / "plain", "t")["report"].read_text()


# ---- the teacher-quality gate ------------------------------------------------------------------------------------
def _with_teacher(df, scores, shift):
    """Give the teacher per-utterance scores ``shift`` above the mean none student (plus distinct offsets)."""
    none = [scores[f"none-{s}"].set_index("utterance")["pesq"] for s in (0, 1, 2)]
    mean = pd.concat(none, axis=1).mean(axis=1)
    t = (mean + shift + 0.001 * np.arange(len(mean))).rename("pesq").reset_index()
    scores = {**scores, "t": t}
    df = df.copy()
    teacher = df["role"] == "teacher"
    df.loc[teacher, "pesq"] = float(t["pesq"].mean())
    df["valid_pesq"] = df["pesq"]
    df["noisy_stoi"] = np.where(teacher, 0.85, np.nan)
    return df, scores


def test_a_clearly_better_teacher_passes_the_gate(tmp_path):
    from kdlib.report.front import select_rows
    from kdlib.report.significance import teacher_gate

    df, scores = _with_teacher(*_runs_and_scores(), shift=0.5)
    rows = select_rows(df)
    gate = teacher_gate(rows.teacher, rows.finished, scores)
    assert len(gate) == 1 and bool(gate["ok"].iloc[0])
    assert gate["test_margin"].iloc[0] == pytest.approx(0.5 + 0.007, abs=1e-9)
    assert gate["p"].iloc[0] == pytest.approx(2 / 2**15)
    text = build_report(df, tmp_path, "t", scores=scores)["report"].read_text()
    assert "## Teacher quality" in text and "KD gains are not expected" not in text


def test_a_teacher_no_better_than_its_students_is_flagged_at_the_top(tmp_path):
    df, scores = _with_teacher(*_runs_and_scores(), shift=-0.007)  # Δ per utterance symmetric around 0
    text = build_report(df, tmp_path, "t", scores=scores)["report"].read_text()
    head = text.split("## Provenance")[0]
    assert "⚠ **KD gains are not expected from this teacher**" in head and "student_ratio 0.1" in head
    summary = text.split("## Per method")[1].split("## ")[0]
    none_row = next(line for line in summary.splitlines() if line.startswith("| none | 0.1 |"))
    assert "| +0.050 |" in none_row  # ΔSTOI vs input: 0.900 - 0.850


def test_a_teacher_without_per_utterance_scores_is_untested_not_flagged(tmp_path):
    df, scores = _with_teacher(*_runs_and_scores(), shift=0.5)
    del scores["t"]  # a teacher trained before kdlib kept per-utterance scores
    text = build_report(df, tmp_path, "t", scores=scores)["report"].read_text()
    assert "untested (no per-utterance teacher scores)" in text and "KD gains are not expected" not in text


def test_cells_with_different_searched_weights_are_compared_apart(tmp_path):
    """output at λ = 1 (+0.3) and at λ = 0.5 (-0.3), 3 seeds each: two cells, one gain and one loss, each against
    the same `none` students; pooled, they would cancel out."""
    from kdlib.report.front import cell_front, select_rows

    df, scores = _runs_and_scores()
    df = df[df["method"] != "fitnets"].copy()
    df["param.kd_weight"] = np.where(df["method"] == "none", "0.5", "1.0")
    extra = []
    for seed in (0, 1, 2):
        rid = f"output-half-{seed}"
        row = df[df["run_id"] == f"output-{seed}"].iloc[0].to_dict()
        extra.append({**row, "run_id": rid, "run_name": rid, "param.kd_weight": "0.5"})
        base = scores[f"none-{seed}"]
        step = 0.0001 * np.arange(len(base))  # distinct differences: no ties for Wilcoxon
        scores[rid] = base.assign(pesq=base["pesq"] - 0.3 - step)
        scores[f"output-{seed}"] = base.assign(pesq=base["pesq"] + 0.3 + step)
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    df["valid_pesq"] = df["pesq"]
    rows = select_rows(df)
    assert "param.kd_weight" in rows.extras
    table = significance_table(rows.finished, scores, rows.extras, ("pesq",), n_boot=200)
    by_knobs = {r["knobs"]: r for _, r in table.iterrows()}
    assert by_knobs["kd_weight=1.0"]["verdict"] == "significant gain"
    assert by_knobs["kd_weight=0.5"]["verdict"] == "significant loss"
    cells = cell_front(rows.finished, "pesq", rows.extras)
    assert len(cells[cells["method"] == "output"]) == 2
