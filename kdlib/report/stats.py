"""Is a KD method's gain over the ``none`` student real? Paired statistics over seeds and utterances.

For one comparison (a method at one student ratio against the ``none`` student of the same ratio, both
trained with the same seeds on the same mixtures, scored on the same test utterances):

* **Δ per seed**: mean over utterances of (method − none) for each matched seed; reported as mean ± std
  over seeds (sample std, ddof = 1; 0 with one seed).
* **95 % interval of Δ** from a hierarchical bootstrap that carries both sources of variance: resample the
  matched seeds with replacement, then within each drawn seed resample its utterances with replacement, and
  take the mean Δ; percentile interval over ``n_boot`` draws (numpy's ``default_rng``; scipy's
  ``bootstrap`` resamples one level only).
* **Paired test over utterances**: Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided) on the
  per-utterance Δ averaged over the matched seeds.
* **Holm correction** across the comparisons of one report (:func:`holm`).

A gain is called significant only when the Holm-corrected p < ``alpha`` **and** the interval excludes 0
**and** there are at least :data:`MIN_SEEDS` matched seeds; with fewer seeds the verdict says the result is
about the trained models, not about the method. Utterances a metric could not score (NaN) are left out
of that seed's Δ and counted in :attr:`Comparison.missing`, which the report shows.

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
        ci_low, ci_high: 95 % hierarchical-bootstrap interval of Δ (NaN when nothing could be paired).
        p_value: two-sided Wilcoxon signed-rank p over utterances (1.0 when every Δ is 0; NaN when < 1 pair).
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
            utterance order (NaN = not scored). Only seeds present in both are used (matched seeds).
        n_boot: bootstrap draws. seed: seed of the bootstrap's generator.

    Returns:
        a :class:`Comparison` (NaN fields when no seed or no utterance could be paired).

    Raises:
        ValueError: a matched seed whose two score vectors differ in length.
    """
    seeds = tuple(sorted(set(method) & set(baseline)))
    deltas: list[np.ndarray] = []
    missing = 0
    for s in seeds:
        a, b = np.asarray(method[s], dtype=float), np.asarray(baseline[s], dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"seed {s}: {a.shape[0]} method scores but {b.shape[0]} baseline scores")
        deltas.append(a - b)
        missing += int(np.count_nonzero(~np.isfinite(a - b)))
    nan = float("nan")
    if not deltas or deltas[0].size == 0:
        return Comparison(nan, nan, nan, nan, nan, seeds, 0, missing)
    table = np.vstack(deltas)  # (seeds, U)
    per_seed = np.array([np.nanmean(row) if np.isfinite(row).any() else nan for row in table])
    per_seed = per_seed[np.isfinite(per_seed)]
    if per_seed.size == 0:
        return Comparison(nan, nan, nan, nan, nan, seeds, 0, missing)
    paired_everywhere = np.isfinite(table).all(axis=0)
    low, high = hierarchical_interval(table, n_boot=n_boot, seed=seed)
    return Comparison(
        delta=float(per_seed.mean()), delta_std=float(per_seed.std(ddof=1)) if per_seed.size > 1 else 0.0,
        ci_low=low, ci_high=high, p_value=wilcoxon_p(np.nanmean(table, axis=0)),
        seeds=seeds, utterances=int(paired_everywhere.sum()), missing=missing)


def hierarchical_interval(table: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``table`` ``(S seeds, U utterances)`` (NaN = missing) under a
    two-level bootstrap: seeds with replacement, then utterances with replacement within each drawn seed.

    Returns:
        ``(low, high)``; NaNs when the table holds no finite value.
    """
    rng = np.random.default_rng(seed)
    rows = [row[np.isfinite(row)] for row in np.atleast_2d(table)]
    rows = [row for row in rows if row.size]
    if not rows:
        return float("nan"), float("nan")
    draws = np.empty(n_boot)
    for k in range(n_boot):
        picked = rng.integers(len(rows), size=len(rows))
        draws[k] = np.mean([rows[i][rng.integers(rows[i].size, size=rows[i].size)].mean() for i in picked])
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
