"""Sweep YAML ``search`` section → Ray Tune search space and searcher.

Grid cells (method × student_ratio × seed × ``grid`` lists × variants × students, minus
``exclude``) are always run in full, one trial per cell and repeat. Without continuous knobs Ray's
``BasicVariantGenerator`` runs the cells as given points. With knobs under ``search.optuna`` every
cell is enqueued into one Optuna study as a partial point and TPE samples the remaining knobs (lr,
λ, ``kd.*``) inside it, so the grid stays exhaustive while Optuna learns across cells (Ray's
``OptunaSearch`` with a define-by-run space and ``points_to_evaluate``).
"""

from __future__ import annotations

from typing import Any

from kdlib.config import Distribution, SchedulerConfig, SearchConfig


def grid_points(search: SearchConfig) -> list[dict[str, Any]]:
    """Every grid cell not excluded, ``repeats`` times (see :meth:`SearchConfig.points`)."""
    return search.points()


class DefineByRunSpace:
    """Optuna define-by-run space: grid dims as categoricals (pinned by the enqueued points),
    ``search.optuna`` knobs as distributions. A class (not a closure) so Ray can pickle it."""

    def __init__(self, search: SearchConfig) -> None:
        self.grid = search.dims()
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
    """``(param_space, search_alg, num_samples)`` for ``ray.tune.TuneConfig``; one sample per cell."""
    points = grid_points(search)
    if not search.optuna:
        from ray import tune
        from ray.tune.search import BasicVariantGenerator

        # each point pins every key; the choice domains only declare the keys the points preset
        space = {k: tune.choice(v) for k, v in search.dims().items()}
        return space, BasicVariantGenerator(points_to_evaluate=points), len(points)
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=DefineByRunSpace(search), metric=metric, mode=mode,
                            points_to_evaluate=points, seed=seed)
    return {}, searcher, len(points)


def build_scheduler(scheduler: SchedulerConfig, epochs: int) -> Any:
    """The sweep's trial scheduler for ``ray.tune.TuneConfig``: None for FIFO, else Ray's asynchronous
    successive halving (ASHA, arXiv 1810.05934) with rungs at ``grace_period`` × ``reduction_factor``^k epochs.

    The metric and mode come from the TuneConfig (:data:`kdlib.sweep.contract.TUNE_METRIC`: the best
    validation SI-SDR so far, so a trial is judged at a rung by the weights it would keep, not stopped for a
    one-epoch dip of its current score).
    """
    if scheduler.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(max_t=epochs, grace_period=scheduler.grace_period,
                         reduction_factor=scheduler.reduction_factor, time_attr="epoch")
