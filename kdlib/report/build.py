"""Write a sweep's Pareto report: the plots and ``report.md``, from a runs table or from an MLflow store.

Units throughout: ``params`` is a parameter count, ``params_pct`` the student's params as % of the
teacher's, ``macs`` multiply-accumulates per second of audio; the quality metrics are in their
:data:`kdlib.metrics.specs.METRICS` units (PESQ/STOI/ESTOI unitless, SI-SDR in dB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdlib.metrics import specs
from kdlib.report.front import FRONT_METRICS, PRIMARY_METRIC, select_rows
from kdlib.report.markdown import report_lines
from kdlib.report.plots import method_styles, plot_file, plot_front
from kdlib.report.runs import load_runs, param_column
from kdlib.report.significance import load_scores, significance_table, teacher_gate
from kdlib.sweep.contract import ROLE_TEACHER, ROLE_TRIAL


def build_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    title: str,
    provenance: dict[str, Any] | None = None,
    scores: dict[str, pd.DataFrame] | None = None,
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
        scores: run id → per-utterance test scores (``utterance`` + one column per metric, as the trials
            log them in ``test_scores.csv``); with them the report gets its significance table
            (:func:`kdlib.report.significance.significance_table`). None: no such section.

    Returns:
        ``{"pareto": <out_dir>/pareto.png, "pareto_stoi": <out_dir>/pareto_stoi.png,
        "report": <out_dir>/report.md}`` (one plot per :data:`kdlib.report.front.FRONT_METRICS` entry,
        keyed by its file name without ``.png``), holding only the files written: a plot is skipped
        when no finished trial has its metric and a parameter count (a plot left in ``out_dir`` by
        an earlier report is then removed). ``report.md`` is always written (it says so when there
        are no finished trials).

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov: dict[str, Any] = dict(df.attrs.get("provenance", {}) if provenance is None else provenance)
    rows = select_rows(df)
    fronts = [specs.metric(name) for name in FRONT_METRICS]

    paths: dict[str, Path] = {}
    plotted: list[tuple[specs.MetricSpec, str]] = []
    styles = method_styles(rows.finished["method"].dropna().astype(str))
    for spec in fronts:
        name = plot_file(spec.name, PRIMARY_METRIC)
        if not rows.finished.empty and plot_front(
            rows.finished, spec, prov.get("pesq_mode"), styles, rows.teacher, out / name, title, rows.extras
        ):
            paths[Path(name).stem] = out / name
            plotted.append((spec, name))
        else:
            (out / name).unlink(missing_ok=True)  # never leave a stale plot from an earlier report

    table = gate = None
    if scores is not None and not rows.finished.empty:
        table = significance_table(rows.finished, scores, rows.extras, FRONT_METRICS)
        gate = teacher_gate(rows.teacher, rows.finished, scores)
    report = out / "report.md"
    text = "\n".join(report_lines(title, prov, rows, fronts, plotted, table, gate)).rstrip() + "\n"
    report.write_text(text, encoding="utf-8")
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
        OSError: ``out_dir`` cannot be created or written.
    """
    df = load_runs(tracking_uri, experiment, parent_run_id)
    provenance = dict(df.attrs.get("provenance", {}))
    scored = df[df["role"].isin([ROLE_TRIAL, ROLE_TEACHER]) & (df["status"] == "FINISHED")] if "role" in df \
        else df.iloc[:0]
    scores = load_scores(tracking_uri, scored["run_id"].astype(str).tolist())
    title = f"KD Pareto report: {experiment}"
    column = param_column("teacher")  # the grid dimension of a sweep with ``teachers:``
    teachers = sorted(df[column].dropna().astype(str).unique()) if column in df else []
    if len(teachers) <= 1:
        return build_report(df, out_dir, title=title, provenance=provenance, scores=scores)
    # several teachers (``teachers:``): student sizes are fractions of different models, so one
    # front per teacher, each against its own teacher and noisy reference
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    lines = [f"# {title}", "", "One report per teacher:", ""]
    for name in teachers:
        sub = df[df[column].astype(str) == name].copy()
        written = build_report(sub, out / name, title=f"{title} (teacher {name})", provenance=provenance,
                               scores=scores)
        paths.update({f"{name}/{key}": path for key, path in written.items()})
        lines.append(f"- [{name}]({name}/report.md)")
    index = out / "report.md"
    index.write_text("\n".join(lines) + "\n")
    paths["report"] = index
    return paths
