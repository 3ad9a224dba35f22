"""Teachers as Ray tasks, on real Ray (a two-node loopback cluster, 1 CPU each) and real audio, no mocks:
two teachers train in parallel, a killed teacher task is retried and continues from its last epoch, a
teacher's own error reaches the caller as itself, and the per-epoch state resumes bit-identically."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from kdlib.config import SweepConfig
from kdlib.errors import DataError
from kdlib.models.checkpoint import read_checkpoint
from kdlib.sweep.plan import SweepPlan, make_plan
from kdlib.sweep.teacher_tasks import train_as_ray_tasks
from kdlib.sweep.teachers import TRAINED_AT, ensure_teachers, partial_path, train_teacher
from kdlib.validation import validate

pytestmark = pytest.mark.slow

DPDCRN = {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1, "n_dualpath": 1}


def _plan(output: Path, epochs: int = 2, names: tuple[str, ...] = ("a",), root: Path | None = None,
          **teacher) -> SweepPlan:
    """Tiny named teachers (of different widths), one thread each."""
    teachers = {name: {"model": {"name": "dpcrn_lite", "kwargs": {**DPDCRN, "rnn_hidden": 6 + 2 * i}}, "epochs": epochs,
                       "batch_size": 2, "threads": 1, **teacher} for i, name in enumerate(names)}
    raw = {
        "name": "teacher-tasks",
        "data": {"train": {"segments_per_epoch": 8, "segment_seconds": 1.0},
                 "valid": {"corpus": "vb_demand", "speakers": ["p257"], "max_utterances": 2},
                 "test": {"corpus": "vb_demand", "speakers": ["p232"], "max_utterances": 1},
                 **({"root": str(root)} if root else {})},
        "teachers": teachers, "training": {"epochs": 1, "batch_size": 2},
        "search": {"method": ["none"], "student_ratio": [0.5]}, "resources": {"cpu": 1},
        "ray": {"max_failures": 1},
    }
    return make_plan(validate(SweepConfig, raw), output=output)


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + one worker node (1 CPU) on 127.0.0.1, the driver connected to it."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_two_teachers_train_as_parallel_ray_tasks(cluster, data_root, tmp_path):
    plan = _plan(tmp_path, epochs=3, names=("a", "b"))  # each task long against the workers' start-up jitter
    lines: list[str] = []
    teachers = ensure_teachers(plan, lines.append, train=train_as_ray_tasks)
    assert set(teachers) == {"a", "b"}
    for name, (path, meta) in teachers.items():
        assert path == plan.teacher(name).path and path.is_file() and not partial_path(path).exists()
        assert read_checkpoint(path)["meta"]["teacher_name"] == name == meta["teacher_name"]
        assert len(meta["history"]) == 3
    (a0, a1), (b0, b1) = teachers["a"][1][TRAINED_AT], teachers["b"][1][TRAINED_AT]
    print(f"[tt] a {a0 % 1000:.1f}-{a1 % 1000:.1f} s, b {b0 % 1000:.1f}-{b1 % 1000:.1f} s")
    assert a0 < b1 and b0 < a1, "the two teacher tasks did not overlap in time"
    assert sum("Ray task with 1 CPU, 0 GPU" in line for line in lines) == 2
    # trained once: a second call reads both checkpoints and submits nothing
    again = ensure_teachers(plan, lines.append, train=lambda *_: pytest.fail("nothing should train"))
    assert {n: m[TRAINED_AT] for n, (_, m) in again.items()} == {n: m[TRAINED_AT] for n, (_, m) in teachers.items()}


class _Interrupt(Exception):
    """Stands for a process killed right after its first epoch."""


def test_a_teacher_resumed_from_its_epoch_state_ends_bit_identical(data_root, tmp_path):
    plan = _plan(tmp_path)
    reference = train_teacher(plan, tmp_path / "reference.pt", name="a", log=lambda _: None)

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("[teacher] epoch 1/2 loss"):  # logged once epoch 1's state is written
            raise _Interrupt

    path = plan.teacher("a").path
    with pytest.raises(_Interrupt):
        train_teacher(plan, name="a", log=stop_after_epoch_1)
    assert partial_path(path).is_file() and not path.exists()

    lines: list[str] = []
    meta = train_teacher(plan, name="a", log=lines.append)
    assert any("resuming after epoch 1/2" in line for line in lines)
    assert not any(line.startswith("[teacher] epoch 1/2") for line in lines)  # epoch 1 is not trained again
    assert _same_weights(path, tmp_path / "reference.pt")
    assert meta["val_si_sdr"] == reference["val_si_sdr"] and meta["test_si_sdr"] == reference["test_si_sdr"]
    assert [h["train_loss"] for h in meta["history"]] == [h["train_loss"] for h in reference["history"]]
    assert not partial_path(path).exists()


def test_a_corrupt_epoch_state_is_deleted_and_training_starts_over(data_root, tmp_path):
    plan = _plan(tmp_path, epochs=1)
    path = plan.teacher("a").path
    path.parent.mkdir(parents=True)
    partial_path(path).write_bytes(b"not a torch file")
    lines: list[str] = []
    train_teacher(plan, name="a", log=lines.append)
    assert any("ignoring and deleting the per-epoch state" in line for line in lines)
    assert any(line.startswith("[teacher] epoch 1/1") for line in lines)
    assert path.is_file() and not partial_path(path).exists()


@pytest.mark.parametrize("spoil", ["data", "nan"])
def test_a_teacher_error_reaches_the_caller_as_itself(cluster, data_root, tmp_path, spoil):
    # a data root without the corpora (DataError building the data); an lr that makes the loss NaN
    empty = tmp_path / "empty"
    empty.mkdir()
    plan = _plan(tmp_path, epochs=1, root=empty) if spoil == "data" else _plan(tmp_path, epochs=1, lr=1e30)
    with pytest.raises(Exception) as in_driver:
        train_teacher(plan, tmp_path / "in-driver.pt", name="a", log=lambda _: None)
    with pytest.raises(type(in_driver.value)) as as_task:
        ensure_teachers(plan, lambda _: None, train=train_as_ray_tasks)
    assert type(as_task.value) is type(in_driver.value) is (DataError if spoil == "data" else FloatingPointError)
    assert str(as_task.value) == str(in_driver.value)
    assert not plan.teacher("a").path.exists()


def _kill_task_after_first_epoch(partial: Path, title: bytes, killed: list[float], stop: threading.Event) -> None:
    """SIGKILL the worker running the task titled ``title`` (Ray's process title ``ray::<task name>``) once
    the teacher's per-epoch state appears."""
    while not stop.is_set() and not killed:
        if partial.is_file():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(title):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(time.time())
                    return
        time.sleep(0.02)


def test_a_killed_teacher_task_is_retried_from_its_last_epoch(cluster, data_root, tmp_path):
    plan = _plan(tmp_path, epochs=3)
    train_teacher(plan, tmp_path / "reference.pt", name="a", log=lambda _: None)
    path = plan.teacher("a").path
    killed: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_task_after_first_epoch,
                               args=(partial_path(path), b"ray::teacher-a", killed, stop), daemon=True)
    watcher.start()
    try:
        meta = ensure_teachers(plan, lambda _: None, train=train_as_ray_tasks)["a"][1]
    finally:
        stop.set()
        watcher.join()
    assert killed, "the teacher task finished before it could be killed"
    # the retry kept the first attempt's start (a fresh start would begin after the kill) ...
    assert meta[TRAINED_AT][0] < killed[0]
    # ... and ended where an uninterrupted run ends
    assert _same_weights(path, tmp_path / "reference.pt")
    assert len(meta["history"]) == 3 and not partial_path(path).exists()


