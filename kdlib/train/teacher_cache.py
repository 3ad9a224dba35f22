"""The teacher-output cache: a frozen teacher's outputs and feature taps for every training item of an
epoch, computed once and read by every KD trial of a sweep (no config schema, Ray or MLflow).

Why it is exact: in the paired design every trial trains on the same mixtures (item ``i`` of epoch ``e``
is a deterministic draw of ``(data seed, e, i)``) and the teacher is frozen in eval mode, so its output for
an item does not depend on which trial asks, nor on the batch the item sits in. A KD trial then costs a
student-only step plus the KD loss, instead of also a teacher forward pass per step.

Layout: ``<root>/<key>/epoch_<e>/`` holds ``output.npy`` (float32, ``(N, L)``) and one ``tap-<module>.npy``
per feature tap (float16, ``(N, *feature shape)``; float32 where a value would overflow float16), each with a
``<file>.json`` sidecar (shape, dtype, size, BLAKE2b digest) written after it. A file counts only with a
sidecar that matches it, so a partial or corrupt file is detected and rebuilt, never read. Files are written
to a temporary name and renamed; an epoch is filled under an exclusive file lock, so two trials racing to
fill it produce one copy (the second waits and reads). A tap missing from a complete epoch (a trial whose
method reads other layers) is added under the same lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlib.kd.hooks import FeatureTaps, probe_feature_shapes
from kdlib.models.checkpoint import read_checkpoint

Log = Callable[[str], None]

#: bumped when the layout or the meaning of a cached file changes: old entries are then never read
CACHE_FORMAT = 1
#: items per teacher forward pass when filling (fixed, so the content does not depend on which trial fills)
FILL_BATCH = 8
OUTPUT = "output"
_F16_MAX = float(np.finfo(np.float16).max)


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """BLAKE2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def teacher_digest(checkpoint: str | os.PathLike[str]) -> str:
    """BLAKE2b-128 of what a teacher checkpoint computes with: model name, args and every weight's bytes (not
    the file's bytes: ``torch.save`` writes the file's own name into the archive, and ``meta`` holds
    timings).

    Raises:
        CheckpointError: the file is not a kdlib checkpoint.
    """
    payload = read_checkpoint(checkpoint)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([payload.get("model_name"), payload.get("model_args")], sort_keys=True,
                        default=str).encode())
    for name, tensor in sorted(payload["state_dict"].items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(teacher_checkpoint: str | os.PathLike[str], data_identity: dict[str, Any], data_seed: int) -> str:
    """The entry key: a digest of the teacher (:func:`teacher_digest`), the data config that draws the
    training items (``data_identity``: JSON-able, e.g. the ``data`` section without its root) and the data
    seed.

    Changes with the teacher's architecture or weights, the data config or the seed, and with nothing else
    (not the checkpoint's path, the sweep, the KD method, the student or the trial's seed).

    Raises:
        CheckpointError: the checkpoint cannot be read.
    """
    blob = json.dumps({"format": CACHE_FORMAT, "teacher": teacher_digest(teacher_checkpoint),
                       "data": data_identity, "seed": int(data_seed)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tap_file(tap: str) -> str:
    """The file stem of a feature tap (module path ``"encoder.2"`` → ``"tap-encoder.2"``)."""
    return OUTPUT if tap == OUTPUT else "tap-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tap)


def estimate_bytes(teacher: nn.Module, taps: Iterable[str], n_items: int, segment_samples: int,
                   epochs: int) -> int:
    """Bytes on disk of ``epochs`` cached epochs: per item a float32 output of ``segment_samples`` samples
    and one float16 copy of each tap's feature for a segment of that length (shapes probed on ``teacher``,
    weights irrelevant)."""
    shapes = probe_feature_shapes(teacher, list(taps), n_samples=segment_samples)
    per_item = 4 * segment_samples + sum(2 * int(np.prod(s[1:])) for s in shapes.values())
    return int(per_item) * int(n_items) * int(epochs)


class CacheLimitError(ValueError):
    """The cache would exceed ``teacher_cache.max_gb``."""


def check_limit(estimate: int, max_gb: float, key: str, where: str = "teacher_cache.max_gb") -> None:
    """Refuse an estimate over the limit, naming the setting and the entry.

    Raises:
        CacheLimitError: ``estimate`` > ``max_gb`` GB (10^9 bytes).
    """
    if estimate > max_gb * 1e9:
        raise CacheLimitError(f"{where}: the teacher cache {key} needs about {estimate / 1e9:.2f} GB, more than "
                              f"{max_gb:g} GB: raise {where}, shorten the data, or set teacher_cache: off")


@dataclass
class EpochTeacher:
    """One cached epoch, memory-mapped: the teacher's view of items by their dataset index.

    Attributes:
        output: ``(N, L)`` float32 teacher outputs. features: tap name → ``(N, ...)`` array.
    """

    output: np.ndarray
    features: dict[str, np.ndarray]
    #: the KD method's :meth:`~kdlib.kd.KDMethod.teacher_targets`, by name (``(N, ...)`` float32)
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def batch(self, indices: torch.Tensor | Sequence[int], device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(teacher_out (B, L), {tap: (B, ...)}, {target: (B, ...)})`` for dataset indices (float32 on
        ``device``)."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)

        def rows(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[idx])).to(device=device, dtype=torch.float32)

        return rows(self.output), {k: rows(v) for k, v in self.features.items()}, \
            {k: rows(v) for k, v in self.targets.items()}


class TeacherCache:
    """One cache entry: a teacher on one sweep's training data, epoch by epoch.

    Args:
        root: the cache folder (a sweep uses ``<output>/teacher_cache``).
        key: :func:`cache_key`.
        taps: teacher feature taps to store in every epoch it fills (the union over the sweep's KD methods,
            so the teacher runs once per epoch; a trial asking for another tap later adds it).
        log: progress sink.
    """

    def __init__(self, root: str | os.PathLike[str], key: str, taps: Iterable[str] = (), log: Log = print) -> None:
        self.root, self.key = Path(root), key
        self.entry = self.root / key
        self.taps = list(dict.fromkeys(taps))
        self.log = log

    def epoch_dir(self, epoch: int) -> Path:
        return self.entry / f"epoch_{int(epoch):04d}"

    # -- reading ---------------------------------------------------------------------------------
    def _valid(self, folder: Path, stem: str, n_items: int | None) -> bool:
        """The file has a sidecar that matches its size and digest (and ``n_items`` rows)."""
        data, side = folder / f"{stem}.npy", folder / f"{stem}.json"
        try:
            meta = json.loads(side.read_text())
            if data.stat().st_size != meta["bytes"] or (n_items is not None and meta["shape"][0] != n_items):
                return False
            return file_digest(data) == meta["digest"]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return False

    def _open(self, folder: Path, stems: Iterable[str]) -> dict[str, np.ndarray]:
        return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in stems}

    # -- filling ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"[teacher cache] {self.key}/{folder.name}: another trial is filling it, waiting")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, folder: Path, stem: str, array: np.ndarray) -> None:
        """``<stem>.npy`` written whole (see :class:`_RowWriter`)."""
        writer = _RowWriter(folder, stem, len(array), array.shape[1:], array.dtype)
        writer.put(0, array)
        writer.commit()

    @torch.no_grad()
    def _fill(self, folder: Path, taps: list[str], teacher: nn.Module, dataset: Any, epoch: int,
              device: torch.device, write_output: bool) -> None:
        """Run the teacher over every item of the epoch, :data:`FILL_BATCH` at a time, streaming the output
        and the taps into their files (never the whole epoch in memory)."""
        n = len(dataset)
        dataset.set_epoch(epoch)
        hooks = FeatureTaps(teacher, taps)
        was_training = teacher.training
        teacher.eval()
        writers: dict[str, _RowWriter] = {}
        start = time.perf_counter()
        try:
            for lo in range(0, n, FILL_BATCH):
                noisy = torch.stack([dataset[i][0] for i in range(lo, min(n, lo + FILL_BATCH))]).to(device)
                out = teacher(noisy)
                rows = {OUTPUT: out} if write_output else {}
                for t in taps:
                    rows[t] = hooks.features[t]
                    if not isinstance(rows[t], torch.Tensor):
                        raise TypeError(f"teacher tap '{t}' gives a {type(rows[t]).__name__}, not a tensor: "
                                        "it cannot be cached (set teacher_cache: off)")
                for name, value in rows.items():
                    value = value.detach().float().cpu().numpy()
                    if name not in writers:
                        writers[name] = _RowWriter(folder, tap_file(name), n, value.shape[1:],
                                                   np.float32 if name == OUTPUT else np.float16)
                    writers[name].put(lo, value)
            for writer in writers.values():
                writer.commit()
        finally:
            hooks.remove()
            teacher.train(was_training)
            for writer in writers.values():
                writer.discard()
        self.log(f"[teacher cache] {self.key}/{folder.name}: {n} items, "
                 f"{'output + ' if write_output else ''}{len(taps)} tap(s) in {time.perf_counter() - start:.1f} s")

    def _targets(self, folder: Path, method: Any, n: int) -> dict[str, str]:
        """Target name → file stem of the method's teacher targets in the epoch, derived first (under the
        epoch's lock) from the cached output and taps, :data:`FILL_BATCH` items at a time, where missing."""
        ident = method.targets_id()
        index = folder / f"targets-{ident}.json"
        try:
            names = json.loads(index.read_text())
            if all(self._valid(folder, stem, n) for stem in names.values()):
                return names
        except (OSError, ValueError, AttributeError):
            pass
        start = time.perf_counter()
        taps = method.teacher_taps()
        arrays = self._open(folder, [OUTPUT, *(tap_file(t) for t in taps)])
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for lo in range(0, n, FILL_BATCH):
                sl = slice(lo, min(n, lo + FILL_BATCH))
                out = torch.from_numpy(np.array(arrays[OUTPUT][sl]))
                feats = {t: torch.from_numpy(np.array(arrays[tap_file(t)][sl])).float() for t in taps}
                for name, value in method.teacher_targets(out, feats).items():
                    parts.setdefault(name, []).append(value.float().cpu().numpy())
        names = {name: f"tgt-{ident}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) for name in parts}
        for name, stem in names.items():
            self._write(folder, stem, np.concatenate(parts[name]))
        index.unlink(missing_ok=True)
        index.write_text(json.dumps(names))
        self.log(f"[teacher cache] {self.key}/{folder.name}: {len(names)} target(s) of {ident} in "
                 f"{time.perf_counter() - start:.1f} s")
        return names

    def epoch(self, epoch: int, teacher: nn.Module, dataset: Any, taps: Iterable[str] = (),
              device: torch.device | str = "cpu", method: Any = None) -> EpochTeacher:
        """The cached epoch, filled first (teacher forward passes over every item) where missing.

        Args:
            epoch: the training epoch (its items: ``dataset.set_epoch(epoch)``; the dataset is left at it).
            teacher: the frozen teacher (put back in its own train/eval mode afterwards).
            dataset: the training items (``len``, ``set_epoch``, ``[i] -> (noisy, clean)``).
            taps: the feature taps the caller reads (filled together with the entry's own ``taps``).
            device: where the teacher runs.
            method: a KD method whose :meth:`~kdlib.kd.KDMethod.teacher_targets` are cached too (derived from
                the cached taps); its :meth:`~kdlib.kd.KDMethod.target_taps` are then not handed out.

        Returns:
            the epoch, memory-mapped: output and the asked taps.

        Raises:
            TypeError: a tap's module does not output a tensor.
        """
        want = list(dict.fromkeys(taps))
        folder, n = self.epoch_dir(epoch), len(dataset)
        stems = {t: tap_file(t) for t in dict.fromkeys([*self.taps, *want])}
        targets: dict[str, np.ndarray] = {}
        with self._locked(folder):
            has_output = self._valid(folder, OUTPUT, n)
            missing = [t for t, s in stems.items() if not self._valid(folder, s, n)]
            if missing and has_output and not (set(want) & set(missing)):
                missing = []  # what this trial reads is there: the others' taps are theirs to add
            if not has_output or missing:
                self._fill(folder, missing, teacher, dataset, epoch, torch.device(device), not has_output)
            if method is not None and method.target_taps():
                names = self._targets(folder, method, n)
                targets = {name: np.load(folder / f"{stem}.npy", mmap_mode="r") for name, stem in names.items()}
                want = [t for t in want if t not in set(method.target_taps())]
        dataset.set_epoch(epoch)
        arrays = self._open(folder, [OUTPUT, *(stems[t] for t in want)])
        return EpochTeacher(arrays[OUTPUT], {t: arrays[stems[t]] for t in want}, targets)


class _RowWriter:
    """One cached array, ``(n, *shape)``, filled row block by row block into a memory-mapped temporary file,
    then renamed into place and described by its sidecar (shape, dtype, size, digest): the file counts only
    once both exist, so a writer killed at any point leaves nothing that is read.

    float16 arrays switch to float32 when a value would overflow float16 (the rows already written are
    widened exactly).
    """

    def __init__(self, folder: Path, stem: str, n: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.folder, self.stem, self.n, self.shape = folder, stem, n, tuple(shape)
        for old in (folder / f"{stem}.json", folder / f"{stem}.npy"):
            old.unlink(missing_ok=True)  # sidecar first: a half-replaced pair must never look valid
        self.array = self._open(np.dtype(dtype))
        self.done = False

    def _open(self, dtype: np.dtype) -> np.memmap:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.stem}-", suffix=".npy", dir=self.folder)
        os.close(fd)
        self.tmp = Path(tmp)
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(self.n, *self.shape))

    def put(self, lo: int, rows: np.ndarray) -> None:
        if self.array.dtype == np.float16 and np.abs(rows).max(initial=0.0) > _F16_MAX:
            old, old_tmp = self.array, self.tmp
            self.array = self._open(np.dtype(np.float32))
            self.array[:lo] = old[:lo]
            del old
            old_tmp.unlink(missing_ok=True)
        self.array[lo:lo + len(rows)] = rows

    def commit(self) -> None:
        self.array.flush()
        dtype = str(self.array.dtype)
        del self.array
        final = self.folder / f"{self.stem}.npy"
        os.replace(self.tmp, final)
        self.done = True
        meta = {"shape": [self.n, *self.shape], "dtype": dtype, "bytes": final.stat().st_size,
                "digest": file_digest(final)}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.stem}-", suffix=".json", dir=self.folder)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, self.folder / f"{self.stem}.json")

    def discard(self) -> None:
        """Remove the temporary file of an uncommitted writer (no-op after :meth:`commit`)."""
        if not self.done:
            self.array = None
            self.tmp.unlink(missing_ok=True)
