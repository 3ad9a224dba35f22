"""The sweep plan: everything derived from a schema-valid sweep, resolved once, by :func:`make_plan`.

A :class:`SweepPlan` holds the absolute paths the environment decides (output folder, tracking URI,
data root: one resolver each, here), the teachers' identities, hashes and checkpoint paths, the data
source, and applies the smoke transform. Its checks build the real models and KD methods on CPU, so
a bad tap, a KD knob value out of range or a teacher that cannot take the array's channels stops the
sweep at ``kdlib sweep validate``, before any work. Imports neither Ray nor MLflow (trials unpickle it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlib.config import (
    KD_KNOB_PREFIX,
    SEARCHABLE,
    SweepConfig,
    TeacherConfig,
    import_plugins,
    load_config,
)
from kdlib.errors import ConfigError, KdlibError
from kdlib.sweep.spec import TrialSpec

if TYPE_CHECKING:
    from kdlib.data.sources import DataSource

#: environment variable that overrides ``output_dir``
OUTPUT_ENV = "KDLIB_OUTPUT"
#: ``output_dir`` when the YAML gives none (the schema's default)
DEFAULT_OUTPUT: str = SweepConfig.model_fields["output_dir"].default
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def resolve_output(output_dir: str | os.PathLike | None = None) -> Path:
    """The absolute output folder: ``$KDLIB_OUTPUT`` > ``output_dir`` > ``runs`` (relative to the CWD)."""
    return Path(os.environ.get(OUTPUT_ENV) or output_dir or DEFAULT_OUTPUT).expanduser().resolve()


def resolve_tracking_uri(uri: str | None = None, output: Path | None = None) -> str:
    """``uri`` (YAML ``mlflow.tracking_uri``) > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<output>/mlflow.db``."""
    return uri or os.environ.get(TRACKING_ENV) or f"sqlite:///{(output or resolve_output()) / 'mlflow.db'}"


def config_hash(cfg: SweepConfig) -> str:
    """Short hash of the validated config (provenance in MLflow and the report)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def teacher_hash(cfg: SweepConfig, name: str | None = None) -> str:
    """Hash of what determines a teacher (its section and the data section, not the data root or the
    pre-flight scan depth), so a changed teacher or data config trains a new one and sweeps that share
    both share the file. The task loss the teacher trains with enters too when its family's default is not
    ``compressed_spectral`` (what every teacher trained with before task losses were named), so a changed
    family default never reuses a teacher trained with another loss."""
    from kdlib.losses import check_task_loss
    from kdlib.models import MODELS

    teacher = cfg.teacher_cfg(name)
    identity = {"teacher": teacher.model_dump(mode="json", exclude={"checkpoint", "threads"}),
                "data": cfg.data.model_dump(mode="json", exclude={"root", "scan"})}
    if teacher.task_loss is None and teacher.model.name in MODELS:
        loss = check_task_loss(MODELS.get(teacher.model.name), None)
        if (loss.name, loss.kwargs) != ("compressed_spectral", {}):
            identity["task_loss"] = {"name": loss.name, "kwargs": loss.kwargs}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def _teacher_key(name: str | None) -> str:
    return f"teachers.{name}" if name else "teacher"


