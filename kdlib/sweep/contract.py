"""The MLflow contract of a sweep: every tag, param, metric prefix and artifact name that the sweep
writes and the report reads, in one place (no imports of Ray, MLflow or torch).

Run layout: one parent run per sweep (``ROLE = "sweep"``) with nested child runs, one per teacher
(``"teacher"``) and one per trial (``"trial"``), linked by MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

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
#: reported every epoch by every trial; its history tells which epochs a run holds
EPOCH_METRIC = SELECTION_METRIC

#: metric-key prefixes: test-set scores of the model, of the unprocessed noisy input, and the validation-set
#: scores of the best-validation model (what the report selects on)
TEST_PREFIX = "test_"
NOISY_PREFIX = "noisy_"
VALID_PREFIX = "valid_"
# the metric names after the prefixes, and the ``_missing`` count suffix, come from kdlib.metrics.specs

#: complexity metrics logged on every teacher and trial run
COMPLEXITY_METRICS = ("params", "macs", "params_pct", "kd_extra_params")

#: the ``method`` param of a teacher run (its trials carry their KD method's name)
TEACHER_METHOD = "teacher"