def test_a_ray_task_fills_the_teacher_cache_before_the_trials_read_it(cluster, data_root, tmp_path):
    from kdlib.kd import build_kd_method
    from kdlib.models import load_model
    from kdlib.sweep.teacher_tasks import finish_prefill, prefill_teacher_caches
    from kdlib.train.teacher_cache import TeacherCache, cache_key

    plan = _plan(tmp_path, epochs=1)
    raw = plan.cfg.model_dump(mode="json")
    raw["search"]["method"] = ["none", "self_similarity"]
    raw["training"]["epochs"] = 2
    plan = make_plan(validate(SweepConfig, raw), output=tmp_path)
    ((path, _),) = ensure_teachers(plan, lambda _: None).values()
    refs = prefill_teacher_caches(plan, {"a": str(path)}, lambda _: None)
    assert ray.get(refs, timeout=120) == [0, 1]  # one task per epoch
    finish_prefill(refs)
    # a trial now finds every epoch, with self_similarity's matrices, and never runs the teacher
    teacher, _ = load_model(path)
    kd = build_kd_method("self_similarity", teacher, teacher, {})  # first: building may probe the taps (a forward)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cache = TeacherCache(plan.teacher_cache_dir, cache_key(path, plan.cache_data_identity(), plan.cfg.data.seed),
                         plan.cache_taps("a"))
    data = plan.data_source().build(seed=plan.cfg.data.seed)
    for epoch in (0, 1):
        view = cache.epoch(epoch, teacher, data.train, kd.teacher_taps(), method=kd)
        assert view.output.shape[0] == 8 and set(view.targets) == set(kd.teacher_targets(
            torch.zeros(1), {t: torch.zeros(1, 2, 3, 4) for t in kd.teacher_taps()}))
    assert calls == []
    assert prefill_teacher_caches(_plan(tmp_path / "none-only"), {"a": str(path)}) == []  # no KD method reads it
