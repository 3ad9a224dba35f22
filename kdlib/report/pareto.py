"""Pareto report of a KD sweep: quality (PESQ, STOI) against student size.

:func:`pareto_front` marks the non-dominated trials (quality up, size down) with ``paretoset``.
:func:`build_report` turns the frame from :func:`kdlib.report.runs.load_runs` into two plots and a
markdown report; :func:`write_report` does both steps from an MLflow store.

Units throughout: ``params`` is a parameter count, ``params_pct`` the student's params as % of the
teacher's, ``macs`` multiply-accumulates per second of audio, PESQ/STOI/ESTOI are unitless and
SI-SDR is in dB.

matplotlib is imported lazily and draws through its Agg canvas only, without touching the global
pyplot backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from paretoset import paretoset

from kdlib.errors import KdlibError
from kdlib.report.runs import load_runs

BASELINE_METHOD = "none"
"""KD method name of the student trained alone (the no-KD reference)."""

FINISHED = "FINISHED"

#: Columns build_report reads; a frame missing any of them gets them as NaN.
_NUMERIC = [
    "student_ratio",
    "lr",
    "kd_weight",
    "params",
    "macs",
    "params_pct",
    "kd_extra_params",
    "pesq",
    "stoi",
    "estoi",
    "si_sdr",
    "noisy_pesq",
    "noisy_stoi",
    "noisy_estoi",
    "noisy_si_sdr",
]
_TEXT = ["run_id", "run_name", "role", "status", "method"]

#: Provenance keys shown first, with their labels; any other key follows in sorted order.
_PROVENANCE_LABELS = {
    "experiment": "Experiment",
    "parent_run_id": "Parent run id",
    "parent_run_name": "Parent run name",
    "started": "Sweep started",
    "config_hash": "Config hash",
    "git_commit": "Git commit",
    "sample_rate": "Sample rate (Hz)",
    "pesq_mode": "PESQ mode",
    "test_set": "Test set",
}

_BASE_TICKS = (4.0, 10.0, 25.0, 50.0, 100.0)
_LOW_TICKS = (0.1, 0.25, 0.5, 1.0, 2.0)
_KD_MARKERS = ("o", "^", "D", "v", "P", "X", "h", "<", ">")
_BASELINE_COLOR = "#7f7f7f"
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
)
_DASH = "—"


# ----------------------------------------------------------------------------------------------
# front


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


# ----------------------------------------------------------------------------------------------
# formatting helpers


def _isnum(value: Any) -> bool:
    """True when ``value`` is a finite real number."""
    try:
        return value is not None and not pd.isna(value) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any, spec: str) -> str:
    """Format a number with ``spec``, or an em dash when it is missing."""
    if not _isnum(value):
        return _DASH
    return format(round(float(value), 9) + 0.0, spec)  # + 0.0 turns -0.0 into 0.0 (no "-0.000")


def _fmt_count(value: Any) -> str:
    """Parameter count with thousands separators."""
    return f"{float(value):,.0f}" if _isnum(value) else _DASH


def _fmt_compact(value: Any) -> str:
    """Short count for axis ticks: 40k, 1.2M."""
    v = float(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _fmt_macs(value: Any) -> str:
    """MACs per second of audio, in millions (M/s)."""
    if not _isnum(value):
        return _DASH
    m = float(value) / 1e6
    return f"{m:.2f}" if abs(m) < 10 else f"{m:.1f}" if abs(m) < 100 else f"{m:,.0f}"


def _fmt_ratio(value: Any) -> str:
    return f"{float(value):g}" if _isnum(value) else _DASH


def _fmt_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return _DASH
    return str(value)


def _mean_std(values: pd.Series, spec: str) -> str:
    """``mean ± std`` (sample std) of the finite values; just the mean when there is one value."""
    v = pd.to_numeric(values, errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    if v.empty:
        return _DASH
    if len(v) == 1:
        return format(v.iloc[0], spec)
    return f"{format(v.mean(), spec)} ± {format(v.std(ddof=1), spec)}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Markdown pipe table as a list of lines."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


# ----------------------------------------------------------------------------------------------
# table preparation


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Copy ``df`` with every column build_report reads present and typed."""
    out = df.copy()
    for col in _NUMERIC:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float) if col in out else np.nan
    for col in _TEXT:
        if col not in out:
            out[col] = np.nan
    seed = pd.to_numeric(out["seed"], errors="coerce") if "seed" in out else pd.Series(np.nan, index=out.index)
    seed = seed.astype(float)
    out["seed"] = seed.where(np.isfinite(seed) & (seed == np.round(seed))).astype("Int64")
    if "status" not in df.columns:
        out["status"] = FINISHED
    if "role" not in df.columns:
        out["role"] = np.where(out["method"] == "teacher", "teacher", "trial")
    return out


