"""Load one KD sweep's child runs from MLflow into a flat, typed :class:`pandas.DataFrame`.

The sweep writes one parent run per sweep (tag ``kdlib.role = "sweep"``) and one child run per
teacher/trial (tags ``kdlib.role`` and ``mlflow.parentRunId``), as :mod:`kdlib.sweep.contract` lays down.
:func:`load_runs` finds the parent and turns its children into one row each, with the MLflow prefixes
(``params.``, ``metrics.``, ``tags.``) replaced by the normalized column names the report uses. The metric
columns follow the contract's complexity metrics and the metric table :data:`kdlib.metrics.specs.METRICS`
(see :func:`metric_columns`).

MLflow is imported lazily so ``import kdlib.report`` works on machines without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlib.errors import KdlibError
from kdlib.metrics import specs
from kdlib.sweep.contract import (
    COMPLEXITY_METRICS,
    NOISY_PREFIX,
    PARENT,
    ROLE,
    ROLE_SWEEP,
    ROLE_TEACHER,
    ROLE_TRIAL,
    TEST_PREFIX,
    VALID_PREFIX,
)

#: Params turned into typed first-class columns; every other param becomes ``param.<name>``.
CORE_PARAMS: dict[str, str] = {
    "method": "str",
    "student_ratio": "float",
    "seed": "int",
    "lr": "float",
    "kd_weight": "float",
}


#: core params that are also settings a sweep can search: as logged (``param.lr``, ``param.kd_weight``) they
#: tell grid cells apart when they vary
SETTINGS = ("lr", "kd_weight")
#: params that record where a run came from, never what it trained: not knobs, even when they differ
PROVENANCE_PARAMS = ("git_commit", "config_hash", "pesq_mode", "sample_rate")


def param_column(name: str) -> str:
    """Column of a logged param that is not a typed core param (``param.kd.tau``, ``param.teacher``)."""
    return f"param.{name}"


def noisy_column(name: str) -> str:
    """Column of the noisy input's score for metric ``name`` (``noisy_pesq``; the test score's column is ``name``)."""
    return f"{NOISY_PREFIX}{name}"


def metric_columns() -> dict[str, str]:
    """Output column -> MLflow metric key (the last logged value; test metrics are logged once).

    The complexity metrics keep their key (``params``, ``macs``, ``params_pct``, ``kd_extra_params``), then per
    metric of :data:`kdlib.metrics.specs.METRICS` (read at call time) its test score ``<name>`` <- ``test_<name>``,
    then per metric the noisy input's score ``noisy_<name>`` <- ``noisy_<name>``, the validation score
    ``valid_<name>`` <- ``valid_<name>``, the count of test utterances it could not score ``<name>_missing``
    <- ``test_<name>_missing``, and ``best_val_si_sdr``.
    """
    columns = {name: name for name in COMPLEXITY_METRICS}
    columns.update({m.name: f"{TEST_PREFIX}{m.name}" for m in specs.METRICS})
    columns.update({noisy_column(m.name): f"{NOISY_PREFIX}{m.name}" for m in specs.METRICS})
    columns.update({valid_column(m.name): f"{VALID_PREFIX}{m.name}" for m in specs.METRICS})
    columns.update({missing_column(m.name): f"{TEST_PREFIX}{m.name}{specs.MISSING_SUFFIX}" for m in specs.METRICS})
    columns[BEST_VALID] = BEST_VALID
    return columns


#: prefix of the columns :func:`load_runs` keeps for metrics it has no column of its own for (the named test
#: sets' ``test_<name>_<metric>`` / ``noisy_<name>_<metric>``)
RAW_METRIC = "metric."


def named_test_sets(provenance: dict[str, Any]) -> list[str]:
    """The names of a sweep's test sets, the primary first (the parent run's ``test_sets`` param); ``[]`` for
    a sweep with one unnamed test set."""
    names = provenance.get("test_sets")
    return [n for n in str(names).split(",") if n] if isinstance(names, str) else []


def set_view(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs table as if the named test set ``name`` were the primary one: its ``test_<name>_<metric>``,
    ``noisy_<name>_<metric>`` and ``..._missing`` values in the plain metric columns (``pesq``, ``noisy_pesq``,
    ``pesq_missing``; NaN where a run did not log them). Validation and complexity columns are unchanged.
    ``attrs`` are copied, with the provenance's ``test_set`` / ``pesq_mode`` set to the named set's."""
    out = df.copy()
    for m in specs.METRICS:
        for col, key in ((m.name, f"{TEST_PREFIX}{name}_{m.name}"),
                         (noisy_column(m.name), f"{NOISY_PREFIX}{name}_{m.name}"),
                         (missing_column(m.name), f"{TEST_PREFIX}{name}_{m.name}{specs.MISSING_SUFFIX}")):
            out[col] = out[RAW_METRIC + key] if RAW_METRIC + key in out else np.nan
    out.attrs = {**df.attrs}
    prov = dict(df.attrs.get("provenance", {}))
    for key in ("test_set", "pesq_mode"):
        if f"{key}.{name}" in prov:
            prov[key] = prov[f"{key}.{name}"]
    out.attrs["provenance"] = prov
    return out


