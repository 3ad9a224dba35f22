"""``kdlib sweep run``: validated config → data check → MLflow parent run → teacher (trained once)
→ Ray Tune grid/Optuna/ASHA over trials → Pareto report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from kdlib.config import SweepConfig
from kdlib.evaluation import resolve_pesq_mode
from kdlib.train.datasets import eval_sets
from kdlib.train.teacher import ensure_teachers

METRIC, MODE = "val_si_sdr", "max"


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    experiment: str
    parent_run_id: str
    tracking_uri: str
    trials: int
    errored: int
    report: dict[str, Path]
    seconds: float


class ProgressCallback(Callback):
    """One line per finished trial with the sweep's ETA (Ray's own table shows per-trial status)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def _tick(self, trial, status: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[sweep] trial {trial} {status} ({self.done}/{self.total} done, "
              f"{elapsed / 60:.1f} min elapsed, eta {eta / 60:.1f} min)", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._tick(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._tick(trial, "ERRORED")


def _trial_name(trial) -> str:
    c = trial.config
    tags = "".join(f"-{c[k]}" for k in ("teacher", "student", "variant", "schedule") if c.get(k))
    return f"{c.get('method')}{tags}-r{c.get('student_ratio')}-s{c.get('seed')}-{trial.trial_id}"


def init_ray(cfg: SweepConfig) -> bool:
    """Connect to ``ray.address`` / ``RAY_ADDRESS`` when given, else start a fresh local instance.

    Returns True when this call started Ray (so the caller shuts it down again).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        # a local instance never needs more than loopback (../shared/docs/stack.md); read at init
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def run_sweep(cfg: SweepConfig, smoke: bool = False, report: bool = True) -> SweepOutcome:
    """Run a whole sweep. ``cfg`` is already smoke-transformed when ``smoke`` is set.

    Raises:
        DataError / ConfigError / KdlibError: bad data, config or an unreachable MLflow store,
            all before Ray starts.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray import tune

    from kdlib.sweep.space import build_search
    from kdlib.sweep.tracking import (
        MLflowTrialLogger,
        client_for,
        experiment_id,
        git_commit,
        log_teacher_run,
        start_parent_run,
    )
    from kdlib.sweep.trial import kd_trial

    start = time.perf_counter()
    out = cfg.output_path()
    out.mkdir(parents=True, exist_ok=True)
    # fail fast on data and tracking before anything expensive
    _, test = eval_sets(cfg)
    pesq_mode = resolve_pesq_mode(cfg.data.test.pesq_mode, test)
    client = client_for(cfg)
    exp_id = experiment_id(client, cfg)

    teachers = ensure_teachers(cfg)
    parent = start_parent_run(client, cfg, exp_id, smoke, pesq_mode)
    for name, (path, meta) in teachers.items():
        log_teacher_run(client, cfg, exp_id, parent, meta, path, name)
    teacher_paths = {name or "": str(path) for name, (path, _) in teachers.items()}
    print(f"[sweep] MLflow experiment '{cfg.experiment}', parent run {parent} at {cfg.tracking_uri()}", flush=True)

    param_space, searcher, num_samples = build_search(cfg.search, METRIC, MODE)
    started_ray = init_ray(cfg)
    resources: dict[str, Any] = {"cpu": cfg.resources.cpu}
    if cfg.resources.gpu:
        resources["gpu"] = cfg.resources.gpu
    scheduler = None
    if cfg.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(max_t=cfg.training.epochs, grace_period=cfg.scheduler.grace_period,
                                  reduction_factor=cfg.scheduler.reduction_factor, time_attr="epoch")
    n_trials = num_samples
    logger = MLflowTrialLogger(cfg, cfg.tracking_uri(), exp_id, parent, pesq_mode, git_commit())
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(kd_trial, cfg=cfg, teacher_paths=teacher_paths), resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=cfg.ray.max_concurrent_trials, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-{parent[:8]}", storage_path=str(out / "ray"),
            callbacks=[logger, ProgressCallback(n_trials)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            verbose=1,
        ),
    )
    try:
        results = tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    errored = sum(1 for r in results if r.error is not None)
    client.set_terminated(parent, "FINISHED")
    paths: dict[str, Path] = {}
    if report:
        from kdlib.report import write_report

        paths = write_report(cfg.tracking_uri(), cfg.experiment, out / "reports" / cfg.name, parent_run_id=parent)
    return SweepOutcome(cfg.experiment, parent, cfg.tracking_uri(), len(results), errored, paths,
                        time.perf_counter() - start)

