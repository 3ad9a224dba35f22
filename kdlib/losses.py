"""Supervised enhancement losses (the task loss every trial adds KD to), in a torchdistill-style registry.

Each model family declares its default task loss as a ``task_loss`` ClassVar ``{name, kwargs}``
(:class:`kdlib.models.base.SEModel`); a sweep overrides it with ``training.task_loss`` (students) or
``teacher.task_loss`` (the teacher). :func:`task_loss_for` resolves, checks and builds it; every loss maps
``estimate``, ``target``: ``(B, L)`` waveforms → a scalar, so the trainer calls them all alike.

Registered: ``compressed_spectral`` (:class:`CompressedSpectralLoss`), ``si_snr``
(:class:`NegativeSISNR`), ``ftjnf`` (:class:`FTJNFLoss`), ``band_spectral`` (:class:`BandSpectralLoss`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.stft import STFT
from kdlib.registry import Registry
from kdlib.validation import validate


class TaskLossConfig(BaseModel):
    """Base of every task loss's kwargs: unknown keys and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TaskLoss(nn.Module):
    """Base class of task losses: ``forward(estimate (B, L), target (B, L)) → scalar``.

    Subclasses set ``Config`` (validated kwargs, the constructor's keyword arguments) and ``source``;
    a loss that reads more than the two waveforms (the model's input or its enhanced spectrum) overrides
    :meth:`for_model` to bind the model and :meth:`unsuitable` to name the families it cannot train.
    """

    Config: ClassVar[type[TaskLossConfig]] = TaskLossConfig
    source: ClassVar[str] = ""

    @classmethod
    def unsuitable(cls, model_cls: type) -> str | None:
        """Why this loss cannot train models of class ``model_cls`` (None: it can)."""
        return None

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> TaskLoss:
        """The loss for ``model`` with validated ``kwargs`` (default: the model is not needed)."""
        return cls(**kwargs)


TASK_LOSSES: Registry[TaskLoss] = Registry("task loss")
register_task_loss = TASK_LOSSES.register

#: the task loss of a model that declares none (``SEModel`` declares the same)
DEFAULT_TASK_LOSS: dict[str, Any] = {"name": "compressed_spectral", "kwargs": {}}


class _InertHook:
    """What a copied or pickled model gets in place of a :class:`_CaptureHook`: does nothing."""

    def __call__(self, *_args: Any) -> None:
        return None


