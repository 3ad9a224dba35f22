"""The L3DAS23 Task 1 corpus (``data.l3das23``, :class:`kdlib.data.l3das.L3DAS23Corpus`): first-order
Ambisonics mixtures at one or two microphones, mono clean speech targets, 16 kHz.

``data.l3das23.path`` (relative to the data root, or absolute) is either a folder holding the
``L3DAS23_Task1_<split>`` folders, or one or more ``.zip`` / tar archives of them (as downloaded), which
are extracted once with :func:`kdlib.data.l3das.extract_archive` into ``<output>/l3das23/<key>/``
(``key`` hashes the archives' names and sizes) by the same atomic write-once mechanism as the cached
array sets (:func:`kdlib.data.cache.write_once`); later calls only read.

Training cuts random segments from the scenes of the ``train`` splits (:class:`L3DAS23Segments`); valid and
test are whole scenes of their split, restricted to their speakers and ``max_utterances``.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlib.config.data import DataConfig, L3DAS23Config
from kdlib.data.cache import write_once
from kdlib.data.l3das import CHANNELS_PER_MIC, L3DAS23Corpus, L3DAS23Segments, extract_archive
from kdlib.data.scan import ScanReport, check_speech_material, scan_frames
from kdlib.data.sources.base import DataSource, SweepData, register_data_source, short_hash
from kdlib.data.speech import speaker_matches
from kdlib.errors import DataError

if TYPE_CHECKING:
    from kdlib.config.schema import SmokeConfig

#: folder under the sweep's output dir that holds extracted L3DAS23 archives
L3DAS23_CACHE_DIR = "l3das23"
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: written last into an extraction folder: its presence marks a complete extraction
_EXTRACTED = "archives.json"


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


@register_data_source("l3das23")
class L3DAS23Source(DataSource):
    """``data.l3das23``: noisy items ``(C, L)`` (``(L,)`` with one kept channel), clean ``(L,)``."""

    @classmethod
    def selected_by(cls, data: DataConfig) -> bool:
        return data.l3das23 is not None

    @property
    def section(self) -> L3DAS23Config:
        assert self.data.l3das23 is not None  # selected_by
        return self.data.l3das23

    @classmethod
    def smoke(cls, data: DataConfig, smoke: SmokeConfig) -> DataConfig:
        """As :meth:`DataSource.smoke`; ``data.l3das23.valid/test.max_utterances`` shrink alike."""
        d = super().smoke(data, smoke)
        assert d.l3das23 is not None
        for split in (d.l3das23.valid, d.l3das23.test):
            split.max_utterances = min(split.max_utterances or smoke.max_utterances, smoke.max_utterances)
        return d

    @property
    def input_channels(self) -> int:
        return self.section.n_channels()

    channels_key = "the channel count of data.l3das23 (len(channels), else 4 per entry of mics)"

    def _key_blob(self) -> dict[str, Any]:
        return {"sample_rate": self.data.sample_rate, "l3das23": self.section.model_dump(mode="json")}

    # -- corpus location ---------------------------------------------------------------------------

    def _paths(self) -> list[Path]:
        raw = self.section.path
        return [p if p.is_absolute() else self.root / p for p in map(Path, raw if isinstance(raw, list) else [raw])]

    def _located(self) -> tuple[list[Path], Path | None]:
        """The checked paths and the folder holding the splits: ``path`` itself when it is one folder, else
        ``None`` (archives, to be extracted by :meth:`corpus_root`).

        Raises:
            DataError: as :meth:`corpus_root`, except for the extraction itself.
        """
        paths = self._paths()
        for p in paths:
            if not p.exists():
                raise DataError(f"data.l3das23.path: '{p}' does not exist (paths are relative to the data root "
                                f"'{self.root}')")
        if len(paths) == 1 and paths[0].is_dir():
            return paths, paths[0]
        not_archives = [str(p) for p in paths if not (p.is_file() and _is_archive(p))]
        if not_archives:
            raise DataError(f"data.l3das23.path: {not_archives} are not .zip/tar archives: give one folder, or "
                            "one or more archives")
        return paths, None

    def _extraction(self, paths: list[Path]) -> tuple[Path, list[dict[str, Any]]]:
        """Where :meth:`corpus_root` extracts ``paths`` (keyed by name and size, not location: a moved data
        root reuses the extraction) and the listing it writes there last."""
        listing = [{"name": p.name, "bytes": p.stat().st_size} for p in paths]
        return self.output / L3DAS23_CACHE_DIR / short_hash({"archives": listing}), listing

    def corpus_root(self) -> Path:
        """The folder holding ``L3DAS23_Task1_<split>``: ``path`` itself, or where its archives were extracted
        (extracted on the first call, only read afterwards).

        Raises:
            DataError: a path does not exist, a list mixes folders with archives or names a folder, or an
                archive cannot be extracted safely.
        """
        paths, folder = self._located()
        if folder is not None:
            return folder
        final, listing = self._extraction(paths)

        def fill(folder: Path) -> None:
            for p in paths:
                extract_archive(p, folder)
            (folder / _EXTRACTED).write_text(json.dumps(listing, indent=1))

        return write_once(final, fill, _EXTRACTED, "extracted L3DAS23 corpus")

    def corpus(self, split: str, check: bool = True) -> L3DAS23Corpus:
        """One split with the section's mics, kept channels and ``data.sample_rate``.

        Raises:
            DataError: see :meth:`corpus_root` and :class:`L3DAS23Corpus` (missing split or files, and with
                ``check`` wrong channel counts, rates or lengths, naming the file).
        """
        sec = self.section
        return L3DAS23Corpus(self.corpus_root(), split, mics=tuple(sec.mics), sample_rate=self.data.sample_rate,
                             check=check, keep_channels=sec.channels)

    # -- sets --------------------------------------------------------------------------------------

    def eval_sets(self) -> tuple[L3DAS23Corpus, L3DAS23Corpus]:
        """``(valid, test)``: whole scenes of their splits (headers checked), restricted to their speakers
        and ``max_utterances`` (an even spread, as for paired corpora)."""
        sec = self.section
        opened: dict[str, L3DAS23Corpus] = {}
        sets = []
        for part in (sec.valid, sec.test):
            if part.split not in opened:  # valid and test may share a split (disjoint speakers)
                opened[part.split] = self.corpus(part.split)
            sets.append(opened[part.split].subset(part.speakers, part.max_utterances))
        return sets[0], sets[1]

    def scan_files(self, depth: str) -> ScanReport:
        """:meth:`DataSource.scan` of L3DAS23: what :meth:`build` and :meth:`eval_sets` read, scene by scene.

        In this order: the training scenes (the ``train`` splits without the valid/test speakers and
        ``data.train.exclude_speakers``), at least one training segment of clean speech in total, then the
        valid and test scenes (their speakers and ``max_utterances``). Per scene: the mono label and each
        4-channel mic file (readable, ``data.sample_rate``, at least one sample, with ``depth="full"`` finite
        and not silent), and mic files as long as their label. With ``"full"`` every sample is read (5 times the
        clean speech's samples with one mic, 9 times with two), so prefer ``data.scan: headers`` for the full
        training splits (train360: hundreds of hours).

        Reads only. When ``data.l3das23.path`` names archives that were not extracted yet (under
        :attr:`output`), the scan only checks that each archive is a readable zip/tar file and says in the
        report's ``notes`` that the audio was not scanned (:meth:`eval_sets` extracts it and checks headers).

        Raises:
            DataError: the first problem found, naming the file (see :mod:`kdlib.data.scan`).
        """
        paths, root = self._located()
        if root is None:
            final, _ = self._extraction(paths)
            if not (final / _EXTRACTED).is_file():
                for p in paths:
                    readable = zipfile.is_zipfile(p) if p.name.lower().endswith(".zip") else tarfile.is_tarfile(p)
                    if not readable:
                        raise DataError(f"data.l3das23.path: archive '{p}' is not a readable zip/tar file (a broken "
                                        "or incomplete download?): download it again")
                return ScanReport(depth=depth, notes=(
                    f"L3DAS23 archives not extracted yet (to '{final}'): their audio was not scanned",))
            root = final
        cfg, sec = self.data, self.section

        def corpus(split: str) -> L3DAS23Corpus:
            return L3DAS23Corpus(root, split, mics=tuple(sec.mics), sample_rate=cfg.sample_rate, check=False,
                                 keep_channels=sec.channels)

        opened: dict[str, L3DAS23Corpus] = {}
        evals = []
        for name, part in (("valid", sec.valid), ("test", sec.test)):
            if part.split not in opened:
                opened[part.split] = corpus(part.split)
            evals.append((name, opened[part.split].subset(part.speakers, part.max_utterances)))
        held_out = {s for _, c in evals for s in c.speakers()} | set(cfg.train.exclude_speakers)
        trains = []
        for split in sec.train:
            c = opened.get(split) or corpus(split)
            keep = [s for s in c.speakers() if not any(speaker_matches(s, h) for h in held_out)]
            if keep:
                trains.append(c.subset(keep))
        if not trains:
            raise DataError("no training speaker left after excluding the validation/test speakers")
        report, labels = ScanReport(depth=depth), ScanReport(depth=depth)
        for c in trains:
            scenes, scene_labels = self._scan_scenes(c, "training", depth)
            report, labels = report + scenes, labels + scene_labels
        check_speech_material(labels, cfg.train.segment_seconds, where="data.l3das23.train",
                              folder=", ".join(str(c.path / "labels") for c in trains))
        for name, c in evals:
            report = report + self._scan_scenes(c, name, depth)[0]
        return report

    @staticmethod
    def _scan_scenes(corpus: L3DAS23Corpus, kind: str, depth: str) -> tuple[ScanReport, ScanReport]:
        """Scan the labels (mono) and mic files (4 channels each) of ``corpus``'s scenes, and compare each mic
        file's length with its label's. Returns the report of all files (its ``seconds``: the scenes' duration,
        each counted once) and that of the labels alone.

        Raises:
            DataError: see :func:`kdlib.data.scan.scan_audio`; a mic file whose length differs from its label's.
        """
        fix = "remove the scene (its label and mic files) from the split"
        labels = [label for _, label in corpus.files]
        mics = [f for mic_files, _ in corpus.files for f in mic_files]
        labels_report, label_frames = scan_frames(labels, sample_rate=corpus.sample_rate, channels=1,
                                           kind=f"L3DAS23 {kind} label", depth=depth, fix=fix)
        mic_report, mic_frames = scan_frames(mics, sample_rate=corpus.sample_rate, channels=CHANNELS_PER_MIC,
                                             kind=f"L3DAS23 {kind} mic", depth=depth, fix=fix)
        per_scene = len(corpus.mics)
        for j, (mic_files, label) in enumerate(corpus.files):
            for f, n in zip(mic_files, mic_frames[j * per_scene : (j + 1) * per_scene], strict=True):
                if n != label_frames[j]:
                    raise DataError(
                        f"L3DAS23 {kind} mic file '{f}' has {n} samples but its label '{label}' has {label_frames[j]}: "
                        "the files of a scene must be of equal length (re-extract the split)"
                    )
        both = dataclasses.replace(labels_report, files=labels_report.files + mic_report.files,
                                   elapsed_s=labels_report.elapsed_s + mic_report.elapsed_s)
        return both, labels_report

    def build(self, seed: int = 0) -> SweepData:
        """Training segments from the ``train`` splits without any valid/test speaker or
        ``data.train.exclude_speakers``, drawn with ``seed`` (``data.train.segment_seconds`` long,
        ``data.train.segments_per_epoch`` per epoch), plus :meth:`eval_sets`.

        Raises:
            DataError: as :meth:`eval_sets`; a training file with the wrong rate, channel count or length
                (headers are checked here, naming the file); no training speaker left.
        """
        cfg, sec = self.data, self.section
        valid, test = self.eval_sets()
        held_out = set(valid.speakers()) | set(test.speakers()) | set(cfg.train.exclude_speakers)
        corpora = []
        for split in sec.train:
            corpus = self.corpus(split)
            keep = [s for s in corpus.speakers() if not any(speaker_matches(s, h) for h in held_out)]
            if keep:
                corpora.append(corpus.subset(keep))
        if not corpora:
            raise DataError("no training speaker left after excluding the validation/test speakers")
        train = L3DAS23Segments(corpora, segment_seconds=cfg.train.segment_seconds,
                                num_segments=cfg.train.segments_per_epoch, seed=seed)
        return SweepData(train, valid, test, train.speakers)
