"""L3DAS23 Task 1 (3D speech enhancement) corpus in its released folder layout, and safe archive extraction.

Layout (checked against the challenge support code, GitHub ``l3das/L3DAS23``: ``download_dataset.py`` and
``preprocessing.py``, ``preprocessing_task1``)::

    <root>/L3DAS23_Task1_<split>/          split: train100, train360, dev (and test where released)
        data/<id>_A.wav                    4-channel first-order Ambisonics (AmbiX) mixture, microphone A
        data/<id>_B.wav                    the same scene at the second Ambisonics microphone B (optional)
        labels/<id>.wav                    mono clean speech target (same <id>, without the mic suffix)
        labels/<id>.txt                    transcript (optional; used for the WER part of the metric)
        info.csv                           per-scene metadata (not read here)

The support code lists ``data/*_A.wav``, derives the target as ``labels/<id>.wav`` (drops ``_A``) and the
second microphone as ``data/<id>_B.wav``, loads at 16 kHz and stacks A then B for 8 channels. The Kaggle
archives unpack one level deeper (``L3DAS23_Task1_dev/L3DAS23_Task1_dev/...``) and name the training parts
``train_100`` and ``train_360_part1/2``; the support code renames them to ``train100``/``train360`` (merging
the two train360 parts). This loader accepts the renamed folder, the Kaggle name and the nested copy.
Scenes are up to 12 s long at 16 kHz (methods.md section 1.3). Scene ids are LibriSpeech utterance ids
(``<speaker>-<chapter>-<utterance>``); the speaker label of a scene is the id up to its first ``-``.

:class:`L3DAS23Segments` cuts the scenes of one or more splits into random training segments, drawn per
``(seed, epoch, index)`` like :class:`kdlib.data.mixing.SpeechNoiseMixer`.
"""

from __future__ import annotations

import copy
import os
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdlib.data.audio import audio_info, read_audio
from kdlib.data.mixing import _MAX_TRIES, _SILENT_REL_DB, EpochDataset
from kdlib.data.paired import select_utterances
from kdlib.errors import DataError

#: Ambisonics channels per L3DAS microphone (first order: W, Y, Z, X in AmbiX order).
CHANNELS_PER_MIC = 4
MICS = ("A", "B")
_SPLIT_ALIASES = {"train100": ("train100", "train_100"), "train360": ("train360", "train_360")}


def scene_speaker(scene_id: str) -> str:
    """Speaker label of a scene: the LibriSpeech id up to its first ``-`` (``"1089-134686-0000"`` -> ``"1089"``)."""
    return scene_id.split("-", 1)[0]


def _split_dir(root: Path, split: str | None) -> Path:
    if split is None:
        cands = [root]
    else:
        names = [f"L3DAS23_Task1_{s}" for s in _SPLIT_ALIASES.get(split, (split,))]
        cands = [p for n in names for p in (root / n, root / n / n)]
    for c in cands:
        if (c / "data").is_dir():
            return c
    tried = ", ".join(f"'{c}'" for c in cands)
    raise DataError(
        f"no L3DAS23 Task 1 split folder with a data/ sub-folder at {tried}: "
        "extract the archive there (extract_archive) or pass the folder that holds L3DAS23_Task1_<split>"
    )


