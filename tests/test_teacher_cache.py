"""Issue 12, the teacher-output cache: the key, exactness against running the teacher, corrupt and partial
entries, two trials racing to fill one epoch, the size limit, and the data pipeline with workers."""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import build_kd_method
from kdlib.losses import task_loss_for
from kdlib.models import build_model, save_checkpoint, size_student
from kdlib.sweep.plan import load_plan
from kdlib.sweep.preflight import check_teacher_cache
from kdlib.train import Trainer, TrainSettings
from kdlib.train.teacher_cache import OUTPUT, TeacherCache, cache_key, estimate_bytes, tap_file

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
SMALL = ["data.train.segments_per_epoch=8", "data.train.segment_seconds=1.0"]


@pytest.fixture(scope="module")
def setup(data_root):
    plan = load_plan(QUICKSTART, overrides=SMALL)
    data = plan.data_source().build(seed=plan.cfg.data.seed)
    torch.manual_seed(0)
    teacher = build_model(plan.cfg.teacher.model.name, plan.cfg.teacher.model.kwargs).eval().requires_grad_(False)
    student_args = size_student(plan.cfg.teacher.model.name, teacher.get_model_args(), 0.25).model_args
    return plan, data, teacher, student_args


class CountingTeacher:
    """Counts the teacher's forward passes through a hook (the cache must run it once per filled epoch)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = teacher.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.calls += 1

    def remove(self) -> None:
        self.handle.remove()


def _trainer(setup, method: str, cache: TeacherCache | None, **settings) -> Trainer:
    plan, data, teacher, student_args = setup
    torch.manual_seed(1)
    student = build_model(plan.cfg.teacher.model.name, student_args)
    kd = build_kd_method(method, student, teacher, plan.cfg.methods.get(method, {}))
    s = TrainSettings(epochs=2, batch_size=4, lr=1e-3, grad_clip=5.0, selection_metric="val_si_sdr",
                      kd_weight=1.0, shuffle_seed=3, **settings)
    return Trainer(student, teacher, kd, task_loss_for(student), data, s, "cpu", log=lambda _: None,
                   teacher_cache=cache)


# -- the key ----------------------------------------------------------------------------------------
def test_key_changes_with_teacher_data_and_seed_only(setup, tmp_path):
    plan, _, teacher, _ = setup
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_checkpoint(teacher, a, {"role": "teacher"})
    save_checkpoint(teacher, b, {"role": "teacher"})  # the same weights and meta in another file
    ident = plan.cache_data_identity()
    base = cache_key(a, ident, 0)
    assert cache_key(b, ident, 0) == base  # the bytes, not the path
    moved = load_plan(QUICKSTART, overrides=[*SMALL, "data.root=/somewhere/else", "name=other-sweep",
                                             "training.lr=0.1", "search.seed=[5]"])
    assert moved.cache_data_identity() == ident  # root, sweep, optimiser and trial seeds leave it alone
    changed = load_plan(QUICKSTART, overrides=[*SMALL, "data.train.snr_db=[0, 5]"]).cache_data_identity()
    assert cache_key(a, changed, 0) != base
    assert cache_key(a, ident, 1) != base
    other = build_model(plan.cfg.teacher.model.name, plan.cfg.teacher.model.kwargs)  # other weights
    save_checkpoint(other, b, {"role": "teacher"})
    assert cache_key(b, ident, 0) != base


# -- exactness ----------------------------------------------------------------------------------------
def test_cached_epoch_holds_the_teachers_own_outputs_and_taps(setup, tmp_path):
    plan, data, teacher, _ = setup
    taps = plan.cache_taps()
    epoch = TeacherCache(tmp_path, "k", taps, log=lambda _: None).epoch(1, teacher, data.train, taps)
    data.train.set_epoch(1)
    idx = [5, 0, 7]
    noisy = torch.stack([data.train[i][0] for i in idx])
    caught = {}
    handles = [teacher.get_submodule(t).register_forward_hook(
        lambda _m, _i, out, t=t: caught.__setitem__(t, out)) for t in taps]
    with torch.no_grad():
        direct = teacher(noisy)
    for h in handles:
        h.remove()
    out, feats, targets = epoch.batch(torch.tensor(idx))
    assert targets == {}  # no method: no targets
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-6)
    assert set(feats) == set(taps)
    for t in taps:  # float16 storage: its own rounding (2^-11 relative), no more
        torch.testing.assert_close(feats[t], caught[t], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["output", "self_similarity"])
def test_cached_and_uncached_trials_give_the_same_losses(setup, tmp_path, method):
    plain = _trainer(setup, method, None)
    cached = _trainer(setup, method, TeacherCache(tmp_path, "k", setup[0].cache_taps(), log=lambda _: None))
    assert cached.teacher_taps is None  # the teacher is not hooked: it does not run
    counter = CountingTeacher(setup[2])
    try:
        for _ in range(2):
            a, b = plain.train_epoch(), cached.train_epoch()
            for key in ("train_loss", "task_loss", "kd_loss"):
                assert b[key] == pytest.approx(a[key], rel=5e-3), key
    finally:
        counter.remove()
    # the uncached trainer ran the teacher at each of its 2 × 2 steps, the cached one once per epoch (2 fills)
    assert counter.calls == 4 + 2
    assert cached.gradient_ratio(1) == pytest.approx(plain.gradient_ratio(1), rel=5e-3)


# -- corrupt, partial and missing files ----------------------------------------------------------------
def test_corrupt_or_partial_entries_are_rebuilt_never_read(setup, tmp_path):
    _, data, teacher, _ = setup
    cache = TeacherCache(tmp_path, "k", ["encoder.2"], log=lambda _: None)
    good = np.array(cache.epoch(0, teacher, data.train).output)
    folder = cache.epoch_dir(0)
    counter = CountingTeacher(teacher)
    try:
        # a flipped byte in the data (same size): the digest differs
        raw = bytearray((folder / "output.npy").read_bytes())
        raw[-3] ^= 0xFF
        (folder / "output.npy").write_bytes(bytes(raw))
        np.testing.assert_array_equal(cache.epoch(0, teacher, data.train).output, good)
        fills = counter.calls
        assert fills > 0
        # a truncated tap file, then a data file without its sidecar (a writer killed between the two)
        tap = folder / f"{tap_file('encoder.2')}.npy"
        tap.write_bytes(tap.read_bytes()[:100])
        cache.epoch(0, teacher, data.train, ["encoder.2"])
        assert counter.calls > fills
        fills = counter.calls
        (folder / f"{OUTPUT}.json").unlink()
        np.testing.assert_array_equal(cache.epoch(0, teacher, data.train).output, good)
        assert counter.calls > fills
        # an intact entry is read without running the teacher
        fills = counter.calls
        cache.epoch(0, teacher, data.train, ["encoder.2"])
        assert counter.calls == fills
    finally:
        counter.remove()
    assert json.loads((folder / f"{OUTPUT}.json").read_text())["shape"][0] == len(data.train)


def test_a_tap_missing_from_a_complete_epoch_is_added_without_rewriting_the_rest(setup, tmp_path):
    _, data, teacher, _ = setup
    cache = TeacherCache(tmp_path, "k", [], log=lambda _: None)
    cache.epoch(0, teacher, data.train)
    out_file = cache.epoch_dir(0) / "output.npy"
    before = out_file.stat().st_mtime_ns
    epoch = cache.epoch(0, teacher, data.train, ["decoder.1"])
    assert "decoder.1" in epoch.features and epoch.features["decoder.1"].shape[0] == len(data.train)
    assert out_file.stat().st_mtime_ns == before


# -- two trials racing ---------------------------------------------------------------------------------
def _race(root: str, barrier, queue) -> None:
    torch.set_num_threads(1)
    plan = load_plan(QUICKSTART, overrides=SMALL)
    data = plan.data_source().build(seed=plan.cfg.data.seed)
    torch.manual_seed(0)
    teacher = build_model(plan.cfg.teacher.model.name, plan.cfg.teacher.model.kwargs)
    lines: list[str] = []
    cache = TeacherCache(root, "k", ["encoder.2"], log=lines.append)
    barrier.wait()
    epoch = cache.epoch(0, teacher, data.train, ["encoder.2"])
    queue.put((lines, float(np.asarray(epoch.output, dtype=np.float64).sum())))


def test_two_trials_racing_fill_one_entry(setup, tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    fills = [line for lines, _ in results for line in lines if "items" in line]
    waits = [line for lines, _ in results for line in lines if "waiting" in line]
    assert len(fills) == 1, fills
    assert len(waits) <= 1
    assert results[0][1] == results[1][1]  # both read the one copy
    leftovers = [p.name for p in (tmp_path / "k" / "epoch_0000").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "k" / "epoch_0000").iterdir()) == sorted(
        ["output.npy", "output.json", "tap-encoder.2.npy", "tap-encoder.2.json"])


# -- the size limit ----------------------------------------------------------------------------------
def test_size_estimate_matches_the_files_and_the_limit_stops_the_sweep_first(setup, tmp_path):
    plan, data, teacher, _ = setup
    taps = plan.cache_taps()
    cache = TeacherCache(tmp_path, "k", taps, log=lambda _: None)
    cache.epoch(0, teacher, data.train, taps)
    on_disk = sum(p.stat().st_size for p in cache.epoch_dir(0).glob("*.npy"))
    samples = round(plan.cfg.data.train.segment_seconds * plan.cfg.data.sample_rate)
    estimate = estimate_bytes(teacher, taps, len(data.train), samples, 1)
    assert estimate == pytest.approx(on_disk, rel=0.02)  # npy headers only
    lines: list[str] = []
    sizes = check_teacher_cache(plan, lines.append)
    assert sizes[""] == estimate * plan.cfg.training.epochs
    assert "GB" in lines[0]
    tight = load_plan(QUICKSTART, overrides=[*SMALL, f"teacher_cache.max_gb={estimate / 2e9:.6f}"])
    with pytest.raises(ConfigError, match=r"^teacher_cache\.max_gb: .*teacher.*GB"):
        check_teacher_cache(tight, lambda _: None)
    assert check_teacher_cache(load_plan(QUICKSTART, overrides=[*SMALL, "teacher_cache=off"]), print) == {}
    none_only = load_plan(QUICKSTART, overrides=[*SMALL, "search.method=[none]"])
    assert check_teacher_cache(none_only, print) == {}


def test_teacher_cache_config_accepts_off_and_refuses_bad_values(data_root):
    assert load_plan(QUICKSTART, overrides=["teacher_cache=off"]).cfg.teacher_cache.enabled is False
    assert load_plan(QUICKSTART).cfg.teacher_cache.enabled is True
    with pytest.raises(ConfigError, match="teacher_cache.max_gb"):
        load_plan(QUICKSTART, overrides=["teacher_cache.max_gb=0"])
    with pytest.raises(ConfigError, match="teacher_cache.size"):
        load_plan(QUICKSTART, overrides=["teacher_cache.size=3"])


# -- the data pipeline ----------------------------------------------------------------------------------
def test_mixtures_are_identical_with_and_without_workers(setup):
    def epoch_items(workers: int) -> list[tuple]:
        trainer = _trainer(setup, "none", None, num_workers=workers)
        out = []
        for epoch in (0, 1):
            trainer.data.train.set_epoch(epoch)
            trainer.sampler.set_epoch(epoch)
            out += [(n.clone(), c.clone(), i.clone()) for n, c, i in trainer.loader]
        return out

    inline, workers = epoch_items(0), epoch_items(2)
    assert len(inline) == len(workers) == 4
    for (n0, c0, i0), (n1, c1, i1) in zip(inline, workers, strict=True):
        assert torch.equal(i0, i1) and torch.equal(n0, n1) and torch.equal(c0, c1)
    assert not torch.equal(inline[0][0], inline[2][0])  # epoch 1 draws other mixtures


def test_bf16_autocast_trains_and_keeps_stfts_in_float32(setup):
    trainer = _trainer(setup, "output", None, precision="bf16")
    stats = trainer.train_epoch()
    assert np.isfinite(stats["train_loss"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = trainer.student.stft(torch.randn(2, 4000).bfloat16())
    assert spec.dtype == torch.complex64
    with pytest.raises(ValueError, match="precision"):
        replace(trainer.settings, precision="fp16")


def test_self_similarity_targets_are_cached_and_match_a_naive_cosine(setup, tmp_path):
    plan, data, teacher, student_args = setup
    trainer = _trainer(setup, "self_similarity", TeacherCache(tmp_path, "k", plan.cache_taps(), log=lambda _: None))
    trainer._cached_epoch(0)
    epoch = trainer.cached
    assert epoch.features == {}  # the loss reads the teacher only through its cached matrices
    tap = trainer.kd.teacher_taps()[0]
    assert set(epoch.targets) == {f"{t}/{s}" for t in trainer.kd.teacher_taps() for s in ("time", "frequency")}
    data.train.set_epoch(0)
    caught = {}
    handle = teacher.get_submodule(tap).register_forward_hook(lambda _m, _i, out: caught.__setitem__("f", out))
    with torch.no_grad():
        teacher(data.train[2][0][None])
    handle.remove()
    feat = caught["f"][0].double()  # (C, T, F)
    _, t_frames, f_bins = feat.shape
    for a, b in ((0, 1), (3, t_frames - 1)):  # cosine between two frames, each flattened over C·F
        x, y = feat[:, a, :].reshape(-1), feat[:, b, :].reshape(-1)
        want = float(x @ y / (x.norm() * y.norm()))
        assert epoch.targets[f"{tap}/time"][2, a, b] == pytest.approx(want, abs=3e-3)
    x, y = feat[:, :, 0].reshape(-1), feat[:, :, f_bins // 2].reshape(-1)  # two frequency bins over C·T
    want = float(x @ y / (x.norm() * y.norm()))
    assert epoch.targets[f"{tap}/frequency"][2, 0, f_bins // 2] == pytest.approx(want, abs=3e-3)


def test_a_tap_that_overflows_float16_is_stored_in_float32(tmp_path):
    from kdlib.train.teacher_cache import _RowWriter

    writer = _RowWriter(tmp_path, "tap-x", 4, (3,), np.float16)
    small = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]], dtype=np.float32)
    writer.put(0, small)
    writer.put(2, np.array([[1e6, 0.0, -2e5], [1.0, 2.0, 3.0]], dtype=np.float32))  # beyond float16's 65504
    writer.commit()
    stored = np.load(tmp_path / "tap-x.npy")
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored[:2], small.astype(np.float16).astype(np.float32))
    assert stored[2, 0] == 1e6 and stored[2, 2] == -2e5
    assert json.loads((tmp_path / "tap-x.json").read_text())["dtype"] == "float32"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