#: the λ a trial trained with (``training.kd_weight: auto`` calibrates it per trial)
KD_WEIGHT_RESOLVED = "kd_weight_resolved"
#: the best validation SI-SDR (dB) of a run: what the trial selected its epoch on
BEST_VALID = "best_val_si_sdr"


def missing_column(name: str) -> str:
    """Column of the number of test utterances metric ``name`` could not score (``test_<name>_missing``)."""
    return f"{name}{specs.MISSING_SUFFIX}"


def valid_column(name: str) -> str:
    """Column of the validation-set score of metric ``name`` (the best-validation model's ``valid_<name>``)."""
    return f"{VALID_PREFIX}{name}"


_ROLE_ORDER = {ROLE_TEACHER: 0, ROLE_TRIAL: 1}
# the contract's own tags share its role tag's namespace ("kdlib."); the parent's are shown as provenance
_OWN_TAGS = f"tags.{ROLE.split('.', 1)[0]}."
_RUN_ID_RE = re.compile(r"^[0-9A-Za-z_-]+$")


@contextmanager
def _use_tracking_uri(uri: str) -> Iterator[None]:
    """Point the global MLflow client at ``uri`` for the block, then restore the previous setting.

    ``mlflow.search_runs`` only reads the global tracking URI, and ``mlflow.set_tracking_uri`` also
    writes ``MLFLOW_TRACKING_URI`` into the environment, so both are put back afterwards.
    """
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    uri_before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri_before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def _check_store_exists(tracking_uri: str) -> None:
    """Refuse a ``sqlite:///`` URI whose database file is missing (MLflow would create an empty one)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        db_path = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
        if str(db_path) not in ("", ":memory:") and not db_path.exists():
            raise KdlibError(f"no MLflow store at {tracking_uri}: database file {db_path} does not exist")


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """Return ``frame[name]`` or an all-NaN object column when MLflow did not return it."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([np.nan] * len(frame), index=frame.index, dtype=object)


def _as_str(values: pd.Series) -> pd.Series:
    """Plain-object string column with NaN for missing values."""
    return values.astype(object).where(values.notna(), np.nan)


def _normalize(children: pd.DataFrame) -> pd.DataFrame:
    """Map the raw ``mlflow.search_runs`` frame of child runs onto the report's column names/types."""
    out = pd.DataFrame(index=children.index)
    out["run_id"] = _as_str(_column(children, "run_id"))
    out["run_name"] = _as_str(_column(children, "tags.mlflow.runName"))
    out["role"] = _as_str(_column(children, f"tags.{ROLE}"))
    out["status"] = _as_str(_column(children, "status"))
    for name, kind in CORE_PARAMS.items():
        raw = _column(children, f"params.{name}")
        if kind == "str":
            out[name] = _as_str(raw)
        elif kind == "float":
            out[name] = pd.to_numeric(raw, errors="coerce").astype(float)
        else:
            numeric = pd.to_numeric(raw, errors="coerce")
            whole = numeric.where(np.isfinite(numeric) & (numeric == np.round(numeric)))
            out[name] = whole.astype("Int64")
    for col, key in metric_columns().items():
        out[col] = pd.to_numeric(_column(children, f"metrics.{key}"), errors="coerce").astype(float)
    # the named test sets' scores (``test_<name>_pesq``, ``noisy_<name>_pesq``) as logged: :func:`set_view`
    mapped = {f"metrics.{key}" for key in metric_columns().values()}
    for col in children.columns:
        if col.startswith((f"metrics.{TEST_PREFIX}", f"metrics.{NOISY_PREFIX}")) and col not in mapped:
            out[RAW_METRIC + col[len("metrics."):]] = pd.to_numeric(children[col], errors="coerce").astype(float)
    # kd_weight "auto": the λ each trial calibrated for itself
    resolved = pd.to_numeric(_column(children, f"metrics.{KD_WEIGHT_RESOLVED}"), errors="coerce").astype(float)
    out["kd_weight"] = out["kd_weight"].where(out["kd_weight"].notna(), resolved)
    out["kd_weight_auto"] = _as_str(_column(children, "params.kd_weight")).eq("auto")
    extra = sorted(
        c[len("params.") :]
        for c in children.columns
        if c.startswith("params.") and c[len("params.") :] not in CORE_PARAMS
    )
    for name in extra:
        out[param_column(name)] = _as_str(children[f"params.{name}"])
    # the searched settings as logged ("auto" kept): a cell of the grid is one setting, however its λ resolved
    for name in SETTINGS:
        out[param_column(name)] = _as_str(_column(children, f"params.{name}"))
    order = out["role"].map(lambda r: _ROLE_ORDER.get(r, len(_ROLE_ORDER)))
    out = out.assign(_order=order, _start=_column(children, "start_time"))
    out = out.sort_values(
        ["_order", "method", "student_ratio", "seed", "_start"],
        ascending=[True, True, False, True, True],
        na_position="last",
        kind="stable",
    )
    return out.drop(columns=["_order", "_start"]).reset_index(drop=True)


