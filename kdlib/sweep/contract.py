"""The MLflow contract of a sweep: every tag, param, metric prefix and artifact name that the sweep
writes and the report reads, in one place (no imports of Ray, MLflow or torch).

Run layout: one parent run per sweep (``ROLE = "sweep"``) with nested child runs, one per teacher
(``"teacher"``) and one per trial (``"trial"``), linked by MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

from pathlib import Path

#: tag on every kdlib run: ``sweep`` (parent), ``teacher`` or ``trial`` (children)
ROLE = "kdlib.role"
ROLE_SWEEP, ROLE_TEACHER, ROLE_TRIAL = "sweep", "teacher", "trial"
#: MLflow's own tag that nests a child run under its parent
PARENT = "mlflow.parentRunId"
#: Ray Tune's trial id on a trial's run (a resumed trial finds its run by it)
TRIAL_ID = "kdlib.trial_id"
#: path of the model checkpoint (teacher or best-validation student) of a child run
CHECKPOINT = "kdlib.checkpoint"
#: set on a FAILED run that a restarted trial replaced (``kdlib sweep resume --restart-errored``)
REPLACED = "kdlib.replaced"
#: ``True``/``False`` on the parent run
SMOKE_TEST = "kdlib.smoke_test"

#: the best-validation student, in a trial's final Ray Tune checkpoint and among its run's MLflow artifacts
STUDENT_FILE = "student.pt"
#: the trainer's resumable state inside a Ray Tune checkpoint
STATE_FILE = "trainer_state.pt"
#: per-utterance test scores (``utterance``, each metric, ``<metric>_missing``) of a trial's student, of a
#: teacher, and (``NOISY_SCORES_FILE``) of the unprocessed input: MLflow artifacts the report's statistics read
TEST_SCORES_FILE = "test_scores.csv"
NOISY_SCORES_FILE = "noisy_scores.csv"

#: metric that Tune, ASHA, Optuna and "best epoch" select on (validation only, never test)
SELECTION_METRIC = "val_si_sdr"
SELECTION_MODE = "max"
#: what Ray Tune, ASHA and Optuna rank trials on: the best ``SELECTION_METRIC`` so far, i.e. the score of the
#: weights a trial keeps. It never falls between epochs, so ASHA does not stop a trial at a rung for a one-epoch
#: dip that its kept weights do not have, and Optuna learns from the score of the model the trial returns.
TUNE_METRIC = f"best_{SELECTION_METRIC}"
#: reported every epoch by every trial; its history tells which epochs a run holds
EPOCH_METRIC = SELECTION_METRIC

#: metric-key prefixes: test-set scores of the model, of the unprocessed noisy input, and the validation-set
#: scores of the best-validation model (what the report selects on)
TEST_PREFIX = "test_"
NOISY_PREFIX = "noisy_"
VALID_PREFIX = "valid_"


def set_prefix(name: str | None = None) -> str:
    """Metric prefix of a test set: ``test_`` for the primary (unnamed) one, ``test_<name>_`` for a named one."""
    return f"{TEST_PREFIX}{name}_" if name else TEST_PREFIX


def set_label(part) -> str:
    """A test set's label in the parent run's ``test_set`` / ``test_set.<name>`` params: ``corpus:speaker,...``
    (``all`` without a speaker list); ``part`` is a ``data.test`` entry."""
    return f"{part.corpus}:{','.join(part.speakers or ['all'])}"


def noisy_prefix(name: str | None = None) -> str:
    """Metric prefix of the unprocessed input on a test set: ``noisy_`` / ``noisy_<name>_``."""
    return f"{NOISY_PREFIX}{name}_" if name else NOISY_PREFIX


def scores_file(name: str | None = None, noisy: bool = False) -> str:
    """Per-utterance scores file of a test set: ``test_scores.csv`` / ``test_scores_<name>.csv`` (the model),
    ``noisy_scores.csv`` / ``noisy_scores_<name>.csv`` (the unprocessed input)."""
    stem = Path(NOISY_SCORES_FILE if noisy else TEST_SCORES_FILE).stem
    return f"{stem}_{name}.csv" if name else f"{stem}.csv"
# the metric names after the prefixes, and the ``_missing`` count suffix, come from kdlib.metrics.specs

#: MLflow's chart view puts a metric-key prefix before "/" in its own section, ahead of "Model metrics": the
#: headline figures are logged once more under it, so the chart view offers them first
KEY_PREFIX = "key/"
#: the headline figures (and, per named test set, ``test_<name>_pesq`` / ``test_<name>_stoi``)
KEY_METRICS = ("test_pesq", "test_stoi", "valid_pesq", "params", "macs")


def key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``key/<name>`` copies of the headline metrics present in ``metrics`` (a final result: only when it holds
    ``test_pesq``, so each is logged once and the chart view draws it as a bar per run)."""
    if f"{TEST_PREFIX}pesq" not in metrics:
        return {}
    names = [k for k in metrics if k in KEY_METRICS or (
        k.startswith(TEST_PREFIX) and k.endswith(("_pesq", "_stoi")) and not k.endswith("_missing"))]
    return {f"{KEY_PREFIX}{k}": metrics[k] for k in names}


#: complexity metrics logged on every teacher and trial run
COMPLEXITY_METRICS = ("params", "macs", "params_pct", "kd_extra_params")

#: the ``method`` param of a teacher run (its trials carry their KD method's name)
TEACHER_METHOD = "teacher"
