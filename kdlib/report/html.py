"""The self-contained HTML report (``report.html``): interactive Plotly plots (plotly.js embedded, so it opens
offline), sortable tables with links to each MLflow run, provenance with library versions, and listening
examples (embedded audio players and spectrograms, :mod:`kdlib.report.listening`).

It renders the numbers of ``report.md`` with the same table builders (:mod:`kdlib.report.markdown`), plus a
front table per extra test set; nothing is chosen on the test set here either.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdlib.metrics import specs
from kdlib.report.front import BASELINE_METHOD, PRIMARY_METRIC, cell_front, isnum
from kdlib.report.markdown import (
    UNSCORED_NOTE,
    Table,
    front_table,
    gate_table,
    reference_table,
    significance_cells,
    summary_table,
)
from kdlib.report.runs import noisy_column
from kdlib.report.sets import SetResult
from kdlib.report.significance import GATE_WARNING, significance_note

#: where ``mlflow ui`` serves by default; ``kdlib report --mlflow-ui`` / ``$KDLIB_MLFLOW_UI`` change it
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"

#: (y metric, x cost) of the primary set's plots; the other test sets get the first one
PLOTS = (("pesq", "params"), ("pesq", "macs"), ("stoi", "params"))

_RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1300px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.86em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none}th:hover{background:#e6e6e6}
td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0b100;padding:.6em 1em;border-radius:4px}
.note{color:#555;font-size:.9em;max-width:1100px}code{background:#f4f4f4;padding:0 .2em}
.plot{width:100%;max-width:1100px}
.clip td{vertical-align:middle}.clip img{display:block;height:110px}
"""

# click a header to sort by its column (numbers by value: "1.873 ± 0.025" sorts as 1.873, "61 M" as 61; text and
# missing values after the numbers; a cell's data-sort, e.g. a full run id, wins over its text)
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th) {
  th.addEventListener('click', function() {
    var col = th.cellIndex, body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    var key = function(r) { var c = r.cells[col]; if (!c) { return [2, '']; }
      var t = (c.dataset.sort !== undefined ? c.dataset.sort : c.innerText).trim();
      var n = c.dataset.sort !== undefined ? NaN : parseFloat(t.replace(/,/g, '').replace('\u2212', '-'));
      return isNaN(n) ? [t === '' || t === '\u2014' ? 2 : 1, t] : [0, n]; };
    rows.sort(function(a, b) { var x = key(a), y = key(b);
      if (x[0] !== y[0]) { return x[0] - y[0]; }
      return (x[0] === 0 ? x[1] - y[1] : String(x[1]).localeCompare(String(y[1]))) * dir; });
    rows.forEach(function(r) { body.appendChild(r); });
  });
});
document.querySelectorAll('.js-plotly-plot').forEach(function(plot) {
  plot.on('plotly_click', function(ev) { var url = ev.points[0].customdata && ev.points[0].customdata[0];
    if (url) { window.open(url, '_blank'); } });
});
"""


def run_url(mlflow_ui: str | None, experiment_id: Any, run_id: str) -> str | None:
    """The MLflow UI page of a run (``<ui>/#/experiments/<experiment id>/runs/<run id>``); None without a UI
    address or experiment id."""
    if not mlflow_ui or experiment_id is None:
        return None
    return f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def chart_view_url(experiment_id: Any, mlflow_ui: str = DEFAULT_MLFLOW_UI) -> str:
    """The MLflow UI's chart view of an experiment, its runs sorted by ``key/test_pesq`` (sorting lists the
    nested trials flat, so every trial is drawn; the ``key/`` metrics form the first chart section)."""
    return (f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
            f"&orderByKey=metrics.%60key%2Ftest_pesq%60&orderByAsc=false")


def _inline(text: str) -> str:
    """Escape ``text`` and turn the markdown the table builders use (```code```, ``**bold**``) into HTML."""
    return _BOLD.sub(r"<b>\1</b>", _CODE.sub(r"<code>\1</code>", html.escape(str(text))))


class _Page:
    def __init__(self, mlflow_ui: str | None, experiment_id: Any) -> None:
        self.parts: list[str] = []
        self.mlflow_ui, self.experiment_id = mlflow_ui, experiment_id
        self._plotly_js = True  # the first figure carries plotly.js, the others reuse it

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def link_runs(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            url = run_url(self.mlflow_ui, self.experiment_id, m.group(0))
            return f'<a href="{html.escape(url)}" target="_blank">{m.group(0)[:8]}</a>' if url else m.group(0)

        return _RUN_ID.sub(sub, _inline(text))

    def table(self, table: Table) -> None:
        header, rows = table
        head = "".join(f"<th title='click to sort'>{_inline(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(self._cell(c) for c in r) + "</tr>" for r in rows)
        self.add(f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def _cell(self, text: str) -> str:
        # a cell that is one run id sorts by it as text (its link shows 8 hex digits, which may parse as a number)
        sort = f" data-sort='{html.escape(text)}'" if _RUN_ID.fullmatch(text.strip()) else ""
        return f"<td{sort}>{self.link_runs(text)}</td>"

    def note(self, text: str) -> None:
        self.add(f"<p class='note'>{_inline(text)}</p>")

    def figure(self, fig: Any) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self._plotly_js, config={"responsive": True})
        self._plotly_js = False
        return out


def _text(value: Any) -> str:
    """A cell's text: ``—`` for a missing value (NaN, None, pandas NA)."""
    try:
        return "—" if pd.isna(value) else str(value)
    except (TypeError, ValueError):  # a list or array
        return str(value)


