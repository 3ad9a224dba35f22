"""Write a sweep's Pareto report: the plots and ``report.md``, from a runs table or from an MLflow store.

Units throughout: ``params`` is a parameter count, ``params_pct`` the student's params as % of the
teacher's, ``macs`` multiply-accumulates per second of audio; the quality metrics are in their
:data:`kdlib.metrics.specs.METRICS` units (PESQ/STOI/ESTOI unitless, SI-SDR in dB).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from kdlib.metrics import specs
from kdlib.report.front import FRONT_METRICS, PRIMARY_METRIC
from kdlib.report.html import DEFAULT_MLFLOW_UI
from kdlib.report.markdown import report_lines
from kdlib.report.plots import method_styles, plot_file, plot_front
from kdlib.report.runs import load_runs, named_test_sets, param_column
from kdlib.report.sets import SetResult, set_result
from kdlib.report.significance import load_scores
from kdlib.sweep.contract import ROLE_TEACHER, ROLE_TRIAL, scores_file


def build_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    title: str,
    provenance: dict[str, Any] | None = None,
    scores: dict[str, pd.DataFrame] | None = None,
    set_scores: dict[str, dict[str, pd.DataFrame]] | None = None,
    *,
    html: bool = True,
    mlflow_ui: str | None = DEFAULT_MLFLOW_UI,
    examples: Callable[[SetResult], tuple[list[Any] | None, str | None]] | None = None,
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
        set_scores: the named test sets after the primary (provenance ``test_sets``), each by name → run id →
            its per-utterance scores (``test_scores_<name>.csv``); each gets its own section. None: only the
            primary set is reported.
        html: also write the self-contained ``report.html`` (:func:`kdlib.report.html.write_html`).
        mlflow_ui: base address of the MLflow UI for the HTML report's run links (None: no links).
        examples: called with the primary set's :class:`~kdlib.report.sets.SetResult`, returns the listening
            examples (:func:`kdlib.report.listening.build_examples`) or ``(None, why not)``; None: the HTML report
            says how to add them.

    Returns:
        ``{"pareto": <out_dir>/pareto.png, "pareto_stoi": <out_dir>/pareto_stoi.png,
        "report": <out_dir>/report.md, "html": <out_dir>/report.html, "summary": <out_dir>/summary.csv,
        "significance": <out_dir>/significance.csv}`` (one plot per :data:`kdlib.report.front.FRONT_METRICS` entry,
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
    primary = set_result(df, prov, scores)
    primary.name = primary_name(prov)  # its scores are the plain test_* columns; the name labels it
    rows = primary.rows
    extra = [set_result(df, prov, set_scores.get(name), name) for name in named_test_sets(prov)[1:]] \
        if set_scores is not None else []
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

    report = out / "report.md"
    text = "\n".join(report_lines(title, prov, rows, fronts, plotted, primary.table, primary.gate,
                                  extra_sets=extra, primary_name=primary_name(prov))).rstrip() + "\n"
    report.write_text(text, encoding="utf-8")
    paths["report"] = report
    paths.update(write_tables(out, [primary, *extra]))
    if html:
        from kdlib.report.html import write_html
        from kdlib.report.provenance import library_versions

        found, why = examples(primary) if examples is not None else (None, NO_EXAMPLES)
        paths["html"] = write_html(out / "report.html", title, prov, primary, extra, mlflow_ui=mlflow_ui,
                                   experiment_id=df.attrs.get("experiment_id"), examples=found,
                                   examples_missing=why, versions=library_versions())
    return paths


#: what the HTML report says when it was built without the test audio
NO_EXAMPLES = ("No listening examples: this report was built without the test audio. `kdlib sweep run` adds them; "
               "for a stored sweep run `kdlib report <experiment> --config <sweep.yaml>`.")


def summary_frame(result: SetResult) -> pd.DataFrame:
    """One row per grid cell (method, student ratio, varying knobs) of a test set: trials, mean params and
    MACs, and mean/std over the cell's trials of every test metric and of the validation scores."""
    f = result.rows.finished
    if f.empty:
        return pd.DataFrame()
    keys = ["method", "student_ratio", *result.rows.extras]
    metrics = [m.name for m in specs.METRICS if m.name in f] + [c for c in f if c.startswith("valid_")]
    agg = f.groupby(keys, dropna=False, sort=True).agg(
        trials=("run_id", "size"), params=("params", "mean"), macs=("macs", "mean"),
        **{f"{m}_mean": (m, "mean") for m in metrics}, **{f"{m}_std": (m, "std") for m in metrics})
    return agg.reset_index().assign(test_set=result.name or "test")


