"""The training loop shared by teachers and students (no Ray, no MLflow: runs anywhere torch runs).

One :class:`Trainer` per student: frozen teacher (eval mode, no grad), loss = task loss + λ·KD loss,
Adam, gradient clipping, per-epoch validation SI-SDR, best-validation weights kept for the final
test, and a plain-dict state for checkpoint/resume.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdlib.config import SweepConfig
from kdlib.evaluation import evaluate_model, mean_si_sdr, resolve_pesq_mode
from kdlib.kd import FeatureTaps, KDInputs, build_kd_method
from kdlib.losses import CompressedSpectralLoss
from kdlib.models import SEModel, build_model, complexity, count_params
from kdlib.train.datasets import SweepData

Log = Callable[[str], None]


@dataclass
class TrialSpec:
    """One point of the sweep: which method, student size, seed and knobs.

    Attributes:
        method: registered KD method. student_ratio: fraction of the teacher's params in (0, 1].
        seed: init/data seed. lr: Adam learning rate. kd_weight: λ on the KD loss.
        kd: the method's kwargs (the YAML ``methods.<name>`` block merged with searched ``kd.*``).
        variant / schedule / student / teacher: the named ablation, loss schedule, student spec and
        teacher (``teachers:`` key) of the cell, None where the sweep has no such dimension.
    """

    method: str
    student_ratio: float
    seed: int = 0
    lr: float = 1e-3
    kd_weight: float = 1.0
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
        kd.update({k[3:]: v for k, v in config.items() if k.startswith("kd.")})
        return cls(
            method=config["method"], student_ratio=float(config["student_ratio"]),
            seed=int(config.get("seed", 0)), lr=float(config.get("lr", cfg.training.lr)),
            kd_weight=float(config.get("kd_weight", cfg.training.kd_weight)), kd=kd, variant=variant,
            schedule=str(config.get("schedule", cfg.training.schedule)), student=config.get("student"),
            teacher=config.get("teacher"),
        )

    def label(self) -> str:
        tags = (self.teacher, self.student, self.variant, None if self.schedule == "joint" else self.schedule)
        extra = "".join(f" {v}" for v in tags if v)
        return f"{self.method}{extra} r={self.student_ratio:g} seed={self.seed}"


class Trainer:
    """Trains one student (or the teacher itself, with ``teacher=None`` and method ``none``).

    Args:
        cfg: the sweep config (training knobs, data, model family).
        spec: the trial point.
        student_args: constructor kwargs of the student (from the size builder).
        data: training mixes + validation/test corpora.
        teacher: the frozen teacher, or None when the method needs none.
        device: where to train.
        epochs, batch_size: override ``cfg.training`` (used for the teacher).
        log: progress sink (one line per event).
        model_name: the student's family (default: the teacher's).

    Raises:
        ConfigError: bad KD kwargs or taps. FloatingPointError: the loss became NaN/inf.
    """

    def __init__(self, cfg: SweepConfig, spec: TrialSpec, student_args: dict[str, Any], data: SweepData,
                 teacher: SEModel | None = None, device: torch.device | str = "cpu",
                 epochs: int | None = None, batch_size: int | None = None, log: Log = print,
                 model_name: str | None = None) -> None:
        self.cfg, self.spec, self.data, self.log = cfg, spec, data, log
        self.device = torch.device(device)
        self.epochs = epochs or cfg.training.epochs
        self.batch_size = batch_size or cfg.training.batch_size
        torch.manual_seed(spec.seed)
        family = model_name or cfg.teacher_cfg(spec.teacher).model.name
        self.student = build_model(family, student_args).to(self.device)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
        self.kd = build_kd_method(spec.method, self.student, teacher, spec.kd).to(self.device)
        self.use_teacher = self.kd.needs_teacher
        self.student_taps = FeatureTaps(self.student, self.kd.student_taps())
        self.teacher_taps = FeatureTaps(teacher, self.kd.teacher_taps()) if self.use_teacher else None
        # a family may need another task loss (sub-band models: no waveform term, see models/subband.py)
        self.task_loss = CompressedSpectralLoss(**getattr(self.student, "task_loss_kwargs", {})).to(self.device)
        self.optimizer = torch.optim.Adam([*self.student.parameters(), *self.kd.parameters()], lr=spec.lr)
        self.epoch = 0  # epochs completed
        self.best_val = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.loader = DataLoader(data.train, batch_size=self.batch_size, shuffle=False, drop_last=True)
        if len(self.loader) == 0:
            raise ValueError(f"segments_per_epoch ({len(data.train)}) < batch_size ({self.batch_size})")

    # -- figures ------------------------------------------------------------------------------
    def complexity(self, teacher_params: int | None = None) -> dict[str, float]:
        """params, MACs per second of audio, % of the teacher, and the KD method's own params."""
        out = complexity(self.student, teacher_params or (count_params(self.teacher) if self.teacher else None))
        out["kd_extra_params"] = self.kd.extra_params()
        return out

    # -- one epoch ----------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One pass over the epoch's mixtures; returns mean losses and throughput (audio s / s)."""
        self.data.train.set_epoch(self.epoch)
        task_weight, kd_weight = self.loss_weights()
        self.student.train()
        self.kd.train()
        totals = {"train_loss": 0.0, "task_loss": 0.0, "kd_loss": 0.0}
        start = time.perf_counter()
        n_batches = len(self.loader)
        for i, (noisy, clean) in enumerate(self.loader):
            noisy, clean = noisy.to(self.device), clean.to(self.device)
            teacher_out = None
            if self.use_teacher:
                with torch.no_grad():
                    teacher_out = self.teacher(noisy)
            student_out = self.student(noisy)
            task = self.task_loss(student_out, clean)
            kd = self.kd(KDInputs(noisy, clean, student_out, teacher_out, self.student_taps.features,
                                  self.teacher_taps.features if self.teacher_taps else {}))
            loss = task_weight * task + kd_weight * kd
            # one host-device sync per batch for the NaN check and the running totals
            loss_v, task_v, kd_v = torch.stack([loss.detach(), task.detach(), kd.detach().float()]).tolist()
            if not math.isfinite(loss_v):
                raise FloatingPointError(
                    f"{self.spec.label()}: loss became {loss_v} at epoch {self.epoch + 1}, batch {i + 1}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.training.grad_clip)
            self.optimizer.step()
            totals["train_loss"] += loss_v
            totals["task_loss"] += task_v
            totals["kd_loss"] += kd_v
            if (i + 1) % max(1, n_batches // 4) == 0 and i + 1 < n_batches:
                elapsed = time.perf_counter() - start
                self.log(f"[{self.spec.label()}] epoch {self.epoch + 1}/{self.epochs} batch {i + 1}/{n_batches} "
                         f"loss {totals['train_loss'] / (i + 1):.4f} eta(epoch) "
                         f"{elapsed / (i + 1) * (n_batches - i - 1):.0f}s")
        seconds = time.perf_counter() - start
        self.epoch += 1
        audio_seconds = n_batches * self.batch_size * self.cfg.data.train.segment_seconds
        out = {k: v / n_batches for k, v in totals.items()}
        out.update(epoch_seconds=seconds, audio_seconds_per_second=audio_seconds / seconds)
        return out

    def loss_weights(self) -> tuple[float, float]:
        """(task weight, KD weight) of the current epoch under the trial's schedule.

        joint: (1, λ). two_step (arXiv 2309.08144 §2): (0, λ) for the first ``kd_only_epochs``
        epochs, then (1, 0). A method without a teacher (``none``) always trains on the task loss.
        """
        if self.spec.schedule != "two_step" or not self.use_teacher:
            return 1.0, self.spec.kd_weight
        if self.epoch < self.cfg.training.kd_only_epochs:
            return 0.0, self.spec.kd_weight
        return 1.0, 0.0

    def validate(self) -> dict[str, float]:
        """Mean SI-SDR (dB) on the validation corpus; keeps the best weights for :meth:`test`."""
        val = mean_si_sdr(self.student, self.data.valid, self.device)
        if val > self.best_val:
            self.best_val = val
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.student.state_dict().items()})
        return {"val_si_sdr": val, "best_val_si_sdr": self.best_val}

    def best_model(self) -> SEModel:
        """The student at its best validation epoch (the final weights if never validated)."""
        if self.best_state is None:
            return self.student
        model = copy.deepcopy(self.student)
        model.load_state_dict(self.best_state)
        return model.eval()

    def test(self, num_workers: int = 1) -> dict[str, float]:
        """PESQ/STOI/ESTOI/SI-SDR of the best-validation student on the test corpus (``test_*`` keys)."""
        mode = resolve_pesq_mode(self.cfg.data.test.pesq_mode, self.data.test)
        summary = evaluate_model(self.best_model(), self.data.test, mode, num_workers=num_workers,
                                 device=self.device)
        return summary.as_flat_dict("test_")

    # -- checkpoint state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed epoch."""
        return {
            "epoch": self.epoch, "student": self.student.state_dict(), "kd": self.kd.state_dict(),
            "optimizer": self.optimizer.state_dict(), "best_val": self.best_val, "best_state": self.best_state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.kd.load_state_dict(state["kd"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.best_state = state["best_state"]