class L3DAS23Corpus(Dataset):
    """Noisy Ambisonics / clean mono pairs of one L3DAS23 Task 1 split (layout in the module docstring).

    Args:
        root: folder holding ``L3DAS23_Task1_<split>`` (or the split folder itself with ``split=None``).
        split: ``"train100"``, ``"train360"``, ``"dev"``, ... or None.
        mics: ``("A",)`` for 4 channels or ``("A", "B")`` for 8 (A's channels first).
        sample_rate: expected rate of every file in Hz (no resampling is done).
        check: read every header at construction: channel counts (4 per mic, 1 for the label), sample rates,
            and equal lengths of mic and label files.
        keep_channels: indices into the ``4 * len(mics)`` stacked channels to keep, in this order (None: all).
            Keeping exactly one channel gives mono ``(L,)`` noisy items (e.g. ``[0]``: mic A's omni W).

    Items are sorted by id. ``__getitem__`` returns ``(noisy, clean)`` float32 tensors of shape
    ``(C, L)`` (``(L,)`` when C = 1) and ``(L,)``, C = :attr:`channels`; :meth:`load` the same as numpy arrays.
    Like :class:`kdlib.data.PairedCorpus` it has ``sample_rate``, ``speakers()``, ``subset()`` and
    ``pesq_mode_hint``, so the trainer and the evaluation read it alike.

    Raises:
        DataError: the split folder is missing, it has no ``*_A.wav``, a label or mic-B file is missing (the
            message names it), or (``check``) a file has the wrong channel count, rate or length.
        ValueError: ``mics`` is not ``("A",)``, ``("B",)`` or ``("A", "B")``, or ``keep_channels`` is empty,
            repeats a channel or names one outside ``0 .. 4 * len(mics) - 1``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "dev",
        mics: Sequence[str] = ("A",),
        sample_rate: int = 16000,
        check: bool = True,
        keep_channels: Sequence[int] | None = None,
    ) -> None:
        mics = tuple(mics)
        if mics not in (("A",), ("B",), ("A", "B")):
            raise ValueError(f"L3DAS23Corpus: mics must be ('A',), ('B',) or ('A', 'B'), got {mics}")
        n_all = CHANNELS_PER_MIC * len(mics)
        if keep_channels is not None:
            keep_channels = tuple(int(c) for c in keep_channels)
            if not keep_channels or len(set(keep_channels)) != len(keep_channels) or not all(
                0 <= c < n_all for c in keep_channels
            ):
                raise ValueError(
                    f"L3DAS23Corpus: keep_channels must be distinct indices in 0..{n_all - 1} for mics {mics}, "
                    f"got {list(keep_channels)}"
                )
        self.keep_channels: tuple[int, ...] | None = keep_channels
        self.root = Path(root).expanduser().resolve()
        self.split = split
        self.mics = mics
        self.sample_rate = int(sample_rate)
        self.path = _split_dir(self.root, split)
        data_dir, label_dir = self.path / "data", self.path / "labels"
        ids = sorted(p.name[: -len("_A.wav")] for p in data_dir.iterdir() if p.is_file() and p.name.endswith("_A.wav"))
        if not ids:
            raise DataError(f"L3DAS23 folder '{data_dir}' has no <id>_A.wav files: check the extraction")
        self.ids: list[str] = ids
        self.files: list[tuple[list[Path], Path]] = []
        for id_ in ids:
            mic_files = [data_dir / f"{id_}_{m}.wav" for m in mics]
            for f in mic_files:
                if not f.is_file():
                    raise DataError(f"L3DAS23 mic file '{f}' is missing: re-extract the split or use mics=('A',)")
            label = label_dir / f"{id_}.wav"
            if not label.is_file():
                raise DataError(f"L3DAS23 label '{label}' is missing for '{mic_files[0].name}': re-extract the split")
            self.files.append((mic_files, label))
        if check:
            self._check_headers()

    @property
    def channels(self) -> int:
        """Channels of a noisy item: 4 per microphone, or the number of ``keep_channels`` (1: mono ``(L,)``)."""
        if self.keep_channels is not None:
            return len(self.keep_channels)
        return CHANNELS_PER_MIC * len(self.mics)

    @property
    def pesq_mode_hint(self) -> str:
        """``"wb"``: L3DAS23 targets are wideband read speech (``"nb"`` only for a corpus read at 8 kHz)."""
        return "wb" if self.sample_rate >= 16000 else "nb"

    def speaker(self, i: int) -> str:
        """Speaker label of scene ``i`` (see :func:`scene_speaker`)."""
        return scene_speaker(self.ids[i])

    def speakers(self) -> list[str]:
        """Sorted unique speaker labels of the scenes."""
        return sorted({scene_speaker(id_) for id_ in self.ids})

    def subset(self, speakers: Sequence[str] | None = None, max_utterances: int | None = None) -> L3DAS23Corpus:
        """A corpus restricted to ``speakers`` and at most ``max_utterances`` scenes, order kept.

        Same rule as :meth:`kdlib.data.PairedCorpus.subset`: ``max_utterances`` keeps the scenes at indices
        ``round(linspace(0, n-1, max_utterances))`` of the speaker-filtered list (even, deterministic spread).

        Raises:
            DataError: a requested speaker is not in the split, or nothing is left.
            ValueError: ``max_utterances`` < 1.
        """
        labels = [self.speaker(j) for j in range(len(self.ids))]
        keep = select_utterances(labels, speakers, max_utterances, f"L3DAS23 split '{self.path}'")
        out = copy.copy(self)
        out.ids = [self.ids[j] for j in keep]
        out.files = [self.files[j] for j in keep]
        return out

    def _check_headers(self) -> None:
        for mic_files, label in self.files:
            sr, n_label, ch = audio_info(label)
            self._check_rate(label, sr)
            if ch != 1:
                raise DataError(f"L3DAS23 label '{label}' has {ch} channels but a mono target is expected")
            for f in mic_files:
                sr, n, ch = audio_info(f)
                self._check_rate(f, sr)
                if ch != CHANNELS_PER_MIC:
                    raise DataError(
                        f"L3DAS23 mic file '{f}' has {ch} channels but {CHANNELS_PER_MIC} (first-order "
                        "Ambisonics) are expected"
                    )
                if n != n_label:
                    raise DataError(
                        f"L3DAS23 mic file '{f}' has {n} samples but its label '{label}' has {n_label}: "
                        "the files of a scene must be of equal length"
                    )

    def _check_rate(self, path: Path, sr: int) -> None:
        if sr != self.sample_rate:
            raise DataError(
                f"L3DAS23 file '{path}' has sample rate {sr} Hz but {self.sample_rate} Hz is expected: "
                "set sample_rate or resample the corpus"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"L3DAS23Corpus('{self.path}', mics={self.mics}, items={len(self)}, sample_rate={self.sample_rate})"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Read item ``i``.

        Returns:
            ``(noisy, clean)``: float32 ``(4 * len(mics), L)`` Ambisonics channels (mic A's four, then B's; only
            ``keep_channels`` when given, ``(L,)`` for a single one) and ``(L,)`` clean speech.

        Raises:
            DataError: a file is missing/unreadable, has the wrong channel count or rate, or lengths differ.
        """
        mic_files, label = self.files[i]
        parts = []
        for f in mic_files:
            x = read_audio(f, self.sample_rate, allow_multichannel=True)
            if x.ndim != 2 or x.shape[0] != CHANNELS_PER_MIC:
                got = 1 if x.ndim == 1 else x.shape[0]
                raise DataError(f"L3DAS23 mic file '{f}' has {got} channels but {CHANNELS_PER_MIC} are expected")
            parts.append(x)
        clean = read_audio(label, self.sample_rate)
        noisy = np.concatenate(parts, axis=0)
        if noisy.shape[1] != clean.shape[0]:
            raise DataError(
                f"L3DAS23 scene '{self.ids[i]}': mic files have {noisy.shape[1]} samples but label '{label}' has "
                f"{clean.shape[0]}: the files of a scene must be of equal length"
            )
        if self.keep_channels is not None:
            noisy = noisy[list(self.keep_channels)]
            if len(self.keep_channels) == 1:
                noisy = noisy[0]
        return np.ascontiguousarray(noisy), clean

    def transcript(self, i: int) -> str | None:
        """Text of ``labels/<id>.txt`` (stripped) or None when the split has no transcripts."""
        txt = self.path / "labels" / f"{self.ids[i]}.txt"
        return txt.read_text().strip() if txt.is_file() else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)`` float32 tensors, ``(C, L)`` (``(L,)`` when C = 1) and ``(L,)``, C = :attr:`channels`."""
        noisy, clean = self.load(i)
        return torch.from_numpy(noisy), torch.from_numpy(clean)


class L3DAS23Segments(EpochDataset):
    """Random fixed-length ``(noisy, clean)`` training segments cut from the scenes of L3DAS23 splits.

    Item ``i`` depends only on ``(seed, epoch, i)`` through ``np.random.default_rng([seed, epoch, i])``, as in
    :class:`kdlib.data.mixing.SpeechNoiseMixer`: pick a scene uniformly over all scenes of ``corpora`` (in
    their order), then a segment start uniformly in ``[0, n - L]``; a scene shorter than L samples is
    zero-padded at a random offset. While the clean segment is near-silent (more than 30 dB below its
    scene's mean power) scene and start are drawn again, at most 10 times, and the loudest draw is kept.
    Scenes are read when drawn (a full L3DAS23 training split does not fit in memory).

    ``set_epoch`` changes the draw; with DataLoader workers call it before creating the iterator.

    Args:
        corpora: the training splits (their ``keep_channels`` decide the channels).
        segment_seconds: in s; L = round(segment_seconds * sample_rate) samples.
        num_segments: items per epoch (``len``).
        seed: non-negative int.

    Attributes:
        sample_rate: Hz (the corpora's, which must agree). channels: C of a noisy item (1: ``(L,)``).
        speakers: sorted speaker labels of all scenes.

    Raises:
        ValueError: no corpus, corpora with other rates or channel counts, or an argument out of range.
    """

    def __init__(
        self,
        corpora: Sequence[L3DAS23Corpus],
        segment_seconds: float = 2.0,
        num_segments: int = 256,
        seed: int = 0,
    ) -> None:
        corpora = list(corpora)
        if not corpora:
            raise ValueError("L3DAS23Segments: give at least one corpus")
        if len({(c.sample_rate, c.channels) for c in corpora}) != 1:
            raise ValueError("L3DAS23Segments: the corpora differ in sample rate or channel count")
        if not segment_seconds > 0 or round(segment_seconds * corpora[0].sample_rate) < 1:
            raise ValueError(f"L3DAS23Segments: segment_seconds must give >= 1 sample, got {segment_seconds}")
        if num_segments < 1:
            raise ValueError(f"L3DAS23Segments: num_segments must be >= 1, got {num_segments}")
        if seed < 0:
            raise ValueError(f"L3DAS23Segments: seed must be >= 0, got {seed}")
        self.corpora = corpora
        self.sample_rate = corpora[0].sample_rate
        self.channels = corpora[0].channels
        self.segment_seconds = float(segment_seconds)
        self.segment_length = round(self.segment_seconds * self.sample_rate)
        self.num_segments = int(num_segments)
        self.seed = int(seed)
        self.epoch = 0
        self._scenes = [(c, j) for c in corpora for j in range(len(c))]
        self.speakers = sorted({s for c in corpora for s in c.speakers()})

    def __len__(self) -> int:
        return self.num_segments

    def _cut(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """A random L-sample window of ``x`` (last axis), zero-padded at a random offset when shorter."""
        L, n = self.segment_length, x.shape[-1]
        if n >= L:
            start = int(rng.integers(n - L + 1))
            return x[..., start : start + L]
        out = np.zeros((*x.shape[:-1], L), dtype=np.float32)
        off = int(rng.integers(L - n + 1))
        out[..., off : off + n] = x
        return out

    def draw(self, i: int) -> dict[str, Any]:
        """Draw item ``i`` of the current epoch.

        Returns:
            ``{"noisy": (C, L) or (L,) float32, "clean": (L,) float32, "scene": id, "split": corpus path}``.

        Raises:
            IndexError: ``i`` outside ``[-len, len)``.
            DataError: a scene cannot be read (wrong rate, channels, lengths; the message names the file), or
                every draw gave a silent target.
        """
        if not -self.num_segments <= i < self.num_segments:
            raise IndexError(f"L3DAS23Segments index {i} out of range for {self.num_segments} segments")
        i = int(i) % self.num_segments
        rng = np.random.default_rng([self.seed, self.epoch, i])
        best, best_power = None, -1.0
        for _ in range(_MAX_TRIES):
            corpus, j = self._scenes[int(rng.integers(len(self._scenes)))]
            noisy, clean = corpus.load(j)
            # one window for both: stack so the same start (or padding offset) cuts noisy and clean
            both = self._cut(rng, np.concatenate([noisy.reshape(-1, clean.size), clean[None]], axis=0))
            power = float(np.mean(np.square(both[-1], dtype=np.float64)))
            if power > best_power:
                best, best_power = (both, corpus, j), power
            if power >= float(np.mean(np.square(clean, dtype=np.float64))) * 10.0 ** (_SILENT_REL_DB / 10.0):
                break
        assert best is not None
        both, corpus, j = best
        if best_power == 0.0:
            raise DataError(f"L3DAS23 label '{corpus.files[j][1]}' gave only silent segments: remove the scene")
        noisy = both[:-1] if self.channels > 1 else both[0]
        return {
            "noisy": np.ascontiguousarray(noisy, dtype=np.float32),
            "clean": np.ascontiguousarray(both[-1], dtype=np.float32),
            "scene": corpus.ids[j],
            "split": corpus.path,
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)``: float32 tensors ``(C, L)`` (``(L,)`` when C = 1) and ``(L,)`` of item ``i``."""
        d = self.draw(i)
        return torch.from_numpy(d["noisy"]), torch.from_numpy(d["clean"])


# -- archives ------------------------------------------------------------------------------------

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _safe_target(dest: Path, name: str, archive: Path) -> Path:
    """``dest / name`` after refusing absolute names, drive letters and ``..`` escapes."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and ":" in pure.parts[0]):
        raise DataError(f"archive '{archive}' member '{name}' has an absolute path: refusing to extract it")
    target = (dest / pure).resolve()
    if target != dest and dest not in target.parents:
        raise DataError(f"archive '{archive}' member '{name}' would be written outside '{dest}': refusing it")
    return target


def extract_archive(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack a ``.zip`` or tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) archive into ``dest``.

    Every member is checked before anything is written: absolute names, ``..`` components that leave
    ``dest``, links (symbolic or hard) and device/FIFO members are refused. Tar archives are additionally
    extracted with Python's ``filter="data"`` (Python >= 3.11.4). Existing files with the same names are overwritten.

    Args:
        path: the archive.
        dest: target folder (created if missing).

    Returns:
        ``dest`` as an absolute path.

    Raises:
        DataError: the archive is missing, of an unknown type, unreadable, or has an unsafe member.
    """
    archive = Path(path)
    if not archive.is_file():
        raise DataError(f"archive '{archive}' does not exist")
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _safe_target(dest, info.filename, archive)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise DataError(f"archive '{archive}' member '{info.filename}' is a link: refusing it")
                zf.extractall(dest)
        elif name.endswith(_TAR_SUFFIXES):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _safe_target(dest, member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise DataError(
                            f"archive '{archive}' member '{member.name}' is a link or special file: refusing it"
                        )
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own safety filter as well
                    tf.extractall(dest, filter="data")
                else:  # pragma: no cover - older 3.11 patch releases; the member checks above still apply
                    tf.extractall(dest)
        else:
            raise DataError(f"archive '{archive}' is not a .zip or tar archive ({', '.join(_TAR_SUFFIXES)})")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"archive '{archive}' cannot be extracted ({exc}): download it again") from None
    return dest
