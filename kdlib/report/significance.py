"""The report's significance table: every (method, student ratio[, knobs]) cell against the ``none`` student
of the same ratio, from the per-utterance test scores each trial logs (``test_scores.csv``), with the
statistics of :mod:`kdlib.report.stats` and Holm's correction across every comparison of the table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlib.report.front import BASELINE_METHOD, ratio_key
from kdlib.report.runs import param_column
from kdlib.report.stats import MIN_SEEDS, compare, holm, verdict
from kdlib.sweep.contract import TEST_SCORES_FILE

#: columns of :func:`significance_table`
COLUMNS = ["method", "student_ratio", "knobs", "metric", "delta", "delta_std", "ci_low", "ci_high", "p", "p_holm",
           "seeds", "utterances", "missing", "verdict"]


def load_scores(tracking_uri: str, run_ids: Sequence[str], file: str = TEST_SCORES_FILE) -> dict[str, pd.DataFrame]:
    """Per-utterance test scores of each run that logged them (``file``: ``test_scores.csv`` for the primary
    test set, ``test_scores_<name>.csv`` for a named one), by run id.

    Runs without the artifact (failed trials, sweeps from before kdlib logged it) are left out.
    """
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as folder:
        for run_id in run_ids:
            try:
                if not any(a.path == file for a in client.list_artifacts(run_id)):
                    continue
                path = client.download_artifacts(run_id, file, folder)
            except Exception:  # noqa: BLE001 - an unreadable artifact only drops that run from the statistics
                continue
            out[run_id] = pd.read_csv(path, dtype={"utterance": str})
    return out


def _cell_key(row: pd.Series, extras: Sequence[str]) -> tuple[Any, ...]:
    return (row["method"], ratio_key(row["student_ratio"]), *[row.get(c) for c in extras])


def _by_seed(runs: pd.DataFrame, scores: Mapping[str, pd.DataFrame]) -> dict[int, pd.DataFrame]:
    """seed → that run's per-utterance table (the first run per seed with scores; a cell holds one run per
    seed once its searched settings, ``param.lr`` / ``param.kd_weight``, are among its keys)."""
    out: dict[int, pd.DataFrame] = {}
    for _, r in runs.iterrows():
        seed = r.get("seed")
        if r["run_id"] in scores and seed is not None and not pd.isna(seed) and int(seed) not in out:
            out[int(seed)] = scores[r["run_id"]]
    return out


def _aligned(method: dict[int, pd.DataFrame], baseline: dict[int, pd.DataFrame], metric: str
             ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Score vectors of the matched seeds, both in the baseline's utterance order (NaN where one side lacks
    the utterance or the score)."""
    a, b = {}, {}
    for seed in sorted(set(method) & set(baseline)):
        base = baseline[seed][["utterance", metric]] if metric in baseline[seed] else None
        meth = method[seed][["utterance", metric]] if metric in method[seed] else None
        if base is None or meth is None:
            continue
        joined = base.merge(meth, on="utterance", how="outer", suffixes=("_b", "_a"))
        a[seed] = pd.to_numeric(joined[f"{metric}_a"], errors="coerce").to_numpy(dtype=float)
        b[seed] = pd.to_numeric(joined[f"{metric}_b"], errors="coerce").to_numpy(dtype=float)
    return a, b


def significance_table(finished: pd.DataFrame, scores: Mapping[str, pd.DataFrame], extras: Sequence[str],
                       metrics: Sequence[str] = ("pesq",), *, n_boot: int = 2000) -> pd.DataFrame:
    """One row per (KD cell, metric) against the ``none`` student of the same ratio.

    Args:
        finished: finished trials (``run_id``, ``method``, ``student_ratio``, ``seed`` and the ``extras``).
        scores: run id → per-utterance table (``utterance`` plus one column per metric).
        extras: knob columns that tell cells apart (``param.<name>``); a baseline is matched on those of them
            its own rows carry (e.g. ``param.teacher``), the method's own knobs are shown in ``knobs``.
        metrics: metric columns to compare (higher is better for every one of them).

    Returns:
        a frame with :data:`COLUMNS` (``p_holm`` over every row of the frame; ``verdict`` from
        :func:`kdlib.report.stats.verdict`), sorted by ratio (largest first), metric and Δ.
    """
    rows: list[dict[str, Any]] = []
    if finished.empty:
        return pd.DataFrame(columns=COLUMNS)
    cells = {key: g for key, g in finished.groupby(finished.apply(lambda r: _cell_key(r, extras), axis=1),
                                                    sort=False)}
    baselines = finished[finished["method"] == BASELINE_METHOD]
    for key, group in cells.items():
        method, ratio = key[0], key[1]
        if method == BASELINE_METHOD:
            continue
        base = baselines[baselines["student_ratio"].map(ratio_key) == ratio]
        for col in extras:  # match the baseline on the dimensions it has (teacher, student family, lr, ...)
            if col in (param_column("kd_weight"), param_column("variant")) or col.startswith(param_column("kd.")):
                continue  # λ, KD knobs and their named variants do nothing to the student trained alone
            if col in base and base[col].notna().any():
                base = base[base[col].astype(str) == str(group.iloc[0].get(col))]
        knobs = ", ".join(f"{c.removeprefix('param.')}={v}" for c, v in zip(extras, key[2:], strict=True)
                          if v is not None and not (isinstance(v, float) and math.isnan(v)))
        for metric in metrics:
            a, b = _aligned(_by_seed(group, scores), _by_seed(base, scores), metric)
            c = compare(a, b, n_boot=n_boot)
            rows.append({"method": method, "student_ratio": ratio, "knobs": knobs, "metric": metric,
                         "delta": c.delta, "delta_std": c.delta_std, "ci_low": c.ci_low, "ci_high": c.ci_high,
                         "p": c.p_value, "seeds": len(c.seeds), "utterances": c.utterances, "missing": c.missing,
                         "_comparison": c})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].tolist())
    table["verdict"] = [verdict(c, p) if len(c.seeds) else "no per-utterance scores to pair"
                        for c, p in zip(table["_comparison"], table["p_holm"], strict=True)]
    table = table.drop(columns="_comparison").sort_values(["student_ratio", "metric", "delta"],
                                                          ascending=[False, True, False], kind="stable")
    return table[COLUMNS].reset_index(drop=True)


