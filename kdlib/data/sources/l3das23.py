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

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlib.config.data import DataConfig, L3DAS23Config
from kdlib.data.cache import write_once
from kdlib.data.l3das import L3DAS23Corpus, L3DAS23Segments, extract_archive
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

    def corpus_root(self) -> Path:
        """The folder holding ``L3DAS23_Task1_<split>``: ``path`` itself, or where its archives were extracted
        (extracted on the first call, only read afterwards).

        Raises:
            DataError: a path does not exist, a list mixes folders with archives or names a folder, or an
                archive cannot be extracted safely.
        """
        paths = self._paths()
        for p in paths:
            if not p.exists():
                raise DataError(f"data.l3das23.path: '{p}' does not exist (paths are relative to the data root "
                                f"'{self.root}')")
        if len(paths) == 1 and paths[0].is_dir():
            return paths[0]
        not_archives = [str(p) for p in paths if not (p.is_file() and _is_archive(p))]
        if not_archives:
            raise DataError(f"data.l3das23.path: {not_archives} are not .zip/tar archives: give one folder, or "
                            "one or more archives")
        listing = [{"name": p.name, "bytes": p.stat().st_size} for p in paths]

        def fill(folder: Path) -> None:
            for p in paths:
                extract_archive(p, folder)
            (folder / _EXTRACTED).write_text(json.dumps(listing, indent=1))

        # keyed by name and size, not location: a moved data root reuses the extraction
        final = self.output / L3DAS23_CACHE_DIR / short_hash({"archives": listing})
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