@dataclass(frozen=True)
class TeacherPlan:
    """One teacher of the sweep.

    Attributes:
        name: its ``teachers:`` key, or None for the single ``teacher:``.
        config: its section. hash: :func:`teacher_hash`. path: its checkpoint: ``checkpoint`` if
        given, else ``<output>/teachers/<model>-<hash>.pt``.
    """

    name: str | None
    config: TeacherConfig
    hash: str
    path: Path

    @property
    def key(self) -> str:
        """The name as a dict key of JSON/Ray configs (``""`` for the single teacher)."""
        return self.name or ""

    @property
    def where(self) -> str:
        """Its YAML key, for messages."""
        return _teacher_key(self.name)


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved for running. Build it with :func:`make_plan` / :func:`load_plan`.

    Attributes:
        cfg: the schema (already smoke-transformed when ``smoke``).
        smoke: ``--smoke-test``. output: absolute output folder. tracking_uri: the MLflow store.
        config_hash: :func:`config_hash` of ``cfg``. teachers: by name (None: the single teacher).
        pinned_root: the absolute data root the driver resolved, for trials (None until :meth:`pinned`).
    """

    cfg: SweepConfig
    smoke: bool
    output: Path
    tracking_uri: str
    config_hash: str
    teachers: dict[str | None, TeacherPlan]
    pinned_root: str | None = None

    @property
    def experiment(self) -> str:
        return self.cfg.experiment

    @property
    def name(self) -> str:
        return self.cfg.name

    def teacher(self, name: str | None = None) -> TeacherPlan:
        """The named teacher (None: the single one).

        Raises:
            KeyError: not a teacher of this sweep.
        """
        if name is None and None not in self.teachers and len(self.teachers) == 1:
            return next(iter(self.teachers.values()))
        return self.teachers[name]

    def data_root(self, fallback: str | None = None) -> Path:
        """The absolute data root: the pinned one, else ``data.root`` > ``$KDLIB_DATA`` > ``fallback`` >
        ``../shared/data``.

        Raises:
            DataError: the folder does not exist.
        """
        from kdlib.data.root import ENV_VAR, resolve_data_root

        given = self.pinned_root or self.cfg.data.root or (None if os.environ.get(ENV_VAR) else fallback)
        return resolve_data_root(given)

    def pinned(self, fallback: str | None = None) -> SweepPlan:
        """A copy whose data root is absolute as the driver resolves it now: trials run in their own
        working directories (stack.md G11), where a relative or default root would point nowhere.

        Raises:
            DataError: the data root does not exist.
        """
        return replace(self, pinned_root=str(self.data_root(fallback)))

    def data_source(self) -> DataSource:
        """The sweep's data source (paired mixing, simulated array, L3DAS23) at the resolved root.

        Raises:
            DataError: the data root does not exist.
        """
        from kdlib.data.sources import data_source

        return data_source(self.cfg.data, self.data_root(), self.output)

    def trial_spec(self, config: dict[str, Any]) -> TrialSpec:
        """A Ray Tune trial config as a :class:`TrialSpec`."""
        return TrialSpec.from_trial_config(config, self.cfg)

    @property
    def teacher_cache_dir(self) -> Path:
        """Where the teacher-output cache keeps its entries: ``<output>/teacher_cache``."""
        return self.output / "teacher_cache"

    def cache_data_identity(self) -> dict[str, Any]:
        """What draws the training items, for the teacher cache's key: the ``data`` section without its
        root and scan depth (where the corpus lives does not change the mixtures)."""
        return self.cfg.data.model_dump(mode="json", exclude={"root", "scan"})

    def cache_taps(self, teacher: str | None = None) -> list[str]:
        """Teacher taps read by any KD method of the sweep on this teacher (each method built as the config
        check builds it), so one forward pass per epoch fills the cache for every trial."""
        return teacher_taps(self.cfg, teacher)

    def student_family(self, spec: TrialSpec) -> str:
        """The student's model family of a trial."""
        return self.cfg.student_base(spec.student, self.cfg.teacher_cfg(spec.teacher).model.kwargs, spec.teacher)[0]


# ---- building a plan -------------------------------------------------------------------------------
def make_plan(cfg: SweepConfig, smoke: bool = False, *, transform: bool = True, check: bool = True,
              output: Path | None = None, tracking_uri: str | None = None) -> SweepPlan:
    """Resolve a schema-valid sweep into a plan.

    Args:
        cfg: the validated schema.
        smoke: this is a ``--smoke-test`` run.
        transform: apply the ``smoke`` overrides when ``smoke`` (False when ``cfg`` is already
            transformed, e.g. the config saved by a sweep that ``kdlib sweep resume`` reloads).
        check: run the checks that build models and KD methods (:func:`check_sweep`).
        output / tracking_uri: where a sweep that is already running keeps its outputs and runs
            (``kdlib sweep resume`` passes those of its record); None resolves them from the
            environment (:func:`resolve_output`, :func:`resolve_tracking_uri`).

    Raises:
        ConfigError: one line naming the key.
    """
    if check:
        check_sweep(cfg)
    if smoke and transform:
        cfg = smoke_config(cfg)
    output = output or resolve_output(cfg.output_dir)
    teachers = {}
    for name in cfg.teacher_names():
        teacher = cfg.teacher_cfg(name)
        digest = teacher_hash(cfg, name)
        # keyed by what trains the teacher, not by sweep name: sweeps sharing a teacher share the file
        path = (Path(teacher.checkpoint).expanduser().resolve() if teacher.checkpoint
                else output / "teachers" / f"{teacher.model.name}-{digest}.pt")
        teachers[name] = TeacherPlan(name, teacher, digest, path)
    tracking_uri = tracking_uri or resolve_tracking_uri(cfg.mlflow.tracking_uri, output)
    return SweepPlan(cfg, smoke, output, tracking_uri, config_hash(cfg), teachers)


