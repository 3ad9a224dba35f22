"""A simulated compact microphone array (``data.array``, :class:`kdlib.data.array.ArrayMixer`).

Training mixtures ``(M, L)`` are simulated on the fly from the training speakers and noise files; the
valid and test sets are simulated once from their own ``speech/`` speakers and the held-out noise files
and cached as multi-channel paired sets under ``<output>/arrays/<key>/{valid,test}`` (``key`` hashes
everything that determines them: the array section, rate, SNR range and the exact files), written with
:func:`kdlib.data.array.cache_array_set` (atomic, so concurrent first writers are safe). The driver
writes them before any trial; trials find them and only read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdlib.config.data import ArrayConfig, DataConfig
from kdlib.data.paired import PairedCorpus
from kdlib.data.scan import (
    ScanReport,
    scan_audio,
    scan_training_mix,
)
from kdlib.data.sources.base import DataSource, SweepData, register_data_source, short_hash
from kdlib.data.speech import list_noise, list_speech, speaker_matches
from kdlib.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kdlib.config.schema import SmokeConfig
    from kdlib.data.array import ArrayMixer

#: folder under the sweep's output dir that holds the cached simulated valid/test sets
ARRAY_CACHE_DIR = "arrays"
#: bump when the meaning of a cached set changes (ArrayMixer semantics, file layout)
_ARRAY_CACHE_VERSION = 1
_EVAL_SPLITS = ("valid", "test")


def mixer_kwargs(arr: ArrayConfig) -> dict[str, Any]:
    """The ``ArrayMixer`` geometry/acoustics kwargs of an array section (no files, segment length, SNR,
    count or seed).

    Raises:
        ValueError: the array geometry is impossible (e.g. ``spacing_m`` with a circular layout).
    """
    from kdlib.data.array import compact_array

    return {
        "n_mics": arr.n_mics,
        "array": compact_array(arr.n_mics, arr.radius_m, arr.layout, arr.spacing_m, arr.center_mic),
        "rt60_s": tuple(arr.rt60_s), "room_dim_m": tuple(arr.room_dim_m),
        "noise_sources": tuple(arr.noise_sources), "target": arr.target, "early_ms": arr.early_ms,
        "snr_reference": arr.snr_reference, "max_order": arr.max_order,
        "max_rir_seconds": arr.max_rir_seconds, "wall_margin_m": arr.wall_margin_m,
        "min_source_dist_m": arr.min_source_dist_m, "rotate_array": arr.rotate_array,
    }


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


def _rel(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


@register_data_source("array")
class ArraySource(DataSource):
    """``data.array``: a simulated microphone array; items ``(M, L)`` noisy / ``(L,)`` clean at mic 0."""

    @classmethod
    def selected_by(cls, data: DataConfig) -> bool:
        return data.array is not None

    @property
    def array(self) -> ArrayConfig:
        assert self.data.array is not None  # selected_by
        return self.data.array

    @classmethod
    def smoke(cls, data: DataConfig, smoke: SmokeConfig) -> DataConfig:
        """As :meth:`DataSource.smoke`; the simulated valid/test sets get at most ``smoke.max_utterances``
        items of at most ``smoke.segment_seconds`` s."""
        d = super().smoke(data, smoke)
        assert d.array is not None
        for arr_split in (d.array.valid, d.array.test):
            arr_split.items = min(arr_split.items, smoke.max_utterances)
        d.array.eval_segment_seconds = min(d.array.eval_segment_seconds, smoke.segment_seconds)
        return d

    @property
    def input_channels(self) -> int:
        return self.array.n_mics

    channels_key = "data.array.n_mics"

    def check(self) -> None:
        """The simulator checks its arguments (room vs margins, reachable RT60, geometry) before it reads
        any file: probe it with empty file lists.

        Raises:
            ConfigError: ``data.array: <the simulator's reason>``.
        """
        from kdlib.data.array import ArrayMixer

        try:
            ArrayMixer([], [], segment_seconds=self.array.eval_segment_seconds, **mixer_kwargs(self.array))
        except DataError:
            pass  # only the (deliberately) empty file lists were refused
        except ValueError as exc:
            msg = str(exc).removeprefix("ArrayMixer: ").removeprefix("compact_array: ")
            raise ConfigError(f"data.array: {msg}") from None

    def plan(self) -> ArrayPlan:
        """Split ``speech/`` by speaker and ``noise/`` by file.

        Training speakers are every ``speech/`` folder except the valid/test speakers and
        ``data.train.exclude_speakers`` (compared with :func:`speaker_matches`, so ``p232`` also removes
        ``vctk_p232``). Held-out noise: ``data.array.eval_noise`` if given, else
        ``round(eval_noise_fraction * N)`` (>= 1) files drawn with ``eval_seed``.

        Raises:
            DataError: a valid/test speaker or eval noise file does not exist, or no training speaker or
                noise file is left.
        """
        cfg, arr = self.data, self.array
        root = self.root
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

    def scan_files(self, depth: str) -> ScanReport:
        """:meth:`DataSource.scan` of the simulated array: what the simulator reads from disk (rooms and
        RIRs are computed, not read). In this order: the split of :meth:`plan`; the speaker folders of
        ``data.train.speech`` (one without audio directly in it is refused, unless excluded); every training
        speech file (mono, ``data.sample_rate``); at least one training segment of speech in total; the speech
        of the valid and test speakers; the training noise files, at least one as long as a training segment;
        the held-out (valid/test) noise files. Reads only: neither simulates nor writes the cached sets.

        Raises:
            DataError: the first problem found, naming the file or folder (see :mod:`kdlib.data.scan`).
        """
        cfg, sr = self.data, self.data.sample_rate
        plan = self.plan()
        speech_dir, noise_dir = self.root / cfg.train.speech, self.root / cfg.train.noise
        report = scan_training_mix(plan.train_files, plan.train_noise, speech_dir=speech_dir, noise_dir=noise_dir,
                                   held_out=cfg.train.exclude_speakers, sample_rate=sr,
                                   segment_seconds=cfg.train.segment_seconds, depth=depth)
        for name in _EVAL_SPLITS:
            report = report + scan_audio(plan.split_files[name], sample_rate=sr, kind=f"{name} speech",
                                         depth=depth, where=f"data.train.speech (data.array.{name}.speakers)")
        report = report + scan_audio(plan.eval_noise, sample_rate=sr, kind="held-out noise", depth=depth,
                                     where="data.train.noise")
        return report

    def _key_blob(self, plan: ArrayPlan | None = None) -> dict[str, Any]:
        cfg, arr = self.data, self.array
        plan = plan or self.plan()
        return {
            "version": _ARRAY_CACHE_VERSION, "sample_rate": cfg.sample_rate, "train_snr_db": list(cfg.train.snr_db),
            "array": arr.model_dump(mode="json"),
            "files": {name: [_rel(p) for p in files] for name, files in plan.split_files.items()},
            "eval_noise": [_rel(p) for p in plan.eval_noise],
        }

    def cache_key(self, plan: ArrayPlan | None = None) -> str:
        """Hash of the array section, sample rate, SNR range and the exact speech/noise files of the
        valid/test sets (so a changed config or corpus gets a new set); lists files, reads no audio.

        Raises:
            DataError: see :meth:`plan`.
        """
        return short_hash(self._key_blob(plan))

    def cache_dir(self, plan: ArrayPlan | None = None) -> Path:
        """``<output>/arrays/<cache_key>``: the folder of the cached ``valid`` and ``test`` sets."""
        return self.output / ARRAY_CACHE_DIR / self.cache_key(plan)

    def eval_mixer(self, split: str, plan: ArrayPlan | None = None) -> ArrayMixer:
        """The simulator of the ``valid`` or ``test`` set: its speakers, the held-out noise, seed
        ``eval_seed`` (valid) or ``eval_seed + 1`` (test), epoch 0, ``items`` items."""
        from kdlib.data.array import ArrayMixer

        cfg, arr = self.data, self.array
        assert split in _EVAL_SPLITS
        plan = plan or self.plan()
        part = getattr(arr, split)
        return ArrayMixer(
            plan.split_files[split], plan.eval_noise, sample_rate=cfg.sample_rate,
            segment_seconds=arr.eval_segment_seconds, snr_db=tuple(part.snr_db or cfg.train.snr_db),
            num_items=part.items, seed=arr.eval_seed + _EVAL_SPLITS.index(split), **mixer_kwargs(arr),
        )

    def eval_sets(self, plan: ArrayPlan | None = None) -> tuple[PairedCorpus, PairedCorpus]:
        """The simulated ``(valid, test)`` sets as ``PairedCorpus(channels=n_mics)``, simulated and cached
        under :meth:`cache_dir` on the first call, only read afterwards (the simulator is not even built).

        Raises:
            DataError: see :meth:`plan`; a cached set is incomplete (no pairs.csv: delete the folder).
        """
        from kdlib.data.array import cache_array_set

        plan = plan or self.plan()
        base = self.cache_dir(plan)
        corpora = []
        for split in _EVAL_SPLITS:
            folder = cache_array_set(lambda split=split: self.eval_mixer(split, plan), base, split_name=split)
            corpora.append(PairedCorpus(folder, sample_rate=self.data.sample_rate, layout="csv",
                                        channels=self.array.n_mics))
        return corpora[0], corpora[1]

    def build(self, seed: int = 0) -> SweepData:
        import pyroomacoustics as pra
        import torch

        from kdlib.data.array import ArrayMixer

        cfg, arr = self.data, self.array
        plan = self.plan()
        valid, test = self.eval_sets(plan)
        if "PRA_NUM_THREADS" not in os.environ:  # RIR threads = this process's torch threads (trial CPUs)
            pra.constants.set("num_threads", torch.get_num_threads())
        mixer = ArrayMixer(
            plan.train_files, plan.train_noise, sample_rate=cfg.sample_rate,
            segment_seconds=cfg.train.segment_seconds, snr_db=tuple(cfg.train.snr_db),
            num_items=cfg.train.segments_per_epoch, seed=seed, **mixer_kwargs(arr),
        )
        return SweepData(mixer, valid, test, plan.train_speakers)
