"""One test set's share of a report: its runs table (scores of that set in the plain metric columns), the
significance table and the teacher gate computed on that set's per-utterance scores. The markdown and HTML
reports both render these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kdlib.report.front import FRONT_METRICS, ReportRows, select_rows
from kdlib.report.runs import set_view
from kdlib.report.significance import significance_table, teacher_gate


@dataclass
class SetResult:
    """A test set's results.

    Attributes:
        name: the set's name (``data.test`` list), None for a sweep's single unnamed test set.
        prov: provenance with this set's ``test_set`` label and ``pesq_mode``.
        rows: :func:`kdlib.report.front.select_rows` of the runs with this set's scores.
        table: :func:`kdlib.report.significance.significance_table` (None without per-utterance scores).
        gate: :func:`kdlib.report.significance.teacher_gate` (None without per-utterance scores).
        scores: run id → this set's per-utterance scores.
    """

    name: str | None
    prov: dict[str, Any]
    rows: ReportRows
    table: pd.DataFrame | None = None
    gate: pd.DataFrame | None = None
    scores: Mapping[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``Test set `noizeus` (noizeus:noizeus_spk3, PESQ nb)``-style label for headings."""
        where = ", ".join(str(v) for v in (self.prov.get("test_set"), self.prov.get("pesq_mode") and
                                           f"PESQ {self.prov['pesq_mode']}") if v)
        head = f"Test set `{self.name}`" if self.name else "Test set"
        return f"{head} ({where})" if where else head


def set_result(df: pd.DataFrame, prov: dict[str, Any], scores: Mapping[str, pd.DataFrame] | None,
               name: str | None = None) -> SetResult:
    """The :class:`SetResult` of test set ``name`` (None: the primary, the plain ``test_*`` columns).

    Args:
        df: runs table (:func:`kdlib.report.runs.load_runs`).
        prov: the sweep's provenance (``test_set.<name>`` / ``pesq_mode.<name>`` give a named set's labels).
        scores: run id → that set's per-utterance scores; None: no statistics.
    """
    view = df if name is None else set_view(df, name)
    if name is not None:
        prov = {**prov, **{k: prov[f"{k}.{name}"] for k in ("test_set", "pesq_mode") if f"{k}.{name}" in prov}}
    rows = select_rows(view)
    table = gate = None
    if scores is not None and not rows.finished.empty:
        table = significance_table(rows.finished, scores, rows.extras, FRONT_METRICS)
        gate = teacher_gate(rows.teacher, rows.finished, scores)
    return SetResult(name, prov, rows, table, gate, scores or {})