class _CaptureHook:
    """A forward hook storing ``(input, output)`` (``slot="model"``) or the output (``slot="tap"``) of its module
    in a :class:`_ForwardCapture`, held by a weak reference (a discarded loss leaves an inert hook, not tensors).
    A deep copy or a pickle of the model (the best-validation copy, a spawned scoring worker) gets an
    :class:`_InertHook`: a copy must not feed the training loss, and weak references do not pickle."""

    def __init__(self, capture: _ForwardCapture, slot: str) -> None:
        self.ref, self.slot = weakref.ref(capture), slot

    def __call__(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        capture = self.ref()
        if capture is None:
            return
        if self.slot == "model":
            capture.input, capture.output = args[0], output
        else:
            capture.tap = output

    def __reduce__(self) -> tuple[type, tuple]:
        return _InertHook, ()


class _ForwardCapture:
    """What the model's latest forward pass took and gave: its input ``(B, [M,] L)``, its output ``(B, L)``
    and, with ``tap``, that submodule's output. A loss reads them for the estimate of that same pass only
    (:meth:`take` checks the estimate *is* the captured output), so a stale capture never pairs with
    another estimate.
    """

    def __init__(self, model: nn.Module, tap: str | None = None) -> None:
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.tap: torch.Tensor | None = None
        self._handles = [model.register_forward_hook(_CaptureHook(self, "model"))]
        if tap is not None:
            self._handles.append(model.get_submodule(tap).register_forward_hook(_CaptureHook(self, "tap")))

    def take(self, estimate: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(model input, tap output)`` of the forward pass that produced ``estimate``; cleared after.

        Raises:
            RuntimeError: ``estimate`` is not the output of the model's latest forward pass.
        """
        if self.output is None or self.output is not estimate:
            raise RuntimeError(f"task loss '{loss}' reads the model's own forward pass: call it on the tensor the "
                               "model just returned, before the next forward pass")
        found = self.input, self.tap
        self.input = self.output = self.tap = None  # frees the batch's graph once the loss has it
        return found  # type: ignore[return-value]

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", []):
            handle.remove()


def _compressed(spec: torch.Tensor, compress: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex spectrum → (|S|^c, |S|^c·e^{j∠S}); the clamp keeps the gradient of |S|^c finite at 0."""
    mag = spec.abs().clamp_min(1e-8)
    mag_c = mag**compress
    return mag_c, spec * (mag_c / mag)


# ---------------------------------------------------------------------------------------------
# compressed_spectral


class CompressedSpectralConfig(TaskLossConfig):
    n_fft: int = Field(512, ge=8)
    hop_length: int = Field(256, gt=0)
    compress: float = Field(0.3, gt=0, le=1)
    wav_weight: float = Field(10.0, ge=0)


@register_task_loss("compressed_spectral")
class CompressedSpectralLoss(TaskLoss):
    """L1 on power-law compressed magnitude and complex spectra plus a weighted waveform L1.

    L = mean|(|Ŝ|^c − |S|^c)| + mean|Ŝ_c − S_c| + w_wav · mean|ŝ − s|, with S_c = |S|^c·e^{j∠S}.
    The compressed-spectrum terms follow the DPCRN/FT-JNF family of losses (reconstruction, see
    methods.md §1.2 step 7 and §4.3); the same loss with the teacher's output as target is the
    ``output`` KD method.

    Args:
        n_fft: STFT size in samples. hop_length: hop in samples.
        compress: exponent c in (0, 1]. wav_weight: weight of the waveform L1 term.

    Shapes: ``estimate``, ``target``: ``(B, L)`` → scalar.
    """

    Config = CompressedSpectralConfig
    source = "reconstruction, see methods.md §1.2 step 7 and §4.3"

    def __init__(self, n_fft: int = 512, hop_length: int = 256, compress: float = 0.3,
                 wav_weight: float = 10.0) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop_length)
        self.compress = compress
        self.wav_weight = wav_weight

    def _compressed(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _compressed(self.stft(wav), self.compress)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mag_e, spec_e = self._compressed(estimate)
        mag_t, spec_t = self._compressed(target)
        loss = (mag_e - mag_t).abs().mean() + (spec_e - spec_t).abs().mean()
        if self.wav_weight:
            loss = loss + self.wav_weight * (estimate - target).abs().mean()
        return loss


# ---------------------------------------------------------------------------------------------
# si_snr


class SISNRConfig(TaskLossConfig):
    eps: float = Field(1e-8, gt=0, le=1e-2)
    zero_mean: bool = True


@register_task_loss("si_snr")
class NegativeSISNR(TaskLoss):
    """Negative scale-invariant SNR in dB, averaged over the batch: the training objective of
    Conv-TasNet (arXiv 1809.07454, "training objective"), DPTNet (arXiv 2007.13975 §3) and DCCRN
    (arXiv 2008.00264 §2, its SI-SNR loss).

    With ŝ and s made zero-mean over time (``zero_mean``): s_t = (⟨ŝ, s⟩ / (‖s‖² + ε)) · s,
    e = ŝ − s_t, SI-SNR = 10·log10(‖s_t‖² / (‖e‖² + ε) + ε) dB, L = −mean_b SI-SNR. ε (``eps``) bounds
    the value when e = 0 (ŝ a positive multiple of s: 10·log10(‖s_t‖²/ε) dB) and when s = 0
    (10·log10 ε = −80 dB at the default). Computed in float32 even under bf16 autocast.

    Shapes: ``estimate``, ``target``: ``(B, L)`` → scalar (dB, lower is better).
    """

    Config = SISNRConfig
    source = "arXiv 1809.07454 / 2007.13975 / 2008.00264 (SI-SNR objective)"

    def __init__(self, eps: float = 1e-8, zero_mean: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.zero_mean = zero_mean

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(estimate.device.type, enabled=False):
            est, ref = estimate.float(), target.float()
            if self.zero_mean:
                est = est - est.mean(-1, keepdim=True)
                ref = ref - ref.mean(-1, keepdim=True)
            scale = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + self.eps)
            projection = scale * ref
            noise = est - projection
            ratio = (projection**2).sum(-1) / ((noise**2).sum(-1) + self.eps)
            return -(10 * torch.log10(ratio + self.eps)).mean()


# ---------------------------------------------------------------------------------------------
# ftjnf


class FTJNFLossConfig(TaskLossConfig):
    alpha: float = Field(10.0, ge=0)
    n_fft: int | None = Field(None, ge=8)
    hop_length: int | None = Field(None, gt=0)
    window: Literal["sqrt_hann", "hann"] = "sqrt_hann"
    noise_term: bool = True


@register_task_loss("ftjnf")
class FTJNFLoss(TaskLoss):
    """FT-JNF's training loss: L1 on the time signals and on the STFT magnitudes of the speech estimate
    and of the noise estimate (official sp-uhh/deep-non-linear-filter ``src/models/exp_jnf.py``
    ``shared_step`` and ``exp_enhancement.py`` ``loss``; methods.md §4.3 [V]).

    L = α·(mean|s − ŝ| + mean|n − n̂|) + mean| |S| − |Ŝ| | + mean| |N| − |N̂| |, α = ``alpha`` (official
    ``loss_alpha`` 10), magnitudes from an STFT of ``n_fft`` / ``hop_length`` samples (default: the
    model's own STFT, as in the official code; 512 / 256 when the model has none) with a ``window``
    (official √Hann). The noise is what is left of the reference microphone: n = y_ref − s,
    n̂ = y_ref − ŝ, with y_ref the model's input (its ``reference_channel``, default 0) [R]: kdlib's data
    gives (noisy, clean) pairs, not the noise the official generator keeps, so target reverberation
    counts as noise here. The time noise term then equals the speech one (the official code doubles it
    the same way up to that difference). The official magnitudes are of the masked spectrum before the
    iSTFT; these are of the STFT of the output waveform (equal where the masked spectrum is consistent).
    ``noise_term=False`` drops both noise terms.

    Shapes: ``estimate``, ``target``: ``(B, L)`` → scalar. With ``noise_term`` the loss reads the input
    of the forward pass that produced ``estimate`` (so call it on the model's output, as the trainer does).

    Raises:
        RuntimeError: ``noise_term`` and ``estimate`` is not the model's latest output.
    """

    Config = FTJNFLossConfig
    source = "sp-uhh/deep-non-linear-filter src/models/exp_jnf.py + exp_enhancement.py (methods.md §4.3)"

    def __init__(self, alpha: float = 10.0, n_fft: int | None = None, hop_length: int | None = None,
                 window: str = "sqrt_hann", noise_term: bool = True, *, model: nn.Module | None = None) -> None:
        super().__init__()
        own = getattr(model, "stft", None)
        n_fft = n_fft or (own.n_fft if isinstance(own, STFT) else 512)
        hop_length = hop_length or (own.hop_length if isinstance(own, STFT) else 256)
        self.alpha, self.noise_term = alpha, noise_term
        self.stft = STFT(n_fft, hop_length)
        if window == "sqrt_hann":
            self.stft.window = self.stft.window.sqrt()  # replaces the (non-persistent) buffer
        self.reference_channel = int(getattr(model, "reference_channel", 0))
        self._capture = _ForwardCapture(model) if noise_term and model is not None else None

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> FTJNFLoss:
        return cls(**kwargs, model=model)

    def _terms(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        time = (est - ref).abs().mean()
        mag = (self.stft(est).abs() - self.stft(ref).abs()).abs().mean()
        return self.alpha * time + mag

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self._terms(estimate, target)
        if self.noise_term:
            if self._capture is None:
                raise RuntimeError("task loss 'ftjnf' with noise_term needs the model: build it with task_loss_for")
            noisy, _ = self._capture.take(estimate, "ftjnf")
            if noisy.dim() == estimate.dim() + 1:
                noisy = noisy[:, self.reference_channel]
            noisy = noisy.detach()
            loss = loss + self._terms(noisy - estimate, noisy - target)
        return loss


# ---------------------------------------------------------------------------------------------
# band_spectral


class BandSpectralConfig(TaskLossConfig):
    compress: float = Field(0.3, gt=0, le=1)


@register_task_loss("band_spectral")
class BandSpectralLoss(TaskLoss):
    """Compressed spectral L1 on the model's own enhanced STFT bins, with no waveform in between: the
    task loss of the sub-band family (arXiv 2005.14435 §2, each elite teacher trained on its band only;
    reconstruction, see methods.md §3.2 [R]).

    Per bin f of the model's enhanced spectrum Ŝ (``(B, F, T)``, read from its ``spectrum_tap`` before
    the iSTFT) and of S = STFT(s) with the model's own STFT: ℓ_f = mean_{b,t} |(|Ŝ|^c − |S|^c)| +
    |Ŝ_c − S_c| (S_c = |S|^c·e^{j∠S}, c = ``compress``); L = mean_f ℓ_f. Going through the waveform
    (STFT(iSTFT(Ŝ)), as ``compressed_spectral`` does) mixes neighbouring bins through the overlap-add,
    so a loss on band 0 also trained band 1's network; here bin f's term depends only on the network
    that predicts bin f, so a band's loss sends exactly no gradient into another band's network
    (:meth:`band_losses` gives the per-band terms).

    Shapes: ``estimate``, ``target``: ``(B, L)`` → scalar; the estimate must be the tensor the model
    just returned (its spectrum is read from that forward pass).

    Raises:
        RuntimeError: ``estimate`` is not the model's latest output.
    """

    Config = BandSpectralConfig
    source = "arXiv 2005.14435 §2 (reconstruction, see methods.md §3.2)"

    def __init__(self, compress: float = 0.3, *, model: nn.Module | None = None) -> None:
        super().__init__()
        reason = None if model is None else self.unsuitable(type(model))
        if model is None or reason:
            raise ConfigError(f"task loss 'band_spectral': {reason or 'needs the model it trains'}")
        own: STFT = model.stft
        self.stft = STFT(own.n_fft, own.hop_length, own.win_length)
        self.stft.window = own.window.detach().clone()
        self.compress = compress
        self.band_slices: list[slice] = list(model.band_slices())
        self._capture = _ForwardCapture(model, model.spectrum_tap)

    @classmethod
    def unsuitable(cls, model_cls: type) -> str | None:
        if not isinstance(getattr(model_cls, "spectrum_tap", None), str) or not hasattr(model_cls, "band_slices"):
            return (f"{getattr(model_cls, 'registry_name', model_cls.__name__)} exposes no enhanced spectrum "
                    "(a `spectrum_tap` and `band_slices()`, as the sub-band family does)")
        return None

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> BandSpectralLoss:
        return cls(**kwargs, model=model)

    def bin_losses(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """ℓ_f per bin, ``(F,)``."""
        _, spec_e = self._capture.take(estimate, "band_spectral")
        mag_e, cplx_e = _compressed(spec_e, self.compress)
        mag_t, cplx_t = _compressed(self.stft(target.detach()), self.compress)
        return ((mag_e - mag_t).abs() + (cplx_e - cplx_t).abs()).mean(dim=(0, 2))

    def band_losses(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean ℓ_f over each band's bins, ``(K,)`` (bands as the model cuts them; 0 for an empty band)."""
        per_bin = self.bin_losses(estimate, target)
        return torch.stack([per_bin[s].mean() if s.stop > s.start else per_bin.new_zeros(())
                            for s in self.band_slices])

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bin_losses(estimate, target).mean()


# ---------------------------------------------------------------------------------------------
# resolving a model's task loss


@dataclass(frozen=True)
class TaskLossSpec:
    """A resolved task loss: registered ``name`` and validated ``kwargs`` (explicit ones only)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """``si_snr``, or ``compressed_spectral(wav_weight=0.0)`` with kwargs: what runs log."""
        args = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}({args})" if args else self.name


def _node(spec: Any, where: str) -> tuple[Any, Any]:
    """``(name, kwargs)`` of a ``{name, kwargs}`` mapping, a bare name, or an object with those attributes."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        extra = sorted(set(spec) - {"name", "kwargs"})
        if extra:
            raise ConfigError(f"unknown key '{where}.{extra[0]}' (a task loss is {{name, kwargs}})")
        return spec.get("name"), spec.get("kwargs") or {}
    return getattr(spec, "name", None), getattr(spec, "kwargs", None) or {}


def check_task_loss(model: nn.Module | type, spec: Any = None, where: str = "training.task_loss") -> TaskLossSpec:
    """Resolve and check the task loss of a model (or model class) without building it.

    Args:
        model: the model, or its class (the plan checks classes before any model exists).
        spec: the override ``{name, kwargs}`` (a mapping, a bare name, or the schema's node); None uses
            the family default, the model's ``task_loss`` ClassVar (``compressed_spectral`` if it has none).
            An override replaces the default whole (its kwargs are not merged into the default's).
        where: the YAML key of ``spec``, for messages (the default's errors name ``<family>.task_loss``).

    Raises:
        ConfigError: one line naming ``where``: unknown name, kwargs the loss does not take or refuses,
            or a loss that cannot train this family (e.g. ``band_spectral`` on a model without bands).
    """
    model_cls = model if isinstance(model, type) else type(model)
    if spec is None:
        spec = getattr(model_cls, "task_loss", DEFAULT_TASK_LOSS)
        where = f"{getattr(model_cls, 'registry_name', model_cls.__name__)}.task_loss"
    name, kwargs = _node(spec, where)
    if not isinstance(name, str) or name not in TASK_LOSSES:
        raise ConfigError(f"{where}.name: unknown task loss {name!r} (registered: {', '.join(TASK_LOSSES.names())})")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.kwargs: expected a mapping of the loss's knobs (got {type(kwargs).__name__})")
    cls = TASK_LOSSES.get(name)
    validate(cls.Config, kwargs, prefix=f"{where}.kwargs")
    reason = cls.unsuitable(model_cls)
    if reason:
        family = getattr(model_cls, "registry_name", model_cls.__name__)
        raise ConfigError(f"{where}: task loss '{name.lower()}' cannot train {family}: {reason}")
    return TaskLossSpec(name.lower(), dict(kwargs))


def task_loss_for(model: nn.Module, spec: Any = None, where: str = "training.task_loss") -> TaskLoss:
    """Build the supervised task loss a model is trained with: ``spec`` (``training.task_loss`` /
    ``teacher.task_loss``), else the family default of the model's ``task_loss`` ClassVar (see
    :func:`check_task_loss`). The built loss carries its :class:`TaskLossSpec` as ``.spec``.

    Shapes: the returned loss maps ``estimate``, ``target``: ``(B, L)`` → scalar.

    Raises:
        ConfigError: see :func:`check_task_loss`.
    """
    resolved = check_task_loss(model, spec, where)
    cls = TASK_LOSSES.get(resolved.name)
    loss = cls.for_model(model, **validate(cls.Config, resolved.kwargs).model_dump())
    loss.spec = resolved
    return loss
