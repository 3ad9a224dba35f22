"""Pareto reports of KD sweeps: load a sweep's runs from MLflow, find the front, write plots + markdown.

Modules by job: :mod:`~kdlib.report.runs` (MLflow -> runs table), :mod:`~kdlib.report.front` (Pareto front,
baselines, row selection), :mod:`~kdlib.report.plots` (matplotlib figures), :mod:`~kdlib.report.markdown`
(tables and text), :mod:`~kdlib.report.build` (:func:`build_report`, :func:`write_report`). Columns follow
:mod:`kdlib.metrics.specs` and :mod:`kdlib.sweep.contract`. MLflow and matplotlib are imported lazily inside
the functions that need them; neither Ray nor :mod:`kdlib.train` is imported.
"""

from kdlib.report.build import build_report, write_report
from kdlib.report.front import pareto_front
from kdlib.report.runs import load_runs

__all__ = ["build_report", "load_runs", "pareto_front", "write_report"]
