"""Which runs a report ranks, and how: the Pareto front, the ``none`` baselines and the row selection.

:func:`pareto_front` marks the non-dominated trials (quality up, size down) with ``paretoset``;
:func:`select_rows` types a runs table (from :func:`kdlib.report.runs.load_runs` or made by hand) and splits
it into the teacher, the finished trials (with their x position and the deltas against the ``none``
student) and the failed or unfinished runs.

Units: ``params`` is a parameter count, ``params_pct`` (and the plot's x position ``_x``) the student's
params as % of the teacher's, ``macs`` multiply-accumulates per second of audio; the quality metrics are in
their :data:`kdlib.metrics.specs.METRICS` units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from paretoset import paretoset

from kdlib.errors import KdlibError
from kdlib.metrics import specs
from kdlib.report.runs import BEST_VALID, CORE_PARAMS, PROVENANCE_PARAMS, metric_columns, param_column, valid_column
from kdlib.sweep.contract import ROLE_TEACHER, ROLE_TRIAL, TEACHER_METHOD

BASELINE_METHOD = "none"
"""KD method name of the student trained alone (the no-KD reference)."""

FINISHED = "FINISHED"
"""MLflow status of a run that ended normally."""

#: the metric that decides whether a trial counts as finished (it has a finite test score), whose plot is
#: ``pareto.png`` and whose delta against ``none`` every ranked table shows
PRIMARY_METRIC = "pesq"
#: metrics (names in ``METRICS``, higher is better) that get a Pareto plot and a table of non-dominated
#: trials, in this order; the primary one first
FRONT_METRICS: tuple[str, ...] = (PRIMARY_METRIC, "stoi")

_TEXT = ["run_id", "run_name", "role", "status", "method"]


def pareto_front(df: pd.DataFrame, objective: str, cost: str = "params") -> pd.Series:
    """Mark the rows of ``df`` not dominated in (``objective`` maximized, ``cost`` minimized).

    A row is dominated when another row is at least as good in both columns and strictly better in
    one. Rows with equal values are all kept (``paretoset(..., distinct=False)``). Numba is not
    used: sweeps have at most a few thousand trials and the JIT compile costs seconds.

    Args:
        df: one row per trial (e.g. from :func:`kdlib.report.runs.load_runs`).
        objective: column to maximize, e.g. ``"pesq"`` or ``"stoi"`` (unitless).
        cost: column to minimize, e.g. ``"params"`` (parameter count) or ``"macs"`` (MACs per
            second of audio).

    Returns:
        Boolean Series aligned with ``df.index``: True for the non-dominated rows among those whose
        ``objective`` and ``cost`` are both finite numbers; rows with a missing/non-finite value are
        False.

    Raises:
        KdlibError: ``df`` has no ``objective`` or no ``cost`` column.
    """
    for col in (objective, cost):
        if col not in df.columns:
            raise KdlibError(f"pareto_front: no column {col!r} in the runs table (columns: {list(df.columns)})")
    mask = pd.Series(False, index=df.index, name=f"front_{objective}_{cost}", dtype=bool)
    values = df[[objective, cost]].apply(pd.to_numeric, errors="coerce").astype(float)
    finite = np.isfinite(values.to_numpy()).all(axis=1)
    if finite.any():
        front = paretoset(values.to_numpy()[finite], sense=["max", "min"], distinct=False, use_numba=False)
        mask.iloc[np.flatnonzero(finite)] = np.asarray(front, dtype=bool)
    return mask


def isnum(value: Any) -> bool:
    """True when ``value`` is a finite real number."""
    try:
        return value is not None and not pd.isna(value) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def ratio_key(ratio: Any) -> float:
    """``student_ratio`` rounded for grouping (float noise in logged params must not split a group); NaN if missing."""
    return round(float(ratio), 6) if isnum(ratio) else float("nan")


def delta_column(metric: str) -> str:
    """Column of a finished trial's ``metric`` minus the mean ``none`` student of its ratio."""
    return f"d_{metric}"


