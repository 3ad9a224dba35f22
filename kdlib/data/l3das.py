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
Scenes are up to 12 s long at 16 kHz (methods.md section 1.3).
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset

from kdlib.data.audio import audio_info, read_audio
from kdlib.errors import DataError

#: Ambisonics channels per L3DAS microphone (first order: W, Y, Z, X in AmbiX order).
CHANNELS_PER_MIC = 4
MICS = ("A", "B")
_SPLIT_ALIASES = {"train100": ("train100", "train_100"), "train360": ("train360", "train_360")}


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

    Items are sorted by id. ``__getitem__`` returns ``(noisy, clean)`` float32 tensors of shape
    ``(4 * len(mics), L)`` and ``(L,)``; :meth:`load` the same as numpy arrays.

    Raises:
        DataError: the split folder is missing, it has no ``*_A.wav``, a label or mic-B file is missing (the
            message names it), or (``check``) a file has the wrong channel count, rate or length.
        ValueError: ``mics`` is not ``("A",)``, ``("B",)`` or ``("A", "B")``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "dev",
        mics: Sequence[str] = ("A",),
        sample_rate: int = 16000,
        check: bool = True,
    ) -> None:
        mics = tuple(mics)
        if mics not in (("A",), ("B",), ("A", "B")):
            raise ValueError(f"L3DAS23Corpus: mics must be ('A',), ('B',) or ('A', 'B'), got {mics}")
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
        """Channels of a noisy item: 4 per microphone."""
        return CHANNELS_PER_MIC * len(self.mics)

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
            ``(noisy, clean)``: float32 ``(4 * len(mics), L)`` Ambisonics channels (mic A's four, then B's) and
            ``(L,)`` clean speech.

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
        return noisy, clean

    def transcript(self, i: int) -> str | None:
        """Text of ``labels/<id>.txt`` (stripped) or None when the split has no transcripts."""
        txt = self.path / "labels" / f"{self.ids[i]}.txt"
        return txt.read_text().strip() if txt.is_file() else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)`` float32 tensors, ``(C, L)`` and ``(L,)`` with C = 4 * len(mics)."""
        noisy, clean = self.load(i)
        return torch.from_numpy(noisy), torch.from_numpy(clean)


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
