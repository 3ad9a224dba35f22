"""Is a KD method's gain over the ``none`` student real? Paired statistics over seeds and utterances.

For one comparison (a method at one student ratio against the ``none`` student of the same ratio, both
trained with the same seeds on the same mixtures, scored on the same test utterances):

* **Δ per seed**: mean over utterances of (method − none) for each matched seed; reported as mean ± std
  over seeds (sample std, ddof = 1; 0 with one seed).
* **95 % interval of Δ** from a hierarchical bootstrap that carries both sources of variance: resample the
  matched seeds with replacement and the utterances with replacement (one utterance draw shared by the
  drawn seeds: every seed is scored on the same utterances), and take the mean Δ; percentile interval over
  ``n_boot`` draws (numpy's ``default_rng``; scipy's ``bootstrap`` resamples one level only). With 3 seeds
  a percentile interval is too narrow for the seed part (it covered the true Δ in 75 % of 300 simulated
  seed-dominated cases of 3 seeds × 27 utterances; 96 % with this rule), so the interval reported is never
  narrower than the t interval of the per-seed means (S − 1 degrees of freedom).
* **Paired tests**: Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided) on the per-utterance Δ
  averaged over the matched seeds, and a one-sample t-test (``scipy.stats.ttest_1samp``) on the per-seed
  Δ; the comparison's p is the larger of the two (an intersection-union test: with S seeds, a shift that
  one lucky seed gives every utterance cannot pass the seed test, whose false-positive rate stays 5 %).
* **Holm correction** across the comparisons of one report (:func:`holm`).

A gain is called significant only when the Holm-corrected p < ``alpha`` **and** the interval excludes 0
**and** there are at least :data:`MIN_SEEDS` matched seeds; with fewer seeds the verdict says the result is
about the trained models, not about the method. Utterances a metric could not score (NaN) are left out
of that seed's Δ and counted in :attr:`Comparison.missing`, which the report shows.

Measured (``tests/test_report_stats.py`` runs the same simulation, 200 cases each): with no true effect,
3 seeds and 27 utterances, "significant" came out in 4.0 % of 300 seed-dominated cases (seed shift sd
0.03 PESQ) and 2.3 % of 300 cases with a shared per-utterance effect (sd 0.1); the interval covered 0
in 96 % and 95 % of them.

Source: the issue's protocol (hierarchical bootstrap, Wilcoxon, Holm); Holm, "A simple sequentially
rejective multiple test procedure", Scand. J. Statist. 6 (1979).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: fewest matched seeds for a method-level claim
MIN_SEEDS = 3
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """One method-vs-baseline comparison on one metric and test set.

    Attributes:
        delta: mean over matched seeds of the per-seed mean Δ (metric units, e.g. PESQ MOS-LQO).
        delta_std: sample std of the per-seed Δ over seeds (0 with one seed).
        ci_low, ci_high: 95 % interval of Δ: the hierarchical bootstrap's, widened to the per-seed t interval
            where that is wider (NaN when nothing could be paired).
        p_value: max(two-sided Wilcoxon signed-rank p over utterances, two-sided t-test p over the per-seed Δ)
            (the Wilcoxon p alone with one seed; 1.0 when every Δ is 0; NaN when nothing could be paired).
        seeds: matched seeds used. utterances: utterances paired in every seed.
        missing: (seed, utterance) cells left out because either model's score is missing.
    """

    delta: float
    delta_std: float
    ci_low: float
    ci_high: float
    p_value: float
    seeds: tuple[int, ...]
    utterances: int
    missing: int


def compare(method: Mapping[int, Sequence[float]], baseline: Mapping[int, Sequence[float]], *,
            n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Compare per-utterance scores of a method with its baseline, seed by seed.

    Args:
        method, baseline: training seed → per-utterance scores ``(U,)`` on the same test set, in the same
            utterance order (NaN = not scored). Only seeds present in both with at least one pair of
            scores are used (matched seeds).
        n_boot: bootstrap draws. seed: seed of the bootstrap's generator.

    Returns:
        a :class:`Comparison` (NaN fields when no seed or no utterance could be paired). Its ``p_value``
        is the larger of the Wilcoxon p over utterances and the one-sample t-test p over the per-seed
        Δ (an intersection-union test: a gain must hold across utterances *and* across training seeds,
        so a lucky seed shift that moves every utterance alike is not enough).

    Raises:
        ValueError: a matched seed whose two score vectors differ in length.
    """
    deltas: dict[int, np.ndarray] = {}
    missing = 0
    for s in sorted(set(method) & set(baseline)):
        a, b = np.asarray(method[s], dtype=float), np.asarray(baseline[s], dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"seed {s}: {a.shape[0]} method scores but {b.shape[0]} baseline scores")
        d = a - b
        missing += int(np.count_nonzero(~np.isfinite(d)))
        if np.isfinite(d).any():
            deltas[s] = d
    seeds = tuple(deltas)
    nan = float("nan")
    if not deltas:
        return Comparison(nan, nan, nan, nan, nan, seeds, 0, missing)
    table = np.vstack(list(deltas.values()))  # (seeds, U)
    per_seed = np.array([np.nanmean(row) for row in table])
    low, high = hierarchical_interval(table, n_boot=n_boot, seed=seed)
    if per_seed.size > 1 and np.ptp(per_seed) > 0:
        # a percentile bootstrap over 3 seeds is too narrow for the seed part: never narrower than the
        # t interval of the per-seed means (S - 1 degrees of freedom)
        t_low, t_high = sps.t.interval(0.95, per_seed.size - 1, loc=per_seed.mean(), scale=sps.sem(per_seed))
        low, high = min(low, float(t_low)), max(high, float(t_high))
    p_utts = wilcoxon_p(np.nanmean(table, axis=0))
    p_seeds = seed_p(per_seed)
    return Comparison(
        delta=float(per_seed.mean()), delta_std=float(per_seed.std(ddof=1)) if per_seed.size > 1 else 0.0,
        ci_low=low, ci_high=high, p_value=max(p_utts, p_seeds) if np.isfinite(p_seeds) else p_utts,
        seeds=seeds, utterances=int(np.isfinite(table).all(axis=0).sum()), missing=missing)


