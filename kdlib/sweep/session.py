"""What ``kdlib sweep run`` and ``kdlib sweep resume`` share: connecting to Ray, the trainable with its
resources, the progress callback, the sweep record in the Ray experiment directory, and closing a sweep
(parent run status + report). Neither entry point imports the other.

The sweep record ``<output>/ray/<name>-<parent[:8]>/kdlib_sweep.json`` (written before the first
trial) holds the validated config (already smoke-transformed), the smoke and report flags, the MLflow
tracking URI, experiment id and parent run id, the PESQ mode, the teacher checkpoints and the data root
the driver resolved; ``kdlib sweep resume`` rebuilds the plan from it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from kdlib.errors import ConfigError, KdlibError, first_line
from kdlib.sweep.plan import SweepPlan, resolve_output
from kdlib.sweep.preflight import probe_ray_address, ray_address

RECORD = "kdlib_sweep.json"
FORMAT = 1


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
    #: the MLflow experiment id (for the UI link)
    experiment_id: str | None = None


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


def trial_name(trial) -> str:
    """``<method>[-teacher][-student][-variant][-schedule]-r<ratio>-s<seed>-<trial id>``."""
    c = trial.config
    tags = "".join(f"-{c[k]}" for k in ("teacher", "student", "variant", "schedule") if c.get(k))
    return f"{c.get('method')}{tags}-r{c.get('student_ratio')}-s{c.get('seed')}-{trial.trial_id}"


def init_ray(plan: SweepPlan, address: str | None = None) -> bool:
    """Connect to ``address`` (e.g. ``kdlib sweep resume --address``), else ``ray.address`` /
    ``RAY_ADDRESS`` when given, else start a fresh local instance.

    A ``host:port`` or ``ray://host:port`` address is probed first with a TCP connection bounded by
    ``ray.connect_timeout_s`` (Ray's own client retries an unreachable address for minutes).

    Returns True when this call started Ray (so the caller shuts it down again).

    Raises:
        KdlibError: no Ray cluster answers at the address, or Ray refuses to connect (one line naming
            where the address came from: ``--address``, ``ray.address`` or ``$RAY_ADDRESS``).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # every trial report carries a checkpoint and num_to_keep=1, so Tune snapshots its state at each report by
    # design; its "snapshotting triggered multiple times ... consider increasing num_to_keep" warning (read by
    # the driver's Tuner) would repeat every epoch with advice that does not apply
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    address, source = ray_address(plan, address)
    if address and address != "local":
        probe_ray_address(address, plan.cfg.ray.connect_timeout_s, source)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise KdlibError(f"{source}: cannot connect to Ray at '{address[:200]}': {first_line(exc)}") from None
    else:
        # a local instance never needs more than loopback (../shared/docs/stack.md); read at init
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=plan.cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def check_resources(plan: SweepPlan) -> None:
    """Refuse per-trial resources that no node of the connected Ray cluster can give (Tune would
    queue the trials forever): ``resources.cpu`` CPUs and ``resources.gpu`` GPUs on one node. Skipped
    with ``ray.check_resources: false`` (an autoscaling cluster that adds nodes for queued trials).

    Raises:
        ConfigError: one line naming the key, what was asked and what the cluster has.
    """
    import ray

    if not plan.cfg.ray.check_resources:
        return
    asks = {"cpu": ("CPU", plan.cfg.resources.cpu), "gpu": ("GPU", plan.cfg.resources.gpu)}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, (resource, ask) in asks.items():
        if ask <= 0:
            continue
        largest = max((float(n.get(resource, 0)) for n in nodes), default=0.0)
        if largest >= ask:
            continue
        total = sum(float(n.get(resource, 0)) for n in nodes)
        if key == "gpu" and total == 0:
            raise ConfigError(f"resources.gpu: {ask:g} GPU per trial asked, but the Ray cluster has no GPU")
        raise ConfigError(f"resources.{key}: {ask:g} {resource} per trial asked, but no node of the Ray cluster has "
                          f"that many (largest node: {largest:g}, cluster total: {total:g} on {len(nodes)} node(s)); "
                          f"lower resources.{key}, or set ray.check_resources: false for an autoscaling cluster")
    # a trial's bundle lives on one node: enough CPUs on one node and enough GPUs on another is not enough
    cpu, gpu = plan.cfg.resources.cpu, plan.cfg.resources.gpu
    if gpu > 0 and not any(float(n.get("CPU", 0)) >= cpu and float(n.get("GPU", 0)) >= gpu for n in nodes):
        shapes = ", ".join(sorted({f"{float(n.get('CPU', 0)):g} CPU + {float(n.get('GPU', 0)):g} GPU" for n in nodes}))
        raise ConfigError(f"resources: {cpu:g} CPU + {gpu:g} GPU per trial asked, but no node of the Ray cluster has "
                          f"both (nodes: {shapes}); lower resources.cpu or resources.gpu, or set "
                          "ray.check_resources: false for an autoscaling cluster")


def build_trainable(plan: SweepPlan, teacher_paths: dict[str, str]):
    """``kd_trial`` bound to the sweep (``tune.with_parameters``) with the YAML's per-trial resources
    (CPUs and a GPU fraction). The same call builds the trainable for ``Tuner.restore``."""
    from ray import tune

    from kdlib.sweep.trial import kd_trial

    resources: dict[str, Any] = {"cpu": plan.cfg.resources.cpu}
    if plan.cfg.resources.gpu:
        resources["gpu"] = plan.cfg.resources.gpu
    return tune.with_resources(tune.with_parameters(kd_trial, plan=plan, teacher_paths=teacher_paths), resources)


def unfinished_trials(experiment_dir: Path) -> int:
    """Trials that Ray's saved experiment state leaves neither TERMINATED nor ERROR.

    After a SIGINT, Tune saves the state and then stops the running trials, marking them TERMINATED
    in memory only, so the returned ``ResultGrid`` cannot tell an interrupted sweep from a finished
    one; the saved state (what ``Tuner.restore`` reads) can.
    """
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment_dir)).trials
    return sum(1 for t in trials if t.status not in ("TERMINATED", "ERROR"))