def _knobs(row: pd.Series, extras: Sequence[str]) -> str:
    return ", ".join(f"{c.removeprefix('param.')}={row.get(c)}" for c in extras if pd.notna(row.get(c))) or "—"


def front_figure(result: SetResult, metric: str, cost: str, title: str, mlflow_ui: str | None,
                 experiment_id: Any) -> Any:
    """Plotly figure of ``metric`` (test, this set) against ``cost`` (``params`` or ``macs``, log axis): every
    finished trial as a point (hover: run id, method, ratio, seed, knobs, λ, validation score; click: its
    MLflow run), each method's front of grid cells chosen on validation (seed means) as a line, the teacher
    as a star and the noisy input as a dotted line."""
    import plotly.graph_objects as go

    spec, rows = specs.metric(metric), result.rows
    finished, extras = rows.finished, rows.extras
    scale = 1e6 if cost == "macs" else 1.0
    x_label = "MACs per second of audio (M)" if cost == "macs" else "student params"
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
    methods = sorted(finished["method"].dropna().astype(str).unique(), key=lambda m: (m != BASELINE_METHOD, m))
    valid_col = f"valid_{metric}"
    for i, method in enumerate(methods):
        color = "#7f7f7f" if method == BASELINE_METHOD else palette[i % len(palette)]
        g = finished[finished["method"].astype(str) == method]
        custom = [[run_url(mlflow_ui, experiment_id, str(r["run_id"])) or "", str(r["run_id"]),
                   f"{r['student_ratio']:g}", _text(r.get("seed")), _knobs(r, extras),
                   f"{r['kd_weight']:.3g}" if isnum(r.get("kd_weight")) else "—",
                   f"{r[valid_col]:{spec.fmt}}" if isnum(r.get(valid_col)) else "—"] for _, r in g.iterrows()]
        fig.add_trace(go.Scatter(
            x=g[cost] / scale, y=g[metric], mode="markers", name=method, legendgroup=method, customdata=custom,
            marker={"color": color, "size": 9, "opacity": 0.75, "line": {"width": 1, "color": "white"}},
            hovertemplate=(f"<b>{method}</b> ratio %{{customdata[2]}} seed %{{customdata[3]}}"
                           "<br>run %{customdata[1]}<br>knobs %{customdata[4]}, λ %{customdata[5]}"
                           f"<br>{spec.label} test %{{y:{spec.fmt}}}, valid %{{customdata[6]}}"
                           f"<br>{x_label} %{{x:,.4g}}<extra></extra>")))
        cells = cell_front(g, metric, extras)
        if not cells.empty:
            fr = cells[cells["on_front"]].sort_values("params")
            fig.add_trace(go.Scatter(
                x=fr[cost] / scale, y=fr[metric], mode="lines+markers", legendgroup=method, showlegend=False,
                line={"color": color, "width": 2, "dash": "dash" if method == BASELINE_METHOD else "solid"},
                marker={"symbol": "diamond-open", "size": 11, "color": color},
                hovertemplate=f"<b>{method}</b> front cell (seed mean, chosen on validation)<br>"
                              f"{spec.label} %{{y:{spec.fmt}}}<extra></extra>"))
    teacher = rows.teacher
    if teacher is not None and isnum(teacher.get(metric)) and isnum(teacher.get(cost)):
        fig.add_trace(go.Scatter(
            x=[float(teacher[cost]) / scale], y=[float(teacher[metric])], mode="markers", name="teacher",
            customdata=[[run_url(mlflow_ui, experiment_id, str(teacher["run_id"])) or ""]],
            marker={"symbol": "star", "size": 16, "color": "black"},
            hovertemplate=f"teacher<br>{spec.label} %{{y:{spec.fmt}}}<extra></extra>"))
        noisy = teacher.get(noisy_column(metric))
        if isnum(noisy):
            fig.add_hline(y=float(noisy), line_dash="dot", line_color="#999",
                          annotation_text="noisy input", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title=f"{x_label} (log)", yaxis_title=f"{spec.label} (test)",
                      xaxis_type="log", template="plotly_white", height=430, margin={"l": 60, "r": 20, "t": 50},
                      legend={"title": "method"})
    return fig


