"""The sweep schema: pure pydantic models of a sweep YAML (no torch, no models, KD methods or data).

Validation here refuses, with one line naming the key: unknown keys, wrong types, impossible values
(ratios outside (0, 1], empty grids, reversed ranges) and cross-field contradictions that need no
model. Checks that build models, KD methods or read data are the plan's (:mod:`kdlib.sweep.plan`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdlib.config.base import Strict as _Strict
from kdlib.config.data import DataConfig
from kdlib.validation import short_reprlib


class ModelNode(_Strict):
    """A registered model: ``{name, kwargs}``."""

    name: str = "dpcrn_lite"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TaskLossNode(_Strict):
    """A registered task loss, ``{name, kwargs}`` (``kdlib/losses.py``; a bare name is taken too). Replaces
    the model family's default (its ``task_loss``) whole. The plan checks the name and kwargs against the
    registry and the family (:func:`kdlib.losses.check_task_loss`), since the losses live beside torch."""

    name: str = Field(min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


def _drop_unset_task_loss(out: Any) -> Any:
    # no `task_loss` key when it is the family default: configs (and their hashes) read as before the key existed
    if isinstance(out, dict) and out.get("task_loss", 0) is None:
        del out["task_loss"]
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
    #: the teacher's task loss; None = its family's default (the model's ``task_loss``)
    task_loss: TaskLossNode | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_task_loss(handler(self))


#: what ``training.device`` (and ``kdlib eval --device``) accept
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


#: a fixed λ: a finite number >= 0
_KD_WEIGHT = TypeAdapter(Annotated[float, Field(ge=0)], config=ConfigDict(allow_inf_nan=False))


class TrainingConfig(_Strict):
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    #: λ on the KD loss, or "auto": per trial, λ = kd_balance · ‖∇task‖ / ‖∇KD‖ measured on the student at
    #: initialisation over the first kd_calibration_batches batches (balanced KD weights across methods)
    kd_weight: float | str = 1.0
    kd_balance: float = Field(1.0, gt=0)
    kd_calibration_batches: int = Field(2, ge=1, le=64)
    grad_clip: float = Field(5.0, gt=0)
    #: joint: task + λ·KD every epoch; two_step: λ·KD only for ``kd_only_epochs``, then task loss only
    #: (Nathoo et al., arXiv 2309.08144). Searchable as ``search.grid.schedule``.
    schedule: Literal["joint", "two_step"] = "joint"
    kd_only_epochs: int = Field(1, ge=0)
    #: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: same-size tolerance of the size builder (±, relative)
    size_tolerance: float = Field(0.10, gt=0, lt=1)
    #: DataLoader workers mixing the training items off the training thread; null = the trial's CPUs − 1
    #: (resources.cpu), so a 1-CPU trial mixes in its own thread
    num_workers: int | None = Field(None, ge=0, le=64)
    #: fp32, or bf16 autocast for forward passes and losses (for CUDA GPUs; STFTs stay float32)
    precision: Literal["fp32", "bf16"] = "fp32"
    #: the students' task loss ``{name, kwargs}``; None = each student family's default (the model's ``task_loss``)
    task_loss: TaskLossNode | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_task_loss(handler(self))

    @field_validator("kd_weight", mode="before")
    @classmethod
    def _kd_weight(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            return _KD_WEIGHT.validate_python(v)
        except ValidationError as exc:  # pydantic's own message, as for any other number
            err = exc.errors(include_url=False)[0]
            raise PydanticCustomError(err["type"], err["msg"]) from None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, v):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return v


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


_DEFAULT_MAX_TRIALS = 10_000
#: most (grid cell, exclusion key set) pairs :meth:`SearchConfig.cells` compares
_MAX_EXCLUDE_CHECKS = 10_000_000


def _frozen(value: Any) -> Any:
    """A hashable stand-in of a YAML value that is equal exactly when the values are equal (lists →
    tuples, mappings → frozensets; a NaN never equals anything, so it gets an object of its own)."""
    if isinstance(value, float) and value != value:
        return object()
    if isinstance(value, list | tuple):
        return ("[]", tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("{}", frozenset((_frozen(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, set):
        return ("set", frozenset(_frozen(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


class SearchConfig(_Strict):
    """Grid over method × student_ratio × seed (× ``kd.<knob>`` lists); Optuna samples the
    continuous knobs (``lr``, ``kd_weight``, ``kd.<knob>``) inside every grid cell."""

    method: list[str] = Field(min_length=1)
    student_ratio: list[float] = Field(min_length=1)
    seed: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    #: named students (from ``students:``); empty = every declared student, or the teacher's family
    student: list[str] = Field(default_factory=list)
    #: named teachers (from ``teachers:``); empty = every declared teacher
    teacher: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    #: named KD-kwarg overrides swept as one grid dimension ``variant`` (ablations: one knob off at a time)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    optuna: dict[str, Distribution] = Field(default_factory=dict)
    repeats: int = Field(1, ge=1)
    #: most trials a sweep may have (grid cells × repeats, before exclusions); raise it for a bigger sweep
    max_trials: int = Field(_DEFAULT_MAX_TRIALS, ge=1)
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

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        # the default limit dumps (and hashes: config hash) as before the key existed
        if isinstance(out, dict) and out.get("max_trials") == _DEFAULT_MAX_TRIALS:
            del out["max_trials"]
        return out

    def trial_bound(self) -> int:
        """Grid cells × ``repeats``, before exclusions: an upper bound of the trial count, computed
        without building a point."""
        return math.prod(len(v) for v in self.dims().values()) * self.repeats

    def check_size(self) -> None:
        """Refuse a sweep of more than ``max_trials`` trials (arithmetically, before any point is built).

        Raises:
            ValueError: one line naming ``search.max_trials``.
        """
        bound = self.trial_bound()
        if bound > self.max_trials:
            dims = " × ".join(f"{k} {len(v)}" for k, v in self.dims().items())
            raise ValueError(f"search.max_trials: the sweep has up to {_count(bound)} trials "
                             f"({dims} × repeats {_count(self.repeats)}), "
                             f"more than search.max_trials ({self.max_trials}): shrink the search or raise "
                             "search.max_trials")

    def cells(self) -> list[dict[str, Any]]:
        """Every grid cell not excluded, once, in a deterministic (method-major) order.

        A cell is excluded when it matches every key of an ``exclude`` rule. Rules are grouped by their
        keys and looked up by value, so the cost is cells × distinct key sets, not cells × rules.

        Raises:
            ValueError: more than ``max_trials`` trials, or too many exclusion key sets to check.
        """
        import itertools

        self.check_size()
        dims = self.dims()
        groups: dict[tuple[str, ...], set[Any]] = {}
        for ex in self.exclude:
            keys = tuple(sorted(ex))
            groups.setdefault(keys, set()).add(tuple(_frozen(ex[k]) for k in keys))
        n_cells = math.prod(len(v) for v in dims.values())
        if n_cells * len(groups) > _MAX_EXCLUDE_CHECKS:
            raise ValueError(f"search.exclude: {len(groups)} different key sets × {n_cells} grid cells are too many "
                             f"to check (at most {_MAX_EXCLUDE_CHECKS}): use fewer key combinations")
        cells = [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
        return [c for c in cells
                if not any(tuple(_frozen(c.get(k)) for k in keys) in rules for keys, rules in groups.items())]

    def points(self) -> list[dict[str, Any]]:
        """Every grid cell not excluded, ``repeats`` times, in a deterministic (method-major) order.

        Raises:
            ValueError: more than ``max_trials`` trials (see :meth:`check_size`).
        """
        return [dict(c) for c in self.cells() for _ in range(self.repeats)]

    @field_validator("student_ratio")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 1:
                raise ValueError(f"every ratio must be in (0, 1], got {r}")
        return v


class TeacherCacheConfig(_Strict):
    """The teacher-output cache (:mod:`kdlib.train.teacher_cache`): ``teacher_cache: off`` runs the teacher at
    every KD step as before; ``{max_gb: N}`` caps its size on disk (checked on an estimate before any
    trial starts)."""

    enabled: bool = True
    max_gb: float = Field(20.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML reads `off` / `on` as booleans; the strings are accepted too
        if isinstance(v, bool) or v in ("off", "on"):
            return {"enabled": v in (True, "on")}
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
    #: seconds to wait for a Ray cluster at ``address`` (Ray itself retries for minutes)
    connect_timeout_s: float = Field(15.0, gt=0, le=3600)
    #: refuse a sweep whose per-trial resources exceed the cluster's totals right after connecting;
    #: false for an autoscaling cluster that adds the nodes once trials are queued
    check_resources: bool = True


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
    #: teacher outputs and taps computed once per (teacher, data, epoch) for every KD trial; ``off`` disables
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)

    # ---- pure accessors (what is derived from the environment or needs models lives in the plan) ----
    @property
    def experiment(self) -> str:
        """The MLflow experiment: ``mlflow.experiment``, else the sweep's ``name``."""
        return self.mlflow.experiment or self.name

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

    # ---- cross-field checks that need no model, KD method or audio ---------------------------
    @model_validator(mode="after")
    def _check_names(self) -> SweepConfig:
        # a default `teacher` next to `teachers` is what model_dump writes (kdlib sweep resume reloads it)
        if self.teachers and "teacher" in self.model_fields_set and self.teacher != TeacherConfig():
            raise ValueError("teacher: give either one teacher or named teachers, not both")
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
        if "schedule" in self.search.grid and not set(self.search.grid["schedule"]) <= {"joint", "two_step"}:
            raise ValueError("search.grid.schedule: values must be joint or two_step")
        if self.training.schedule == "two_step" and self.training.kd_only_epochs >= self.training.epochs:
            raise ValueError("training.kd_only_epochs must be < training.epochs for the two_step schedule")
        for key in [*self.search.grid, *self.search.optuna]:
            if key not in SEARCHABLE and not key.startswith(KD_KNOB_PREFIX):
                where = "search.grid" if key in self.search.grid else "search.optuna"
                raise ValueError(f"{where}.{key}: only lr, kd_weight, schedule and kd.<knob> can be searched")
        _check_searched_floats(self.search)
        self.search.check_size()
        if not self.search.cells():
            raise ValueError("search.exclude: every grid cell is excluded")
        return self