def _ratio_key(ratio: Any) -> float:
    return round(float(ratio), 6) if _isnum(ratio) else float("nan")


def _baseline_means(finished: pd.DataFrame, metric: str) -> dict[float, float]:
    """Mean ``metric`` of the ``none`` students per student_ratio."""
    base = finished[(finished["method"] == BASELINE_METHOD) & np.isfinite(finished[metric])]
    return {k: float(g[metric].mean()) for k, g in base.groupby(base["student_ratio"].map(_ratio_key), dropna=True)}


def _varying_params(trials: pd.DataFrame) -> list[str]:
    """``param.<name>`` columns with more than one distinct logged value across trials (ablation knobs).

    Missing values do not count, so a knob logged only by one KD method with a fixed value (e.g.
    ``kd.wav_weight`` of ``output``) stays out of the tables.
    """
    cols = [c for c in trials.columns if isinstance(c, str) and c.startswith("param.")]
    return [c for c in cols if trials[c].dropna().astype(str).nunique() > 1]


def _teacher_row(df: pd.DataFrame) -> pd.Series | None:
    """The teacher run, preferring one with a finished PESQ."""
    teachers = df[df["role"] == "teacher"]
    if teachers.empty:
        return None
    scored = teachers[np.isfinite(teachers["pesq"])]
    return (scored if not scored.empty else teachers).iloc[0]