def numeric_columns() -> list[str]:
    """Columns the report reads as floats: the float core params, then every metric column of the runs table."""
    return [name for name, kind in CORE_PARAMS.items() if kind == "float"] + list(metric_columns())


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Copy ``df`` with every column build_report reads present and typed."""
    out = df.copy()
    for col in numeric_columns():
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float) if col in out else np.nan
    for col in _TEXT:
        if col not in out:
            out[col] = np.nan
    seed = pd.to_numeric(out["seed"], errors="coerce") if "seed" in out else pd.Series(np.nan, index=out.index)
    seed = seed.astype(float)
    out["seed"] = seed.where(np.isfinite(seed) & (seed == np.round(seed))).astype("Int64")
    if "status" not in df.columns:
        out["status"] = FINISHED
    if "role" not in df.columns:  # a hand-made frame: the teacher run logs the method "teacher"
        out["role"] = np.where(out["method"] == TEACHER_METHOD, ROLE_TEACHER, ROLE_TRIAL)
    return out


def _baseline_means(finished: pd.DataFrame, metric: str) -> dict[float, float]:
    """Mean ``metric`` of the ``none`` students per student_ratio."""
    base = finished[(finished["method"] == BASELINE_METHOD) & np.isfinite(finished[metric])]
    return {k: float(g[metric].mean()) for k, g in base.groupby(base["student_ratio"].map(ratio_key), dropna=True)}


def _varying_params(trials: pd.DataFrame) -> list[str]:
    """``param.<name>`` columns with more than one distinct logged value across trials (ablation knobs, and
    ``param.lr`` / ``param.kd_weight`` when they were searched); provenance params (commit, config hash, PESQ
    mode, sample rate) never count, so a resumed sweep on a newer commit keeps its cells.

    Missing values do not count, so a knob logged only by one KD method with a fixed value (e.g.
    ``kd.wav_weight`` of ``output``) stays out of the tables.
    """
    skip = {param_column(name) for name in PROVENANCE_PARAMS}
    cols = [c for c in trials.columns if isinstance(c, str) and c.startswith("param.") and c not in skip]
    return [c for c in cols if trials[c].dropna().astype(str).nunique() > 1]


def _teacher_row(df: pd.DataFrame) -> pd.Series | None:
    """The teacher run, preferring one with a finished primary metric."""
    teachers = df[df["role"] == ROLE_TEACHER]
    if teachers.empty:
        return None
    scored = teachers[np.isfinite(teachers[PRIMARY_METRIC])]
    return (scored if not scored.empty else teachers).iloc[0]


@dataclass
class ReportRows:
    """A runs table split the way the report shows it.

    Attributes:
        teacher: the teacher run (``None`` when the sweep has none).
        trials: every trial run.
        finished: the trials with status ``FINISHED`` and a finite :data:`PRIMARY_METRIC`, plus ``_x``
            (params as % of the teacher, for the plots and tables) and one :func:`delta_column` per
            :data:`FRONT_METRICS` entry (NaN where the ratio has no finished ``none`` student).
        unfinished: every other child run (teacher included when it did not finish), listed as failed.
        extras: ``param.<name>`` columns that vary across the trials (ablation knobs shown as columns).
    """

    teacher: pd.Series | None
    trials: pd.DataFrame
    finished: pd.DataFrame
    unfinished: pd.DataFrame
    extras: list[str]


def select_rows(df: pd.DataFrame) -> ReportRows:
    """Type ``df`` (missing columns become missing values) and split it into :class:`ReportRows`."""
    runs = _prepare(df)
    teacher = _teacher_row(runs)
    t_params = teacher.get("params") if teacher is not None else None
    trials = runs[runs["role"] == ROLE_TRIAL]
    done = (runs["status"] == FINISHED) & np.isfinite(runs[PRIMARY_METRIC])
    finished = trials[done.loc[trials.index]].copy()
    unfinished = runs[~done]

    x = finished["params_pct"].copy()
    if isnum(t_params) and float(t_params) > 0:
        x = x.where(np.isfinite(x), finished["params"] / float(t_params) * 100.0)
    finished["_x"] = x
    ratio_keys = finished["student_ratio"].map(ratio_key)
    for metric in FRONT_METRICS:
        means = _baseline_means(finished, metric)
        finished[delta_column(metric)] = finished[metric] - ratio_keys.map(means).astype(float)
    return ReportRows(teacher, trials, finished, unfinished, _varying_params(trials))


def selection_column(finished: pd.DataFrame, metric: str) -> str | None:
    """The validation column the front of ``metric`` is chosen on: ``valid_<metric>`` when every finished trial
    logged it, else ``best_val_si_sdr`` (runs from before kdlib scored the validation set), else None."""
    for col in (valid_column(metric), BEST_VALID):
        if col in finished and len(finished) and np.isfinite(finished[col].astype(float)).all():
            return col
    return None


def cell_front(finished: pd.DataFrame, metric: str, extras: list[str]) -> pd.DataFrame:
    """Grid cells (method, student ratio, varying knobs) with their seed means, and which of them are on
    the Pareto front chosen on **validation**: non-dominated in (mean :func:`selection_column` ↑, mean
    params ↓). Test numbers are only reported for what was chosen; picking single seeds by their test
    score would favour high-variance methods and select on the test set.

    Args:
        finished: finished trials (:class:`ReportRows` ``finished``: ``_x`` and the delta columns included).
        metric: the quality metric of the front (``pesq``, ``stoi``).
        extras: ``param.<name>`` columns that tell cells apart.

    Returns:
        one row per cell: ``method``, ``student_ratio``, the extras, ``n`` (trials), ``params``, ``_x``,
        ``macs``, ``select`` (mean validation score), ``selected_on`` (its column), the test mean of every
        metric of the table, ``<metric>_std`` (std over the cell's trials), the mean delta column of ``metric``,
        ``run_ids`` and ``on_front``; sorted by params. Empty when nothing can be selected on.
    """
    column = selection_column(finished, metric)
    if column is None or finished.empty:
        return pd.DataFrame()
    keys = ["method", "_ratio", *extras]
    grouped = finished.assign(_ratio=finished["student_ratio"].map(ratio_key)).groupby(keys, dropna=False, sort=False)
    rows = []
    for key, g in grouped:
        rows.append({
            "method": key[0], "student_ratio": key[1], **dict(zip(extras, key[2:], strict=True)), "n": len(g),
            "params": g["params"].mean(), "_x": g["_x"].mean(), "macs": g["macs"].mean(),
            "select": g[column].astype(float).mean(), "selected_on": column,
            **{m.name: g[m.name].mean() for m in specs.METRICS if m.name in g},
            f"{metric}_std": g[metric].std(ddof=1) if len(g) > 1 else 0.0,
            delta_column(metric): g[delta_column(metric)].mean(),
            "run_ids": ",".join(g["run_id"].astype(str)),
        })
    cells = pd.DataFrame(rows)
    cells["on_front"] = pareto_front(cells, "select", cost="params")
    return cells.sort_values(["params", "select"], ascending=[True, False]).reset_index(drop=True)
