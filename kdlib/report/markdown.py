"""The markdown text of a Pareto report: number formatting, tables, and the document itself.

Every quality column comes from :data:`kdlib.metrics.specs.METRICS` (header ``spec.column_label``, values
formatted with ``spec.fmt``); the cost columns' headers come from :data:`kdlib.metrics.specs.COSTS`. Missing
values are shown as an em dash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlib.metrics import specs
from kdlib.metrics.specs import MetricSpec
from kdlib.report.front import (
    BASELINE_METHOD,
    FINISHED,
    PRIMARY_METRIC,
    ReportRows,
    cell_front,
    delta_column,
    isnum,
    ratio_key,
)
from kdlib.report.runs import missing_column, noisy_column
from kdlib.report.significance import GATE_WARNING, significance_note
from kdlib.sweep.contract import TEST_PREFIX, VALID_PREFIX

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

_DASH = "—"

# ----------------------------------------------------------------------------------------------
# formatting


def _fmt(value: Any, spec: str) -> str:
    """Format a number with ``spec``, or an em dash when it is missing."""
    if not isnum(value):
        return _DASH
    return format(round(float(value), 9) + 0.0, spec)  # + 0.0 turns -0.0 into 0.0 (no "-0.000")


def _fmt_p(value: Any) -> str:
    """A p-value with two significant digits; ``< 1e-16`` below double precision's resolution near 1 (a
    normal approximation over many utterances can underflow to 0)."""
    if isnum(value) and 0 <= float(value) < 1e-16:
        return "< 1e-16"
    return _fmt(value, ".2g")


def _fmt_count(value: Any) -> str:
    """Parameter count with thousands separators."""
    return f"{float(value):,.0f}" if isnum(value) else _DASH


def _fmt_macs(value: Any) -> str:
    """MACs per second of audio, in millions (M/s)."""
    if not isnum(value):
        return _DASH
    m = float(value) / 1e6
    return f"{m:.2f}" if abs(m) < 10 else f"{m:.1f}" if abs(m) < 100 else f"{m:,.0f}"


def _fmt_ratio(value: Any) -> str:
    return f"{float(value):g}" if isnum(value) else _DASH


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


def _cost_label(name: str) -> str:
    return specs.metric(name).column_label  # "params", "MACs (M/s)"


def _delta_label(spec: MetricSpec) -> str:
    return f"Δ{spec.label} vs {BASELINE_METHOD}"


# ----------------------------------------------------------------------------------------------
# sections


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    keys = [k for k in _PROVENANCE_LABELS if k in prov] + sorted(k for k in prov if k not in _PROVENANCE_LABELS)
    rows = [(_PROVENANCE_LABELS.get(k, k), _fmt_text(prov[k])) for k in keys]
    if not rows:
        return ["No provenance recorded (no parent-run params given).", ""]
    return [*_md_table(["item", "value"], rows), ""]


def _units_sentence() -> str:
    """``PESQ/STOI/ESTOI are unitless, SI-SDR is in dB`` from the metric table."""
    unitless = [m.label for m in specs.METRICS if not m.unit]
    parts = [f"{'/'.join(unitless)} {'are' if len(unitless) > 1 else 'is'} unitless"] if unitless else []
    parts += [f"{m.label} is in {m.unit}" for m in specs.METRICS if m.unit]
    return ", ".join(parts)


#: a table as its header and its rows of formatted cells (the markdown and the HTML report render it)
Table = tuple[list[str], list[list[str]]]


def _reference_lines(teacher: pd.Series | None) -> list[str]:
    if teacher is None:
        return ["No teacher run in this sweep.", ""]
    return [*_md_table(*reference_table(teacher)), ""]


def reference_table(teacher: pd.Series) -> Table:
    """The noisy input and the teacher: complexity and every test metric."""
    metrics = specs.METRICS
    header = ["reference", _cost_label("params"), "params %", _cost_label("macs"), *[m.column_label for m in metrics]]
    noisy = ["noisy input", _DASH, _DASH, _DASH, *[_fmt(teacher.get(noisy_column(m.name)), m.fmt) for m in metrics]]
    t_pct = teacher.get("params_pct") if isnum(teacher.get("params_pct")) else 100.0
    teach = [
        f"teacher ({_fmt_text(teacher.get('run_id'))})",
        _fmt_count(teacher.get("params")),
        _fmt(t_pct, ".1f"),
        _fmt_macs(teacher.get("macs")),
        *[_fmt(teacher.get(m.name), m.fmt) for m in metrics],
    ]
    return header, [noisy, teach]


def _front_lines(finished: pd.DataFrame, spec: MetricSpec, extras: list[str]) -> list[str]:
    """Table of the grid cells non-dominated in (mean validation score up, params down), chosen on
    validation only; their test scores (mean ± std over the cell's trials) are reported, smallest first."""
    made = front_table(finished, spec, extras)
    if isinstance(made, str):
        return [made, ""]
    note, table = made
    return [note, "", *_md_table(*table), ""]


def front_table(finished: pd.DataFrame, spec: MetricSpec, extras: list[str]) -> str | tuple[str, Table]:
    """``(note, table)`` of the non-dominated grid cells of ``spec`` (see :func:`_front_lines`), or the
    sentence that says why there is none."""
    metric = spec.name
    cells = cell_front(finished, metric, extras)
    if cells.empty:
        return (f"No validation scores to choose on (neither `{VALID_PREFIX}{metric}` nor `best_val_si_sdr` was "
                "logged by every finished trial): no front is drawn, since choosing on the test set would not be "
                "a fair comparison.")
    fr = cells[cells["on_front"]]
    shown = [m for m in specs.METRICS if m.compact]
    column = str(cells["selected_on"].iloc[0])
    chosen = f"`{column}`" + (" (validation SI-SDR, dB)" if column == "best_val_si_sdr" else "")
    header = [
        "method",
        "student_ratio",
        *[c[len("param.") :] for c in extras],
        "trials",
        _cost_label("params"),
        "params %",
        _cost_label("macs"),
        f"selected on: {column} (mean)",
        *[f"{m.column_label} (mean ± std)" if m.name == metric else m.column_label for m in shown],
        _delta_label(spec),
        "run_ids",
    ]
    rows = []
    for _, r in fr.iterrows():
        std = _fmt(r[f"{metric}_std"], spec.fmt) if r["n"] > 1 else _DASH
        rows.append(
            [
                _fmt_text(r["method"]),
                _fmt_ratio(r["student_ratio"]),
                *[_fmt_text(r[c]) for c in extras],
                str(int(r["n"])),
                _fmt_count(r["params"]),
                _fmt(r["_x"], ".2f"),
                _fmt_macs(r["macs"]),
                _fmt(r["select"], ".3f"),
                *[f"{_fmt(r[metric], spec.fmt)} ± {std}" if m.name == metric else _fmt(r.get(m.name), m.fmt)
                  for m in shown],
                _fmt(r[delta_column(metric)], "+" + spec.fmt),
                _fmt_text(r["run_ids"]),
            ]
        )
    note = (f"Cells (method × student size × varying knobs, seeds pooled) non-dominated in mean {chosen} ↑ and "
            "params ↓; the test set chose nothing: the quality columns are the chosen cells' test means.")
    return note, (header, rows)


#: intelligibility metrics whose change against the unprocessed input the summary shows
VS_INPUT = ("stoi", "estoi")


def _summary_lines(finished: pd.DataFrame, extras: list[str], teacher: pd.Series | None = None) -> list[str]:
    return [*_md_table(*summary_table(finished, extras, teacher)), "", UNSCORED_NOTE, ""]


#: what the summary's ``unscored`` column counts
UNSCORED_NOTE = ("`unscored`: test utterances a metric could not score, summed over the cell's trials and metrics "
                 "(left out of the means; ⚠ flags a cell whose means rest on fewer utterances).")


def summary_table(finished: pd.DataFrame, extras: list[str], teacher: pd.Series | None = None) -> Table:
    """Per (method, student ratio[, knobs]) cell: trials, complexity, each metric's mean ± std over the cell's
    trials, ΔPESQ against ``none``, ΔSTOI/ΔESTOI against the unprocessed input, unscored utterances."""
    primary = specs.metric(PRIMARY_METRIC)
    keys = ["method", "_ratio", *extras]
    noisy = {n: teacher.get(noisy_column(n)) if teacher is not None else None for n in VS_INPUT}
    header = [
        "method",
        "student_ratio",
        *[c[len("param.") :] for c in extras],
        "n",
        _cost_label("params"),
        _cost_label("macs"),
        *[m.column_label for m in specs.METRICS],
        f"{_delta_label(primary)} (mean)",
        *[f"Δ{specs.metric(n).label} vs input" for n in VS_INPUT],
        "unscored",
    ]
    missing_cols = [missing_column(m.name) for m in specs.METRICS if missing_column(m.name) in finished]
    rows = []
    grouped = finished.assign(_ratio=finished["student_ratio"].map(ratio_key)).groupby(keys, dropna=False, sort=False)
    order = sorted(
        grouped.groups,
        key=lambda k: (-k[1] if isnum(k[1]) else 0.0, k[0] != BASELINE_METHOD, str(k[0]), str(k[2:])),
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
                *[_mean_std(g[m.name], m.fmt) for m in specs.METRICS],
                _fmt(g[delta_column(primary.name)].mean(), "+" + primary.fmt),
                *[_fmt(g[n].mean() - float(noisy[n]) if isnum(noisy[n]) else None, "+" + specs.metric(n).fmt)
                  for n in VS_INPUT],
                _unscored(g, missing_cols),
            ]
        )
    return header, rows