def load_plan(path: str | os.PathLike, smoke: bool = False, overrides: list[str] | None = None) -> SweepPlan:
    """Read, validate and plan a sweep YAML: what ``kdlib sweep validate`` / ``run`` do first.

    Raises:
        ConfigError: missing file, malformed YAML, a YAML tag, or any invalid key or value: one line
            starting with the file name.
    """
    cfg = load_config(path, overrides=overrides)
    try:
        return make_plan(cfg, smoke)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def plan_from_dump(dump: dict[str, Any], smoke: bool, output: Path | None = None,
                   tracking_uri: str | None = None) -> SweepPlan:
    """The plan of a config dumped by a running sweep (``kdlib sweep resume``): plugins imported,
    schema and checks run again, no second smoke transform; ``output`` and ``tracking_uri`` are the
    sweep's own (from its record), whatever the resuming shell's environment says.

    Raises:
        ConfigError: the dump no longer validates.
    """
    from kdlib.validation import validate

    import_plugins(dump.get("plugins") or [])
    return make_plan(validate(SweepConfig, dump), smoke, transform=False, output=output, tracking_uri=tracking_uri)


# ---- the smoke transform ---------------------------------------------------------------------------
def smoke_config(cfg: SweepConfig) -> SweepConfig:
    """A copy with the ``smoke`` overrides applied (the name gets a ``-smoke`` suffix): a few seconds of
    everything through the same code paths."""
    from kdlib.data.sources import source_class
    from kdlib.models import build_model, size_student

    s = cfg.smoke
    d = cfg.model_copy(deep=True)
    d.name = f"{cfg.name}-smoke"
    if d.mlflow.experiment:
        d.mlflow.experiment = f"{d.mlflow.experiment}-smoke"
    for teacher in (d.teacher_cfg(n) for n in d.teacher_names()):  # the unused default teacher stays as is
        teacher.epochs = s.teacher_epochs
        teacher.batch_size = min(teacher.batch_size, s.segments_per_epoch)
        if s.teacher_ratio is not None and s.teacher_ratio < 1:
            full = build_model(teacher.model.name, teacher.model.kwargs).get_model_args()
            teacher.model.kwargs = size_student(teacher.model.name, full, s.teacher_ratio,
                                                cfg.training.size_tolerance).model_args
    d.training.batch_size = min(d.training.batch_size, s.segments_per_epoch)
    d.training.epochs = s.epochs
    d.data = source_class(d.data).smoke(d.data, s)
    d.search.seed = d.search.seed[: s.seeds]
    if s.ratios:
        d.search.student_ratio = d.search.student_ratio[: s.ratios]
    d.training.kd_only_epochs = min(d.training.kd_only_epochs, d.training.epochs - 1)
    d.search.repeats = 1
    d.scheduler.grace_period = 1
    return d


# ---- checks that build models and KD methods ---------------------------------------------------------
def check_sweep(cfg: SweepConfig) -> None:
    """Every check that needs the registries, a model or the data source's own rules, cheapest first.

    Raises:
        ConfigError: one line naming the key (unknown model, method or task loss, kwargs a model, method or
            task loss does not take, a task loss that cannot train its family, a searched ``kd.<knob>`` value
            the method refuses, a tap that does not exist, a teacher whose channel count differs from the
            data's, an impossible array room).
    """
    try:
        _check_registered(cfg)
        _check_task_losses(cfg)
        _check_search_values(cfg)
        _check_batches(cfg)
        _check_data(cfg)
        _check_taps(cfg)  # last: builds real models
    except ConfigError:
        raise
    except KdlibError as exc:
        raise ConfigError(str(exc)) from None


def _check_model(name_key: str, kwargs_key: str, family: str, kwargs: dict[str, Any]) -> None:
    import torch

    from kdlib.models import MODELS

    if family not in MODELS:
        raise ConfigError(f"{name_key}: unknown model '{family}' (registered: {', '.join(MODELS.names())})")
    try:
        with torch.device("meta"):
            MODELS.get(family)(**kwargs)  # a probe on the meta device, so its TypeError reads as before
    except (TypeError, KdlibError) as exc:
        raise ConfigError(f"{kwargs_key}: {exc}") from None


