"""Unpaired clean speech and noise for on-the-fly mixing, and speaker-disjoint splits."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TypeVar

import numpy as np

from kdlib.data.audio import AUDIO_SUFFIXES
from kdlib.errors import DataError

T = TypeVar("T")


def _audio_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def list_speech(root: str | os.PathLike[str], subdir: str = "speech") -> dict[str, list[Path]]:
    """Clean speech files grouped by speaker folder: ``root/subdir/<speaker>/*.wav|*.flac``.

    Returns:
        speaker folder name -> sorted audio files; speakers in sorted order. Folders without audio
        files are left out.

    Raises:
        DataError: ``root/subdir`` is missing or holds no audio in any speaker folder.
    """
    base = Path(root) / subdir
    if not base.is_dir():
        raise DataError(f"speech folder '{base}' does not exist: check the data root (KDLIB_DATA)")
    out = {}
    for spk in sorted(p for p in base.iterdir() if p.is_dir()):
        files = _audio_in(spk)
        if files:
            out[spk.name] = files
    if not out:
        raise DataError(f"speech folder '{base}' has no <speaker>/*.wav|*.flac files: add speaker folders")
    return out


def list_noise(root: str | os.PathLike[str], subdir: str = "noise") -> list[Path]:
    """Sorted noise files ``root/subdir/*.wav|*.flac`` (not recursive).

    Raises:
        DataError: ``root/subdir`` is missing or holds no audio files.
    """
    base = Path(root) / subdir
    if not base.is_dir():
        raise DataError(f"noise folder '{base}' does not exist: check the data root (KDLIB_DATA)")
    files = _audio_in(base)
    if not files:
        raise DataError(f"noise folder '{base}' has no *.wav|*.flac files: add noise recordings")
    return files


def speaker_matches(speaker: str, other: str) -> bool:
    """True if the labels name the same speaker: equal, or one is the other with a corpus prefix
    (``"vctk_p232"`` matches ``"p232"``; ``"p2321"`` does not)."""
    return speaker == other or speaker.endswith("_" + other) or other.endswith("_" + speaker)


def _split_counts(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_valid, n_test) for n units: rounded fractions, >= 1 for a non-zero fraction, train >= 1."""
    n_valid = max(math.floor(valid_fraction * n + 0.5), 1 if valid_fraction > 0 else 0)
    n_test = max(math.floor(test_fraction * n + 0.5), 1 if test_fraction > 0 else 0)
    while n - n_valid - n_test < 1 and n_valid + n_test > 0:
        # shrink the larger split; on a tie drop test first so model selection keeps a valid set
        if n_test >= n_valid:
            n_test -= 1
        else:
            n_valid -= 1
    return n_valid, n_test


def split_by_speaker(
    items: dict[str, list[T]], valid_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[T]], dict[str, list[T]], dict[str, list[T]]]:
    """Speaker-disjoint train/valid/test split.

    Speakers are shuffled with ``np.random.default_rng(seed)`` (deterministic per seed); the first
    ``round(test_fraction * n)`` go to test, the next ``round(valid_fraction * n)`` to valid, the
    rest to train. A non-zero fraction gets at least one speaker and train always keeps one; when
    there are too few speakers for that, test is dropped before valid and a warning is issued.

    With exactly one speaker the speaker's items are split by utterance instead (the same speaker
    key then appears in several splits) and a ``UserWarning`` says so.

    Args:
        items: speaker -> items (e.g. the output of :func:`list_speech`).
        valid_fraction, test_fraction: in [0, 1), sum < 1.
        seed: non-negative int.

    Returns:
        ``(train, valid, test)`` dicts speaker -> list of items, speakers in sorted order.

    Raises:
        ValueError: fractions out of range.
        DataError: ``items`` is empty.
    """
    for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction + test_fraction}")
    if not items:
        raise DataError("split_by_speaker got no speakers: check the speech folder")
    rng = np.random.default_rng(seed)
    speakers = sorted(items)

    if len(speakers) == 1:
        spk = speakers[0]
        utts = list(items[spk])
        n_valid, n_test = _split_counts(len(utts), valid_fraction, test_fraction)
        order = rng.permutation(len(utts))
        test_idx = sorted(order[:n_test])
        valid_idx = sorted(order[n_test : n_test + n_valid])
        train_idx = sorted(order[n_test + n_valid :])
        warnings.warn(
            f"only one speaker ('{spk}'): splitting its {len(utts)} items by utterance "
            f"({len(train_idx)}/{len(valid_idx)}/{len(test_idx)} train/valid/test); "
            "the splits share that speaker",
            stacklevel=2,
        )

        def pick(idx: list[int]) -> dict[str, list[T]]:
            return {spk: [utts[j] for j in idx]} if idx else {}

        return pick(train_idx), pick(valid_idx), pick(test_idx)

    n_valid, n_test = _split_counts(len(speakers), valid_fraction, test_fraction)
    if (valid_fraction > 0 and n_valid == 0) or (test_fraction > 0 and n_test == 0):
        warnings.warn(
            f"only {len(speakers)} speakers: valid gets {n_valid} and test {n_test} speaker(s)",
            stacklevel=2,
        )
    shuffled = [speakers[j] for j in rng.permutation(len(speakers))]
    test_spk = set(shuffled[:n_test])
    valid_spk = set(shuffled[n_test : n_test + n_valid])
    train, valid, test = {}, {}, {}
    for spk in speakers:
        target = test if spk in test_spk else valid if spk in valid_spk else train
        target[spk] = list(items[spk])
    return train, valid, test
