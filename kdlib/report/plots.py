"""Pareto plots of a KD sweep: one quality metric against student size (params as % of the teacher).

matplotlib is imported lazily and draws through its Agg canvas only, without touching the global pyplot
backend. Every method keeps one colour and marker across the plots of a report (:func:`method_styles`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlib.metrics.specs import MetricSpec
from kdlib.report.front import BASELINE_METHOD, cell_front, isnum
from kdlib.report.runs import noisy_column

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


def plot_file(metric: str, primary: str) -> str:
    """File name of ``metric``'s plot: ``pareto.png`` for the primary metric, else ``pareto_<metric>.png``."""
    return "pareto.png" if metric == primary else f"pareto_{metric}.png"


def _fmt_compact(value: Any) -> str:
    """Short count for axis ticks: 40k, 1.2M."""
    v = float(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def method_styles(methods: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Fixed (colour, marker) per method, shared by all plots; ``none`` is grey squares."""
    names = {str(m) for m in methods}
    styles: dict[str, tuple[str, str]] = {}
    others = sorted(names - {BASELINE_METHOD})
    if BASELINE_METHOD in names:
        styles[BASELINE_METHOD] = (_BASELINE_COLOR, "s")
    for i, m in enumerate(others):
        styles[m] = (_PALETTE[i % len(_PALETTE)], _KD_MARKERS[i % len(_KD_MARKERS)])
    return styles


def plot_front(
    data: pd.DataFrame,
    spec: MetricSpec,
    pesq_mode: str | None,
    styles: dict[str, tuple[str, str]],
    teacher: pd.Series | None,
    path: Path,
    title: str,
    extras: list[str] | None = None,
) -> bool:
    """Draw metric ``spec`` against params (% of teacher, log x) for the finished trials in ``data``.

    Args:
        data: finished trials; must carry ``_x`` (params as % of the teacher), ``params``, ``method`` and the
            metric's column ``spec.name``.
        spec: the quality metric (higher is better) on the y axis, labelled ``spec.axis_label(pesq_mode)``.
        pesq_mode: the sweep's PESQ mode, named on the axis of a metric that uses it (``None``: not named).
        styles: (colour, marker) per method, from :func:`method_styles`.
        teacher: teacher run (its score is a star and a dotted line; its ``noisy_<name>`` a dashed line).
        path: PNG file to write.
        title: first title line.
        extras: knob columns that tell grid cells apart (the front is one of cells, chosen on validation:
            :func:`kdlib.report.front.cell_front`).

    Returns:
        False (and writes nothing) when no trial has a finite metric, ``params`` and ``_x``; else True.

    Raises:
        OSError: ``path`` cannot be written.
    """
    metric = spec.name
    ylabel = spec.axis_label(pesq_mode)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    pts = data[np.isfinite(data[metric]) & np.isfinite(data["params"]) & np.isfinite(data["_x"])]
    if pts.empty:
        return False
    # the front is chosen on validation, per grid cell (seeds pooled); the test scores of its cells are drawn
    cells = cell_front(pts, metric, extras or [])
    chosen = cells[cells["on_front"]] if not cells.empty else cells
    front_ids = {rid for ids in chosen.get("run_ids", []) for rid in str(ids).split(",")}
    front = pts["run_id"].astype(str).isin(front_ids) if "run_id" in pts else pd.Series(False, index=pts.index)

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
                    label=f"{method}: student alone, no KD (hollow when off the front)",
                )
            )
        else:
            handles.append(Line2D([], [], linestyle="none", marker=marker, color=color, markersize=8, label=method))

    if not chosen.empty:
        fr = chosen.sort_values(["_x", metric])
        ax.errorbar(fr["_x"], fr[metric], yerr=fr[f"{metric}_std"].fillna(0.0), fmt="D", color="black",
                    markerfacecolor="white", markersize=6, capsize=3, linewidth=1.2, zorder=4.5)
        ax.plot(fr["_x"], fr[metric], color="black", linewidth=1.2, linestyle="-", zorder=3)
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linewidth=1.2,
                marker="D",
                markerfacecolor="white",
                markeredgecolor="black",
                label="front chosen on validation: cell test mean ± std (its trials: black edge)",
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
            label="KD trials off the front (faint)",
        )
    )

    x_max = max(float(pts["_x"].max()), 100.0)
    t_val = teacher.get(metric) if teacher is not None else None
    if isnum(t_val):
        t_x = teacher.get("params_pct")
        t_x = float(t_x) if isnum(t_x) else 100.0
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
    n_val = teacher.get(noisy_column(metric)) if teacher is not None else None
    if isnum(n_val):
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
    if isnum(t_params) and float(t_params) > 0:
        tp = float(t_params)
        top = ax.secondary_xaxis("top", functions=(lambda p: p * tp / 100.0, lambda n: n * 100.0 / tp))
        top.xaxis.set_major_locator(FixedLocator([t * tp / 100.0 for t in ticks]))
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_compact(v)))
        top.xaxis.set_minor_locator(NullLocator())
        top.set_xlabel("Student parameters (count)")

    ax.set_title(f"{title}\n{spec.label} vs student size", fontsize=11)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8.5, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    return True
