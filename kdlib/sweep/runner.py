"""``kdlib sweep run``: plan → data check → teachers (the missing ones trained once, as parallel Ray tasks)
→ MLflow parent run → Ray Tune grid/Optuna/ASHA over trials → Pareto report."""

from __future__ import annotations

import os
import time

from ray.tune import Callback

from kdlib.sweep import contract
from kdlib.sweep.plan import SweepPlan
from kdlib.sweep.preflight import preflight
from kdlib.sweep.session import (
    ProgressCallback,
    SweepOutcome,
    build_trainable,
    check_resources,
    finish_sweep,
    init_ray,
    save_sweep_record,
    trial_name,
)
from kdlib.sweep.teacher_tasks import finish_prefill, prefill_teacher_caches, train_as_ray_tasks
from kdlib.sweep.teachers import ensure_teachers


def run_sweep(plan: SweepPlan, report: bool = True, callbacks: list[Callback] | None = None) -> SweepOutcome:
    """Run a whole sweep (``plan.cfg`` is already smoke-transformed when ``plan.smoke``).

    ``callbacks``: extra Ray Tune callbacks (they are pickled into the experiment, see
    :func:`kdlib.sweep.resume.resume_sweep`). The experiment directory
    ``<output>/ray/<name>-<parent run id[:8]>`` gets ``kdlib_sweep.json`` (the validated config, the
    smoke flag, the MLflow parent run and the teacher paths), so ``kdlib sweep resume`` can continue
    an interrupted sweep.

    Raises:
        DataError / ConfigError / KdlibError: bad data, config, output folder or MLflow store (the
            pre-flight, :func:`kdlib.sweep.preflight.preflight`), all before Ray starts; an unreachable
            Ray address; per-trial resources the cluster cannot give, right after Ray connects (a Ray
            instance this call started is shut down again).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray import tune

    from kdlib.sweep.space import build_scheduler, build_search
    from kdlib.sweep.tracking import (
        MLflowTrialLogger,
        experiment_id,
        git_commit,
        log_teacher_run,
        start_parent_run,
    )

    start = time.perf_counter()
    cfg, out = plan.cfg, plan.output
    # fail fast on output, data and tracking before anything expensive (a refused sweep leaves no folder)
    checked = preflight(plan)
    client, pesq_mode = checked.client, checked.pesq_mode
    out.mkdir(parents=True, exist_ok=True)

    started_ray = init_ray(plan)
    try:
        check_resources(plan)  # before the MLflow experiment, the teacher, the parent run or any trial
        exp_id = experiment_id(client, plan)
        # missing teachers train as Ray tasks, in parallel where the cluster has room, before any trial
        teachers = ensure_teachers(plan, train=train_as_ray_tasks)
        teacher_paths = {plan.teacher(name).key: str(path) for name, (path, _) in teachers.items()}
        trial_plan = plan.pinned()  # the data root resolved once, here: trials run in their own working directories
        # the teacher-output cache fills in Ray tasks from now on: beside the MLflow and Tune set-up below and the
        # first trials (the trials fill what is left)
        fills = prefill_teacher_caches(trial_plan, teacher_paths)
        try:
            parent = start_parent_run(client, plan, exp_id, pesq_mode, checked.pesq_modes)
            for name, (path, meta) in teachers.items():
                log_teacher_run(client, plan, exp_id, parent, meta, path, name)
            print(f"[sweep] MLflow experiment '{plan.experiment}', parent run {parent} at {plan.tracking_uri}",
                  flush=True)

            param_space, searcher, num_samples = build_search(cfg.search, contract.TUNE_METRIC,
                                                              contract.SELECTION_MODE)
            scheduler = build_scheduler(cfg.scheduler, cfg.training.epochs)
            logger = MLflowTrialLogger(plan, plan.tracking_uri, exp_id, parent, pesq_mode, git_commit())
            name = f"{plan.name}-{parent[:8]}"
            tuner = tune.Tuner(
                build_trainable(trial_plan, teacher_paths),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=contract.TUNE_METRIC, mode=contract.SELECTION_MODE, search_alg=searcher,
                    scheduler=scheduler, num_samples=num_samples, max_concurrent_trials=cfg.ray.max_concurrent_trials,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                    # a trial slot keeps its actor (torch and kdlib imported, worker started) for the next trial;
                    # every trial re-seeds and rebuilds all it uses, so it does not matter which actor it lands in
                    reuse_actors=True,
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
            save_sweep_record(experiment_dir, plan, report=report, experiment_id=exp_id, parent_run_id=parent,
                              pesq_mode=pesq_mode, teacher_paths=teacher_paths, num_trials=num_samples,
                              data_root=trial_plan.pinned_root)
            results = tuner.fit()
        finally:
            finish_prefill(fills)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return finish_sweep(results, plan, client, parent, report, start, experiment_dir)