def _unscored(cell: pd.DataFrame, columns: list[str]) -> str:
    values = cell[columns].to_numpy(dtype=float) if columns else np.zeros((0,))
    if not np.isfinite(values).any():
        return _DASH
    total = int(np.nansum(values))
    return f"{total} ⚠" if total else "0"


def _verdict(value: Any) -> bool | None:
    """A gate cell as True / False / None (untested), whatever dtype the frame gave it."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else bool(value)


def _gate_lines(gate: pd.DataFrame) -> list[str]:
    lines = ["## Teacher quality", "",
             f"The teacher against the `{BASELINE_METHOD}` students (trained alone) of each size: PESQ margins on "
             "validation and test, and a two-sided Wilcoxon signed-rank test over test utterances (teacher minus "
             "the students' per-utterance mean). KD can only pass on what the teacher does better.", ""]
    return [*lines, *_md_table(*gate_table(gate)), ""]


def gate_table(gate: pd.DataFrame) -> Table:
    """:func:`kdlib.report.significance.teacher_gate` as formatted cells."""
    rows = []
    for _, r in gate.iterrows():
        rows.append([_fmt_ratio(r["student_ratio"]), str(r["students"]), _fmt(r["valid_margin"], "+.3f"),
                     _fmt(r["test_margin"], "+.3f"), _fmt_p(r["p"]), str(r["utterances"]),
                     {True: "yes", False: f"no: {GATE_WARNING}"}.get(_verdict(r["ok"]),
                                                                      "untested (no per-utterance teacher scores)")])
    header = ["student_ratio", f"{BASELINE_METHOD} students", "PESQ margin (valid)", "PESQ margin (test)", "p",
              "utterances", "clearly better"]
    return header, rows


def _significance_lines(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return [f"No KD trial has a finished `{BASELINE_METHOD}` twin with per-utterance scores to compare.", ""]
    return [*_md_table(*significance_cells(table)), "", significance_note(), ""]


def significance_cells(table: pd.DataFrame) -> Table:
    """:func:`kdlib.report.significance.significance_table` as formatted cells."""
    header = ["method", "student_ratio", "knobs", "metric", "Δ (mean ± std over seeds)", "95 % interval", "p",
              "p (Holm)", "seeds", "utterances", "missing", "verdict"]
    rows = []
    for _, r in table.iterrows():
        spec = specs.metric(r["metric"])
        flag = " ⚠" if r["missing"] else ""
        rows.append([
            _fmt_text(r["method"]), _fmt_ratio(r["student_ratio"]), _fmt_text(r["knobs"]) if r["knobs"] else _DASH,
            spec.label, f"{_fmt(r['delta'], '+' + spec.fmt)} ± {_fmt(r['delta_std'], spec.fmt)}",
            f"[{_fmt(r['ci_low'], '+' + spec.fmt)}, {_fmt(r['ci_high'], '+' + spec.fmt)}]",
            _fmt_p(r["p"]), _fmt_p(r["p_holm"]), str(r["seeds"]), str(r["utterances"]),
            f"{r['missing']}{flag}", r["verdict"],
        ])
    return header, rows


def _gate_warning(gate: pd.DataFrame, name: str | None) -> list[str]:
    flagged = gate["ok"].map(lambda v: _verdict(v) is False)
    if not flagged.any():
        return []
    bad = ", ".join(_fmt_ratio(r) for r in gate.loc[flagged, "student_ratio"])
    where = f" on test set `{name}`" if name else ""
    return [f"> ⚠ **{GATE_WARNING}**{where}: it is not significantly better than the `{BASELINE_METHOD}` "
            f"students at student_ratio {bad} (see Teacher quality).", ""]


def _set_lines(result: Any) -> list[str]:
    """The section of a named test set after the primary: reference points, teacher quality, the per-method
    summary and the significance table, all on that set (selection stays on validation)."""
    lines = [f"## {result.label}", "",
             "The same runs scored on this set; every choice (front cells, best epochs) was made on validation.", "",
             "### Reference points", ""]
    lines += _reference_lines(result.rows.teacher)
    if result.gate is not None and not result.gate.empty:
        lines += ["#" + line if line.startswith("## ") else line for line in _gate_lines(result.gate)]
    if result.rows.finished.empty:
        return [*lines, "No finished trial logged scores on this set.", ""]
    lines += ["### Per method and student size (mean ± std across seeds)", ""]
    lines += _summary_lines(result.rows.finished, result.rows.extras, result.rows.teacher)
    if result.table is not None:
        lines += [f"### Significance against `{BASELINE_METHOD}` (Holm within this test set)", ""]
        lines += _significance_lines(result.table)
    return lines


def _failed_lines(unfinished: pd.DataFrame) -> list[str]:
    if unfinished.empty:
        return ["None.", ""]
    header = ["run_id", "run_name", "role", "method", "student_ratio", "seed", "status", "reason"]
    rows = []
    for _, r in unfinished.iterrows():
        status = _fmt_text(r["status"])
        reason = f"run status {status}" if status != FINISHED else f"finished without {TEST_PREFIX}{PRIMARY_METRIC}"
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


# ----------------------------------------------------------------------------------------------
# document


def report_lines(
    title: str,
    prov: dict[str, Any],
    rows: ReportRows,
    fronts: Sequence[MetricSpec],
    plots: Sequence[tuple[MetricSpec, str]],
    significance: pd.DataFrame | None = None,
    gate: pd.DataFrame | None = None,
    *,
    extra_sets: Sequence[Any] = (),
    primary_name: str | None = None,
) -> list[str]:
    """The lines of ``report.md``.

    Args:
        title: level-1 heading.
        prov: provenance key -> value (known keys first, with labels; the rest sorted).
        rows: the runs, split by :func:`kdlib.report.front.select_rows`.
        fronts: metrics that get a table of non-dominated trials, in order (primary first).
        plots: (metric, file name relative to ``report.md``) of each plot written, in order.
        significance: :func:`kdlib.report.significance.significance_table` (None: no such section).
        gate: :func:`kdlib.report.significance.teacher_gate` (None: no such section).
        extra_sets: :class:`kdlib.report.sets.SetResult` of every named test set after the primary: one
            section each (reference points, teacher quality, per-method summary, significance).
        primary_name: the primary test set's name when the sweep has several (headings say which set).
    """
    finished = rows.finished
    lines = [f"# {title}", "", "## Provenance", ""]
    lines += _provenance_lines(prov)
    on_set = (f" on the primary test set `{primary_name}` ({prov.get('test_set', '')}); the other test sets "
              f"({', '.join(f'`{s.name}`' for s in extra_sets)}) have their own sections below") \
        if primary_name and extra_sets else ""
    lines += [
        f"Trials: {len(rows.trials)} ({len(finished)} finished with test metrics, "
        f"{len(rows.trials) - len(finished)} failed or unfinished). Metrics are each run's final "
        f"`{TEST_PREFIX}*` values{on_set}; {_units_sentence()}, params is a parameter count, "
        "MACs are multiply-accumulates per second of audio (shown in millions, M/s).",
        "",
        "## Reference points" + (f": test set `{primary_name}`" if primary_name else ""),
        "",
    ]
    lines += _reference_lines(rows.teacher)
    warnings: list[str] = []
    if gate is not None and not gate.empty:
        lines += _gate_lines(gate)
        warnings += _gate_warning(gate, primary_name)
    if finished.empty:
        lines += ["## Results", "", "No finished trials: nothing to plot or rank yet.", ""]
    else:
        for spec in fronts:
            lines += [f"## Non-dominated grid cells: {spec.label} ↑ vs params ↓ (chosen on validation)", ""]
            if spec.name == PRIMARY_METRIC:  # the deltas are explained once, above the first table
                lines += [
                    f"Δ{spec.label} is against the mean `{BASELINE_METHOD}` student (trained alone) of the same "
                    f"student_ratio; {_DASH} when that ratio has no finished `{BASELINE_METHOD}` student.",
                    "",
                ]
            lines += _front_lines(finished, spec, rows.extras)
        lines += ["## Per method and student size (mean ± std across seeds)", ""]
        lines += _summary_lines(finished, rows.extras, rows.teacher)
        if significance is not None:
            test_set = prov.get("test_set")
            scope = f"test set {test_set}" if test_set else ""
            if extra_sets:
                scope += "; Holm within this test set"
            lines += [f"## Significance against `{BASELINE_METHOD}`" + (f" ({scope.lstrip('; ')})" if scope else ""),
                      ""]
            lines += _significance_lines(significance)
    for result in extra_sets:
        lines += _set_lines(result)
        if result.gate is not None and not result.gate.empty:
            warnings += _gate_warning(result.gate, result.name)
    if warnings:  # prominent: right under the title
        lines[1:1] = ["", *warnings]
    lines += ["## Failed or unfinished runs", ""]
    lines += _failed_lines(rows.unfinished)
    if plots:
        lines += ["## Plots", ""]
        for spec, name in plots:
            lines += [f"![{spec.label} vs student params (% of teacher)]({name})", ""]
    return lines
