"""``kdlib sweep resume``: continue an interrupted sweep where it stopped.

What is saved where:

- ``<output>/ray/<name>-<parent[:8]>/kdlib_sweep.json`` (written by :func:`run_sweep` before the first
  trial): the validated config (``cfg.model_dump(mode="json")``, already smoke-transformed), the
  smoke and report flags, the MLflow tracking URI, experiment id and parent run id, the PESQ mode,
  the teacher checkpoints and the data root the driver resolved. Resume re-validates the config
  from it (plugins imported first).
- The same directory holds Ray Tune's own state: ``tuner.pkl`` (TuneConfig with the searcher and
  scheduler, and RunConfig *with its callbacks*, pickled when the Tuner was built),
  ``experiment_state-*.json`` (every trial's status, config, last result and checkpoint),
  ``searcher-state-*.pkl`` (for Optuna the whole ``OptunaSearch``, study included) and each trial's
  directory with its latest checkpoint (``CheckpointConfig(num_to_keep=1)``; with that setting Tune
  snapshots the experiment state after every trial checkpoint, so the snapshot never points at a
  deleted checkpoint).

``Tuner.restore(path, trainable=..., resume_unfinished=True, resume_errored=not restart,
restart_errored=restart)`` takes the trainable again (it is never pickled) but restores RunConfig
from ``tuner.pkl`` (``TunerInternal.__getstate__`` keeps ``_run_config``; ``Tuner.restore`` has no
``run_config`` argument), so the original :class:`MLflowTrialLogger`, bound to the same parent run,
comes back by itself. It finds each resumed trial's child run by its ``kdlib.trial_id`` tag, so no
run is created twice, and logs no epoch a run already holds.

- Finished trials are not run again. (After a SIGKILLed driver, a trial that finished after Tune's
  last state snapshot is saved as RUNNING: it restarts from its final checkpoint, trains and reports
  nothing, and ends; its run keeps its metrics.)
- Unfinished trials continue from the checkpoint in the saved state: the epoch counter goes on from
  there (an epoch whose checkpoint the interrupted driver had not registered yet is trained again).
- Errored trials continue from their last checkpoint, or start from scratch with
  ``--restart-errored``; Ray then gives them new trial ids, and their old FAILED runs are tagged
  ``kdlib.replaced`` and moved to MLflow's deleted runs so each trial keeps one run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kdlib.errors import CheckpointError, KdlibError
from kdlib.sweep import contract
from kdlib.sweep.session import (
    SweepOutcome,
    build_trainable,
    check_resources,
    find_experiment,
    finish_sweep,
    init_ray,
    load_sweep_record,
)


def resume_sweep(target: str | os.PathLike, restart_errored: bool = False, report: bool | None = None,
                 output: str | os.PathLike | None = None, address: str | None = None) -> SweepOutcome:
    """Continue an interrupted sweep (see the module docstring for what is restored from where).

    Args:
        target: experiment dir, its name, or the sweep name (see :func:`~kdlib.sweep.session.find_experiment`).
        restart_errored: run errored trials again from scratch instead of from their last checkpoint.
        report: write the Pareto report at the end (default: as the original ``sweep run`` did).
        output: where to look for ``target`` by name (default ``$KDLIB_OUTPUT``, else ``runs``).
        address: the Ray cluster to resume on (default: the sweep's ``ray.address``, else
            ``RAY_ADDRESS``, else a fresh local instance); the cluster the sweep ran on may be gone.

    Returns:
        a :class:`~kdlib.sweep.session.SweepOutcome` over all the sweep's trials, as ``run_sweep``.

    Raises:
        KdlibError: no such sweep, not restorable, MLflow store or parent run gone, teacher missing.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray import tune

    from kdlib.sweep.space import build_search
    from kdlib.sweep.tracking import client_for

    start = time.perf_counter()
    experiment_dir = find_experiment(target, output)
    record, plan = load_sweep_record(experiment_dir)
    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise KdlibError(f"'{experiment_dir}' holds no Ray Tune state to restore (tuner.pkl / experiment_state)")
    teacher_paths: dict[str, str] = record["teacher_paths"]
    for path in teacher_paths.values():
        if not Path(path).is_file():
            raise CheckpointError(f"teacher checkpoint '{path}' of this sweep is gone; cannot resume")
    tracking_uri = plan.tracking_uri  # the record's, see load_sweep_record
    client = client_for(tracking_uri)
    parent = record["parent_run_id"]
    try:
        client.get_run(parent)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types
        raise KdlibError(f"MLflow parent run {parent} of this sweep is not in {tracking_uri}") from None
    report = bool(record.get("report", True)) if report is None else report
    # the trials read the data where the driver finds it now, else where the sweep found it
    trial_plan = plan.pinned(record.get("data_root"))

    started_ray = init_ray(plan, address)
    try:
        check_resources(plan)
        param_space, _, _ = build_search(plan.cfg.search, contract.TUNE_METRIC, contract.SELECTION_MODE)
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=build_trainable(trial_plan, teacher_paths),
                                   resume_unfinished=True, resume_errored=not restart_errored,
                                   restart_errored=restart_errored, param_space=param_space)
        client.update_run(parent, status="RUNNING")
        print(f"[sweep] resuming {experiment_dir} (MLflow experiment '{record['experiment']}', parent run "
              f"{parent}); errored trials {'restart from scratch' if restart_errored else 'resume'}", flush=True)
        results = tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if restart_errored:
        retire_replaced_runs(client, record["experiment_id"], parent, experiment_dir)
    return finish_sweep(results, plan, client, parent, report, start, experiment_dir)


def retire_replaced_runs(client, experiment_id: str, parent: str, experiment_dir: Path) -> int:
    """``restart_errored`` gives each errored trial a new trial id (Ray's ``Trial.reset``), so its new
    run would sit next to the old FAILED one: tag the old runs ``kdlib.replaced`` and move them to
    MLflow's deleted stage (``mlflow runs restore`` brings one back). Returns how many."""
    from ray.tune import ExperimentAnalysis

    live = {t.trial_id for t in ExperimentAnalysis(str(experiment_dir)).trials}
    query = f"tags.`{contract.ROLE}` = '{contract.ROLE_TRIAL}' and tags.`{contract.PARENT}` = '{parent}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=50000)
    replaced = [r for r in runs if r.data.tags.get(contract.TRIAL_ID) not in live]
    for run in replaced:
        client.set_tag(run.info.run_id, contract.REPLACED, "restart-errored")
        client.delete_run(run.info.run_id)
    if replaced:
        print(f"[sweep] {len(replaced)} errored trial run(s) replaced by their restarted trials "
              f"(moved to MLflow's deleted runs)", flush=True)
    return len(replaced)
