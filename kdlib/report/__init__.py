"""Pareto reports of KD sweeps: load a sweep's runs from MLflow, find the front, write plots + markdown.

MLflow and matplotlib are imported lazily inside the functions that need them.
"""

from kdlib.report.pareto import build_report, pareto_front, write_report
from kdlib.report.runs import load_runs

__all__ = ["build_report", "load_runs", "pareto_front", "write_report"]