def _check_registered(cfg: SweepConfig) -> None:
    from kdlib.kd import KD_METHODS, validate_kd_kwargs

    for name in cfg.teacher_names():
        where = _teacher_key(name)
        node = cfg.teacher_cfg(name).model
        _check_model(f"{where}.model.name", f"{where}.model.kwargs", node.name, node.kwargs)
    for key in cfg.students:
        for teacher in cfg.teacher_names():
            family, args = cfg.student_base(key, cfg.teacher_cfg(teacher).model.kwargs, teacher)
            _check_model(f"students.{key}.model", f"students.{key}.kwargs", family, args)
    registered = ", ".join(KD_METHODS.names())
    for key in cfg.methods:
        if key not in KD_METHODS:
            raise ConfigError(f"methods.{key}: unknown KD method (registered: {registered})")
    for m in cfg.search.method:
        if m not in KD_METHODS:
            raise ConfigError(f"search.method: unknown KD method '{m}' (registered: {registered})")
    for name, kwargs in cfg.methods.items():
        try:
            validate_kd_kwargs(name, kwargs)
        except KdlibError as exc:
            raise ConfigError(str(exc).replace(f"kd.{name}", f"methods.{name}", 1)) from None
    # a variant's overrides must suit every method it is crossed with; pairs that `exclude` removes entirely
    # are not crossed (so one sweep can hold e.g. `none`, i2rf_tfckd variants and dfkd variants)
    crossed = {(c["method"], c.get("variant")) for c in cfg.search.cells()} if cfg.search.variants else set()
    for variant, overrides in cfg.search.variants.items():
        for m in cfg.search.method:
            if (m, variant) not in crossed:
                continue
            try:
                validate_kd_kwargs(m, {**cfg.methods.get(m, {}), **overrides})
            except KdlibError as exc:
                raise ConfigError(f"search.variants.{variant}: {exc}") from None


def _check_task_losses(cfg: SweepConfig) -> None:
    """Each teacher's task loss (``teacher.task_loss``, else its family's default) and the students' one
    (``training.task_loss``, else each student family's default) is registered, takes its kwargs and can train
    the family (e.g. ``band_spectral`` needs a model with bands)."""
    from kdlib.losses import check_task_loss
    from kdlib.models import MODELS

    for name in cfg.teacher_names():
        teacher = cfg.teacher_cfg(name)
        check_task_loss(MODELS.get(teacher.model.name), teacher.task_loss, f"{_teacher_key(name)}.task_loss")
        for student in cfg.search.student or [None]:
            family, _ = cfg.student_base(student, teacher.model.kwargs, name)
            check_task_loss(MODELS.get(family), cfg.training.task_loss, "training.task_loss")


def _knob_values(cfg: SweepConfig, key: str) -> tuple[str, list[Any]]:
    """``(YAML location, values to try)`` of a searched key: the grid list, an Optuna choice list, or
    both ends of an Optuna range."""
    if key in cfg.search.grid:
        return f"search.grid.{key}", list(cfg.search.grid[key])
    d = cfg.search.optuna[key]
    values = d.choice if d.choice is not None else list(d.uniform or d.loguniform or d.int or ())
    return f"search.optuna.{key}", list(values)


def _check_search_values(cfg: SweepConfig) -> None:
    """Every searched ``kd.<knob>`` exists on every searched method and every value passes the
    method's own Config, with the method's YAML kwargs around it."""
    from kdlib.kd import KD_METHODS, validate_kd_kwargs

    for key in [*cfg.search.grid, *cfg.search.optuna]:
        if key in SEARCHABLE:
            continue
        knob = key[len(KD_KNOB_PREFIX):]
        where, values = _knob_values(cfg, key)
        for m in cfg.search.method:
            if knob not in KD_METHODS.get(m).Config.model_fields:
                raise ConfigError(f"{where}: KD method '{m}' has no knob '{knob}'")
            for value in values:
                try:
                    validate_kd_kwargs(m, {**cfg.methods.get(m, {}), knob: value})
                except KdlibError as exc:
                    raise ConfigError(f"{where}: value {value!r} refused by KD method '{m}': "
                                      f"{str(exc).removeprefix(f'kd.{m}.')}") from None


def _check_batches(cfg: SweepConfig) -> None:
    """Every batch size (students and teachers) fits in one epoch's segments, and the students' is at least
    what each searched KD method needs (:meth:`KDMethod.min_batch_size`)."""
    segments = cfg.data.train.segments_per_epoch
    for where, batch in [("training.batch_size", cfg.training.batch_size),
                         *((f"{_teacher_key(n)}.batch_size",
                            cfg.teacher_cfg(n).batch_size) for n in cfg.teacher_names())]:
        if batch > segments:
            raise ConfigError(f"{where}: {batch} is more than data.train.segments_per_epoch ({segments}): "
                              "an epoch would have no full batch")
    # a KD loss that compares the items of a batch (i2rf_tfckd's batch stream) needs more than one
    from kdlib.kd import KD_METHODS, validate_kd_kwargs

    crossed = {(c["method"], c.get("variant")) for c in cfg.search.cells()}
    for method, variant in sorted(crossed, key=str):
        kwargs = {**cfg.methods.get(method, {}), **(cfg.search.variants.get(variant, {}) if variant else {})}
        need = KD_METHODS.get(method).min_batch_size(validate_kd_kwargs(method, kwargs))
        if cfg.training.batch_size < need:
            raise ConfigError(f"training.batch_size: {cfg.training.batch_size} is too small for KD method "
                              f"'{method}'" + (f" (variant '{variant}')" if variant else "") +
                              f", which compares the items of a batch: it needs >= {need}")


