"""MLflow tracking of a sweep: one parent run, one nested child run per trial (and the teacher).

A driver-side Ray Tune ``LoggerCallback`` (so SQLite has a single writer), written for kdlib rather
than Ray's ``MLflowLoggerCallback`` because users need nested runs (ray-project/ray#19978), a
curated param set, and no duplicate run when a trial restarts.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

from kdlib.config import KD_KNOB_PREFIX
from kdlib.errors import KdlibError, first_line
from kdlib.metrics import write_score_rows
from kdlib.sweep.contract import (
    CHECKPOINT,
    EPOCH_METRIC,
    NOISY_SCORES_FILE,
    PARENT,
    ROLE,
    ROLE_SWEEP,
    ROLE_TEACHER,
    ROLE_TRIAL,
    SMOKE_TEST,
    STUDENT_FILE,
    TEACHER_METHOD,
    TEST_SCORES_FILE,
    TRIAL_ID,
    key_metrics,
    set_label,
)
from kdlib.sweep.plan import SweepPlan

#: MLflow's experiment-kind tag: a model-training experiment opens in the UI's runs view, not its GenAI mode
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

# Ray bookkeeping keys that are not model metrics
_SKIP = {"timestamp", "pid", "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
         "training_iteration", "done", "checkpoint_dir_name", "should_checkpoint", "epoch"}


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@contextmanager
def _fail_fast_http() -> Iterator[None]:
    """No retries and a 10 s timeout for the reachability probe: MLflow's defaults retry a refused
    connection for minutes (measured: 246 s) before the user hears about a wrong URI."""
    probe = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in probe}
    os.environ.update(probe)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def check_sqlite_store(uri: str, path: Path) -> None:
    """One line for an SQLite store that cannot be a writable file (MLflow would retry for ~100 s).
    Creates nothing: a missing store is probed in the nearest folder that exists.

    Raises:
        KdlibError: the path is a directory, lies below a regular file, or cannot be written.
    """
    try:
        if path.is_dir():
            raise KdlibError(f"MLflow tracking store '{uri}': '{path}' is a directory, not an SQLite file; "
                             f"name a file in it, e.g. sqlite:///{path / 'mlflow.db'}")
        if path.exists():
            with path.open("r+b"):
                pass
            return
        probe = path.parent
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise KdlibError(f"MLflow tracking store '{uri}' cannot be created: '{probe}' is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kdlib-probe-"):
            pass
    except OSError as exc:
        raise KdlibError(f"MLflow tracking store '{uri}' cannot be written: {exc.strerror or exc} "
                         f"('{exc.filename or path}'); choose a writable place with mlflow.tracking_uri or "
                         "$MLFLOW_TRACKING_URI") from None


def check_experiment(client, uri: str, experiment: str) -> None:
    """Refuse a sweep whose MLflow experiment name belongs to a deleted experiment (MLflow keeps the name).

    Raises:
        KdlibError: one line saying how to restore it or pick another name.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise KdlibError(f"MLflow experiment '{experiment}' is deleted in {uri}: restore it "
                         "(mlflow experiments restore) or set mlflow.experiment to a new name")


