"""The data-source interface: what a sweep trains, validates and tests on, built from its ``data`` section.

One :class:`DataSource` subclass per kind of data, registered in :data:`DATA_SOURCES` with
:func:`register_data_source`. The section of ``data`` that is present picks the source
(:meth:`DataSource.selected_by`); :func:`data_source` builds it. A source never reads audio in its
constructor: :meth:`~DataSource.check` (no audio), :meth:`~DataSource.eval_sets` (valid/test, written
to a cache first where they are simulated or extracted) and :meth:`~DataSource.build` (also the
training set, per seed) do the work, so the sweep decides when. :meth:`~DataSource.scan` checks every
audio file they will read (depth ``data.scan``) without writing anything, before any of that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from kdlib.config.data import DataConfig
from kdlib.data.root import resolve_data_root
from kdlib.data.scan import ScanReport, check_depth
from kdlib.errors import ConfigError
from kdlib.registry import Registry

if TYPE_CHECKING:
    from kdlib.config.schema import SmokeConfig
    from kdlib.data.l3das import L3DAS23Corpus
    from kdlib.data.mixing import EpochDataset
    from kdlib.data.paired import PairedCorpus

    #: a validation/test set: ``len``, ``load(i) -> (noisy, clean)``, ``sample_rate``, ``speakers()``,
    #: ``pesq_mode_hint``
    EvalSet = PairedCorpus | L3DAS23Corpus


@dataclass
class SweepData:
    """Training items plus the speaker-disjoint validation and test sets of one sweep (for one seed).

    Attributes:
        train: an :class:`~kdlib.data.mixing.EpochDataset` (``set_epoch(epoch)``; item ``i`` is a
            deterministic draw of ``(seed, epoch, i)``) of ``(noisy, clean)`` float32 tensors: ``(L,)`` /
            ``(L,)`` for mono sources, ``(C, L)`` / ``(L,)`` for multi-channel ones (C = the source's
            ``input_channels``, clean = the reference channel's target), L = segment length in samples.
        valid, test: paired sets whose ``load(i)`` returns ``(noisy, clean)`` numpy arrays of the same shapes
            (whole utterances), with ``sample_rate`` (Hz), ``speakers()`` and ``pesq_mode_hint``; ``test`` is
            the primary test set (``data.test``, the first of a list).
        train_speakers: the speaker labels left for training (sorted as the source lists them).
        extra_tests: the other named test sets of a ``data.test`` list, by name, in the list's order.
    """

    train: EpochDataset
    valid: EvalSet
    test: EvalSet
    train_speakers: list[str]
    extra_tests: dict[str, EvalSet] = dataclasses.field(default_factory=dict)

    def test_sets(self) -> list[tuple[str | None, EvalSet]]:
        """``(name, set)`` of every test set: the primary first (name None), then the named extra ones."""
        return [(None, self.test), *self.extra_tests.items()]


class DataSource:
    """One kind of sweep data, built from a validated ``data`` section (one instance per section).

    Args:
        data: the ``data`` section.
        root: the absolute data root; None resolves ``data.root`` with
            :func:`kdlib.data.resolve_data_root` on first use (which raises :class:`DataError` if missing).
        output: the sweep's output folder (caches of simulated or extracted sets go below it).
    """

    #: registry name (set by :func:`register_data_source`)
    name: ClassVar[str] = ""

    def __init__(self, data: DataConfig, root: str | os.PathLike[str] | None, output: str | os.PathLike[str]) -> None:
        self.data = data
        self._root = None if root is None else Path(root)
        self.output = Path(output)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, output='{self.output}')"

    @property
    def root(self) -> Path:
        """The absolute data root (resolved from ``data.root`` / ``$KDLIB_DATA`` when none was given).

        Raises:
            DataError: the data root does not exist.
        """
        if self._root is None:
            self._root = resolve_data_root(self.data.root)
        return self._root

    @classmethod
    def selected_by(cls, data: DataConfig) -> bool:
        """Whether ``data`` asks for this source (which of its sections is present)."""
        raise NotImplementedError

    @classmethod
    def smoke(cls, data: DataConfig, smoke: SmokeConfig) -> DataConfig:
        """A copy of ``data`` shrunk for ``--smoke-test``: ``smoke.segments_per_epoch`` training segments of
        ``smoke.segment_seconds`` s, and at most ``smoke.max_utterances`` valid/test utterances (a source with
        its own valid/test sets shrinks those as well). ``data`` itself is not changed."""
        d = data.model_copy(deep=True)
        d.train.segments_per_epoch = smoke.segments_per_epoch
        d.train.segment_seconds = smoke.segment_seconds
        for split in (d.valid, d.test, *d.extra_tests):
            if split is not None:
                split.max_utterances = min(split.max_utterances or smoke.max_utterances, smoke.max_utterances)
        return d

    @property
    def input_channels(self) -> int:
        """Channels of a noisy item: 1 = mono ``(L,)`` input; C > 1 = ``(C, L)``."""
        raise NotImplementedError

    #: the YAML key that sets :attr:`input_channels`, for messages ("... but data.array.n_mics is 5");
    #: None when no key does (mono data)
    channels_key: ClassVar[str | None] = None

    def check(self) -> None:
        """Checks that need code beyond the schema but no audio (the sweep calls it at load time).

        Raises:
            ConfigError: one line naming the key.
        """

    def scan(self, depth: str | None = None) -> ScanReport:
        """Pre-flight scan of every audio file this source will read (training, valid and test), run once
        before any work starts, so a bad file stops the sweep with one line instead of a traceback inside a
        trial. Reads only: it writes nothing (no cache, no extraction) and simulates nothing.

        Per file (:func:`kdlib.data.scan.scan_audio`): readable, at ``data.sample_rate``, the expected channel
        count, at least one sample; with ``depth="full"`` also every sample finite and the file not silent.
        Sources also refuse too little material (e.g. less training speech than one segment). This method
        resolves the depth and times the scan; the files are the job of :meth:`scan_files`, which the built-in
        sources override (the default checks nothing and says so in the report's ``notes``).

        Args:
            depth: ``"full"``, ``"headers"`` or ``"off"``; None = ``data.scan`` (default ``"full"``).

        Returns:
            a :class:`~kdlib.data.scan.ScanReport`: files checked, their total duration (s), the time taken (s).

        Raises:
            DataError: one line naming the file (or folder) and what is wrong with it, and how to fix it.
            ValueError: an unknown ``depth``.
        """
        depth = check_depth(self.data.scan if depth is None else depth)
        if depth == "off":
            return ScanReport(depth=depth)
        start = time.perf_counter()
        return dataclasses.replace(self.scan_files(depth), depth=depth, elapsed_s=time.perf_counter() - start)

    def scan_files(self, depth: str) -> ScanReport:
        """The files of :meth:`scan` at ``depth`` (``"full"`` or ``"headers"``); what a source overrides.

        Raises:
            DataError: see :meth:`scan`.
        """
        return ScanReport(depth=depth, notes=(f"the '{self.name}' data source has no pre-flight scan",))

    def eval_sets(self) -> tuple[EvalSet, EvalSet]:
        """The ``(valid, test)`` sets. The driver calls this before any trial starts, so data problems stop
        the sweep before work is wasted; sets that are simulated or extracted are written once to a cache
        under :attr:`output` by the first call and only read by later ones (e.g. one per trial).

        Raises:
            DataError: missing data, unpaired/unequal files, wrong sample rate, unknown speakers, nothing left.
        """
        raise NotImplementedError

    def extra_test_sets(self) -> dict[str, EvalSet]:
        """The named test sets after the first of a ``data.test`` list, by name (only paired corpora have them;
        the schema refuses a list with ``data.array`` / ``data.l3das23``)."""
        return {}

    def build(self, seed: int = 0) -> SweepData:
        """The training set (drawn with ``seed``; every valid/test speaker left out) plus :meth:`eval_sets`.

        Raises:
            DataError: as :meth:`eval_sets`, or no training speaker left after exclusion.
        """
        raise NotImplementedError

    def cache_key(self) -> str:
        """Short hash of what determines this source's valid/test material (sources with a cache name their
        folder after it); equal keys mean equal sets."""
        return short_hash(self._key_blob())

    def _key_blob(self) -> dict[str, Any]:
        return {"sample_rate": self.data.sample_rate, "valid": self.data.valid.model_dump(mode="json"),
                "test": self.data.test.model_dump(mode="json"),
                **({"extra_tests": [t.model_dump(mode="json") for t in self.data.extra_tests]}
                   if self.data.extra_tests else {})}


def short_hash(blob: dict[str, Any], n: int = 12) -> str:
    """First ``n`` hex digits of the SHA-256 of ``blob`` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:n]


