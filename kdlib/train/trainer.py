"""The training loop shared by teachers and students (no config schema, no Ray, no MLflow: runs
anywhere torch runs).

One :class:`Trainer` per model being trained: frozen teacher (eval mode, no grad), loss = task
loss + λ·KD loss, Adam over the student and the KD method's own parameters, gradient clipping,
per-epoch validation SI-SDR, best-validation weights kept for the final test, and a plain-dict
state for checkpoint/resume. The caller builds every object; :class:`TrainSettings` carries the
few scalar knobs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from kdlib.evaluation import evaluate_model, mean_si_sdr, resolve_pesq_mode
from kdlib.kd import FeatureTaps, KDInputs, KDMethod
from kdlib.models import SEModel, complexity, count_params

if TYPE_CHECKING:
    from kdlib.metrics import MetricSummary
    from kdlib.train.teacher_cache import EpochTeacher, TeacherCache

Log = Callable[[str], None]

SCHEDULES = ("joint", "two_step")
PRECISIONS = ("fp32", "bf16")


class TrainSet(Protocol):
    """Training items for a ``DataLoader``: ``(noisy, clean)`` with noisy ``(L,)`` or ``(M, L)`` and
    clean ``(L,)``, float samples, all items of one length L. ``set_epoch`` re-draws the epoch's items
    (the mixers are deterministic per seed and epoch). An optional ``sample_rate`` (Hz) attribute sets
    the audio rate of the throughput figure; without one the student's ``sample_rate`` is used."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, Any]: ...

    def set_epoch(self, epoch: int) -> None: ...


class EvalCorpus(Protocol):
    """A paired validation/test set (e.g. :class:`kdlib.data.PairedCorpus`): ``load(i)`` gives numpy
    ``(noisy, clean)``, noisy ``(L,)`` or ``(M, L)``, clean ``(L,)``, at ``sample_rate`` Hz;
    ``pesq_mode_hint`` is the PESQ mode ``"auto"`` resolves to (``"wb"`` | ``"nb"``)."""

    sample_rate: int
    pesq_mode_hint: str

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class TrainData(Protocol):
    """What a :class:`Trainer` reads: training items, a validation and a test corpus
    (``kdlib.data.sources.SweepData`` fits)."""

    @property
    def train(self) -> TrainSet: ...

    @property
    def valid(self) -> EvalCorpus: ...

    @property
    def test(self) -> EvalCorpus: ...


