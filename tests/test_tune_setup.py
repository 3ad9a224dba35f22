"""How the sweep sets Ray Tune up: ASHA judges a trial at a rung by the weights it would keep (the best
validation SI-SDR so far, not the current epoch's), and a trial that reuses an earlier trial's actor gives the
same numbers as one in a fresh actor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from kdlib.config import SchedulerConfig
from kdlib.sweep import contract
from kdlib.sweep.space import build_scheduler

REPO = Path(__file__).resolve().parents[1]


def _asha_decisions(metric: str) -> list[str]:
    """ASHA (grace 1, reduction 2, 4 epochs: rungs at epochs 1 and 2) fed two trials: ``a`` scores 4 then 5 dB;
    ``b`` scores 6 dB, then dips to 4.5 dB at epoch 2 (its best so far is still 6 dB, above ``a``'s 5)."""
    scheduler = build_scheduler(SchedulerConfig(name="asha", grace_period=1, reduction_factor=2), epochs=4)
    assert scheduler.set_search_properties(metric, "max")
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (a, b):
        scheduler.on_trial_add(None, trial)
    curves = {"a": [4.0, 5.0], "b": [6.0, 4.5]}
    decisions = []
    for epoch in (1, 2):
        for trial in (a, b):
            vals = curves[trial.trial_id][:epoch]
            result = {"epoch": epoch, contract.SELECTION_METRIC: vals[-1], contract.TUNE_METRIC: max(vals)}
            decisions.append(f"{trial.trial_id}{epoch}:{scheduler.on_trial_result(None, trial, result)}")
    return decisions


def test_asha_keeps_a_trial_whose_kept_weights_beat_the_rung():
    assert contract.TUNE_METRIC == f"best_{contract.SELECTION_METRIC}"
    assert _asha_decisions(contract.TUNE_METRIC) == ["a1:CONTINUE", "b1:CONTINUE", "a2:CONTINUE", "b2:CONTINUE"]
    # the same trials ranked on the current epoch's score: b is stopped for its dip (what kdlib no longer does)
    assert _asha_decisions(contract.SELECTION_METRIC)[-1] == "b2:STOP"


def test_fifo_has_no_scheduler():
    assert build_scheduler(SchedulerConfig(name="fifo"), epochs=4) is None


def _sweep(tmp: Path, seeds: str):
    """A smoke quickstart of ``self_similarity`` students at 25 % (a KD method that reads the teacher-output
    cache) with these seeds, one trial at a time; its trials."""
    from ray.tune import ExperimentAnalysis

    from kdlib.sweep.plan import load_plan
    from kdlib.sweep.runner import run_sweep

    overrides = [f"output_dir={tmp}", "search.method=[self_similarity]", "search.student_ratio=[0.25]",
                 f"search.seed={seeds}", "smoke.seeds=2", "ray.num_cpus=1", "name=reuse"]
    outcome = run_sweep(load_plan(REPO / "sweeps" / "quickstart.yaml", smoke=True, overrides=overrides), report=False)
    assert outcome.errored == 0
    return {t.config["seed"]: t.last_result for t in ExperimentAnalysis(str(outcome.experiment_dir)).trials}


@pytest.mark.slow
def test_a_trial_in_a_reused_actor_scores_as_in_a_fresh_one(data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("KDLIB_OUTPUT", raising=False)
    both = _sweep(tmp_path / "both", "[0, 1]")
    assert both[0]["pid"] == both[1]["pid"]  # one CPU: seed 1 ran in seed 0's actor
    alone = _sweep(tmp_path / "alone", "[1]")
    assert alone[1]["pid"] != both[1]["pid"]
    for key in (contract.SELECTION_METRIC, "train_loss", "kd_loss", "kd_weight_resolved", "test_pesq", "test_stoi",
                "valid_si_sdr"):
        assert alone[1][key] == both[1][key], key


def test_cache_fill_starts_before_the_mlflow_setup_and_is_cancelled_when_that_fails(data_root, tmp_path, monkeypatch):
    """The teacher-output cache fill is submitted as soon as the teachers exist (it runs beside the MLflow parent
    run and Tune set-up), and a set-up step that fails after it hands the fill tasks to ``finish_prefill``
    (which cancels them) instead of leaving them running. Ray and the teacher are stubbed: only the order of
    the driver's steps is under test."""
    import kdlib.sweep.runner as runner
    import kdlib.sweep.tracking as tracking
    from kdlib.errors import KdlibError
    from kdlib.sweep.plan import load_plan

    monkeypatch.delenv("KDLIB_OUTPUT", raising=False)
    plan = load_plan(REPO / "sweeps" / "quickstart.yaml", smoke=True,
                     overrides=[f"output_dir={tmp_path}", "search.method=[output]", "search.student_ratio=[0.25]"])
    steps: list[str] = []
    fake_path = tmp_path / "teacher.pt"
    monkeypatch.setattr(runner, "init_ray", lambda plan: False)
    monkeypatch.setattr(runner, "check_resources", lambda plan: None)
    monkeypatch.setattr(runner, "ensure_teachers",
                        lambda plan, train=None: {name: (fake_path, {}) for name in plan.teachers})

    def prefill(trial_plan, teacher_paths):
        steps.append(f"prefill {sorted(teacher_paths.values())}")
        return ["fill-ref"]

    def parent_run(*args, **kwargs):
        steps.append("parent run")
        raise KdlibError("MLflow refused the parent run")

    monkeypatch.setattr(runner, "prefill_teacher_caches", prefill)
    monkeypatch.setattr(runner, "finish_prefill", lambda refs: steps.append(f"finish {refs}"))
    monkeypatch.setattr(tracking, "start_parent_run", parent_run)
    with pytest.raises(KdlibError, match="refused the parent run"):
        runner.run_sweep(plan, report=False)
    assert steps == [f"prefill {[str(fake_path)]}", "parent run", "finish ['fill-ref']"]
