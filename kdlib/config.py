"""Sweep YAML → validated :class:`SweepConfig`.

Loading refuses, before any work and with one line naming the key: malformed YAML, YAML tags (only
``yaml.safe_load``, so no tag can run code), unknown keys, wrong types and impossible values
(ratios outside (0, 1], empty grids, unknown models or KD methods, KD knobs a method lacks).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from kdlib.errors import ConfigError, KdlibError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelNode(_Strict):
    """A registered model: ``{name, kwargs}``."""

    name: str = "dpdcrn"
    kwargs: dict[str, Any] = Field(default_factory=dict)


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
    """A paired noisy/clean corpus folder (relative to the data root) and which of it to use."""

    corpus: str
    speakers: list[str] | None = None
    max_utterances: int | None = Field(None, ge=1)
    pesq_mode: Literal["auto", "wb", "nb"] = "auto"


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
    cached under ``<output>/arrays/``.
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

    def mixer_kwargs(self) -> dict[str, Any]:
        """The ``ArrayMixer`` geometry/acoustics kwargs (no files, segment length, SNR, count or seed).

        Raises:
            ValueError: the array geometry is impossible (e.g. ``spacing_m`` with a circular layout).
        """
        from kdlib.data.array import compact_array

        return {
            "n_mics": self.n_mics,
            "array": compact_array(self.n_mics, self.radius_m, self.layout, self.spacing_m, self.center_mic),
            "rt60_s": tuple(self.rt60_s), "room_dim_m": tuple(self.room_dim_m),
            "noise_sources": tuple(self.noise_sources), "target": self.target, "early_ms": self.early_ms,
            "snr_reference": self.snr_reference, "max_order": self.max_order,
            "max_rir_seconds": self.max_rir_seconds, "wall_margin_m": self.wall_margin_m,
            "min_source_dist_m": self.min_source_dist_m, "rotate_array": self.rotate_array,
        }

    @model_validator(mode="after")
    def _check(self) -> ArrayConfig:
        shared = sorted(set(self.valid.speakers) & set(self.test.speakers))
        if shared:
            raise ValueError(f"valid and test share speaker(s) {shared}: the sets must be speaker-disjoint")
        if len(set(self.eval_noise)) != len(self.eval_noise):
            raise ValueError("eval_noise lists a file twice")
        from kdlib.data.array import ArrayMixer
        from kdlib.errors import DataError

        # the simulator checks its arguments (room vs margins, reachable RT60) before it reads any file
        try:
            ArrayMixer([], [], segment_seconds=self.eval_segment_seconds, **self.mixer_kwargs())
        except DataError:
            pass  # only the (deliberately) empty file lists were refused
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("ArrayMixer: ").removeprefix("compact_array: ")) from None
        return self


class DataConfig(_Strict):
    """Training mixtures plus held-out valid/test sets: paired corpora (``valid`` + ``test``, mono) or
    a simulated microphone ``array`` (which then fills ``valid``/``test`` with ``array:`` entries)."""

    root: str | None = None
    sample_rate: Literal[8000, 16000] = 16000
    train: MixConfig = Field(default_factory=MixConfig)
    array: ArrayConfig | None = None
    valid: PairedConfig | None = Field(None, validate_default=True)
    test: PairedConfig | None = Field(None, validate_default=True)

    @field_validator("valid", "test")
    @classmethod
    def _paired_or_array(cls, v: PairedConfig | None, info: ValidationInfo) -> PairedConfig | None:
        if "array" not in info.data:
            return v  # data.array itself is invalid: that error is the one reported
        if info.data["array"] is None and v is None:
            raise ValueError(f"missing: give a paired corpus {{corpus: ...}} as data.{info.field_name}, "
                             "or a data.array section")
        if info.data["array"] is not None and v is not None and not v.corpus.startswith(ARRAY_CORPUS):
            raise ValueError(f"give either data.array or paired data.{info.field_name}, not both "
                             "(data.array simulates its own valid/test sets)")
        return v

    @model_validator(mode="after")
    def _array_splits(self) -> DataConfig:
        if self.array is not None:  # so every reader of data.valid/test (labels, PESQ mode) works alike
            mode = "wb" if self.sample_rate == 16000 else "nb"
            self.valid, self.test = (
                PairedConfig(corpus=f"{ARRAY_CORPUS}{name}", speakers=list(split.speakers),
                             max_utterances=split.items, pesq_mode=mode)
                for name, split in (("valid", self.array.valid), ("test", self.array.test)))
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if isinstance(out, dict) and out.get("array", 0) is None:
            del out["array"]  # a paired-corpus data section dumps (and hashes) as before the array option
        return out


class StudentSpec(_Strict):
    """A student family and its unscaled args; the size builder then scales it to each ratio."""

    model: str | None = None  # None = the teacher's family
    kwargs: dict[str, Any] = Field(default_factory=dict)  # same family: overrides of the teacher's args


class TeacherConfig(_Strict):
    """The teacher network and how it is trained (once per sweep, shared by every trial)."""

    model: ModelNode = Field(default_factory=ModelNode)
    checkpoint: str | None = None
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    threads: int = Field(2, ge=1)


class TrainingConfig(_Strict):
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    #: joint: task + λ·KD every epoch; two_step: λ·KD only for ``kd_only_epochs``, then task loss only
    #: (Nathoo et al., arXiv 2309.08144). Searchable as ``search.grid.schedule``.
    schedule: Literal["joint", "two_step"] = "joint"
    kd_only_epochs: int = Field(1, ge=0)
    device: str = "auto"
    #: same-size tolerance of the size builder (±, relative)
    size_tolerance: float = Field(0.10, gt=0, lt=1)


class Distribution(_Strict):
    """One continuous/discrete knob for Optuna: exactly one of the keys."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        set_ = [k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of uniform, loguniform, int, choice")
        lo_hi = self.uniform or self.loguniform or self.int
        if lo_hi is not None and lo_hi[0] >= lo_hi[1]:
            raise ValueError(f"range must be increasing, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self


class SearchConfig(_Strict):
    """Grid over method × student_ratio × seed (× ``kd.<knob>`` lists); Optuna samples the
    continuous knobs (``lr``, ``kd_weight``, ``kd.<knob>``) inside every grid cell."""

    method: list[str] = Field(min_length=1)
    student_ratio: list[float] = Field(min_length=1)
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: named students (from ``students:``); empty = every declared student, or the teacher's family
    student: list[str] = Field(default_factory=list)
    #: named teachers (from ``teachers:``); empty = every declared teacher
    teacher: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    #: named KD-kwarg overrides swept as one grid dimension ``variant`` (ablations: one knob off at a time)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    optuna: dict[str, Distribution] = Field(default_factory=dict)
    repeats: int = Field(1, ge=1)
    #: grid cells to leave out, e.g. ``[{method: subband_kd, student: fullband}]`` (all keys must match)
    exclude: list[dict[str, Any]] = Field(default_factory=list)

    def dims(self) -> dict[str, list[Any]]:
        """Grid dimensions: method, student_ratio, seed, ``grid`` keys, ``variant``, ``student``, ``teacher``."""
        dims = {"method": self.method, "student_ratio": self.student_ratio, "seed": self.seed, **self.grid}
        if self.variants:
            dims["variant"] = list(self.variants)
        if self.student:
            dims["student"] = list(self.student)
        if self.teacher:
            dims["teacher"] = list(self.teacher)
        return dims

    def points(self) -> list[dict[str, Any]]:
        """Every grid cell not excluded, ``repeats`` times, in a deterministic (method-major) order."""
        import itertools

        dims = self.dims()
        cells = [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
        cells = [c for c in cells if not any(all(c.get(k) == v for k, v in ex.items()) for ex in self.exclude)]
        return [dict(c) for c in cells for _ in range(self.repeats)]

    @field_validator("student_ratio")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 1:
                raise ValueError(f"every ratio must be in (0, 1], got {r}")
        return v


class SchedulerConfig(_Strict):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class ResourcesConfig(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, le=1)


class RayConfig(_Strict):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0)


class MLflowConfig(_Strict):
    tracking_uri: str | None = None
    experiment: str | None = None


class SmokeConfig(_Strict):
    """Overrides applied by ``--smoke-test``: a few seconds of everything, same code paths."""

    epochs: int = Field(1, ge=1)
    teacher_epochs: int = Field(1, ge=1)
    segments_per_epoch: int = Field(4, ge=1)
    segment_seconds: float = Field(1.0, gt=0)
    max_utterances: int = Field(2, ge=1)
    seeds: int = Field(1, ge=1)
    #: keep only the first N student ratios (None = all)
    ratios: int | None = Field(None, ge=1)
    #: shrink every teacher to this fraction of its params with the size builder (same family and code
    #: paths, a fraction of the CPU time: for multi-million-parameter backbones); None = full size
    teacher_ratio: float | None = Field(None, gt=0, le=1)


class SweepConfig(_Strict):
    """A whole sweep file (see ``sweeps/quickstart.yaml`` for a commented example)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    #: modules imported before validation and in every trial, to register user models/KD methods
    plugins: list[str] = Field(default_factory=list)
    output_dir: str = "runs"
    data: DataConfig
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    #: named teachers (e.g. one per backbone), swept as the grid dimension ``teacher``; replaces ``teacher``
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    #: named student specs, swept as the grid dimension ``student`` (default: the teacher's family/args)
    students: dict[str, StudentSpec] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)

    # ---- derived values -------------------------------------------------------------------
    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.name

    def output_path(self) -> Path:
        """Absolute output dir: ``KDLIB_OUTPUT`` env, else ``output_dir`` (relative to the CWD)."""
        return Path(os.environ.get("KDLIB_OUTPUT") or self.output_dir).expanduser().resolve()

    def tracking_uri(self) -> str:
        """YAML ``mlflow.tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<output>/mlflow.db``."""
        return (self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{self.output_path() / 'mlflow.db'}")

    def teacher_names(self) -> list[str | None]:
        """The named teachers of ``teachers:``, or ``[None]`` for the single ``teacher:``."""
        return list(self.teachers) if self.teachers else [None]

    def teacher_cfg(self, name: str | None = None) -> TeacherConfig:
        """The named teacher's config (``None``: the single ``teacher:``, or the only named one).

        Raises:
            KeyError: ``name`` is not declared under ``teachers``.
        """
        if name is None:
            if len(self.teachers) > 1:
                raise KeyError(f"this sweep has several teachers ({', '.join(self.teachers)}): name one")
            return next(iter(self.teachers.values())) if self.teachers else self.teacher
        if name not in self.teachers:
            raise KeyError(f"no teacher '{name}' under teachers ({', '.join(self.teachers) or 'none declared'})")
        return self.teachers[name]

    def student_base(self, student: str | None, teacher_args: dict[str, Any],
                     teacher: str | None = None) -> tuple[str, dict[str, Any]]:
        """``(family, unscaled args)`` of a named student (None = the teacher's family and args).

        ``teacher`` names the trial's teacher when the sweep declares ``teachers``.
        """
        teacher_family = self.teacher_cfg(teacher).model.name
        if student is None:
            return teacher_family, dict(teacher_args)
        spec = self.students[student]
        family = spec.model or teacher_family
        if family == teacher_family:
            return family, {**teacher_args, **spec.kwargs}
        return family, dict(spec.kwargs)

    def config_hash(self) -> str:
        """Short hash of the validated config (provenance in MLflow and the report)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def teacher_hash(self, name: str | None = None) -> str:
        """Hash of what determines a teacher, so a changed teacher/data config retrains it."""
        blob = json.dumps(
            {"teacher": self.teacher_cfg(name).model_dump(mode="json", exclude={"checkpoint", "threads"}),
             "data": self.data.model_dump(mode="json", exclude={"root"})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def teacher_path(self, name: str | None = None) -> Path:
        """The teacher's checkpoint: ``checkpoint`` if given, else ``<output>/teachers/<model>-<hash>.pt``."""
        teacher = self.teacher_cfg(name)
        if teacher.checkpoint:
            return Path(teacher.checkpoint).expanduser().resolve()
        # keyed by what trains the teacher, not by sweep name: sweeps sharing a teacher share the file
        return self.output_path() / "teachers" / f"{teacher.model.name}-{self.teacher_hash(name)}.pt"

    def with_smoke(self) -> SweepConfig:
        """A copy with the ``smoke`` overrides applied (name gets a ``-smoke`` suffix)."""
        s = self.smoke
        d = self.model_copy(deep=True)
        d.name = f"{self.name}-smoke"
        if d.mlflow.experiment:
            d.mlflow.experiment = f"{d.mlflow.experiment}-smoke"
        for teacher in (d.teacher_cfg(n) for n in d.teacher_names()):  # the unused default teacher stays as is
            teacher.epochs = s.teacher_epochs
            teacher.batch_size = min(teacher.batch_size, s.segments_per_epoch)
            if s.teacher_ratio is not None and s.teacher_ratio < 1:
                from kdlib.models import build_model, size_student

                full = build_model(teacher.model.name, teacher.model.kwargs).get_model_args()
                teacher.model.kwargs = size_student(teacher.model.name, full, s.teacher_ratio,
                                                    self.training.size_tolerance).model_args
        d.training.batch_size = min(d.training.batch_size, s.segments_per_epoch)
        d.training.epochs = s.epochs
        d.data.train.segments_per_epoch = s.segments_per_epoch
        d.data.train.segment_seconds = s.segment_seconds
        for split in (d.data.valid, d.data.test):
            if split is not None:
                split.max_utterances = min(split.max_utterances or s.max_utterances, s.max_utterances)
        if d.data.array is not None:  # simulated valid/test: max_utterances items, segment_seconds long
            for arr_split in (d.data.array.valid, d.data.array.test):
                arr_split.items = min(arr_split.items, s.max_utterances)
            d.data.array.eval_segment_seconds = min(d.data.array.eval_segment_seconds, s.segment_seconds)
        d.search.seed = d.search.seed[: s.seeds]
        if s.ratios:
            d.search.student_ratio = d.search.student_ratio[: s.ratios]
        d.training.kd_only_epochs = min(d.training.kd_only_epochs, d.training.epochs - 1)
        d.search.repeats = 1
        d.scheduler.grace_period = 1
        return d

    def _check_taps(self) -> None:
        """Build each method on the teacher architecture (CPU, once) so bad taps or kwargs fail now."""
        from kdlib.kd import KD_METHODS
        from kdlib.models import MODELS

        # real models, not meta: methods may probe feature shapes to size their adapters
        teachers: dict[str | None, Any] = {}
        students: dict[tuple[str | None, str | None], Any] = {}
        checked: set[tuple] = set()
        for cell in self.search.points():
            key = (cell["method"], cell.get("student"), cell.get("variant"), cell.get("teacher"))
            if key in checked:
                continue
            checked.add(key)
            name, student_name, variant, teacher_name = key
            node = self.teacher_cfg(teacher_name).model
            if teacher_name not in teachers:
                teachers[teacher_name] = MODELS.get(node.name)(**node.kwargs)
            if (student_name, teacher_name) not in students:
                family, args = self.student_base(student_name, node.kwargs, teacher_name)
                students[student_name, teacher_name] = (MODELS.get(family)(**args) if student_name
                                                        else teachers[teacher_name])
            overrides = self.search.variants.get(variant, {}) if variant else {}
            try:
                KD_METHODS.get(name)(students[student_name, teacher_name], teachers[teacher_name],
                                     **{**self.methods.get(name, {}), **overrides})
            except KdlibError as exc:
                where = "".join(f" ({kind} '{v}')" for kind, v in (("student", student_name),
                                                                   ("teacher", teacher_name)) if v)
                raise ValueError(f"methods.{name}{where}: {exc}") from None

    # ---- cross-field checks ----------------------------------------------------------------
    @model_validator(mode="after")
    def _check_names(self) -> SweepConfig:
        import torch

        from kdlib.kd import KD_METHODS, validate_kd_kwargs
        from kdlib.models import MODELS

        # a default `teacher` next to `teachers` is what model_dump writes (kdlib sweep resume reloads it)
        if self.teachers and "teacher" in self.model_fields_set and self.teacher != TeacherConfig():
            raise ValueError("teacher: give either one teacher or named teachers, not both")
        for name in self.teacher_names():
            where = f"teachers.{name}" if name else "teacher"
            node = self.teacher_cfg(name).model
            if node.name not in MODELS:
                raise ValueError(f"{where}.model.name: unknown model '{node.name}' "
                                 f"(registered: {', '.join(MODELS.names())})")
            try:
                with torch.device("meta"):
                    MODELS.get(node.name)(**node.kwargs)
            except (TypeError, KdlibError) as exc:
                raise ValueError(f"{where}.model.kwargs: {exc}") from None
        unknown = sorted(set(self.search.teacher) - set(self.teachers))
        if unknown:
            raise ValueError(f"search.teacher: {unknown} not declared under teachers "
                             f"({', '.join(self.teachers) or 'none declared'})")
        if self.teachers and not self.search.teacher:
            self.search.teacher = list(self.teachers)
        for ex in self.search.exclude:
            bad = sorted(set(ex) - set(self.search.dims()) - {"student", "teacher"})
            if bad:
                raise ValueError(f"search.exclude: {bad} are not grid dimensions ({', '.join(self.search.dims())})")
        unknown = sorted(set(self.search.student) - set(self.students))
        if unknown:
            raise ValueError(f"search.student: {unknown} not declared under students ({', '.join(self.students)})")
        if self.students and not self.search.student:
            self.search.student = list(self.students)
        for key in self.students:
            for teacher in self.teacher_names():
                family, args = self.student_base(key, self.teacher_cfg(teacher).model.kwargs, teacher)
                if family not in MODELS:
                    raise ValueError(f"students.{key}.model: unknown model '{family}' "
                                     f"(registered: {', '.join(MODELS.names())})")
                try:
                    with torch.device("meta"):
                        MODELS.get(family)(**args)
                except (TypeError, KdlibError) as exc:
                    raise ValueError(f"students.{key}.kwargs: {exc}") from None
        for key in self.methods:
            if key not in KD_METHODS:
                raise ValueError(f"methods.{key}: unknown KD method (registered: {', '.join(KD_METHODS.names())})")
        for m in self.search.method:
            if m not in KD_METHODS:
                raise ValueError(f"search.method: unknown KD method '{m}' "
                                 f"(registered: {', '.join(KD_METHODS.names())})")
        for name, kwargs in self.methods.items():
            try:
                validate_kd_kwargs(name, kwargs)
            except KdlibError as exc:
                raise ValueError(str(exc).replace(f"kd.{name}", f"methods.{name}", 1)) from None
        for variant, overrides in self.search.variants.items():
            for m in self.search.method:
                try:
                    validate_kd_kwargs(m, {**self.methods.get(m, {}), **overrides})
                except KdlibError as exc:
                    raise ValueError(f"search.variants.{variant}: {exc}") from None
        if "schedule" in self.search.grid and not set(self.search.grid["schedule"]) <= {"joint", "two_step"}:
            raise ValueError("search.grid.schedule: values must be joint or two_step")
        if self.training.schedule == "two_step" and self.training.kd_only_epochs >= self.training.epochs:
            raise ValueError("training.kd_only_epochs must be < training.epochs for the two_step schedule")
        tunable = {"lr", "kd_weight", "schedule"}
        for key in [*self.search.grid, *self.search.optuna]:
            where = "search.grid" if key in self.search.grid else "search.optuna"
            if key in tunable:
                continue
            if not key.startswith("kd."):
                raise ValueError(f"{where}.{key}: only lr, kd_weight, schedule and kd.<knob> can be searched")
            knob = key[3:]
            for m in self.search.method:
                if knob not in KD_METHODS.get(m).Config.model_fields:
                    raise ValueError(f"{where}.{key}: KD method '{m}' has no knob '{knob}'")
        if not self.search.points():
            raise ValueError("search.exclude: every grid cell is excluded")
        segments = self.data.train.segments_per_epoch
        for where, batch in [("training.batch_size", self.training.batch_size),
                             *((f"teachers.{n}.batch_size" if n else "teacher.batch_size",
                                self.teacher_cfg(n).batch_size) for n in self.teacher_names())]:
            if batch > segments:
                raise ValueError(f"{where}: {batch} is more than data.train.segments_per_epoch ({segments}): "
                                 "an epoch would have no full batch")
        self._check_taps()  # last: builds models, so only once everything cheap has passed
        return self


def import_plugins(modules: list[str]) -> None:
    """Import user modules that register models or KD methods (``plugins:`` in the YAML).

    Raises:
        ConfigError: a module cannot be imported.
    """
    import importlib

    if not isinstance(modules, list):
        raise ConfigError("plugins: expected a list of module names")
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import '{name}': {exc}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML) to a raw config mapping.

    Raises:
        ConfigError: an override without ``=`` or with an unparsable value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}': expected dotted.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set '{item}': the value is not valid YAML") from None
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return raw


def load_config(path: str | os.PathLike, smoke: bool = False, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep YAML.

    Args:
        path: the YAML file.
        smoke: apply the ``smoke`` overrides (``--smoke-test``).
        overrides: ``dotted.key=value`` items (``--set``), applied before validation.

    Raises:
        ConfigError: missing file, malformed YAML, a YAML tag, or any invalid key — one line.
    """
    from kdlib.validation import validate

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys at the top level")
    apply_overrides(raw, overrides or [])
    import_plugins(raw.get("plugins") or [])
    try:
        cfg = validate(SweepConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg.with_smoke() if smoke else cfg
