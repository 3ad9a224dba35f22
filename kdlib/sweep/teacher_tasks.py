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


def _fill_cache_task(plan: SweepPlan, name: str | None, teacher_path: str, epoch: int) -> int:
    """The cache-filling task body, in a Ray worker: one epoch of one teacher's entry (output and the sweep's
    taps), then each KD method's teacher targets; returns the epoch (filled, or found complete)."""
    import torch

    from kdlib.config import import_plugins
    from kdlib.models import load_model
    from kdlib.sweep.plan import teacher_kd_methods
    from kdlib.train import resolve_device
    from kdlib.train.teacher_cache import TeacherCache, cache_key

    cfg = plan.cfg
    import_plugins(cfg.plugins)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))
    device = resolve_device(cfg.training.device)
    teacher, _ = load_model(teacher_path, device)
    teacher.eval().requires_grad_(False)
    data = plan.data_source().build(seed=cfg.data.seed)
    methods = [kd for kd in teacher_kd_methods(cfg, name) if kd.target_taps()]
    cache = TeacherCache(plan.teacher_cache_dir, cache_key(teacher_path, plan.cache_data_identity(), cfg.data.seed),
                         plan.cache_taps(name), log=_print)
    # a call with a method also fills the entry's output and taps: one pass when targets are asked for
    for kd in methods or [None]:
        cache.epoch(epoch, teacher, data.train, kd.teacher_taps() if kd else cache.taps, device, method=kd)
    return epoch


def prefill_teacher_caches(plan: SweepPlan, teacher_paths: dict[str, str], log: Log = print) -> list[Any]:
    """Start filling the teacher-output cache of every teacher a KD method of the sweep reads: one Ray task
    per teacher and epoch (``resources.cpu`` CPUs and ``resources.gpu`` GPU, as a trial), submitted before the
    trials so the epochs fill while the first trials (e.g. the ``none`` students) run. One task per epoch rather
    than one per teacher: short tasks spread over the trial slots, where one long task would hold one slot for
    the whole fill and leave the other slots' trials to finish later. A trial that reaches an epoch first fills
    it itself (the entry's file lock makes it once either way), so the tasks only save waiting.

    Args:
        teacher_paths: teacher checkpoints by ``teachers:`` key (``""`` for the single teacher).

    Returns:
        the tasks' object refs (the caller waits for or cancels them at the end of the sweep); empty with
        ``teacher_cache: off`` or no KD method that reads a teacher.
    """
    import ray

    from kdlib.sweep.plan import teacher_kd_methods

    cfg = plan.cfg
    if not cfg.teacher_cache.enabled:
        return []
    task_plan = plan.pinned()
    remote = ray.remote(_fill_cache_task)
    refs = []
    for name in plan.teachers:
        if not teacher_kd_methods(cfg, name):
            continue
        key = plan.teacher(name).key
        log(f"[teacher cache] {plan.teacher(name).where}: filling {cfg.training.epochs} epoch(s) in Ray tasks "
            "(one per epoch) while the first trials run")
        task = remote.options(num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu, max_retries=0,
                              name=f"teacher-cache-{key or 'main'}")
        refs += [task.remote(task_plan, name, teacher_paths[key], epoch) for epoch in range(cfg.training.epochs)]
    return refs


def finish_prefill(refs: list[Any], log: Log = print) -> None:
    """At the end of a sweep: cancel the cache tasks still running and report one that failed (the trials
    filled what it did not, so a failure costs time, never results)."""
    import ray
    from ray.exceptions import RayError

    done, pending = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    for ref in pending:
        ray.cancel(ref, force=True)
    for ref in done:
        try:
            ray.get(ref)
        except RayError as err:
            log(f"[teacher cache] a filling task failed ({type(err).__name__}: {first_line(err)}); the trials "
                "filled the cache themselves")