def _method_styles(methods: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Fixed (colour, marker) per method, shared by both plots; ``none`` is grey squares."""
    names = {str(m) for m in methods}
    styles: dict[str, tuple[str, str]] = {}
    others = sorted(names - {BASELINE_METHOD})
    if BASELINE_METHOD in names:
        styles[BASELINE_METHOD] = (_BASELINE_COLOR, "s")
    for i, m in enumerate(others):
        styles[m] = (_PALETTE[i % len(_PALETTE)], _KD_MARKERS[i % len(_KD_MARKERS)])
    return styles


# ----------------------------------------------------------------------------------------------
# plots


def _plot_front(
    data: pd.DataFrame,
    metric: str,
    ylabel: str,
    styles: dict[str, tuple[str, str]],
    teacher: pd.Series | None,
    path: Path,
    title: str,
) -> bool:
    """Draw ``metric`` against params (% of teacher, log x) for the finished trials in ``data``.

    ``data`` must carry ``_x`` (params as % of the teacher) and ``params``. Returns False (and
    writes nothing) when no trial has a finite ``metric``, ``params`` and ``_x``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    pts = data[np.isfinite(data[metric]) & np.isfinite(data["params"]) & np.isfinite(data["_x"])]
    if pts.empty:
        return False
    front = pareto_front(pts, metric, cost="params")

    fig = Figure(figsize=(9.5, 5.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    handles: list[Any] = []
    for method, (color, marker) in styles.items():
        rows = pts[pts["method"] == method]
        if rows.empty:
            continue
        on = front.loc[rows.index]
        if method == BASELINE_METHOD:
            # the no-KD reference stays readable when dominated: hollow grey squares, not faded
            ax.scatter(
                rows.loc[~on, "_x"],
                rows.loc[~on, metric],
                s=46,
                marker=marker,
                facecolors="none",
                edgecolors=color,
                linewidths=1.3,
                zorder=3.5,
            )
        else:
            ax.scatter(
                rows.loc[~on, "_x"],
                rows.loc[~on, metric],
                s=42,
                marker=marker,
                color=color,
                alpha=0.3,
                linewidths=0,
                zorder=3.5,
            )
        ax.scatter(
            rows.loc[on, "_x"],
            rows.loc[on, metric],
            s=70,
            marker=marker,
            color=color,
            edgecolors="black",
            linewidths=1.0,
            zorder=4,
        )
        if method == BASELINE_METHOD:
            handles.append(
                Line2D(
                    [],
                    [],
                    linestyle="none",
                    marker=marker,
                    markerfacecolor="none",
                    markeredgecolor=color,
                    markeredgewidth=1.3,
                    markersize=8,
                    label=f"{method}: student alone, no KD (hollow when dominated)",
                )
            )
        else:
            handles.append(Line2D([], [], linestyle="none", marker=marker, color=color, markersize=8, label=method))

    fr = pts[front].sort_values(["_x", metric])
    step_x, step_y = fr["_x"].tolist(), fr[metric].tolist()
    if float(pts["_x"].max()) > step_x[-1]:  # the best quality stays attainable up to the largest student
        step_x.append(float(pts["_x"].max()))
        step_y.append(step_y[-1])
    ax.step(step_x, step_y, where="post", color="black", linewidth=1.4, zorder=3)
    handles.append(
        Line2D(
            [],
            [],
            color="black",
            linewidth=1.4,
            marker="o",
            markerfacecolor="white",
            markeredgecolor="black",
            label="Pareto front (non-dominated, black edge)",
        )
    )
    handles.append(
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            color="black",
            alpha=0.3,
            label="dominated KD trials (faint)",
        )
    )

    x_max = max(float(pts["_x"].max()), 100.0)
    t_val = teacher.get(metric) if teacher is not None else None
    if _isnum(t_val):
        t_x = teacher.get("params_pct")
        t_x = float(t_x) if _isnum(t_x) else 100.0
        ax.axhline(float(t_val), color="#b8860b", linestyle=":", linewidth=1.2, zorder=1)
        ax.scatter(
            [t_x],
            [float(t_val)],
            marker="*",
            s=320,
            color="gold",
            edgecolors="black",
            linewidths=0.8,
            zorder=5,
        )
        handles.append(
            Line2D(
                [],
                [],
                linestyle=":",
                color="#b8860b",
                marker="*",
                markersize=14,
                markerfacecolor="gold",
                markeredgecolor="black",
                label=f"teacher ({float(t_val):.3g})",
            )
        )
        x_max = max(x_max, t_x)
    n_val = teacher.get(f"noisy_{metric}") if teacher is not None else None
    if _isnum(n_val):
        ax.axhline(float(n_val), color="dimgray", linestyle="--", linewidth=1.2, zorder=1)
        handles.append(Line2D([], [], linestyle="--", color="dimgray", label=f"noisy input ({float(n_val):.3g})"))

    x_lo = min(float(pts["_x"].min()) / 1.35, 3.3)
    x_hi = x_max * 1.35
    ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    ticks = [t for t in (*_LOW_TICKS, *_BASE_TICKS) if x_lo <= t <= x_hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("Student size: parameters as % of the teacher (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)

    t_params = teacher.get("params") if teacher is not None else None
    if _isnum(t_params) and float(t_params) > 0:
        tp = float(t_params)
        top = ax.secondary_xaxis("top", functions=(lambda p: p * tp / 100.0, lambda n: n * 100.0 / tp))
        top.xaxis.set_major_locator(FixedLocator([t * tp / 100.0 for t in ticks]))
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_compact(v)))
        top.xaxis.set_minor_locator(NullLocator())
        top.set_xlabel("Student parameters (count)")

    ax.set_title(f"{title}\n{ylabel.split(' (')[0]} vs student size", fontsize=11)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8.5, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    return True


# ----------------------------------------------------------------------------------------------
# report


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    keys = [k for k in _PROVENANCE_LABELS if k in prov] + sorted(k for k in prov if k not in _PROVENANCE_LABELS)
    rows = [(_PROVENANCE_LABELS.get(k, k), _fmt_text(prov[k])) for k in keys]
    if not rows:
        return ["No provenance recorded (no parent-run params given).", ""]
    return [*_md_table(["item", "value"], rows), ""]


def _reference_lines(teacher: pd.Series | None) -> list[str]:
    header = ["reference", "params", "params %", "MACs (M/s)", "PESQ", "STOI", "ESTOI", "SI-SDR (dB)"]
    if teacher is None:
        return ["No teacher run in this sweep.", ""]
    noisy = [
        "noisy input",
        _DASH,
        _DASH,
        _DASH,
        _fmt(teacher.get("noisy_pesq"), ".3f"),
        _fmt(teacher.get("noisy_stoi"), ".3f"),
        _fmt(teacher.get("noisy_estoi"), ".3f"),
        _fmt(teacher.get("noisy_si_sdr"), ".2f"),
    ]
    t_pct = teacher.get("params_pct") if _isnum(teacher.get("params_pct")) else 100.0
    teach = [
        f"teacher ({_fmt_text(teacher.get('run_id'))})",
        _fmt_count(teacher.get("params")),
        _fmt(t_pct, ".1f"),
        _fmt_macs(teacher.get("macs")),
        _fmt(teacher.get("pesq"), ".3f"),
        _fmt(teacher.get("stoi"), ".3f"),
        _fmt(teacher.get("estoi"), ".3f"),
        _fmt(teacher.get("si_sdr"), ".2f"),
    ]
    return [*_md_table(header, [noisy, teach]), ""]


def _front_lines(finished: pd.DataFrame, metric: str, extras: list[str], with_dstoi: bool) -> list[str]:
    mask = pareto_front(finished, metric, cost="params")
    fr = finished[mask].sort_values(["params", metric], ascending=[True, False])
    if fr.empty:
        return [f"No finished trial has both a {metric.upper()} score and a parameter count.", ""]
    header = [
        "method",
        "student_ratio",
        *[c[len("param.") :] for c in extras],
        "seed",
        "lr",
        "kd_weight",
        "params",
        "params %",
        "MACs (M/s)",
        "PESQ",
        "STOI",
        "SI-SDR (dB)",
        "ΔPESQ vs none",
    ]
    if with_dstoi:
        header.append("ΔSTOI vs none")
    header.append("run_id")
    rows = []
    for _, r in fr.iterrows():
        row = [
            _fmt_text(r["method"]),
            _fmt_ratio(r["student_ratio"]),
            *[_fmt_text(r[c]) for c in extras],
            _fmt_text(r["seed"]),
            _fmt(r["lr"], ".3g"),
            _fmt(r["kd_weight"], ".3g"),
            _fmt_count(r["params"]),
            _fmt(r["_x"], ".2f"),
            _fmt_macs(r["macs"]),
            _fmt(r["pesq"], ".3f"),
            _fmt(r["stoi"], ".3f"),
            _fmt(r["si_sdr"], ".2f"),
            _fmt(r["d_pesq"], "+.3f"),
        ]
        if with_dstoi:
            row.append(_fmt(r["d_stoi"], "+.3f"))
        row.append(_fmt_text(r["run_id"]))
        rows.append(row)
    return [*_md_table(header, rows), ""]


def _summary_lines(finished: pd.DataFrame, extras: list[str]) -> list[str]:
    keys = ["method", "_ratio", *extras]
    header = [
        "method",
        "student_ratio",
        *[c[len("param.") :] for c in extras],
        "n",
        "params",
        "MACs (M/s)",
        "PESQ",
        "STOI",
        "ESTOI",
        "SI-SDR (dB)",
        "ΔPESQ vs none (mean)",
    ]
    rows = []
    grouped = finished.assign(_ratio=finished["student_ratio"].map(_ratio_key)).groupby(keys, dropna=False, sort=False)
    order = sorted(
        grouped.groups,
        key=lambda k: (-k[1] if _isnum(k[1]) else 0.0, k[0] != BASELINE_METHOD, str(k[0]), str(k[2:])),
    )
    for key in order:
        g = grouped.get_group(key)
        rows.append(
            [
                _fmt_text(key[0]),
                _fmt_ratio(key[1]),
                *[_fmt_text(v) for v in key[2:]],
                str(len(g)),
                _fmt_count(g["params"].mean()),
                _fmt_macs(g["macs"].mean()),
                _mean_std(g["pesq"], ".3f"),
                _mean_std(g["stoi"], ".3f"),
                _mean_std(g["estoi"], ".3f"),
                _mean_std(g["si_sdr"], ".2f"),
                _fmt(g["d_pesq"].mean(), "+.3f"),
            ]
        )
    return [*_md_table(header, rows), ""]


def _failed_lines(unfinished: pd.DataFrame) -> list[str]:
    if unfinished.empty:
        return ["None.", ""]
    header = ["run_id", "run_name", "role", "method", "student_ratio", "seed", "status", "reason"]
    rows = []
    for _, r in unfinished.iterrows():
        status = _fmt_text(r["status"])
        reason = f"run status {status}" if status != FINISHED else "finished without test_pesq"
        rows.append(
            [
                _fmt_text(r["run_id"]),
                _fmt_text(r["run_name"]),
                _fmt_text(r["role"]),
                _fmt_text(r["method"]),
                _fmt_ratio(r["student_ratio"]),
                _fmt_text(r["seed"]),
                status,
                reason,
            ]
        )
    return [*_md_table(header, rows), ""]


def build_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    title: str,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the Pareto plots and the markdown report of one sweep.

    Args:
        df: runs table as returned by :func:`kdlib.report.runs.load_runs` (one row per teacher/trial
            run; see there for columns and units). Missing columns are treated as missing values.
            A trial counts as finished when its status is ``FINISHED`` and it has a finite PESQ;
            every other child run is listed as failed/unfinished and never plotted.
        out_dir: directory to write into (created if needed).
        title: report/plot title.
        provenance: key -> value shown in the provenance block (experiment, parent_run_id,
            config_hash, git_commit, sample_rate, pesq_mode, test_set, ...). ``None`` uses
            ``df.attrs["provenance"]`` when present (set by ``load_runs``).

    Returns:
        ``{"pareto": <out_dir>/pareto.png, "pareto_stoi": <out_dir>/pareto_stoi.png,
        "report": <out_dir>/report.md}``, holding only the files written: the plots are skipped
        when no finished trial has the metric and a parameter count (a plot left in ``out_dir`` by
        an earlier report is then removed). ``report.md`` is always written (it says so when there
        are no finished trials).

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov: dict[str, Any] = dict(df.attrs.get("provenance", {}) if provenance is None else provenance)

    runs = _prepare(df)
    teacher = _teacher_row(runs)
    t_params = teacher.get("params") if teacher is not None else None
    trials = runs[runs["role"] == "trial"]
    done = (runs["status"] == FINISHED) & np.isfinite(runs["pesq"])
    finished = trials[done.loc[trials.index]].copy()
    unfinished = runs[~done]

    x = finished["params_pct"].copy()
    if _isnum(t_params) and float(t_params) > 0:
        x = x.where(np.isfinite(x), finished["params"] / float(t_params) * 100.0)
    finished["_x"] = x
    ratio_keys = finished["student_ratio"].map(_ratio_key)
    for metric in ("pesq", "stoi"):
        means = _baseline_means(finished, metric)
        finished[f"d_{metric}"] = finished[metric] - ratio_keys.map(means).astype(float)
    extras = _varying_params(trials)

    paths: dict[str, Path] = {}
    styles = _method_styles(finished["method"].dropna().astype(str))
    pesq_mode = prov.get("pesq_mode")
    pesq_label = f"PESQ ({pesq_mode}, MOS-LQO, unitless)" if pesq_mode else "PESQ (MOS-LQO, unitless)"
    plots = {
        "pareto": ("pareto.png", "pesq", pesq_label),
        "pareto_stoi": ("pareto_stoi.png", "stoi", "STOI (0-1, unitless)"),
    }
    for key, (name, metric, label) in plots.items():
        if not finished.empty and _plot_front(finished, metric, label, styles, teacher, out / name, title):
            paths[key] = out / name
        else:
            (out / name).unlink(missing_ok=True)  # never leave a stale plot from an earlier report

    lines = [f"# {title}", "", "## Provenance", ""]
    lines += _provenance_lines(prov)
    lines += [
        f"Trials: {len(trials)} ({len(finished)} finished with test metrics, "
        f"{int((~done.loc[trials.index]).sum())} failed or unfinished). Metrics are each run's final "
        "`test_*` values; PESQ/STOI/ESTOI are unitless, SI-SDR is in dB, params is a parameter count, "
        "MACs are multiply-accumulates per second of audio (shown in millions, M/s).",
        "",
        "## Reference points",
        "",
    ]
    lines += _reference_lines(teacher)
    if finished.empty:
        lines += ["## Results", "", "No finished trials: nothing to plot or rank yet.", ""]
    else:
        lines += [
            "## Non-dominated trials: PESQ ↑ vs params ↓",
            "",
            f"ΔPESQ is against the mean `{BASELINE_METHOD}` student (trained alone) of the same "
            f"student_ratio; {_DASH} when that ratio has no finished `{BASELINE_METHOD}` student.",
            "",
        ]
        lines += _front_lines(finished, "pesq", extras, with_dstoi=False)
        lines += ["## Non-dominated trials: STOI ↑ vs params ↓", ""]
        lines += _front_lines(finished, "stoi", extras, with_dstoi=True)
        lines += ["## Per method and student size (mean ± std across seeds)", ""]
        lines += _summary_lines(finished, extras)
    lines += ["## Failed or unfinished runs", ""]
    lines += _failed_lines(unfinished)
    if paths.get("pareto") or paths.get("pareto_stoi"):
        lines += ["## Plots", ""]
        if "pareto" in paths:
            lines += ["![PESQ vs student params (% of teacher)](pareto.png)", ""]
        if "pareto_stoi" in paths:
            lines += ["![STOI vs student params (% of teacher)](pareto_stoi.png)", ""]

    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    paths["report"] = report
    return paths


def write_report(
    tracking_uri: str, experiment: str, out_dir: str | Path, parent_run_id: str | None = None
) -> dict[str, Path]:
    """Load a sweep from MLflow and write its Pareto report.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:////abs/path/mlflow.db``.
        experiment: experiment (= sweep) name.
        out_dir: directory for ``pareto.png``, ``pareto_stoi.png`` and ``report.md``.
        parent_run_id: sweep parent run; ``None`` = the most recent sweep of the experiment.

    Returns:
        The paths written, as :func:`build_report` returns them. A sweep with several teachers
        (``teachers:``) gets one sub-folder per teacher (keys ``<teacher>/pareto``, ...) and an
        index ``report.md`` linking them.

    Raises:
        KdlibError: as :func:`kdlib.report.runs.load_runs` (unknown store, experiment or parent).
    """
    df = load_runs(tracking_uri, experiment, parent_run_id)
    provenance = dict(df.attrs.get("provenance", {}))
    title = f"KD Pareto report: {experiment}"
    teachers = sorted(df["param.teacher"].dropna().astype(str).unique()) if "param.teacher" in df else []
    if len(teachers) <= 1:
        return build_report(df, out_dir, title=title, provenance=provenance)
    # several teachers (``teachers:``): student sizes are fractions of different models, so one
    # front per teacher, each against its own teacher and noisy reference
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    lines = [f"# {title}", "", "One report per teacher:", ""]
    for name in teachers:
        sub = df[df["param.teacher"].astype(str) == name].copy()
        written = build_report(sub, out / name, title=f"{title} (teacher {name})", provenance=provenance)
        paths.update({f"{name}/{key}": path for key, path in written.items()})
        lines.append(f"- [{name}]({name}/report.md)")
    index = out / "report.md"
    index.write_text("\n".join(lines) + "\n")
    paths["report"] = index
    return paths