@contextmanager
def store_lock(uri: str, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold a file lock next to an SQLite store (``<db>.lock``) while it is created or migrated and while
    an experiment is looked up or created: two sweeps starting together on a fresh store otherwise race
    in MLflow's table creation (``table experiments already exists``) or in ``create_experiment``.
    No lock for other stores (a tracking server serialises its own writes).

    Raises:
        KdlibError: the lock is not free within ``timeout_s`` seconds.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{path}.lock", timeout=timeout_s):
            yield
    except Timeout:
        raise KdlibError(f"MLflow tracking store '{uri}': another process has held '{path}.lock' for more than "
                         f"{timeout_s:g} s (a sweep starting on the same store, or a stuck one: "
                         f"see `fuser {path}.lock`)") from None


def client_for(uri: str, *, create: bool = True):
    """An ``MlflowClient`` for a tracking URI, checked to answer before any work. With ``create`` an
    SQLite store is checked to be a writable file first and created under :func:`store_lock`; without
    it (reading runs: ``kdlib eval runs:/...``) a missing SQLite file is refused and nothing is written,
    so a read-only or archived store can be read.

    Raises:
        KdlibError: the tracking server or store cannot be reached, created or written (or, without
            ``create``, the SQLite file does not exist).
    """
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is not None and create:
        check_sqlite_store(uri, path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KdlibError(f"MLflow tracking store '{uri}' cannot be written: {exc.strerror or exc} "
                             f"('{exc.filename or path.parent}')") from None
    elif path is not None and not path.is_file():
        raise KdlibError(f"no MLflow store at '{uri}' ('{path}' does not exist): give --tracking-uri, or set "
                         "$MLFLOW_TRACKING_URI / $KDLIB_OUTPUT to the sweep's")
    try:
        # the client's store is built (an SQLite store created and migrated) in its constructor: lock both.
        # A client, not mlflow.set_tracking_uri: that also writes MLFLOW_TRACKING_URI into os.environ,
        # which would silently redirect every later sweep of this process to this store
        with _fail_fast_http(), store_lock(uri) if create else nullcontext():
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except KdlibError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"
        raise KdlibError(f"MLflow tracking store '{uri}' is unreachable: {first_line(exc)}") from None
    return client


def experiment_id(client, plan: SweepPlan) -> str:
    """Get or create the sweep's experiment with an explicit artifact location (never the CWD), under
    :func:`store_lock`; a concurrent sweep that created it first is found, not an error.

    Raises:
        KdlibError: the experiment is deleted (MLflow keeps its name), or MLflow refuses.
    """
    from mlflow.exceptions import MlflowException

    with store_lock(plan.tracking_uri):
        check_experiment(client, plan.tracking_uri, plan.experiment)
        exp = client.get_experiment_by_name(plan.experiment)
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return exp.experiment_id
        try:
            # a local store keeps its artifacts next to it (never in the CWD); a tracking server chooses its own
            # artifact store, so models logged to it reach every machine that reads the server
            local = plan.tracking_uri.startswith(("sqlite:", "file:", "/"))
            return client.create_experiment(
                plan.experiment, artifact_location=(plan.output / "mlartifacts").as_uri() if local else None,
                tags={EXPERIMENT_KIND: MODEL_TRAINING})
        except MlflowException as exc:
            exp = client.get_experiment_by_name(plan.experiment)  # created meanwhile by another store client
            if exp is not None:
                return exp.experiment_id
            raise KdlibError(f"MLflow cannot create experiment '{plan.experiment}': {first_line(exc)}") from None


def _log_dict(client, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
              step: int = 0) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    ms = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
          if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))]
    # log_batch takes at most 100 params and 1000 entries per call
    for i in range(0, len(ps), 100):
        client.log_batch(run_id, params=ps[i:i + 100])
    for i in range(0, len(ms), 900):
        client.log_batch(run_id, metrics=ms[i:i + 900])


def start_parent_run(client, plan: SweepPlan, exp_id: str, pesq_mode: str,
                     pesq_modes: dict[str, str] | None = None) -> str:
    """Create the sweep's parent run; returns its run_id. ``pesq_modes``: the PESQ mode of each named test
    set (params ``pesq_mode.<name>``, beside ``test_set.<name>``)."""
    from kdlib.report.provenance import library_versions

    cfg = plan.cfg
    run = client.create_run(exp_id, run_name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={ROLE: ROLE_SWEEP, SMOKE_TEST: str(plan.smoke)})
    _log_dict(client, run.info.run_id, params={
        "config_hash": plan.config_hash, "git_commit": git_commit(), "sample_rate": cfg.data.sample_rate,
        "data_seed": cfg.data.seed,
        "pesq_mode": pesq_mode, "test_set": set_label(cfg.data.test),
        **({"test_sets": ",".join(str(t.name) for t in cfg.data.test_sets)} if cfg.data.test.name else {}),
        **{f"test_set.{t.name}": set_label(t) for t in cfg.data.test_sets if t.name},
        **{f"pesq_mode.{name}": mode for name, mode in (pesq_modes or {}).items()},
        **{f"version.{name}": v for name, v in library_versions().items()},
        "valid_set": f"{cfg.data.valid.corpus}:{','.join(cfg.data.valid.speakers or ['all'])}",
        "teacher_model": ",".join(cfg.teacher_cfg(t).model.name for t in cfg.teacher_names()),
        "epochs": cfg.training.epochs,
        "methods": ",".join(cfg.search.method), "student_ratios": ",".join(map(str, cfg.search.student_ratio)),
    })
    return run.info.run_id