#: name -> DataSource subclass ("paired_mix", "array", "l3das23")
DATA_SOURCES: Registry[DataSource] = Registry("data source")

S = TypeVar("S", bound=type[DataSource])


def register_data_source(name: str) -> Callable[[S], S]:
    """Class decorator: ``@register_data_source("array")`` registers a :class:`DataSource` subclass."""

    def deco(cls: S) -> S:
        cls.name = name
        return DATA_SOURCES.register(name)(cls)

    return deco


def source_class(data: DataConfig) -> type[DataSource]:
    """The registered source whose :meth:`~DataSource.selected_by` accepts ``data``.

    Raises:
        ConfigError: no source, or more than one, accepts it (a plugin source overlapping a built-in one).
    """
    matches = [cls for _, cls in DATA_SOURCES.items() if cls.selected_by(data)]
    if len(matches) != 1:
        names = ", ".join(cls.name for cls in matches) or "none"
        raise ConfigError(f"data: exactly one data source must match the data section, got {names} "
                          f"(registered: {', '.join(DATA_SOURCES.names())})")
    return matches[0]


def data_source(data: DataConfig, root: str | os.PathLike[str] | None, output: str | os.PathLike[str]) -> DataSource:
    """The data source of a ``data`` section (see :class:`DataSource` for the arguments).

    Raises:
        ConfigError: see :func:`source_class`.
    """
    return source_class(data)(data, root, output)
