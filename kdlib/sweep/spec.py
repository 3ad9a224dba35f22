"""One point of a sweep (a Ray Tune trial's config, resolved against the sweep schema)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdlib.config import KD_KNOB_PREFIX, SweepConfig


@dataclass
class TrialSpec:
    """Which method, student size, seed and knobs one trial trains.

    Attributes:
        method: registered KD method. student_ratio: fraction of the teacher's params in (0, 1].
        seed: init seed (student weights, KD adapters) and batch-order seed (the training mixtures are the
        sweep's ``data.seed``, the same for every trial). lr: Adam learning rate. kd_weight: λ on the KD
        loss, or ``"auto"`` (calibrated per trial, see ``training.kd_balance``).
        kd: the method's kwargs (the YAML ``methods.<name>`` block, the variant, then searched ``kd.*``).
        variant / schedule / student / teacher: the named ablation, loss schedule, student spec and
        teacher (``teachers:`` key) of the cell, None where the sweep has no such dimension.
    """

    method: str
    student_ratio: float
    seed: int = 0
    lr: float = 1e-3
    kd_weight: float | str = 1.0
    kd: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    schedule: str = "joint"
    student: str | None = None
    teacher: str | None = None

    @classmethod
    def from_trial_config(cls, config: dict[str, Any], cfg: SweepConfig) -> TrialSpec:
        """Build from a Ray Tune trial config (flat keys, ``kd.<knob>`` for searched knobs)."""
        kd = dict(cfg.methods.get(config["method"], {}))
        variant = config.get("variant")
        if variant is not None:
            kd.update(cfg.search.variants[variant])
        kd.update({k[len(KD_KNOB_PREFIX):]: v for k, v in config.items() if k.startswith(KD_KNOB_PREFIX)})
        return cls(
            method=config["method"], student_ratio=float(config["student_ratio"]),
            seed=int(config.get("seed", 0)), lr=float(config.get("lr", cfg.training.lr)),
            kd_weight=_kd_weight(config.get("kd_weight", cfg.training.kd_weight)), kd=kd, variant=variant,
            schedule=str(config.get("schedule", cfg.training.schedule)), student=config.get("student"),
            teacher=config.get("teacher"),
        )

    def label(self) -> str:
        """``method [teacher] [student] [variant] [two_step] r=<ratio> seed=<seed>`` for log lines."""
        tags = (self.teacher, self.student, self.variant, None if self.schedule == "joint" else self.schedule)
        extra = "".join(f" {v}" for v in tags if v)
        return f"{self.method}{extra} r={self.student_ratio:g} seed={self.seed}"


def _kd_weight(value: Any) -> float | str:
    """A searched or configured λ: a number, or ``"auto"``."""
    return "auto" if value == "auto" else float(value)