def log_teacher_run(client, plan: SweepPlan, exp_id: str, parent_id: str, meta: dict[str, Any],
                    teacher_path: Path, name: str | None = None) -> str:
    """Child run for a teacher (``name``: its ``teachers:`` key): its figures and the noisy input's
    scores as reference points."""
    cfg = plan.cfg
    run = client.create_run(exp_id, run_name=f"teacher-{name}" if name else "teacher",
                            tags={ROLE: ROLE_TEACHER, PARENT: parent_id, CHECKPOINT: str(teacher_path)})
    try:
        log_model_artifact(client, run.info.run_id, teacher_path)
        with tempfile.TemporaryDirectory() as folder:
            # teachers trained before several test sets kept two row lists; before that, none
            files = meta.get("score_files") or {file: meta[key] for key, file in (
                ("test_scores", TEST_SCORES_FILE), ("noisy_scores", NOISY_SCORES_FILE)) if meta.get(key)}
            for file, rows in files.items():
                client.log_artifact(run.info.run_id, str(write_score_rows(Path(folder) / file, rows)))
    except Exception as exc:  # noqa: BLE001 - the teacher file under the output folder stays the reference
        print(f"[sweep] warning: could not log the teacher checkpoint to MLflow ({type(exc).__name__}: "
              f"{first_line(exc)}); its tag points at {teacher_path}", flush=True)
    metrics = {k: v for k, v in meta.items() if isinstance(v, int | float) and not isinstance(v, bool)
               and k != "epochs"}
    metrics["params_pct"] = 100.0
    metrics.update(key_metrics(metrics))
    _log_dict(client, run.info.run_id, params={
        "method": TEACHER_METHOD, "student_ratio": 1.0, "model": cfg.teacher_cfg(name).model.name,
        **({"teacher": name} if name else {}),
        "sample_rate": meta.get("sample_rate"), "pesq_mode": meta.get("pesq_mode"),
        **({"task_loss": meta["task_loss"]} if meta.get("task_loss") else {}),  # teachers trained before: none
        "config_hash": plan.config_hash, "teacher_hash": meta.get("teacher_hash"), "epochs": meta.get("epochs"),
    }, metrics=metrics)
    for i, h in enumerate(meta.get("history", [])):
        _log_dict(client, run.info.run_id, metrics={EPOCH_METRIC: h[EPOCH_METRIC], "train_loss": h["train_loss"]},
                  step=i + 1)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def artifact_location(run, name: str) -> str:
    """Where artifact ``name`` of ``run`` lives: a local path for a ``file:`` artifact store, else its URI."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    uri = f"{run.info.artifact_uri.rstrip('/')}/{name}"
    return url2pathname(urlparse(uri).path) if uri.startswith("file:") else uri


def log_model_artifact(client, run_id: str, path: str | Path) -> str:
    """Log a checkpoint file as an artifact of ``run_id`` (same file name) and point the run's
    ``kdlib.checkpoint`` tag at the durable copy; returns that location."""
    client.log_artifact(run_id, str(path))
    location = artifact_location(client.get_run(run_id), Path(path).name)
    client.set_tag(run_id, CHECKPOINT, location)
    return location


def log_student(client, run_id: str, trial) -> str | None:
    """Log the best-validation student of a finished trial and its per-utterance test scores
    (``test_scores.csv``) as MLflow artifacts of its run, so the model outlives Ray's session folder and
    sits in the experiment's artifact store; returns its location.

    The student rides in the trial's final Ray Tune checkpoint (``student.pt``, written by the last
    epoch); a trial finished by an older kdlib left it in its trial folder instead. A trial stopped early
    by the scheduler (ASHA) has neither, and gets no artifact. An upload that fails (disk full, artifact
    store refusing) never stops the sweep: one warning line, and the tag points at the checkpoint in
    Ray's storage instead.
    """
    checkpoint = getattr(trial, "checkpoint", None)
    try:
        with checkpoint.as_directory() if checkpoint is not None else nullcontext(None) as folder:
            found = [Path(folder) / STUDENT_FILE] if folder else []
            found.append(Path(getattr(trial, "local_path", None) or getattr(trial, "path", None) or "") / STUDENT_FILE)
            student = next((f for f in found if f.is_file()), None)
            if student is None:
                return None
            try:
                for scores in sorted(student.parent.glob(f"{Path(TEST_SCORES_FILE).stem}*.csv")):
                    client.log_artifact(run_id, str(scores))
                return log_model_artifact(client, run_id, student)
            except Exception as exc:  # noqa: BLE001 - MLflow/artifact-store/OS errors must not end the sweep
                fallback = (f"{str(checkpoint.path).rstrip('/')}/{STUDENT_FILE}"
                            if checkpoint is not None and folder and student.parent == Path(folder) else str(student))
                print(f"[sweep] warning: could not log {student.name} of run {run_id} to MLflow "
                      f"({type(exc).__name__}: {first_line(exc)}); its tag points at {fallback}", flush=True)
                client.set_tag(run_id, CHECKPOINT, fallback)
                return fallback
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint in remote storage
        print(f"[sweep] warning: could not read the final checkpoint of run {run_id} "
              f"({type(exc).__name__}: {first_line(exc)})", flush=True)
        return None


def _task_loss(plan: SweepPlan, spec) -> str:
    """The label of the task loss a trial's student trains with (``training.task_loss``, else its family's)."""
    from kdlib.losses import check_task_loss
    from kdlib.models import MODELS

    return check_task_loss(MODELS.get(plan.student_family(spec)), plan.cfg.training.task_loss).label()


class MLflowTrialLogger(LoggerCallback):
    """Ray Tune callback: a nested MLflow child run per trial under ``parent_run_id``.

    Params: method, student_ratio, seed (initialisation and batch order), data_seed (the training
    mixtures, shared by every trial), lr, kd_weight, every ``kd.<knob>``, model, task_loss, sample_rate, pesq_mode,
    config_hash, git_commit. Metrics: every numeric result per epoch (step = epoch),
    so ``params`` and ``macs`` are plottable in the MLflow UI. Status FAILED for an errored trial.
    A trial seen again (restart, resume) reuses its run, found by the ``kdlib.trial_id`` tag.
    """

    def __init__(self, plan: SweepPlan, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 pesq_mode: str, commit: str) -> None:
        self.plan, self.tracking_uri, self.experiment_id = plan, tracking_uri, experiment_id
        self.parent_run_id, self.pesq_mode, self.commit = parent_run_id, pesq_mode, commit
        self._runs: dict[str, str] = {}
        #: trials whose end (complete or error) this driver saw
        self._ended: set[str] = set()
        #: last epoch logged per trial: a result replayed after a restart is not logged twice
        self._last_step: dict[str, int] = {}
        self._client = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a sweep started before the plan existed pickled this logger (tuner.pkl) with its bare config
        if "plan" not in state and "cfg" in state:
            from kdlib.sweep.plan import make_plan

            state["plan"] = make_plan(state.pop("cfg"), check=False, transform=False)
        self.__dict__.update(state)

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _existing_run(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_ID}` = '{trial_id}' and tags.`{PARENT}` = '{self.parent_run_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def log_trial_start(self, trial) -> None:
        if trial.trial_id in self._runs:
            return
        run_id = self._existing_run(trial.trial_id)
        if run_id is None:
            spec = self.plan.trial_spec(trial.config)
            run = self.client.create_run(self.experiment_id, run_name=str(trial),
                                         tags={ROLE: ROLE_TRIAL, PARENT: self.parent_run_id, TRIAL_ID: trial.trial_id})
            run_id = run.info.run_id
            _log_dict(self.client, run_id, params={
                "method": spec.method, "student_ratio": spec.student_ratio, "seed": spec.seed, "lr": spec.lr,
                "kd_weight": spec.kd_weight, "schedule": spec.schedule,
                **{f"{KD_KNOB_PREFIX}{k}": v for k, v in spec.kd.items()},
                **({"variant": spec.variant} if spec.variant else {}),
                **({"student": spec.student} if spec.student else {}),
                **({"teacher": spec.teacher} if spec.teacher else {}),
                "data_seed": self.plan.cfg.data.seed,
                "model": self.plan.student_family(spec), "task_loss": _task_loss(self.plan, spec),
                "sample_rate": self.plan.cfg.data.sample_rate,
                "pesq_mode": self.pesq_mode, "config_hash": self.plan.config_hash, "git_commit": self.commit,
            })
        else:
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, EPOCH_METRIC)
            self._last_step[trial.trial_id] = max((m.step for m in history), default=0)
        self._runs[trial.trial_id] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial.trial_id not in self._runs:
            self.log_trial_start(trial)
        step = int(result.get("epoch", iteration))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # this epoch is in the run already (a trial restored from an older checkpoint)
        metrics = {k: v for k, v in result.items() if k not in _SKIP and "/" not in k}
        _log_dict(self.client, self._runs[trial.trial_id], metrics=metrics, step=step)
        # at step 0 like the teacher's, so the chart view draws one bar per run
        _log_dict(self.client, self._runs[trial.trial_id], metrics=key_metrics(metrics))
        self._last_step[trial.trial_id] = step

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        self._ended.add(trial.trial_id)
        if not failed:
            log_student(self.client, run_id, trial)
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def on_experiment_end(self, trials, **info) -> None:
        """Leave no trial run RUNNING: a trial this driver started but never saw end was cut off by an
        interrupted sweep (Ray marks such trials TERMINATED in memory when it stops them, but saves
        them as unfinished), so its run becomes KILLED (``kdlib sweep resume`` sets it RUNNING again).
        Trials this driver did not run keep Ray's saved outcome: a run a killed driver left RUNNING or
        KILLED becomes FINISHED/FAILED when Ray's state says the trial had terminated/errored."""
        for trial in trials:
            if trial.trial_id in self._ended:
                continue
            if trial.trial_id in self._runs:
                target = "KILLED"
            else:
                target = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial.status)
            run_id = self._runs.get(trial.trial_id) or self._existing_run(trial.trial_id)
            if target is None or run_id is None:
                continue
            current = self.client.get_run(run_id).info.status
            # only open runs change: RUNNING → anything, KILLED → FINISHED/FAILED
            if current == target or current != "RUNNING" and (current != "KILLED" or target == "KILLED"):
                continue
            if target == "FINISHED":
                log_student(self.client, run_id, trial)
            self.client.set_terminated(run_id, target)


def log_report(client, parent_id: str, paths: dict[str, Path]) -> None:
    """Log a sweep's report files (``report.md``, the PNGs, per-teacher sub-folders) as artifacts of its
    parent run under ``report/``, so the MLflow UI shows them next to the runs; a failure is one warning."""
    try:
        for key, path in paths.items():
            folder = "/".join(["report", *key.split("/")[:-1]])
            client.log_artifact(parent_id, str(path), artifact_path=folder)
    except Exception as exc:  # noqa: BLE001 - the report on disk stays the reference
        print(f"[sweep] warning: could not log the report to MLflow ({type(exc).__name__}: {first_line(exc)})",
              flush=True)