def load_runs(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """Load the teacher and trial runs of one sweep as one row per child run.

    Args:
        tracking_uri: MLflow tracking URI of the store, e.g. ``sqlite:////abs/path/mlflow.db``.
        experiment: MLflow experiment name (= the sweep name).
        parent_run_id: run id of the sweep's parent run. ``None`` picks the most recently started
            run tagged ``kdlib.role = "sweep"`` in the experiment.

    Returns:
        One row per child run (teacher first, then trials by method, student_ratio descending, seed),
        with columns ``run_id, run_name, role, status`` (str), ``method`` (str), ``student_ratio``
        (float, fraction of the teacher's params; 1.0 for the teacher), ``seed`` (nullable ``Int64``,
        ``<NA>`` when not logged), ``lr``, ``kd_weight`` (float), ``params`` (parameter count),
        ``macs`` (multiply-accumulates per second of audio), ``params_pct`` (student params as % of
        the teacher's), ``kd_extra_params`` (count), then one column per metric of
        :data:`kdlib.metrics.specs.METRICS` in its unit (``pesq``, ``stoi``, ``estoi`` unitless, ``si_sdr``
        in dB, from ``test_<name>``), then the noisy input's scores ``noisy_<name>`` (logged on the
        teacher run), then one ``param.<name>`` column (str) per other logged param. Missing values
        are NaN. ``df.attrs`` holds ``experiment``, ``experiment_id``, ``parent_run_id`` and
        ``provenance`` (experiment, parent run id, name and start time, the parent's params, and its
        other ``kdlib.*`` tags such as ``smoke_test``).

    Raises:
        KdlibError: the sqlite store does not exist, the experiment does not exist (the message lists
            the experiments that do), it has no sweep parent run, or ``parent_run_id`` is not a sweep
            parent run of that experiment.
    """
    import mlflow
    from mlflow import MlflowClient

    _check_store_exists(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        listed = ", ".join(repr(n) for n in names) if names else "(none)"
        raise KdlibError(f"no MLflow experiment {experiment!r} in {tracking_uri}; experiments there: {listed}")

    with _use_tracking_uri(tracking_uri):
        if parent_run_id is None:
            parents = mlflow.search_runs(
                experiment_ids=[exp.experiment_id],
                filter_string=f"tags.`{ROLE}` = '{ROLE_SWEEP}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if parents.empty:
                raise KdlibError(
                    f"experiment {experiment!r} has no sweep parent run (no run tagged {ROLE}='{ROLE_SWEEP}')"
                )
        else:
            if not _RUN_ID_RE.match(parent_run_id):
                raise KdlibError(f"parent_run_id {parent_run_id!r} is not a valid MLflow run id")
            parents = mlflow.search_runs(
                experiment_ids=[exp.experiment_id],
                filter_string=f"attributes.run_id = '{parent_run_id}'",
            )
            if parents.empty:
                raise KdlibError(f"run {parent_run_id} is not a run of experiment {experiment!r}")
            role = _column(parents, f"tags.{ROLE}").iloc[0]
            if role != ROLE_SWEEP:
                raise KdlibError(
                    f"run {parent_run_id} is not a sweep parent run ({ROLE}={role!r}, expected '{ROLE_SWEEP}')"
                )
        parent = parents.iloc[0]
        pid = str(parent["run_id"])
        children = mlflow.search_runs(
            experiment_ids=[exp.experiment_id],
            filter_string=f"tags.`{PARENT}` = '{pid}'",
        )

    df = _normalize(children)
    parent_params: dict[str, Any] = {
        c[len("params.") :]: parent[c] for c in parents.columns if c.startswith("params.") and pd.notna(parent[c])
    }
    provenance: dict[str, Any] = {"experiment": experiment, "parent_run_id": pid}
    run_name = parent.get("tags.mlflow.runName")
    if pd.notna(run_name):
        provenance["parent_run_name"] = run_name
    started = parent.get("start_time")
    if pd.notna(started):
        provenance["started"] = pd.Timestamp(started).strftime("%Y-%m-%d %H:%M:%S UTC")
    provenance.update(parent_params)
    for col in parents.columns:  # kdlib.* tags of the parent (e.g. kdlib.smoke_test), bar the role
        name = col[len(_OWN_TAGS) :] if col.startswith(_OWN_TAGS) else ""
        if name and col != f"tags.{ROLE}" and name not in provenance and pd.notna(parent[col]):
            provenance[name] = parent[col]
    df.attrs.update(
        experiment=experiment,
        experiment_id=str(exp.experiment_id),
        parent_run_id=pid,
        provenance=provenance,
    )
    return df
