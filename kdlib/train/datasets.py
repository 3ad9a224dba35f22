"""Datasets a sweep trains, validates and tests on, built from the ``data`` section.

Two modes:

* **paired** (``data.valid`` + ``data.test``): mono mixtures of ``speech/`` + ``noise/`` made on the
  fly for training; validation and test on paired corpora (VoiceBank+DEMAND, NOIZEUS, ...).
* **array** (``data.array``): a simulated compact microphone array (:class:`ArrayMixer`). Training
  mixtures ``(M, L)`` are simulated on the fly from the training speakers and noise files; the valid
  and test sets are simulated once from their own ``speech/`` speakers and the held-out noise files
  and cached as multi-channel paired sets under ``<output>/arrays/<key>/{valid,test}`` (``key`` hashes
  everything that determines them: the array section, rate, SNR range and the exact files). The
  driver writes them before any trial; trials find them and only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdlib.config import DataConfig, PairedConfig, SweepConfig
from kdlib.data import (
    PairedCorpus,
    SpeechNoiseMixer,
    list_noise,
    list_speech,
    resolve_data_root,
    speaker_matches,
)
from kdlib.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kdlib.data.array import ArrayMixer

#: folder under the sweep's output dir that holds the cached simulated valid/test sets
ARRAY_CACHE_DIR = "arrays"
#: bump when the meaning of a cached set changes (ArrayMixer semantics, file layout)
_ARRAY_CACHE_VERSION = 1
_EVAL_SPLITS = ("valid", "test")


@dataclass
class SweepData:
    """Training mixtures plus the speaker-disjoint validation and test corpora.

    ``train`` yields ``(noisy, clean)`` items: ``(L,)`` / ``(L,)`` from a :class:`SpeechNoiseMixer`
    (paired mode) or ``(M, L)`` / ``(L,)`` from an :class:`ArrayMixer` (array mode).
    """

    train: SpeechNoiseMixer | ArrayMixer
    valid: PairedCorpus
    test: PairedCorpus
    train_speakers: list[str]


def paired_split(cfg: DataConfig, split: PairedConfig) -> PairedCorpus:
    """The paired corpus of a valid/test section, restricted to its speakers and utterance cap.

    Raises:
        DataError: missing corpus, unpaired/unequal files, wrong sample rate, or no utterance left.
    """
    corpus = PairedCorpus(resolve_data_root(cfg.root) / split.corpus, sample_rate=cfg.sample_rate)
    if split.speakers:
        unknown = sorted(set(split.speakers) - set(corpus.speakers()))
        if unknown:
            raise DataError(f"corpus '{split.corpus}' has no speaker(s) {unknown}; it has {corpus.speakers()}")
    return corpus.subset(split.speakers, split.max_utterances)


def eval_sets(sweep: SweepConfig) -> tuple[PairedCorpus, PairedCorpus]:
    """The sweep's ``(valid, test)`` corpora. The driver calls this before any trial starts, so
    data problems stop the sweep before work is wasted.

    In array mode the first call simulates and caches both sets (see :func:`array_eval_sets`);
    later calls, e.g. one per trial, only read them.

    Raises:
        DataError: missing corpus, unpaired/unequal files, wrong sample rate, or no utterance left;
            array mode: an unknown speaker or noise file, nothing left for training.
        ConfigError: array mode: the teacher takes another number of channels than ``n_mics``.
    """
    cfg = sweep.data
    if cfg.array is not None:
        return array_eval_sets(sweep)
    assert cfg.valid is not None and cfg.test is not None  # the config refuses neither/both
    return paired_split(cfg, cfg.valid), paired_split(cfg, cfg.test)


def build_sweep_data(sweep: SweepConfig, seed: int = 0) -> SweepData:
    """Training mixes from ``speech/`` + ``noise/`` with every validation/test speaker left out
    (array mode: also the held-out noise files), seeded by ``seed``.

    Raises:
        DataError: missing data root or folders, or no training speaker left after exclusion.
    """
    cfg = sweep.data
    if cfg.array is not None:
        return _build_array_data(sweep, seed)
    root = resolve_data_root(cfg.root)
    valid, test = eval_sets(sweep)
    held_out = set(valid.speakers()) | set(test.speakers()) | set(cfg.train.exclude_speakers)
    speech = list_speech(root, cfg.train.speech)
    train_speakers = [s for s in speech if not any(speaker_matches(s, h) for h in held_out)]
    if not train_speakers:
        raise DataError("no training speaker left after excluding the validation/test speakers")
    files = [f for s in train_speakers for f in speech[s]]
    mixer = SpeechNoiseMixer(
        files, list_noise(root, cfg.train.noise), sample_rate=cfg.sample_rate,
        segment_seconds=cfg.train.segment_seconds, snr_db=tuple(cfg.train.snr_db),
        num_segments=cfg.train.segments_per_epoch, seed=seed,
    )
    return SweepData(mixer, valid, test, train_speakers)


# -- array mode ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayPlan:
    """Which speakers and noise files each part of an array sweep uses (no audio read).

    Attributes:
        split_files: ``{"valid": [...], "test": [...]}`` speech files of the held-out speakers.
        train_speakers: speaker folders left for training (sorted).
        train_files: their speech files.
        train_noise: noise files for training.
        eval_noise: noise files held out for valid/test (never in ``train_noise``).
    """

    split_files: dict[str, list[Path]]
    train_speakers: list[str]
    train_files: list[Path]
    train_noise: list[Path]
    eval_noise: list[Path]


def array_plan(sweep: SweepConfig) -> ArrayPlan:
    """Split ``speech/`` by speaker and ``noise/`` by file for an array sweep.

    Training speakers are every ``speech/`` folder except the valid/test speakers and
    ``data.train.exclude_speakers`` (compared with :func:`speaker_matches`, so ``p232`` also
    removes ``vctk_p232``). Held-out noise: ``data.array.eval_noise`` if given, else
    ``round(eval_noise_fraction * N)`` (>= 1) files drawn with ``eval_seed``.

    Raises:
        DataError: a valid/test speaker or eval noise file does not exist, or no training speaker or
            noise file is left.
    """
    cfg, arr = sweep.data, sweep.data.array
    assert arr is not None
    root = resolve_data_root(cfg.root)
    speech = list_speech(root, cfg.train.speech)
    split_files: dict[str, list[Path]] = {}
    for name in _EVAL_SPLITS:
        speakers = getattr(arr, name).speakers
        unknown = [s for s in speakers if s not in speech]
        if unknown:
            raise DataError(f"data.array.{name}.speakers: no speaker folder {unknown} in "
                            f"'{root / cfg.train.speech}' (use folder names, e.g. {', '.join(list(speech)[:3])})")
        split_files[name] = [f for s in speakers for f in speech[s]]
    held_out = {*arr.valid.speakers, *arr.test.speakers, *cfg.train.exclude_speakers}
    train_speakers = [s for s in speech if not any(speaker_matches(s, h) for h in held_out)]
    if not train_speakers:
        raise DataError("no training speaker left after excluding the validation/test speakers")
    noise = list_noise(root, cfg.train.noise)
    if arr.eval_noise:
        by_name = {p.name: p for p in noise}
        unknown = [n for n in arr.eval_noise if n not in by_name]
        if unknown:
            raise DataError(f"data.array.eval_noise: no file {unknown} in '{root / cfg.train.noise}'")
        eval_noise = sorted(by_name[n] for n in arr.eval_noise)
    else:
        n_eval = max(1, round(arr.eval_noise_fraction * len(noise)))
        order = np.random.default_rng(arr.eval_seed).permutation(len(noise))
        eval_noise = sorted(noise[j] for j in order[:n_eval])
    held_noise = set(eval_noise)
    train_noise = [p for p in noise if p not in held_noise]
    if not train_noise:
        raise DataError(f"data.array: all {len(noise)} noise files are held out for valid/test: "
                        "lower eval_noise_fraction or list fewer eval_noise files")
    return ArrayPlan(split_files, train_speakers, [f for s in train_speakers for f in speech[s]],
                     train_noise, eval_noise)


def _rel(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def array_cache_dir(sweep: SweepConfig, plan: ArrayPlan | None = None) -> Path:
    """``<output>/arrays/<key>``: ``key`` hashes the array section, sample rate, SNR range and the
    exact speech/noise files of the valid/test sets (so a changed config or corpus gets a new set)."""
    cfg, arr = sweep.data, sweep.data.array
    assert arr is not None
    plan = plan or array_plan(sweep)
    blob = json.dumps({
        "version": _ARRAY_CACHE_VERSION, "sample_rate": cfg.sample_rate, "train_snr_db": list(cfg.train.snr_db),
        "array": arr.model_dump(mode="json"),
        "files": {name: [_rel(p) for p in files] for name, files in plan.split_files.items()},
        "eval_noise": [_rel(p) for p in plan.eval_noise],
    }, sort_keys=True)
    return sweep.output_path() / ARRAY_CACHE_DIR / hashlib.sha256(blob.encode()).hexdigest()[:12]


def eval_mixer(sweep: SweepConfig, split: str, plan: ArrayPlan | None = None) -> ArrayMixer:
    """The simulator of the ``valid`` or ``test`` set: its speakers, the held-out noise, seed
    ``eval_seed`` (valid) or ``eval_seed + 1`` (test), epoch 0, ``items`` items."""
    from kdlib.data.array import ArrayMixer

    cfg, arr = sweep.data, sweep.data.array
    assert arr is not None and split in _EVAL_SPLITS
    plan = plan or array_plan(sweep)
    part = getattr(arr, split)
    return ArrayMixer(
        plan.split_files[split], plan.eval_noise, sample_rate=cfg.sample_rate,
        segment_seconds=arr.eval_segment_seconds, snr_db=tuple(part.snr_db or cfg.train.snr_db),
        num_items=part.items, seed=arr.eval_seed + _EVAL_SPLITS.index(split), **arr.mixer_kwargs(),
    )


def _write_once(base: Path, split: str, make_mixer) -> Path:
    """``base/split``, simulated and written first if missing. The set is written into a private
    temporary folder and renamed into place, so readers only ever see complete sets and a second
    concurrent writer just discards its copy."""
    from kdlib.data.array import cache_array_set

    final = base / split
    if (final / "pairs.csv").is_file():
        return final
    if final.is_dir() and any(final.iterdir()):
        raise DataError(f"cached array set '{final}' is incomplete (no pairs.csv): delete the folder")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=base))
    try:
        mixer = make_mixer()
        written = cache_array_set(mixer, tmp, len(mixer), split)
        try:
            os.rename(written, final)  # atomic; fails if another writer has put a complete set there
        except OSError:
            if not (final / "pairs.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_channels(sweep: SweepConfig) -> None:
    """Every teacher must take ``n_mics`` channels (models without ``n_channels`` take 1)."""
    import torch

    from kdlib.models import MODELS

    n_mics = sweep.data.array.n_mics
    for name in sweep.teacher_names():
        node = sweep.teacher_cfg(name).model
        with torch.device("meta"):
            channels = getattr(MODELS.get(node.name)(**node.kwargs), "n_channels", 1)
        if channels != n_mics:
            where = f"teachers.{name}" if name else "teacher"
            raise ConfigError(f"{where}.model: '{node.name}' takes {channels} input channel(s) but "
                              f"data.array.n_mics is {n_mics}: set its n_channels to {n_mics}")


def array_eval_sets(sweep: SweepConfig, plan: ArrayPlan | None = None) -> tuple[PairedCorpus, PairedCorpus]:
    """The simulated ``(valid, test)`` sets of an array sweep as ``PairedCorpus(channels=n_mics)``,
    simulated and cached under :func:`array_cache_dir` on the first call, only read afterwards.

    Raises:
        DataError: see :func:`array_plan`. ConfigError: a teacher's channel count differs from n_mics.
    """
    cfg, arr = sweep.data, sweep.data.array
    assert arr is not None
    _check_channels(sweep)
    plan = plan or array_plan(sweep)
    base = array_cache_dir(sweep, plan)
    corpora = []
    for split in _EVAL_SPLITS:
        folder = _write_once(base, split, lambda split=split: eval_mixer(sweep, split, plan))
        corpora.append(PairedCorpus(folder, sample_rate=cfg.sample_rate, layout="csv", channels=arr.n_mics))
    return corpora[0], corpora[1]


def _build_array_data(sweep: SweepConfig, seed: int) -> SweepData:
    import pyroomacoustics as pra
    import torch

    from kdlib.data.array import ArrayMixer

    cfg, arr = sweep.data, sweep.data.array
    assert arr is not None
    plan = array_plan(sweep)
    valid, test = array_eval_sets(sweep, plan)
    if "PRA_NUM_THREADS" not in os.environ:  # RIR threads = this process's torch threads (trial CPUs)
        pra.constants.set("num_threads", torch.get_num_threads())
    mixer = ArrayMixer(
        plan.train_files, plan.train_noise, sample_rate=cfg.sample_rate,
        segment_seconds=cfg.train.segment_seconds, snr_db=tuple(cfg.train.snr_db),
        num_items=cfg.train.segments_per_epoch, seed=seed, **arr.mixer_kwargs(),
    )
    return SweepData(mixer, valid, test, plan.train_speakers)