def _check_searched_floats(search: SearchConfig) -> None:
    """Searched ``lr`` / ``kd_weight`` values (grid lists, Optuna choices and range ends) pass the
    constraints of ``training.lr`` / ``training.kd_weight`` (finite, > 0 / >= 0)."""
    for key in ("lr", "kd_weight"):
        where, values = None, []
        if key in search.grid:
            where, values = f"search.grid.{key}", search.grid[key]
        elif key in search.optuna:
            d = search.optuna[key]
            where = f"search.optuna.{key}"
            values = d.choice if d.choice is not None else list(d.uniform or d.loguniform or d.int or ())
        if where is None:
            continue
        for value in values:
            try:
                TrainingConfig.model_validate({key: value})
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                raise ValueError(f"{where}: {err['msg']} (got {_short(value)})") from None


def _count(n: int) -> str:
    """``n``, or its order of magnitude when it is too long to print (``str`` refuses 4300+ digits)."""
    if n.bit_length() > 13_000:
        return f"~10^{int(n.bit_length() * math.log10(2))}"
    text = str(n)
    return text if len(text) <= 20 else f"~10^{len(text) - 1}"


def _short(value: Any) -> str:
    return short_reprlib(40).repr(value)


#: searchable keys besides ``kd.<knob>``
SEARCHABLE = ("lr", "kd_weight", "schedule")
#: prefix of a KD method knob in ``search.grid`` / ``search.optuna`` (``kd.tau``)
KD_KNOB_PREFIX = "kd."
