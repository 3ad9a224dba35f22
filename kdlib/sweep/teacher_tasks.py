"""The sweep's missing teachers as Ray tasks (``kdlib sweep run``): all submitted at once, so several train in
parallel where the cluster has room, the driver waiting for them before any trial starts.

Each task runs :func:`kdlib.sweep.teachers.train_teacher` with ``num_cpus`` = the teacher's ``threads`` and
one GPU when the sweep trains on CUDA; its log lines reach the driver through Ray's worker-output
forwarding. A task whose worker dies (SIGKILL, OOM, node lost) is retried up to ``ray.max_failures``
times and continues from the teacher's last completed epoch (its per-epoch state file, which must lie on
storage every node shares, as the checkpoints the trials read do). An exception the teacher raises is not
retried and reaches the caller as itself (its type and message, as when trained in the driver).
"""

from __future__ import annotations

import re
from typing import Any

from kdlib.errors import KdlibError, first_line
from kdlib.sweep.plan import SweepPlan
from kdlib.sweep.teachers import train_teacher
from kdlib.train.trainer import Log


def _print(line: str) -> None:
    # flushed per line: Ray forwards a worker's output to the driver as it reaches the worker's log file
    print(line, flush=True)


def _teacher_task(plan: SweepPlan, name: str | None) -> dict[str, Any]:
    """The task body, in a Ray worker: the sweep's plugins (models registered there), then the teacher."""
    from kdlib.config import import_plugins

    import_plugins(plan.cfg.plugins)
    return train_teacher(plan, log=_print, name=name)


def task_resources(plan: SweepPlan, name: str | None) -> dict[str, float]:
    """``{"num_cpus", "num_gpus"}`` of one teacher's task.

    CPUs: the teacher's ``threads``, lowered to the largest node's CPUs (a task no node can take would wait
    forever; the teacher still runs ``threads`` torch threads) unless ``ray.check_resources: false`` (an
    autoscaler adds nodes). GPUs: 1 for ``training.device`` ``cuda``/``cuda:N``, and for ``auto`` when the
    sweep asks ``resources.gpu`` or the cluster has a GPU; 0 otherwise. Reads the connected cluster.
    """
    import ray

    cfg = plan.cfg
    device = cfg.training.device
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    has_gpu = any(float(n.get("GPU", 0)) >= 1 for n in nodes)
    gpus = 1.0 if device.startswith("cuda") or (device == "auto" and (cfg.resources.gpu > 0 or has_gpu)) else 0.0
    cpus = float(plan.teacher(name).config.threads)
    if cfg.ray.check_resources:
        if gpus and not has_gpu:
            gpus = 0.0  # the task then fails fast in resolve_device ("no CUDA GPU"), as in the driver
        largest = max((float(n.get("CPU", 0)) for n in nodes if float(n.get("GPU", 0)) >= gpus), default=0.0)
        if 0 < largest < cpus:
            cpus = largest
    return {"num_cpus": cpus, "num_gpus": gpus}


def train_as_ray_tasks(plan: SweepPlan, names: list[str | None], log: Log = print) -> dict[str | None, dict[str, Any]]:
    """Train the teachers ``names`` of the sweep as Ray tasks on the connected cluster (started locally by
    Ray when none is); returns ``{name: meta}`` once every one has saved its checkpoint. Fits
    :data:`kdlib.sweep.teachers.TrainMissing`.

    Raises:
        whatever a teacher raised (DataError, ConfigError, FloatingPointError...): the first failure, the
            other tasks cancelled; the worker's traceback is attached as a note. KdlibError: a task's worker
            died more than ``ray.max_failures`` times, or Ray could not run it (one line naming the teacher).
    """
    import ray
    from ray.exceptions import RayError, RayTaskError

    task_plan = plan.pinned()  # workers start in their own directories: the data root resolved here
    remote = ray.remote(_teacher_task)
    retries = plan.cfg.ray.max_failures
    refs: dict[Any, str | None] = {}
    for name in names:
        where = plan.teacher(name).where
        resources = task_resources(plan, name)
        log(f"[teacher] {where}: Ray task with {resources['num_cpus']:g} CPU, {resources['num_gpus']:g} GPU, "
            f"{plan.teacher(name).config.threads} torch threads (up to {retries} retr{'y' if retries == 1 else 'ies'} "
            "if its worker dies)")
        ref = remote.options(**resources, max_retries=retries, retry_exceptions=False,
                             name=f"teacher-{plan.teacher(name).key or 'main'}").remote(task_plan, name)
        refs[ref] = name
    metas: dict[str | None, dict[str, Any]] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name = refs[done[0]]
            try:
                metas[name] = ray.get(done[0])
            except RayTaskError as err:
                cause = err.cause
                if isinstance(cause, BaseException) and not isinstance(cause, RayError):
                    # the worker's traceback, shown under the driver's (Ray's message carries it, coloured)
                    trace = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
                    cause.add_note(f"in the Ray task of {plan.teacher(name).where}: {trace}")
                    raise cause from None
                raise KdlibError(f"{plan.teacher(name).where}: its Ray task failed: {first_line(cause)}") from None
            except RayError as err:
                raise KdlibError(f"{plan.teacher(name).where}: its Ray task was lost ({type(err).__name__}: "
                                 f"{first_line(err)}) after up to {retries} retries (ray.max_failures); its "
                                 "per-epoch state is kept, so a new run continues from it") from None
            log(f"[teacher] {plan.teacher(name).where} trained ({len(metas)}/{len(refs)})")
    finally:
        for ref in pending:  # a failed teacher ends the sweep: free the cluster of the others
            ray.cancel(ref, force=True)
    return {name: metas[name] for name in names}