def _set_sections(page: _Page, result: SetResult, plots: Sequence[tuple[str, str]], title: str) -> None:
    rows = result.rows
    if not rows.finished.empty and plots:
        figs = [page.figure(front_figure(result, m, c, f"{specs.metric(m).label} vs {c} ({title})", page.mlflow_ui,
                                         page.experiment_id)) for m, c in plots]
        page.add(*[f"<div class='plot'>{f}</div>" for f in figs])
    page.add("<h3>Reference points</h3>")
    if rows.teacher is not None:
        page.table(reference_table(rows.teacher))
    if result.gate is not None and not result.gate.empty:
        page.add("<h3>Teacher quality</h3>")
        page.note(f"The teacher against the `{BASELINE_METHOD}` students of each size: PESQ margins on validation "
                  "and test, two-sided Wilcoxon signed-rank test over test utterances.")
        page.table(gate_table(result.gate))
    if rows.finished.empty:
        page.note("No finished trial on this set.")
        return
    made = front_table(rows.finished, specs.metric(PRIMARY_METRIC), rows.extras)
    page.add("<h3>Non-dominated grid cells (PESQ ↑, params ↓; chosen on validation)</h3>")
    if isinstance(made, str):
        page.note(made)
    else:
        page.note(made[0])
        page.table(made[1])
    page.add("<h3>Per method and student size (mean ± std across seeds)</h3>")
    page.table(summary_table(rows.finished, rows.extras, rows.teacher))
    page.note(UNSCORED_NOTE)
    if result.table is not None:
        page.add(f"<h3>Significance against <code>{BASELINE_METHOD}</code></h3>")
        if result.table.empty:
            page.note(f"No KD trial has a finished `{BASELINE_METHOD}` twin with per-utterance scores to compare.")
        else:
            page.table(significance_cells(result.table))
            page.note(significance_note() + (" Holm corrects within this test set; each test set is its own family "
                                              "of comparisons." if result.name else ""))


def _runs_table(result: SetResult) -> Table:
    """Every finished trial of the primary set, one row each, with its MLflow run."""
    f, extras = result.rows.finished, result.rows.extras
    shown = list(specs.METRICS)
    header = ["run", "method", "student_ratio", "seed", *[c.removeprefix("param.") for c in extras], "λ", "params",
              "valid PESQ", *[f"{m.column_label} (test)" for m in shown]]
    rows = []
    for _, r in f.iterrows():
        rows.append([str(r["run_id"]), str(r["method"]), f"{r['student_ratio']:g}", _text(r.get("seed")),
                     *[_text(r.get(c)) for c in extras],
                     f"{r['kd_weight']:.3g}" if isnum(r.get("kd_weight")) else "—",
                     f"{r['params']:,.0f}" if isnum(r.get("params")) else "—",
                     f"{r['valid_pesq']:.3f}" if isnum(r.get("valid_pesq")) else "—",
                     *[format(r[m.name], m.fmt) if isnum(r.get(m.name)) else "—" for m in shown]])
    return header, rows


def _listening(page: _Page, examples: Sequence[Any] | None, missing_reason: str | None) -> None:
    page.add("<h2 id='listening'>Listening examples</h2>")
    if not examples:
        page.note(missing_reason or "No listening examples.")
        return
    page.note("Three test utterances of the primary set: lowest, median and highest input SNR. The teacher and, "
              "per front cell of PESQ (chosen on validation), the seed with the best validation PESQ. Scores are "
              "this utterance's. Spectrograms: 0–Nyquist, 80 dB range.")
    for ex in examples:
        page.add(f"<h3>{html.escape(ex.utterance)}: input SNR {ex.snr_db:.1f} dB</h3>",
                 "<table class='clip'><thead><tr><th>signal</th><th>audio</th><th>spectrogram</th><th>scores</th>"
                 "</tr></thead><tbody>")
        for clip in ex.clips:
            page.add(f"<tr><td>{page.link_runs(clip.label)}</td>"
                     f"<td><audio controls preload='none' src='data:audio/wav;base64,{clip.audio_b64}'></audio></td>"
                     f"<td><img alt='spectrogram of {html.escape(clip.label)}' "
                     f"src='data:image/png;base64,{clip.spectrogram_b64}'></td><td>{html.escape(clip.scores)}</td></tr>")
        page.add("</tbody></table>")