def write_tables(out: Path, results: list[SetResult]) -> dict[str, Path]:
    """``summary.csv`` (:func:`summary_frame` of every test set) and ``significance.csv`` (every set's
    significance table with a ``test_set`` column) in ``out``: the report's numbers for other tools and the
    MLflow parent run. Returns the files written."""
    paths = {}
    summary = pd.concat([summary_frame(r) for r in results], ignore_index=True)
    if not summary.empty:
        summary.to_csv(out / "summary.csv", index=False)
        paths["summary"] = out / "summary.csv"
    tables = [r.table.assign(test_set=r.name or "test") for r in results if r.table is not None and not r.table.empty]
    if tables:
        pd.concat(tables, ignore_index=True).to_csv(out / "significance.csv", index=False)
        paths["significance"] = out / "significance.csv"
    return paths


#: environment variable with the MLflow UI address of the HTML report's run links
MLFLOW_UI_ENV = "KDLIB_MLFLOW_UI"


def primary_name(prov: dict[str, Any]) -> str | None:
    """The primary test set's name (the first of ``test_sets``), None for a single unnamed set."""
    names = named_test_sets(prov)
    return names[0] if names else None


def write_report(
    tracking_uri: str, experiment: str, out_dir: str | Path, parent_run_id: str | None = None, *,
    examples: Callable[[SetResult], tuple[list[Any] | None, str | None]] | None = None,
    mlflow_ui: str | None = None,
) -> dict[str, Path]:
    """Load a sweep from MLflow and write its Pareto report.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:////abs/path/mlflow.db``.
        experiment: experiment (= sweep) name.
        out_dir: directory for ``report.html``, ``pareto.png``, ``pareto_stoi.png``, ``report.md``, ``summary.csv``
            and ``significance.csv``.
        parent_run_id: sweep parent run; ``None`` = the most recent sweep of the experiment.
        examples: makes ``report.html``'s listening examples (:func:`kdlib.sweep.listening.examples_maker`, which
            needs the test audio and torch); None: the HTML report says how to add them.
        mlflow_ui: the MLflow UI address for the HTML report's run links (None: ``$KDLIB_MLFLOW_UI``, else
            :data:`kdlib.report.html.DEFAULT_MLFLOW_UI`).

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
    run_ids = scored["run_id"].astype(str).tolist()
    scores = load_scores(tracking_uri, run_ids)
    set_scores = {name: load_scores(tracking_uri, run_ids, scores_file(name))
                  for name in named_test_sets(provenance)[1:]}
    title = f"KD Pareto report: {experiment}"
    options = {"mlflow_ui": mlflow_ui or os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI,
               "examples": examples}
    column = param_column("teacher")  # the grid dimension of a sweep with ``teachers:``
    teachers = sorted(df[column].dropna().astype(str).unique()) if column in df else []
    if len(teachers) <= 1:
        return build_report(df, out_dir, title=title, provenance=provenance, scores=scores, set_scores=set_scores,
                            **options)
    # several teachers (``teachers:``): student sizes are fractions of different models, so one
    # front per teacher, each against its own teacher and noisy reference
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    lines = [f"# {title}", "", "One report per teacher:", ""]
    for name in teachers:
        sub = df[df[column].astype(str) == name].copy()
        written = build_report(sub, out / name, title=f"{title} (teacher {name})", provenance=provenance,
                               scores=scores, set_scores=set_scores, **options)
        paths.update({f"{name}/{key}": path for key, path in written.items()})
        lines.append(f"- [{name}]({name}/report.md)")
    index = out / "report.md"
    index.write_text("\n".join(lines) + "\n")
    paths["report"] = index
    return paths