def finish_sweep(results, plan: SweepPlan, client, parent: str, report: bool, start: float,
                 experiment_dir: Path) -> SweepOutcome:
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
            from kdlib.sweep.listening import examples_maker

            paths = write_report(plan.tracking_uri, plan.experiment, plan.output / "reports" / plan.name,
                                 parent_run_id=parent, examples=examples_maker(_test_corpus(plan), plan.tracking_uri))
            from kdlib.sweep.tracking import log_report

            log_report(client, parent, paths)
    return SweepOutcome(plan.experiment, parent, plan.tracking_uri, len(results), errored, paths,
                        time.perf_counter() - start, unfinished, experiment_dir, plan.smoke,
                        client.get_run(parent).info.experiment_id)


def _test_corpus(plan: SweepPlan) -> Any:
    """The primary test set, for the HTML report's listening examples (None, with a warning, when it cannot
    be built: the report stands without them)."""
    try:
        return plan.data_source().eval_sets()[1]
    except Exception as exc:  # noqa: BLE001
        print(f"[sweep] warning: no listening examples ({type(exc).__name__}: {first_line(exc)})", flush=True)
        return None


# ---- the sweep record ---------------------------------------------------------------------------------
def save_sweep_record(experiment_dir: Path, plan: SweepPlan, *, report: bool, experiment_id: str,
                      parent_run_id: str, pesq_mode: str, teacher_paths: dict[str, str], num_trials: int,
                      data_root: str | None = None) -> Path:
    """Write ``kdlib_sweep.json`` into the Ray experiment directory (atomically); returns its path."""
    from kdlib.sweep.tracking import git_commit

    experiment_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT, "name": plan.name, "experiment": plan.experiment, "config_hash": plan.config_hash,
        "smoke": plan.smoke, "report": report, "tracking_uri": plan.tracking_uri, "experiment_id": experiment_id,
        "parent_run_id": parent_run_id, "pesq_mode": pesq_mode, "teacher_paths": teacher_paths,
        "num_trials": num_trials, "output": str(experiment_dir.parent.parent), "data_root": data_root,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": plan.cfg.model_dump(mode="json"),
    }
    path = experiment_dir / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def find_experiment(target: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """The Ray experiment directory of a kdlib sweep.

    Args:
        target: the directory itself, its name under ``<output>/ray``, or the sweep's name or MLflow
            experiment (then the newest matching sweep).
        output: the sweeps' output dir (default ``$KDLIB_OUTPUT``, else ``runs``).

    Raises:
        KdlibError: nothing matches, or the directory was not started by ``kdlib sweep run``.
    """
    path = Path(target).expanduser()
    if path.is_dir():
        if (path / RECORD).is_file():
            return path.resolve()
        raise KdlibError(f"'{path}' holds no {RECORD}: not a sweep started by 'kdlib sweep run'")
    root = (Path(output).expanduser().resolve() if output else resolve_output()) / "ray"
    if (root / str(target) / RECORD).is_file():
        return (root / str(target)).resolve()
    matches = []
    for record in root.glob(f"*/{RECORD}") if root.is_dir() else []:
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if str(target) in (data.get("name"), data.get("experiment")):
            matches.append((record.stat().st_mtime, record.parent))
    if not matches:
        known = sorted(p.parent.name for p in root.glob(f"*/{RECORD}")) if root.is_dir() else []
        raise KdlibError(f"no sweep '{target}' to resume under {root}"
                         + (f" (found: {', '.join(known)})" if known else " (no kdlib sweeps there)"))
    return max(matches)[1].resolve()


def load_sweep_record(experiment_dir: Path) -> tuple[dict[str, Any], SweepPlan]:
    """``(record, plan)`` of a sweep's experiment dir; plugins are imported first.

    Raises:
        ConfigError: the record is unreadable or its config no longer validates.
    """
    from kdlib.sweep.plan import plan_from_dump

    path = experiment_dir / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable sweep record ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path}: not a kdlib sweep record of format {FORMAT}")
    try:
        plan = plan_from_dump(record["config"], smoke=bool(record.get("smoke")), output=experiment_dir.parent.parent,
                              tracking_uri=record.get("tracking_uri"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if plan.config_hash != record.get("config_hash"):
        print(f"[sweep] warning: the saved config now validates to hash {plan.config_hash}, not "
              f"{record.get('config_hash')} (kdlib changed since the sweep started)", flush=True)
    return record, plan