def _check_data(cfg: SweepConfig) -> None:
    """The data source's own rules (e.g. an array room too small for its margins) and every teacher's
    input channel count against the data's."""
    import torch

    from kdlib.data.sources import data_source
    from kdlib.models import MODELS

    source = data_source(cfg.data, None, resolve_output(cfg.output_dir))  # resolves and reads nothing yet
    source.check()
    channels = source.input_channels
    for name in cfg.teacher_names():
        node = cfg.teacher_cfg(name).model
        with torch.device("meta"):
            takes = getattr(MODELS.build(node.name, node.kwargs), "n_channels", 1)
        if takes != channels:
            where = _teacher_key(name)
            given = getattr(source, "channels_key", None)
            given = f"{given} is {channels}" if given else f"the {source.name} data has {channels}"
            raise ConfigError(f"{where}.model: '{node.name}' takes {takes} input channel(s) but {given}: "
                              f"set its n_channels to {channels}")


def teacher_kd_methods(cfg: SweepConfig, teacher: str | None = None) -> list[Any]:
    """One built KD method per searched (method, student, variant) that reads the named teacher (None: the
    single one), at the YAML values of the methods' knobs, each on the untrained teacher and the student
    family's unscaled model (as the config check builds them): what the teacher-output cache is filled for.

    Raises:
        KdlibError: a method cannot be built (the config check refuses such sweeps first).
    """
    from kdlib.kd import build_kd_method
    from kdlib.models import build_model

    node = cfg.teacher_cfg(teacher).model
    teacher_model = build_model(node.name, node.kwargs)
    students: dict[str | None, Any] = {}
    methods = []
    seen: set[tuple] = set()
    for cell in cfg.search.points():
        key = (cell["method"], cell.get("student"), cell.get("variant"))
        if cell.get("teacher") not in (None, teacher) or key in seen:
            continue
        seen.add(key)
        name, student_name, variant = key
        if student_name not in students:
            family, args = cfg.student_base(student_name, node.kwargs, teacher)
            students[student_name] = build_model(family, args) if student_name else teacher_model
        overrides = cfg.search.variants.get(variant, {}) if variant else {}
        kd = build_kd_method(name, students[student_name], teacher_model, {**cfg.methods.get(name, {}), **overrides})
        if kd.needs_teacher:
            methods.append(kd)
    return methods


def teacher_taps(cfg: SweepConfig, teacher: str | None = None) -> list[str]:
    """The union, in first-seen order, of the teacher taps of :func:`teacher_kd_methods`."""
    return list(dict.fromkeys(t for kd in teacher_kd_methods(cfg, teacher) for t in kd.teacher_taps()))


def _check_taps(cfg: SweepConfig) -> None:
    """Build each method on each (teacher, student) pair (CPU, once) so bad taps or kwargs fail now."""
    from kdlib.kd import build_kd_method
    from kdlib.models import build_model

    # real models, not meta: methods may probe feature shapes to size their adapters
    teachers: dict[str | None, Any] = {}
    students: dict[tuple[str | None, str | None], Any] = {}
    checked: set[tuple] = set()
    for cell in cfg.search.points():
        key = (cell["method"], cell.get("student"), cell.get("variant"), cell.get("teacher"))
        if key in checked:
            continue
        checked.add(key)
        name, student_name, variant, teacher_name = key
        node = cfg.teacher_cfg(teacher_name).model
        if teacher_name not in teachers:
            teachers[teacher_name] = build_model(node.name, node.kwargs)
        if (student_name, teacher_name) not in students:
            family, args = cfg.student_base(student_name, node.kwargs, teacher_name)
            students[student_name, teacher_name] = (build_model(family, args) if student_name
                                                    else teachers[teacher_name])
        overrides = cfg.search.variants.get(variant, {}) if variant else {}
        try:
            build_kd_method(name, students[student_name, teacher_name], teachers[teacher_name],
                            {**cfg.methods.get(name, {}), **overrides})
        except KdlibError as exc:
            where = "".join(f" ({kind} '{v}')" for kind, v in (("student", student_name),
                                                               ("teacher", teacher_name)) if v)
            raise ConfigError(f"methods.{name}{where}: {exc}") from None
