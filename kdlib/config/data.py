"""The ``data`` section of a sweep: training mixtures, held-out valid/test sets, a simulated array or
the L3DAS23 corpus (pure pydantic; the checks that need the simulator or the audio run in the data
sources, see :mod:`kdlib.data.sources`)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from kdlib.config.base import Strict as _Strict


class MixConfig(_Strict):
    """On-the-fly training mixtures: clean speech + real noise at a random SNR (dB)."""

    speech: str = "speech"
    noise: str = "noise"
    snr_db: tuple[float, float] = (-5.0, 15.0)
    segment_seconds: float = Field(2.0, gt=0)
    segments_per_epoch: int = Field(400, ge=1)
    #: extra speakers to keep out of training; the valid/test speakers are always excluded
    exclude_speakers: list[str] = Field(default_factory=list)

    @field_validator("snr_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError("low SNR must not exceed high SNR")
        return v


class PairedConfig(_Strict):
    """A paired noisy/clean corpus folder (relative to the data root) and which of it to use.

    ``name`` labels a test set when ``data.test`` is a list of them: its scores are logged as
    ``test_<name>_<metric>`` and ``test_scores_<name>.csv`` (lower-case letters, digits, ``_``)."""

    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    corpus: str
    speakers: list[str] | None = None
    max_utterances: int | None = Field(None, ge=1)
    pesq_mode: Literal["auto", "wb", "nb"] = "auto"

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if isinstance(out, dict) and out.get("name", 0) is None:
            del out["name"]  # unnamed sets dump (and hash) as before test sets had names
        return out


#: corpus name of the ``data.valid`` / ``data.test`` entries derived from ``data.array`` (the simulated sets)
ARRAY_CORPUS = "array:"


def _low_high(v: tuple[Any, Any] | None) -> tuple[Any, Any] | None:
    if v is not None and v[0] > v[1]:
        raise ValueError("low must not exceed high")
    return v


class ArraySplitConfig(_Strict):
    """A held-out simulated set (``data.array.valid`` / ``.test``): speaker folders of ``speech/``."""

    speakers: list[str] = Field(min_length=1)
    items: int = Field(ge=1)
    #: SNR range in dB at the reference mic; None = ``data.train.snr_db``
    snr_db: tuple[float, float] | None = None

    _snr_ordered = field_validator("snr_db")(_low_high)


class ArrayConfig(_Strict):
    """Simulated compact microphone array (:class:`kdlib.data.array.ArrayMixer`: pyroomacoustics
    shoebox rooms, RIRs to every mic, real speech and noise as point sources; mic 0 is the reference).

    Training mixtures are simulated on the fly from the training speakers (every ``speech/`` folder
    but the valid/test/excluded ones) and the training noise files, with ``data.train``'s segment
    length, segment count and SNR range. ``valid`` and ``test`` are simulated once from their own
    speakers and the held-out noise files (seeds ``eval_seed`` / ``eval_seed + 1``, epoch 0) and
    cached under ``<output>/arrays/``. The simulator's own checks (room vs margins, reachable RT60,
    geometry) run in :meth:`kdlib.data.sources.array.ArraySource.check`.
    """

    n_mics: int = Field(5, ge=2)
    layout: Literal["circular", "linear"] = "circular"
    #: circle radius (circular) or half the aperture (linear without spacing_m), in m
    radius_m: float = Field(0.05, gt=0)
    #: linear layout only: inter-mic spacing in m (None: 2 * radius_m / (n_mics - 1))
    spacing_m: float | None = Field(None, gt=0)
    #: reference mic 0 at the array centre
    center_mic: bool = False
    #: Sabine RT60 range in s ([0, 0] = anechoic)
    rt60_s: tuple[float, float] = (0.2, 0.8)
    #: room size range [[lx, ly, lz], [hx, hy, hz]] in m
    room_dim_m: tuple[tuple[float, float, float], tuple[float, float, float]] = ((3.0, 3.0, 2.5), (8.0, 6.0, 3.5))
    #: number of point noise sources per item, [low, high]
    noise_sources: tuple[int, int] = (1, 3)
    #: training target at mic 0: the direct path (dry) or the direct path + early reflections
    target: Literal["direct", "early"] = "direct"
    early_ms: float = Field(50.0, gt=0)
    snr_reference: Literal["reverberant", "target"] = "reverberant"
    #: image-source order cap (None = full Sabine order: slow)
    max_order: int | None = Field(17, ge=0)
    max_rir_seconds: float = Field(1.0, gt=0)
    wall_margin_m: float = Field(0.5, ge=0)
    min_source_dist_m: float = Field(1.0, ge=0)
    rotate_array: bool = True
    valid: ArraySplitConfig
    test: ArraySplitConfig
    #: length of every cached valid/test item in s
    eval_segment_seconds: float = Field(4.0, gt=0)
    #: noise files held out of training for valid/test: this fraction of ``noise/`` (seeded choice) ...
    eval_noise_fraction: float = Field(0.2, gt=0, lt=1)
    #: ... or exactly these file names of ``noise/`` (overrides the fraction when given)
    eval_noise: list[str] = Field(default_factory=list)
    #: seed of the valid set (test: eval_seed + 1) and of the held-out noise choice
    eval_seed: int = Field(1000, ge=0)

    _ranges_ordered = field_validator("rt60_s", "noise_sources")(_low_high)

    @field_validator("room_dim_m")
    @classmethod
    def _room_ordered(cls, v: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[tuple[float, ...], ...]:
        if any(lo > hi for lo, hi in zip(*v, strict=True)):
            raise ValueError("low must not exceed high on any axis")
        return v

    @model_validator(mode="after")
    def _check(self) -> ArrayConfig:
        shared = sorted(set(self.valid.speakers) & set(self.test.speakers))
        if shared:
            raise ValueError(f"valid and test share speaker(s) {shared}: the sets must be speaker-disjoint")
        if len(set(self.eval_noise)) != len(self.eval_noise):
            raise ValueError("eval_noise lists a file twice")
        # what needs the simulator (room vs margins, reachable RT60, geometry) is checked by the array
        # data source's check() at load time: the schema imports no torch
        return self


#: corpus name of the ``data.valid`` / ``data.test`` entries derived from ``data.l3das23``
L3DAS23_CORPUS = "l3das23:"
_L3DAS23_MICS = (["A"], ["B"], ["A", "B"])


class L3DAS23SplitConfig(_Strict):
    """A held-out L3DAS23 set (``data.l3das23.valid`` / ``.test``): one split, optionally some of its speakers."""

    #: the split folder ``L3DAS23_Task1_<split>`` (``dev``, ``train100``, ``train360``, ``test``)
    split: str = Field("dev", pattern=r"^[A-Za-z0-9_]+$")
    #: LibriSpeech speaker ids (a scene id's first field: ``1089`` of ``1089-134686-0000``); None = all
    speakers: list[str] | None = Field(None, min_length=1)
    max_utterances: int | None = Field(None, ge=1)


class L3DAS23Config(_Strict):
    """The L3DAS23 Task 1 corpus (first-order Ambisonics mixtures, mono clean targets; see
    :mod:`kdlib.data.l3das` for the folder layout).

    Training cuts random ``data.train.segment_seconds`` segments from the scenes of the ``train`` splits
    (``data.train.segments_per_epoch`` per epoch; their speakers minus the valid/test speakers and
    ``data.train.exclude_speakers``); ``valid`` and ``test`` are whole scenes of their split.
    """

    #: relative to the data root (or absolute): a folder holding ``L3DAS23_Task1_<split>`` folders, or one
    #: or more .zip / tar archives of them, extracted once under ``<output>/l3das23/``
    path: str | list[str]
    train: list[str] = Field(default_factory=lambda: ["train100"], min_length=1)
    valid: L3DAS23SplitConfig
    test: L3DAS23SplitConfig
    #: Ambisonics microphones: [A] (4 channels) or [A, B] (8, A's first)
    mics: list[Literal["A", "B"]] = Field(default_factory=lambda: ["A"])
    #: indices into the 4 * len(mics) channels to keep (None = all); one index gives mono input
    channels: list[int] | None = Field(None, min_length=1)
    pesq_mode: Literal["auto", "wb", "nb"] = "auto"

    @field_validator("path")
    @classmethod
    def _paths(cls, v: str | list[str]) -> str | list[str]:
        paths = v if isinstance(v, list) else [v]
        if not paths or not all(paths):
            raise ValueError("give a folder, or one or more archives (non-empty paths)")
        return v

    @field_validator("train")
    @classmethod
    def _split_names(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not s or not all(c.isalnum() or c == "_" for c in s)]
        if bad:
            raise ValueError(f"split names are letters, digits and '_', got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("a split is listed twice")
        return v

    @field_validator("mics")
    @classmethod
    def _mics(cls, v: list[str]) -> list[str]:
        if v not in _L3DAS23_MICS:
            raise ValueError("must be [A], [B] or [A, B]")
        return v

    def n_channels(self) -> int:
        """Channels of a noisy item: ``len(channels)``, else 4 per microphone (1 means mono ``(L,)``)."""
        return len(self.channels) if self.channels is not None else 4 * len(self.mics)

    @model_validator(mode="after")
    def _check(self) -> L3DAS23Config:
        n_all = 4 * len(self.mics)
        if self.channels is not None:
            bad = [c for c in self.channels if not 0 <= c < n_all]
            if bad:
                raise ValueError(f"channels {bad} out of range: mics {self.mics} give channels 0..{n_all - 1}")
            if len(set(self.channels)) != len(self.channels):
                raise ValueError("channels lists a channel twice")
        for name in ("valid", "test"):
            split = getattr(self, name)
            if split.split in self.train and split.speakers is None:
                raise ValueError(f"{name}.split '{split.split}' is also a training split: give {name}.speakers "
                                 "(they are left out of training)")
        if self.valid.split == self.test.split and (self.valid.speakers is None or self.test.speakers is None):
            raise ValueError(f"valid and test both use split '{self.valid.split}': give each its own speakers "
                             "(the sets must be speaker-disjoint)")
        shared = sorted(set(self.valid.speakers or ()) & set(self.test.speakers or ()))
        if shared:
            raise ValueError(f"valid and test share speaker(s) {shared}: the sets must be speaker-disjoint")
        return self


#: the sections that bring their own valid/test sets instead of paired ``data.valid`` / ``data.test``
_OWN_SPLITS = ("array", "l3das23")


class DataConfig(_Strict):
    """Training mixtures plus held-out valid/test sets: paired corpora (``valid`` + ``test``, mono), a
    simulated microphone ``array``, or the ``l3das23`` corpus. Exactly one of the three; ``array`` and
    ``l3das23`` fill ``valid``/``test`` with ``array:`` / ``l3das23:`` entries themselves."""

    root: str | None = None
    sample_rate: Literal[8000, 16000] = 16000
    #: seed of the training mixtures, the same for every trial of a sweep (paired design: a KD student and
    #: its ``none`` twin see the same mixtures epoch by epoch; the trial seed decides initialisation and
    #: batch order). Not part of the dump (or the hashes) while it is 0, the seed teachers always used
    #: (trials of kdlib before the paired design mixed with their own seed)
    seed: int = Field(0, ge=0)
    train: MixConfig = Field(default_factory=MixConfig)
    array: ArrayConfig | None = None
    l3das23: L3DAS23Config | None = None
    valid: PairedConfig | None = Field(None, validate_default=True)
    #: the test set; a list of named sets in the YAML puts the first here (the primary: its scores are also
    #: the plain ``test_*`` metrics, the Pareto axes) and the others in :attr:`extra_tests`
    test: PairedConfig | None = Field(None, validate_default=True)
    #: the test sets after the first of a ``data.test`` list (filled from that list; not a YAML key)
    extra_tests: list[PairedConfig] = Field(default_factory=list)
    #: pre-flight scan of every audio file the sweep reads, before any work starts (DataSource.scan):
    #: "full" reads every sample (NaN/inf, silence), "headers" only rate/channels/length (for very large
    #: corpora, e.g. L3DAS23), "off" none. Not part of the dump (or hashes) while it is "full"
    scan: Literal["full", "headers", "off"] = "full"

    @field_validator("scan", mode="before")
    @classmethod
    def _scan_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("array") is not None and data.get("l3das23") is not None:
            raise ValueError("give either data.array or data.l3das23, not both (each brings its own valid/test sets)")
        return data

    @model_validator(mode="before")
    @classmethod
    def _test_list(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "extra_tests" in data:
            raise ValueError("unknown key data.extra_tests: give several test sets as a list under data.test")
        tests = data.get("test")
        if not isinstance(tests, list):
            return data
        if not tests:
            raise ValueError("data.test: an empty list; give one test set or a list of named ones")
        names = [t.get("name") if isinstance(t, dict) else None for t in tests]
        if any(n is None for n in names):
            raise ValueError(f"data.test: every set of a list needs a name (e.g. name: vb_demand); set "
                             f"{names.index(None) + 1} has none")
        if len(set(names)) < len(names):
            raise ValueError(f"data.test: two sets are named '{next(n for n in names if names.count(n) > 1)}'")
        return {**data, "test": tests[0], "extra_tests": tests[1:]}

    @property
    def test_sets(self) -> list[PairedConfig]:
        """Every test set, the primary (``data.test``) first."""
        return [t for t in (self.test, *self.extra_tests) if t is not None]

    @field_validator("valid", "test")
    @classmethod
    def _paired_or_array(cls, v: PairedConfig | None, info: ValidationInfo) -> PairedConfig | None:
        if any(key not in info.data for key in _OWN_SPLITS):
            return v  # data.array or data.l3das23 itself is invalid: that error is the one reported
        given = [key for key in _OWN_SPLITS if info.data[key] is not None]
        if not given and v is None:
            raise ValueError(f"missing: give a paired corpus {{corpus: ...}} as data.{info.field_name}, "
                             "or a data.array section")
        if given == ["array"] and v is not None and not v.corpus.startswith(ARRAY_CORPUS):
            raise ValueError(f"give either data.array or paired data.{info.field_name}, not both "
                             "(data.array simulates its own valid/test sets)")
        if given == ["l3das23"] and v is not None and not v.corpus.startswith(L3DAS23_CORPUS):
            raise ValueError(f"give either data.l3das23 or paired data.{info.field_name}, not both "
                             "(data.l3das23 reads its own valid/test sets)")
        return v

    @model_validator(mode="after")
    def _disjoint_valid_test(self) -> DataConfig:
        # model selection on validation means nothing when validation holds test material
        if self.array is not None or self.l3das23 is not None:
            if self.extra_tests:
                raise ValueError("data.test: a list of test sets needs paired corpora (data.array and data.l3das23 "
                                 "bring their own single test set)")
            return self
        if self.valid is None:
            return self
        for part in self.test_sets:
            if PurePosixPath(self.valid.corpus) != PurePosixPath(part.corpus):  # "vb/" and "vb" are one folder
                continue
            key = f"data.test '{part.name}'" if part.name else "data.test"
            valid, test = self.valid.speakers, part.speakers
            if valid is None or test is None:
                which = "data.valid" if valid is None else key
                raise ValueError(f"data.valid and {key} both read corpus '{part.corpus}' and {which} takes all of "
                                 "its speakers: give both disjoint speaker lists (e.g. valid [p257], test [p232])")
            shared = sorted(set(valid) & set(test))
            if shared:
                raise ValueError(f"data.valid and {key} share speaker(s) {shared} of corpus '{part.corpus}': "
                                 "validation (model selection) must not see the test speakers")
        return self

    @model_validator(mode="after")
    def _array_splits(self) -> DataConfig:
        # so every reader of data.valid/test (labels, PESQ mode) works alike in every mode
        if self.array is not None:
            mode = "wb" if self.sample_rate == 16000 else "nb"
            self.valid, self.test = (
                PairedConfig(corpus=f"{ARRAY_CORPUS}{name}", speakers=list(split.speakers),
                             max_utterances=split.items, pesq_mode=mode)
                for name, split in (("valid", self.array.valid), ("test", self.array.test)))
        elif self.l3das23 is not None:
            self.valid, self.test = (
                PairedConfig(corpus=f"{L3DAS23_CORPUS}{name}",
                             speakers=None if split.speakers is None else list(split.speakers),
                             max_utterances=split.max_utterances, pesq_mode=self.l3das23.pesq_mode)
                for name, split in (("valid", self.l3das23.valid), ("test", self.l3das23.test)))
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        # a paired-corpus data section dumps (and hashes: config hash, teacher hash) as before the
        # array and l3das23 options existed
        for key in _OWN_SPLITS:
            if isinstance(out, dict) and out.get(key, 0) is None:
                del out[key]
        # ... and as before the scan knob existed, while it keeps its default
        if isinstance(out, dict) and out.get("scan") == "full":
            del out["scan"]
        if isinstance(out, dict) and out.get("seed") == 0:
            del out["seed"]
        # several test sets dump as the list they were given as (which re-validates to the same config)
        if isinstance(out, dict) and "extra_tests" in out:
            extra = out.pop("extra_tests")
            if extra:
                out["test"] = [out["test"], *extra]
        return out