def seed_p(per_seed: np.ndarray) -> float:
    """Two-sided one-sample t-test p (``scipy.stats.ttest_1samp``) of the per-seed Δ against 0; NaN with
    fewer than 2 seeds, 1.0 when every Δ is 0, 0.0 when they are equal and non-zero."""
    d = np.asarray(per_seed, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan")
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return 1.0 if abs(d[0]) <= 1e-12 else 0.0
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def hierarchical_interval(table: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``table`` ``(S seeds, U utterances)`` (NaN = missing) under a
    two-level bootstrap: seeds with replacement, then one draw of utterances with replacement shared by
    every drawn seed (all seeds are scored on the same utterances, so their utterance effects are shared).

    Returns:
        ``(low, high)``; NaNs when the table holds no finite value.
    """
    rng = np.random.default_rng(seed)
    table = np.atleast_2d(np.asarray(table, dtype=float))
    if not np.isfinite(table).any():
        return float("nan"), float("nan")
    n_seeds, n_utts = table.shape
    draws = np.empty(n_boot)
    for k in range(n_boot):
        sub = table[np.ix_(rng.integers(n_seeds, size=n_seeds), rng.integers(n_utts, size=n_utts))]
        draws[k] = np.nanmean(sub) if np.isfinite(sub).any() else np.nan
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))


def wilcoxon_p(deltas: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-utterance differences (NaNs dropped): 1.0 when every
    difference is 0, NaN with no difference at all."""
    d = np.asarray(deltas, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(sps.wilcoxon(d, alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given; NaNs stay NaN and do not count as tests).

    The k-th smallest of m p-values is multiplied by (m − k + 1), the running maximum is taken so the
    adjusted values keep the order of the raw ones, and values are capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(c: Comparison, p_adjusted: float, *, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> str:
    """The report's words for one comparison.

    ``significant gain`` / ``significant loss``: corrected p < ``alpha``, the interval excludes 0 and at
    least ``min_seeds`` matched seeds. ``not significant``: enough seeds, but not both conditions. With fewer
    seeds: ``N seed(s): these models, not the method`` (no method-level claim either way).
    """
    if len(c.seeds) < min_seeds:
        return f"{len(c.seeds)} seed(s): these models, not the method"
    excludes_zero = math.isfinite(c.ci_low) and (c.ci_low > 0 or c.ci_high < 0)
    if math.isfinite(p_adjusted) and p_adjusted < alpha and excludes_zero:
        return "significant gain" if c.delta > 0 else "significant loss"
    return "not significant"