def significance_note() -> str:
    """The sentence under the table that says what the columns mean."""
    return (f"Δ is the method minus the `{BASELINE_METHOD}` student of the same ratio, per matched training seed "
            "(mean ± std over seeds), utterance by utterance. The 95 % interval is a hierarchical bootstrap (seeds, "
            "then one utterance draw shared by them), widened to the t interval of the per-seed Δ where that is "
            "wider. p is the larger of a two-sided Wilcoxon signed-rank test over utterances (Δ averaged over the "
            "matched seeds) and a two-sided t-test over the per-seed Δ, Holm-corrected across every row. A gain "
            f"is called significant only with corrected p < 0.05, an interval that excludes 0 and at least "
            f"{MIN_SEEDS} seeds; with fewer seeds a row compares these trained models, not the methods. `missing` "
            "counts (seed, utterance) cells a metric could not score for either model; those are left out and the "
            "row is flagged.")


#: columns of :func:`teacher_gate`
GATE_COLUMNS = ["student_ratio", "students", "valid_margin", "test_margin", "p", "utterances", "ok"]
GATE_WARNING = "KD gains are not expected from this teacher"


def teacher_gate(teacher: pd.Series | None, finished: pd.DataFrame, scores: Mapping[str, pd.DataFrame],
                 metric: str = "pesq", *, alpha: float = 0.05) -> pd.DataFrame:
    """Is the teacher clearly better than the students it distils into? Per student ratio, against the
    ``none`` students (trained alone) of that ratio.

    Args:
        teacher: the teacher run (``run_id``, ``<metric>`` on test, ``valid_<metric>``).
        finished: finished trials. scores: run id → per-utterance test scores (the teacher's included).

    Returns:
        one row per ratio with ``none`` students: ``valid_margin`` / ``test_margin`` (teacher minus the
        students' mean, metric units), ``p`` (two-sided Wilcoxon signed-rank over test utterances of the
        teacher minus the students' per-utterance mean; NaN without per-utterance scores) and ``ok``: True
        when the margin is positive on validation and test **and** p < ``alpha``; None when the margins are
        positive but there are no per-utterance scores to test them; else False.
    """
    from kdlib.report.stats import wilcoxon_p

    if teacher is None or finished.empty:
        return pd.DataFrame(columns=GATE_COLUMNS)
    base = finished[finished["method"] == BASELINE_METHOD]
    t_scores = scores.get(str(teacher.get("run_id")))
    rows = []
    for ratio, g in base.groupby(base["student_ratio"].map(ratio_key)):
        valid_col = f"valid_{metric}"
        t_valid = teacher.get(valid_col)
        valid_margin = float(t_valid) - g[valid_col].mean() if valid_col in g and pd.notna(t_valid) else np.nan
        test_margin = float(teacher.get(metric)) - g[metric].mean() if pd.notna(teacher.get(metric)) else np.nan
        p, n = np.nan, 0
        student_tables = [scores[r] for r in g["run_id"].astype(str) if r in scores]
        if t_scores is not None and metric in t_scores and student_tables:
            mean = pd.concat([t.set_index("utterance")[metric] for t in student_tables], axis=1).mean(axis=1)
            joined = t_scores.set_index("utterance")[metric].to_frame("t").join(mean.rename("s"), how="inner")
            d = (joined["t"] - joined["s"]).to_numpy(dtype=float)
            n = int(np.isfinite(d).sum())
            p = wilcoxon_p(d)
        margins = np.nan_to_num(valid_margin, nan=1.0) > 0 and np.nan_to_num(test_margin, nan=1.0) > 0
        # None: nothing to test with (no per-utterance scores, e.g. a teacher trained before kdlib kept them)
        ok = None if margins and not (np.isfinite(p) and np.isfinite(test_margin)) \
            else bool(margins and p < alpha)
        rows.append({"student_ratio": ratio, "students": len(g), "valid_margin": valid_margin,
                     "test_margin": test_margin, "p": p, "utterances": n, "ok": ok})
    return pd.DataFrame(rows, columns=GATE_COLUMNS)
