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
from kdlib.errors import ConfigError
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
    #: trials left neither finished nor errored by an interrupted driver (SIGINT): resume them
    unfinished: int = 0
    #: the Ray Tune experiment directory (``kdlib sweep resume`` takes it)
    experiment_dir: Path | None = None
    smoke: bool = False


class ProgressCallback(Callback):
    """One line per finished trial with the sweep's ETA (Ray's own table shows per-trial status).
    Counts from Tune's trial list, so a resumed sweep counts the trials finished before too."""

    def __init__(self, total: int) -> None:
        self.total, self.start, self.done_here = total, time.perf_counter(), 0

    def setup(self, **info) -> None:
        # a resumed sweep unpickles this callback from the experiment: restart the clock
        self.start, self.done_here = time.perf_counter(), 0

    def _tick(self, trials, trial, status: str) -> None:
        self.done_here += 1
        done = 1 + sum(1 for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR"))
        total = max(self.total, len(trials))
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done_here * max(0, total - done)
        print(f"[sweep] trial {trial} {status} ({done}/{total} done, "
              f"{elapsed / 60:.1f} min elapsed, eta {eta / 60:.1f} min)", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._tick(trials, trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._tick(trials, trial, "ERRORED")


def _trial_name(trial) -> str:
    c = trial.config
    tags = "".join(f"-{c[k]}" for k in ("teacher", "student", "variant", "schedule") if c.get(k))
    return f"{c.get('method')}{tags}-r{c.get('student_ratio')}-s{c.get('seed')}-{trial.trial_id}"


def init_ray(cfg: SweepConfig, address: str | None = None) -> bool:
    """Connect to ``address`` (e.g. ``kdlib sweep resume --address``), else ``ray.address`` /
    ``RAY_ADDRESS`` when given, else start a fresh local instance.

    Returns True when this call started Ray (so the caller shuts it down again).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address and address != "local":
        ray.init(address=address)
    else:
        # a local instance never needs more than loopback (../shared/docs/stack.md); read at init
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def check_gpu(cfg: SweepConfig) -> None:
    """Refuse a GPU fraction per trial on a Ray cluster without GPUs (Tune would wait forever).

    Raises:
        ConfigError: ``resources.gpu`` > 0 and the cluster reports no ``GPU`` resource.
    """
    import ray

    if cfg.resources.gpu > 0 and not ray.cluster_resources().get("GPU", 0):
        raise ConfigError(f"resources.gpu: {cfg.resources.gpu:g} GPU per trial asked, but the Ray cluster has no GPU")


def pin_data_root(cfg: SweepConfig, fallback: str | None = None) -> SweepConfig:
    """A copy of ``cfg`` whose ``data.root`` is the absolute data root as the driver resolves it
    (``data.root`` > ``$KDLIB_DATA`` > ``fallback`` > ``../shared/data``), for the trials: a trial
    runs in a per-trial working directory (stack.md G11), where a relative or default root would
    point nowhere.

    Raises:
        DataError: the data root does not exist.
    """
    from kdlib.data.root import ENV_VAR, resolve_data_root

    given = cfg.data.root or (None if os.environ.get(ENV_VAR) else fallback)
    root = resolve_data_root(given)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(root)})})


def build_trainable(cfg: SweepConfig, teacher_paths: dict[str, str]):
    """``kd_trial`` bound to the sweep (``tune.with_parameters``) with the YAML's per-trial resources
    (CPUs and a GPU fraction). The same call builds the trainable for ``Tuner.restore``."""
    from ray import tune

    from kdlib.sweep.trial import kd_trial

    resources: dict[str, Any] = {"cpu": cfg.resources.cpu}
    if cfg.resources.gpu:
        resources["gpu"] = cfg.resources.gpu
    return tune.with_resources(tune.with_parameters(kd_trial, cfg=cfg, teacher_paths=teacher_paths), resources)


def unfinished_trials(experiment_dir: Path) -> int:
    """Trials that Ray's saved experiment state leaves neither TERMINATED nor ERROR.

    After a SIGINT, Tune saves the state and then stops the running trials, marking them TERMINATED
    in memory only, so the returned ``ResultGrid`` cannot tell an interrupted sweep from a finished
    one; the saved state (what ``Tuner.restore`` reads) can.
    """
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment_dir)).trials
    return sum(1 for t in trials if t.status not in ("TERMINATED", "ERROR"))


def finish_sweep(results, cfg: SweepConfig, client, parent: str, tracking_uri: str, out: Path, report: bool,
                 start: float, smoke: bool, experiment_dir: Path) -> SweepOutcome:
    """Close the parent run and write the report after ``fit()``; an interrupted sweep (SIGINT) gets
    its parent run KILLED and no report, and says how to resume."""
    errored = results.num_errors
    unfinished = unfinished_trials(experiment_dir)
    paths: dict[str, Path] = {}
    if unfinished:
        client.set_terminated(parent, "KILLED")
        print(f"[sweep] interrupted: {unfinished} trial(s) unfinished; the state is saved, continue with: "
              f"kdlib sweep resume {experiment_dir}", flush=True)
    else:
        client.set_terminated(parent, "FINISHED")
        if report:
            from kdlib.report import write_report

            paths = write_report(tracking_uri, cfg.experiment, out / "reports" / cfg.name, parent_run_id=parent)
    return SweepOutcome(cfg.experiment, parent, tracking_uri, len(results), errored, paths,
                        time.perf_counter() - start, unfinished, experiment_dir, smoke)


def run_sweep(cfg: SweepConfig, smoke: bool = False, report: bool = True,
              callbacks: list[Callback] | None = None) -> SweepOutcome:
    """Run a whole sweep. ``cfg`` is already smoke-transformed when ``smoke`` is set.

    ``callbacks``: extra Ray Tune callbacks (they are pickled into the experiment, see
    :func:`kdlib.sweep.resume.resume_sweep`). The experiment directory
    ``<output>/ray/<name>-<parent run id[:8]>`` gets ``kdlib_sweep.json`` (the validated config, the
    smoke flag, the MLflow parent run and the teacher paths), so ``kdlib sweep resume`` can continue
    an interrupted sweep.

    Raises:
        DataError / ConfigError / KdlibError: bad data, config or an unreachable MLflow store,
            all before any trial; a GPU fraction per trial on a cluster without GPUs, right after
            Ray starts (which is shut down again).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray import tune

    from kdlib.sweep.resume import save_sweep_record
    from kdlib.sweep.space import build_search
    from kdlib.sweep.tracking import (
        MLflowTrialLogger,
        client_for,
        experiment_id,
        git_commit,
        log_teacher_run,
        start_parent_run,
    )

    start = time.perf_counter()
    out = cfg.output_path()
    # fail fast on data and tracking before anything expensive (a refused sweep leaves no folder)
    _, test = eval_sets(cfg)
    pesq_mode = resolve_pesq_mode(cfg.data.test.pesq_mode, test)
    client = client_for(cfg)
    out.mkdir(parents=True, exist_ok=True)

    started_ray = init_ray(cfg)
    try:
        check_gpu(cfg)  # before the MLflow experiment, the teacher, the parent run or any trial
        exp_id = experiment_id(client, cfg)
        teachers = ensure_teachers(cfg)
        parent = start_parent_run(client, cfg, exp_id, smoke, pesq_mode)
        for name, (path, meta) in teachers.items():
            log_teacher_run(client, cfg, exp_id, parent, meta, path, name)
        teacher_paths = {name or "": str(path) for name, (path, _) in teachers.items()}
        print(f"[sweep] MLflow experiment '{cfg.experiment}', parent run {parent} at {cfg.tracking_uri()}",
              flush=True)

        param_space, searcher, num_samples = build_search(cfg.search, METRIC, MODE)
        scheduler = None
        if cfg.scheduler.name == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(max_t=cfg.training.epochs, grace_period=cfg.scheduler.grace_period,
                                      reduction_factor=cfg.scheduler.reduction_factor, time_attr="epoch")
        logger = MLflowTrialLogger(cfg, cfg.tracking_uri(), exp_id, parent, pesq_mode, git_commit())
        name = f"{cfg.name}-{parent[:8]}"
        trial_cfg = pin_data_root(cfg)  # resolved once, here: trials run in their own working directories
        tuner = tune.Tuner(
            build_trainable(trial_cfg, teacher_paths),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=cfg.ray.max_concurrent_trials, trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(out / "ray"),
                callbacks=[logger, ProgressCallback(num_samples), *(callbacks or [])],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
                verbose=1,
            ),
        )
        experiment_dir = out / "ray" / name
        save_sweep_record(experiment_dir, cfg, smoke=smoke, report=report, tracking_uri=cfg.tracking_uri(),
                          experiment_id=exp_id, parent_run_id=parent, pesq_mode=pesq_mode,
                          teacher_paths=teacher_paths, num_trials=num_samples, data_root=trial_cfg.data.root)
        results = tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return finish_sweep(results, cfg, client, parent, cfg.tracking_uri(), out, report, start, smoke, experiment_dir)
