"""Sweep YAML ``search`` section → Ray Tune search space and searcher.

Grid dimensions (method × student_ratio × seed × ``grid`` lists) are always enumerated in full.
When continuous knobs are given under ``search.optuna``, every grid cell is enqueued into one
Optuna study as a partial point and TPE samples the remaining knobs (lr, λ, ``kd.*``) inside it, so
the grid stays exhaustive while Optuna learns across cells (Ray's ``OptunaSearch`` with a
define-by-run space and ``points_to_evaluate``).
"""

from __future__ import annotations

import itertools
from typing import Any

from kdlib.config import Distribution, SearchConfig


def grid_points(search: SearchConfig) -> list[dict[str, Any]]:
    """Every grid cell, ``repeats`` times, in a deterministic order (method-major)."""
    dims = {"method": search.method, "student_ratio": search.student_ratio, "seed": search.seed, **search.grid}
    cells = [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
    return [dict(c) for c in cells for _ in range(search.repeats)]


class DefineByRunSpace:
    """Optuna define-by-run space: grid dims as categoricals (pinned by the enqueued points),
    ``search.optuna`` knobs as distributions. A class (not a closure) so Ray can pickle it."""

    def __init__(self, search: SearchConfig) -> None:
        self.grid = {"method": search.method, "student_ratio": search.student_ratio, "seed": search.seed,
                     **search.grid}
        self.knobs: dict[str, Distribution] = dict(search.optuna)

    def __call__(self, trial: Any) -> None:
        for name, values in self.grid.items():
            trial.suggest_categorical(name, values)
        for name, d in self.knobs.items():
            if d.uniform is not None:
                trial.suggest_float(name, *d.uniform)
            elif d.loguniform is not None:
                trial.suggest_float(name, *d.loguniform, log=True)
            elif d.int is not None:
                trial.suggest_int(name, *d.int)
            else:
                trial.suggest_categorical(name, d.choice)


def build_search(search: SearchConfig, metric: str, mode: str, seed: int = 0) -> tuple[dict[str, Any], Any, int]:
    """``(param_space, search_alg, num_samples)`` for ``ray.tune.TuneConfig``.

    Without ``search.optuna`` knobs this is a plain Ray grid (``tune.grid_search``); with them an
    ``OptunaSearch`` (TPE, seeded) that visits every grid cell exactly ``repeats`` times.
    """
    from ray import tune

    if not search.optuna:
        space = {"method": tune.grid_search(search.method), "student_ratio": tune.grid_search(search.student_ratio),
                 "seed": tune.grid_search(search.seed),
                 **{k: tune.grid_search(v) for k, v in search.grid.items()}}
        return space, None, search.repeats
    from ray.tune.search.optuna import OptunaSearch

    points = grid_points(search)
    searcher = OptunaSearch(space=DefineByRunSpace(search), metric=metric, mode=mode,
                            points_to_evaluate=points, seed=seed)
    return {}, searcher, len(points)