@dataclass(frozen=True)
class TrainSettings:
    """The scalar knobs of one training run.

    Attributes:
        epochs: epochs to train in all (>= 1). batch_size: items per step (>= 1).
        lr: Adam learning rate (> 0). grad_clip: max L2 norm of the student's gradient (> 0).
        selection_metric: key under which :meth:`Trainer.validate` reports the mean validation
            SI-SDR (the sweep passes ``"val_si_sdr"``).
        kd_weight: λ on the KD loss (>= 0).
        schedule: ``"joint"`` (task + λ·KD every epoch) or ``"two_step"`` (λ·KD only for the first
            ``kd_only_epochs`` epochs, then task loss only).
        kd_only_epochs: KD-only epochs of the two_step schedule (>= 0).
        pesq_mode: PESQ mode of :meth:`Trainer.test`: ``"auto"`` (the test corpus' hint), ``"wb"``
            or ``"nb"``.
        label: prefix of every log line and error message (e.g. the trial's label, ``"teacher"``).

    Raises:
        ValueError: a value outside the ranges above or an unknown schedule.
    """

    epochs: int
    batch_size: int
    lr: float
    grad_clip: float
    selection_metric: str
    kd_weight: float = 1.0
    schedule: str = "joint"
    kd_only_epochs: int = 1
    pesq_mode: str = "auto"
    label: str = "student"
    #: seed of the batch order: each epoch's items in a permutation drawn from ``(shuffle_seed, epoch)``
    #: (a resumed run gets the same order); None keeps the items in dataset order
    shuffle_seed: int | None = None
    #: DataLoader worker processes that mix the training items off the training thread (0: in the loop's
    #: own thread); the items are the same whatever the count (each is a draw of (seed, epoch, index))
    num_workers: int = 0
    #: ``fp32``, or ``bf16``: forward passes and losses under bfloat16 autocast (meant for CUDA; on CPU it
    #: runs, slowly); STFTs stay float32
    precision: str = "fp32"

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in (
                ("epochs", self.epochs, self.epochs >= 1, ">= 1"),
                ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
                ("lr", self.lr, self.lr > 0, "> 0"),
                ("grad_clip", self.grad_clip, self.grad_clip > 0, "> 0"),
                ("kd_weight", self.kd_weight, self.kd_weight >= 0, ">= 0"),
                ("kd_only_epochs", self.kd_only_epochs, self.kd_only_epochs >= 0, ">= 0"),
                ("num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
                ("precision", self.precision, self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                ("schedule", self.schedule, self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"TrainSettings: {'; '.join(problems)}")


class EpochPermutation(Sampler[int]):
    """Item order of one epoch: ``0 .. n-1`` when ``seed`` is None, else a permutation drawn from
    ``np.random.default_rng([seed, epoch])``, so the order depends only on the seed and the epoch (a run
    resumed after epoch k trains epoch k+1 in the order an uninterrupted run would).

    With ``batch_size``, only the first ``n - n % batch_size`` items are permuted and the tail is left at the
    end, where ``drop_last`` drops it: every seed trains on the same items (a paired design), only their
    order differs."""

    def __init__(self, n: int, seed: int | None, batch_size: int = 1) -> None:
        self.n, self.seed, self.epoch = int(n), seed, 0
        self.full = self.n - self.n % max(1, int(batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.seed is None:
            return iter(range(self.n))
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.full).tolist()
        return iter(order + list(range(self.full, self.n)))


class IndexedItems:
    """A training set whose items also carry their dataset index: ``(noisy, clean, i)``, so a batch can be
    matched with the teacher-output cache, which stores items by index. ``set_epoch`` is passed through."""

    def __init__(self, items: TrainSet) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        noisy, clean = self.items[index]
        return noisy, clean, index

    def set_epoch(self, epoch: int) -> None:
        self.items.set_epoch(epoch)


class Trainer:
    """Trains one model: a student distilled from a teacher, or a model alone (the ``none`` KD
    method, e.g. the teacher itself with ``teacher=None``).

    The Trainer neither seeds nor builds anything. For bit-identical runs the caller does
    ``torch.manual_seed(seed)`` (after building the data), then builds the student, then the KD method
    (:func:`kdlib.kd.build_kd_method`), in that order: the KD method's adapters draw from the same
    random stream as the student's initialisation.

    The student, teacher, KD method and task loss are moved to ``device``; the teacher is put in eval
    mode with ``requires_grad`` off and runs under ``torch.no_grad()``, so training never changes it.
    With a ``teacher_cache`` the teacher's outputs and taps of each epoch are read from the cache (filled by
    whichever trial reaches the epoch first) instead of running the teacher at every step.

    Args:
        student: the model being trained; input ``(B, L)`` or ``(B, M, L)``, output ``(B, L)``.
        teacher: the frozen teacher, or None when ``kd_method`` needs none.
        kd_method: the KD loss, built for ``student`` and ``teacher``.
        task_loss: the supervised loss ``(estimate (B, L), clean (B, L)) → scalar``
            (:func:`kdlib.losses.task_loss_for`).
        data: training items plus validation and test corpora (:class:`TrainData`).
        settings: epochs, batch size, optimiser and schedule knobs.
        device: where to train.
        log: progress sink, one line per event.
        teacher_cache: a :class:`~kdlib.train.teacher_cache.TeacherCache` entry of this teacher on these
            training items, or None to run the teacher at every step.

    Raises:
        ValueError: ``kd_method`` needs a teacher but ``teacher`` is None, or the training set has
            fewer items than one batch.
    """

    def __init__(self, student: SEModel, teacher: SEModel | None, kd_method: KDMethod, task_loss: nn.Module,
                 data: TrainData, settings: TrainSettings, device: torch.device | str = "cpu",
                 log: Log = print, teacher_cache: TeacherCache | None = None) -> None:
        if kd_method.needs_teacher and teacher is None:
            name = getattr(type(kd_method), "registry_name", type(kd_method).__name__)
            raise ValueError(f"KD method '{name}' needs a teacher, but teacher is None")
        self.settings, self.data, self.log = settings, data, log
        self.device = torch.device(device)
        self.epochs = settings.epochs
        self.batch_size = settings.batch_size
        self.student = student.to(self.device)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
        self.kd = kd_method.to(self.device)
        self.use_teacher = self.kd.needs_teacher
        self.teacher_cache = teacher_cache if self.use_teacher else None
        self.cached: EpochTeacher | None = None  # the current epoch's cached teacher view
        self.student_taps = FeatureTaps(self.student, self.kd.student_taps())
        self.teacher_taps = (FeatureTaps(teacher, self.kd.teacher_taps())
                             if self.use_teacher and self.teacher_cache is None else None)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed segment shapes: the fastest kernels are found once
        self.task_loss = task_loss.to(self.device)
        self.optimizer = torch.optim.Adam([*self.student.parameters(), *self.kd.parameters()], lr=settings.lr)
        # audio rate of the throughput figure: the training data's own rate, else the model's
        self.sample_rate = int(getattr(data.train, "sample_rate", None) or getattr(student, "sample_rate", 16000))
        self.epoch = 0  # epochs completed
        self.best_val = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.sampler = EpochPermutation(len(data.train), settings.shuffle_seed, self.batch_size)
        # workers are re-created each epoch (not persistent), so they copy the dataset after set_epoch
        self.loader = DataLoader(IndexedItems(data.train), batch_size=self.batch_size, sampler=self.sampler,
                                 drop_last=True, num_workers=settings.num_workers)
        if len(self.loader) == 0:
            raise ValueError(f"segments_per_epoch ({len(data.train)}) < batch_size ({self.batch_size})")

    # -- figures ------------------------------------------------------------------------------
    def complexity(self, teacher_params: int | None = None) -> dict[str, float]:
        """params, MACs per second of audio, % of the teacher (``teacher_params``, default the
        teacher's count) and ``kd_extra_params`` (the KD method's own learnable params)."""
        out = complexity(self.student, teacher_params or (count_params(self.teacher) if self.teacher else None))
        out["kd_extra_params"] = self.kd.extra_params()
        return out

    # -- one epoch ----------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One pass over the epoch's items.

        Returns:
            ``train_loss``, ``task_loss``, ``kd_loss`` (means over the batches), ``epoch_seconds`` (s)
            and ``audio_seconds_per_second`` (seconds of training audio per wall-clock second), plus
            ``kd_<name>`` for each of the KD method's :meth:`~kdlib.kd.KDMethod.stats` over this epoch.

        Raises:
            FloatingPointError: the loss became NaN/inf (names the epoch and batch).
            ValueError: a stats key of the KD method clashes with a metric above.
        """
        label = self.settings.label
        self._cached_epoch(self.epoch)
        self.data.train.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        task_weight, kd_weight = self.loss_weights()
        self.student.train()
        self.kd.train()
        self.kd.stats()  # drop what calibration or an earlier caller accumulated: this epoch's only
        totals = {"train_loss": 0.0, "task_loss": 0.0, "kd_loss": 0.0}
        start = time.perf_counter()
        n_batches = len(self.loader)
        segment_samples = 0
        for i, (noisy, clean, index) in enumerate(self.loader):
            noisy, clean = noisy.to(self.device), clean.to(self.device)
            segment_samples = clean.shape[-1]
            task, kd = self._losses(noisy, clean, index)
            loss = task_weight * task + kd_weight * kd
            # one host-device sync per batch for the NaN check and the running totals
            loss_v, task_v, kd_v = torch.stack([loss.detach(), task.detach(), kd.detach().float()]).tolist()
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"{label}: loss became {loss_v} at epoch {self.epoch + 1}, batch {i + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.settings.grad_clip)
            self.optimizer.step()
            totals["train_loss"] += loss_v
            totals["task_loss"] += task_v
            totals["kd_loss"] += kd_v
            if (i + 1) % max(1, n_batches // 4) == 0 and i + 1 < n_batches:
                elapsed = time.perf_counter() - start
                self.log(f"[{label}] epoch {self.epoch + 1}/{self.epochs} batch {i + 1}/{n_batches} "
                         f"loss {totals['train_loss'] / (i + 1):.4f} eta(epoch) "
                         f"{elapsed / (i + 1) * (n_batches - i - 1):.0f}s")
        seconds = time.perf_counter() - start
        self.epoch += 1
        # segment length in s as L / rate, then the same product as the config-based figure it
        # replaces (batches × batch size × segment seconds), so the logged value stays bit-identical
        audio_seconds = n_batches * self.batch_size * (segment_samples / self.sample_rate)
        out = {k: v / n_batches for k, v in totals.items()}
        out.update(epoch_seconds=seconds, audio_seconds_per_second=audio_seconds / seconds)
        for name, value in self.kd.stats().items():
            if f"kd_{name}" in out:
                raise ValueError(f"KD method stats key '{name}' clashes with the epoch metric 'kd_{name}'")
            out[f"kd_{name}"] = float(value)
        return out

    def _cached_epoch(self, epoch: int) -> None:
        """Open (filling it first where needed) the teacher cache's view of ``epoch``."""
        if self.teacher_cache is not None:
            self.cached = self.teacher_cache.epoch(epoch, self.teacher, self.data.train, self.kd.teacher_taps(),
                                                   self.device, method=self.kd)

    def _losses(self, noisy: torch.Tensor, clean: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(task loss, KD loss) of one batch: the frozen teacher without grad (or its cached outputs and taps
        for the items ``index``), the student, the KD method on the outputs and the features the hooks caught."""
        teacher_out, teacher_features, targets = None, {}, {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.precision == "bf16"):
            if self.use_teacher and self.cached is not None:
                teacher_out, teacher_features, targets = self.cached.batch(index, self.device)
            elif self.use_teacher:
                with torch.no_grad():
                    teacher_out = self.teacher(noisy)
                teacher_features = self.teacher_taps.features
            student_out = self.student(noisy)
            task = self.task_loss(student_out, clean)
            kd = self.kd(KDInputs(noisy, clean, student_out, teacher_out, self.student_taps.features,
                                  teacher_features, targets))
        return task.float(), kd.float()

    def gradient_ratio(self, batches: int = 2) -> float:
        """‖∇KD‖ / ‖∇task‖ of the student's parameters at their current values, the mean over the first
        ``batches`` batches of epoch 0 (L2 norms over every student parameter; the KD method's own
        parameters, e.g. connectors, are left out). Nothing is updated: weights, normalisation statistics and
        ``.grad`` are as before. 0 when the KD loss has no gradient (``none``).

        Source: kdlib's balanced-weight protocol (λ = target / this ratio makes the two gradients equally
        strong at initialisation), so KD methods are compared at equal gradient strength rather than at the
        scales of their losses; not from a paper.
        """
        params = [p for p in self.student.parameters() if p.requires_grad]
        self._cached_epoch(0)
        self.data.train.set_epoch(0)
        self.sampler.set_epoch(0)
        # forward passes in train mode move normalisation statistics: put every buffer back afterwards
        saved = [copy.deepcopy(m.state_dict()) for m in (self.student, self.kd)]
        was_training, kd_training = self.student.training, self.kd.training
        self.student.train()
        self.kd.train()
        ratios = []
        try:
            for i, (noisy, clean, index) in enumerate(self.loader):
                if i >= batches:
                    break
                task, kd = self._losses(noisy.to(self.device), clean.to(self.device), index)
                if not kd.requires_grad:
                    return 0.0
                g_task = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
                g_kd = torch.autograd.grad(kd, params, allow_unused=True)
                ratios.append(float(_grad_norm(g_kd) / _grad_norm(g_task)))
        finally:
            for module, state in zip((self.student, self.kd), saved, strict=True):
                module.load_state_dict(state)
            self.student.train(was_training)
            self.kd.train(kd_training)
        return float(np.mean(ratios)) if ratios else 0.0

    def loss_weights(self) -> tuple[float, float]:
        """(task weight, KD weight) of the current epoch under ``settings.schedule``.

        joint: (1, λ). two_step (arXiv 2309.08144 §2): (0, λ) for the first ``kd_only_epochs``
        epochs, then (1, 0). A method without a teacher (``none``) always trains on the task loss.
        """
        s = self.settings
        if s.schedule != "two_step" or not self.use_teacher:
            return 1.0, s.kd_weight
        if self.epoch < s.kd_only_epochs:
            return 0.0, s.kd_weight
        return 1.0, 0.0

    def validate(self) -> dict[str, float]:
        """Mean SI-SDR (dB) on the validation corpus; keeps the best weights for :meth:`test`.

        Returns:
            ``{selection_metric: this epoch's value, "best_" + selection_metric: best so far}``.

        Raises:
            FloatingPointError: the validation SI-SDR is NaN or infinite.
        """
        val = mean_si_sdr(self.student, self.data.valid, self.device)
        if not math.isfinite(val):
            # a NaN never compares greater: the run would keep an old (or the untrained) model in silence
            raise FloatingPointError(f"[{self.settings.label}] epoch {self.epoch}: validation SI-SDR is {val} "
                                     "(the model outputs NaN/inf or silence on the validation set)")
        if val > self.best_val:
            self.best_val = val
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.student.state_dict().items()})
        key = self.settings.selection_metric
        return {key: val, f"best_{key}": self.best_val}

    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs (``epoch`` … ``epochs``): :meth:`train_epoch` + :meth:`validate`
        each, one log line per epoch with the loss, validation SI-SDR, throughput and ETA.

        Returns:
            one dict per epoch run here (the keys of :meth:`train_epoch` and :meth:`validate`);
            empty when every epoch is done already.

        Raises:
            FloatingPointError: see :meth:`train_epoch`.
        """
        label, key = self.settings.label, self.settings.selection_metric
        start, first = time.perf_counter(), self.epoch
        history = []
        while self.epoch < self.epochs:
            stats = self.train_epoch()
            stats.update(self.validate())
            history.append(stats)
            elapsed = time.perf_counter() - start
            self.log(f"[{label}] epoch {self.epoch}/{self.epochs} loss {stats['train_loss']:.4f} "
                     f"val SI-SDR {stats[key]:.2f} dB, {stats['audio_seconds_per_second']:.1f} audio s/s, "
                     f"eta {elapsed / (self.epoch - first) * (self.epochs - self.epoch):.0f}s")
        return history

    def best_model(self) -> SEModel:
        """The student at its best validation epoch (the student itself if never validated)."""
        if self.best_state is None:
            return self.student
        model = copy.deepcopy(self.student)
        model.load_state_dict(self.best_state)
        return model.eval()

    def valid_scores(self, num_workers: int = 1, pesq_mode: str = "auto") -> MetricSummary:
        """PESQ/STOI/ESTOI/SI-SDR of the best-validation student on the validation set (``pesq_mode``: the
        validation set's own, ``auto`` = its hint): what the report selects on, so the test set never
        chooses a model."""
        mode = resolve_pesq_mode(pesq_mode, self.data.valid)
        return evaluate_model(self.best_model(), self.data.valid, mode, num_workers=num_workers, device=self.device)

    def test(self, num_workers: int = 1, corpus: Any = None, pesq_mode: str | None = None) -> MetricSummary:
        """PESQ/STOI/ESTOI/SI-SDR of the best-validation student on a test corpus (None: the primary test
        set), PESQ in ``pesq_mode`` (None: ``settings.pesq_mode``; ``auto``: the corpus' hint);
        ``num_workers`` scoring processes. The caller flattens it (e.g. ``summary.as_flat_dict("test_")``)."""
        corpus = self.data.test if corpus is None else corpus
        mode = resolve_pesq_mode(self.settings.pesq_mode if pesq_mode is None else pesq_mode, corpus)
        return evaluate_model(self.best_model(), corpus, mode, num_workers=num_workers, device=self.device)

    # -- checkpoint state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed epoch (tensors and plain values,
        loadable with ``torch.load(weights_only=True)``)."""
        return {
            "epoch": self.epoch, "student": self.student.state_dict(), "kd": self.kd.state_dict(),
            "optimizer": self.optimizer.state_dict(), "best_val": self.best_val, "best_state": self.best_state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of a Trainer built the same way: the next epoch is
        ``state["epoch"] + 1``.

        Raises:
            KeyError, RuntimeError: a state of another format or architecture.
        """
        self.student.load_state_dict(state["student"])
        self.kd.load_state_dict(state["kd"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.best_state = state["best_state"]


def _grad_norm(grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """L2 norm over a tuple of gradients (``None`` for parameters the loss does not reach)."""
    total = sum((g.detach().float() ** 2).sum() for g in grads if g is not None)
    return torch.sqrt(torch.as_tensor(total, dtype=torch.float32))
