"""Fault injection for the fault-tolerance tests (test plugins, not real KD methods).

KD methods that misbehave at a given training step, counted across restarts: the step counter is a
buffer of the method, so it is saved in the trial's checkpoint and a trial resumed from epoch N
counts on from there (a restarted-from-scratch trial would count from 0 again).

- ``fault_raise``: raises ``RuntimeError`` at training step ``at_step`` (1-based), on every attempt.
- ``fault_nan``: returns a NaN loss at ``at_step`` (the trainer turns it into ``FloatingPointError``).
- ``fault_sigkill``: SIGKILLs its own worker process at ``at_step``, once: it first creates
  ``marker``, and never kills again while that file exists.
- ``fault_slow``: sleeps ``sleep_s`` per training step (a long-running trial to interrupt).

Plus :class:`RemoveNodeCallback`, a driver-side Tune callback that removes a node of a
``ray.cluster_utils.Cluster`` (registered in :data:`CLUSTERS`) while a trial that has a checkpoint
runs on it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from ray.tune import Callback

from kdlib.kd import KDConfig, KDInputs, KDMethod, register_kd_method

#: test-owned clusters by key; the callback holds only the key, so it pickles (Tune pickles callbacks)
CLUSTERS: dict[str, object] = {}


class FaultConfig(KDConfig):
    at_step: int = 1
    marker: str = ""
    sleep_s: float = 0.0


class _Fault(KDMethod):
    Config = FaultConfig
    source = "test plugin"
    needs_teacher = False

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def fault(self) -> torch.Tensor | None:  # pragma: no cover - overridden
        return None

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        zero = inputs.student_out.sum() * 0.0
        if not self.training:
            return zero
        self.steps += 1
        if int(self.steps) == self.cfg.at_step:
            bad = self.fault()
            if bad is not None:
                return bad
        return zero


@register_kd_method("fault_raise")
class RaiseKD(_Fault):
    """Raises at training step ``at_step`` on every attempt."""

    def fault(self):
        raise RuntimeError(f"fault_raise: deliberate failure at training step {int(self.steps)}")


@register_kd_method("fault_nan")
class NaNKD(_Fault):
    """A NaN loss at training step ``at_step``."""

    def fault(self):
        return torch.tensor(float("nan"))


@register_kd_method("fault_sigkill")
class SigkillKD(_Fault):
    """SIGKILLs its own process at training step ``at_step``, once (``marker`` records it)."""

    def fault(self):
        marker = Path(self.cfg.marker)
        if marker.exists():
            return None
        marker.write_text(f"{os.getpid()} {int(self.steps)}\n")
        os.kill(os.getpid(), signal.SIGKILL)
        return None


@register_kd_method("fault_slow")
class SlowKD(_Fault):
    """Sleeps ``sleep_s`` per training step."""

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        if self.training:
            time.sleep(self.cfg.sleep_s)
        return super().forward(inputs)


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RemoveNodeCallback(Callback):
    """Removes the worker node of ``CLUSTERS[key]`` on which a trial of method ``method`` runs, right
    after that trial's checkpoint of an epoch before ``before_epoch`` is registered; then adds a fresh
    1-CPU node so the sweep keeps its capacity. It runs on the driver inside Tune's loop, so the
    trial's next result cannot be processed before the node is gone: the trial is always hit
    mid-run. Writes ``<trial_id> <epoch> <pid> <seconds>`` to ``log``."""

    def __init__(self, key: str, log: str, before_epoch: int, method: str = "none", replace: bool = True) -> None:
        self.key, self.log, self.before_epoch, self.method, self.replace = key, log, before_epoch, method, replace
        self.done = False

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        result = trial.last_result or {}
        if self.done or trial.config.get("method") != self.method or result.get("epoch", 0) >= self.before_epoch:
            return
        cluster = CLUSTERS.get(self.key)
        if cluster is None:
            return
        pid = int(result.get("pid", -1))
        for node in list(cluster.worker_nodes):
            if _ppid(pid) != node.all_processes["raylet"][0].process.pid:
                continue
            self.done = True
            t0 = time.perf_counter()
            cluster.remove_node(node, allow_graceful=False)
            removed = time.perf_counter() - t0
            if self.replace:
                cluster.add_node(num_cpus=1, num_gpus=0)
            Path(self.log).write_text(f"{trial.trial_id} {result.get('epoch')} {pid} {removed:.2f}\n")
            print(f"[ft] removed the node of trial {trial.trial_id} (pid {pid}) after its epoch "
                  f"{result.get('epoch')} checkpoint", flush=True)
            return