def write_html(path: str | Path, title: str, prov: dict[str, Any], primary: SetResult,
               extra_sets: Sequence[SetResult] = (), *, experiment_id: Any = None,
               mlflow_ui: str | None = DEFAULT_MLFLOW_UI, examples: Sequence[Any] | None = None,
               examples_missing: str | None = None, versions: dict[str, str] | None = None) -> Path:
    """Write ``report.html``: one self-contained file (plotly.js, audio and images inline; no network).

    Args:
        path: the file to write.
        title: page title.
        prov: provenance (parent-run params and tags; ``version.<library>`` entries are shown as versions).
        primary: the primary test set's :class:`~kdlib.report.sets.SetResult` (three plots, every table).
        extra_sets: the other named test sets (a PESQ-vs-params plot and the tables each).
        experiment_id: MLflow experiment id, for the run links.
        mlflow_ui: base address of the MLflow UI (links ``<ui>/#/experiments/<id>/runs/<run>``); None: no links.
        examples: :class:`kdlib.report.listening.Example` list; None/empty: ``examples_missing`` says why.
        versions: library → version at report time, shown where the sweep did not record its own.

    Returns:
        ``path``.

    Raises:
        OSError: the file cannot be written.
    """
    page = _Page(mlflow_ui, experiment_id)
    warnings = []
    for result in (primary, *extra_sets):
        gate = result.gate
        if gate is None or gate.empty:
            continue
        flagged = gate["ok"].map(lambda v: v is not None and not (isinstance(v, float) and v != v) and not bool(v))
        if flagged.any():
            where = f" on test set `{result.name}`" if result.name else ""
            sizes = ", ".join(f"{r:g}" for r in gate.loc[flagged, "student_ratio"])
            warnings.append(f"⚠ **{GATE_WARNING}**{where}: it is not significantly better than the "
                            f"`{BASELINE_METHOD}` students at student_ratio {sizes} (see Teacher quality).")
    page.add(f"<h1>{html.escape(title)}</h1>", *[f"<p class='warn'>{_inline(w)}</p>" for w in warnings])
    finished, trials = primary.rows.finished, primary.rows.trials
    sets = ", ".join(r.label for r in (primary, *extra_sets))
    page.note(f"Trials: {len(trials)} ({len(finished)} finished, {len(trials) - len(finished)} failed or "
              f"unfinished). Test sets: {sets}. Every choice (best epoch, front cells) was made on validation; "
              "run ids link to the MLflow UI" + (f" at {mlflow_ui}" if mlflow_ui else "") + ". Click a table "
              "header to sort; hover a point for its run, click it to open the run.")
    if mlflow_ui and experiment_id is not None:
        url = html.escape(chart_view_url(experiment_id, mlflow_ui))
        page.add(f"<p class='note'>Every trial side by side in MLflow (<code>mlflow ui</code> running): "
                 f"<a href='{url}' target='_blank'>the experiment's chart view</a>, headline metrics under "
                 "<code>key/</code>.</p>")
    page.add("<h2>Provenance</h2>")
    recorded = {k.removeprefix("version."): str(v) for k, v in prov.items() if k.startswith("version.")}
    order = ["experiment", "parent_run_id", "parent_run_name", "started", "config_hash", "git_commit", "data_seed",
             "sample_rate", "pesq_mode", "test_set", "test_sets", "valid_set"]
    keys = [k for k in order if k in prov] + sorted(k for k in prov if k not in order and not k.startswith("version."))
    items = [(k, str(prov[k])) for k in keys]
    items += [(f"version {k}", v) for k, v in sorted(recorded.items())]
    items += [(f"version {k} (at report time)", v) for k, v in sorted((versions or {}).items()) if k not in recorded]
    page.table((["item", "value"], [[k, v] for k, v in items]))
    page.add(f"<h2>{_inline(primary.label)}{' (primary)' if extra_sets else ''}</h2>")
    _set_sections(page, primary, PLOTS, primary.name or "test")
    for result in extra_sets:
        page.add(f"<h2>{_inline(result.label)}</h2>")
        page.note("The same runs scored on this set; every choice was made on validation.")
        _set_sections(page, result, PLOTS[:1], result.name or "test")
    page.add("<h2>Every finished trial (primary test set)</h2>")
    page.table(_runs_table(primary))
    unfinished = primary.rows.unfinished
    if not unfinished.empty:
        page.add("<h2>Failed or unfinished runs</h2>")
        page.table((["run", "role", "method", "status"],
                    [[str(r["run_id"]), str(r["role"]), str(r.get("method")), str(r["status"])]
                     for _, r in unfinished.iterrows()]))
    _listening(page, examples, examples_missing)
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
           + "\n".join(page.parts) + f"<script>{_SORT_JS}</script></body></html>")
    out = Path(path)
    out.write_text(doc, encoding="utf-8")
    return out
