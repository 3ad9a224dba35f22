"""Conv-TasNet: fully-convolutional time-domain audio separation network (Luo & Mesgarani,
IEEE/ACM TASLP 2019, arXiv 1809.07454 §II), used here for single-source enhancement (one mask).
Only §II as a whole is cited: the paper's subsections were not checked; the details follow
asteroid's code.

Reference config: methods.md §2.4 (asteroid ``asteroid/models/conv_tasnet.py`` and
``asteroid/masknn/convolutional.py`` ``TDConvNet``/``Conv1DBlock``). Own implementation of the
architecture the paper and asteroid describe:

1. Encoder: a learned ("free") filterbank, ``Conv1d(1, N, L, stride)`` without bias, on the
   padded waveform → ``w`` ``(B, N, T)``. No non-linearity on ``w`` (asteroid's Conv-TasNet default
   ``encoder_activation=None``).
2. Separator (TCN): global layer norm (gLN) of ``w`` and a 1×1 bottleneck conv to B
   channels; then R repeats × X 1-D conv blocks. Block x of a repeat: 1×1 conv B→H, PReLU, gLN,
   depthwise conv of kernel P with dilation 2^x ("same" padding), PReLU, gLN, then a 1×1 residual
   conv H→B (added to the block input) and a 1×1 skip conv H→Sc (summed over all blocks). The mask
   is estimated from the skip sum (or from the residual stream when ``skip_chan=0``, per asteroid
   the network of the paper's first arXiv version): PReLU, 1×1 conv to N channels, then
   ``mask_act`` (sigmoid, asteroid's default, or relu, the WHAM recipe's choice).
3. Decoder: ``ConvTranspose1d(N, 1, L, stride)`` without bias on the masked encoder output
   ``w ⊙ m`` (one source: the enhanced speech).

Framing [R]: asteroid runs the encoder without padding and zero-pads the decoder output to the
input length, which leaves the last ``(L_in − L) mod stride`` samples outside every frame. Here the
input is zero-padded by ``L − stride`` samples on the left and enough on the right that the edge
samples lie in as many frames as the interior ones (L / stride each when stride divides L); the
decoder output is cropped back, so T = ⌊(L_in + L − stride − 1) / stride⌋ + 1 frames (2001 for
one second at 16 kHz with L = 16, stride 8).

Native loss in the paper: negative SI-SNR, this family's default task loss (``si_snr``).

Shapes: input ``(B, L_in)`` noisy waveform in samples at ``sample_rate`` Hz → output ``(B, L_in)``.
Time-domain model, so every feature tap is ``(B, C, T, 1)`` (T encoder frames, a singleton
frequency axis):

- ``encoder``: ``tap_encoder`` (encoder output w, C = N) and ``tap_bottleneck`` (gLN + 1×1
  bottleneck, C = B);
- ``middle``: ``tap_repeat.r`` for r = 0..R−1, the residual stream after the last block of repeat
  r (C = B). With skip connections the last repeat's residual-conv output feeds only this tap, not
  the mask (as in asteroid, whose last residual conv is likewise unused by the mask);
- ``decoder``: ``tap_skip`` (the skip sum, C = Sc; absent when ``skip_chan=0``) and ``tap_score``
  (the pre-activation mask, C = N).

No ``mask`` set: the mask lives on the model's own learned basis (N filters), which the size
builder scales and which is not aligned between independently trained teacher and student, so
``mask_matching`` refuses this family (ConfigError: no ``mask`` tap). The singleton frequency
axis (``frequency_axis = False``) would make ``ss_wideband`` and the frequency streams of the
self-similarity methods constant (each frame's 1×1 frequency self-similarity is 1, for student and
teacher alike), so :mod:`kdlib.kd.compat` refuses them; their time streams and every other tap-based
method work as usual.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model

MASK_ACTS = ("relu", "sigmoid")
_EPS = 1e-8


def check_int(model: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else ConfigError naming ``model.name`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{model}.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(model: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{model}.{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def frame_padding(length: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """``(left, right, n_frames)`` zero padding of a length-``length`` signal for frames of
    ``kernel`` samples every ``stride`` samples, so the edge samples lie in as many frames as the
    interior ones (exactly kernel / stride frames each when stride divides kernel; otherwise
    ⌊kernel / stride⌋ or ⌈kernel / stride⌉, periodically, as inside any long signal).

    left = kernel − stride; n_frames = ⌊(left + length − 1) / stride⌋ + 1; right makes the padded
    length exactly ``(n_frames − 1)·stride + kernel`` (≥ kernel − stride).
    """
    left = kernel - stride
    n_frames = (left + max(length, 1) - 1) // stride + 1
    right = (n_frames - 1) * stride + kernel - left - length
    return left, right, n_frames


def fine_scales(step: float = 0.01, smallest: float = 1e-3) -> Iterator[float]:
    """Width scales s = exp(−step·k), k = 0, 1, ..., while s >= ``smallest``."""
    k = 0
    while (s := math.exp(-step * k)) >= smallest:
        yield s
        k += 1


def thin_by_params(path: Iterable[tuple[dict[str, Any], int]], keep: float = 0.88,
                   floor: float = 0.01) -> Iterator[dict[str, Any]]:
    """Thin a shrinking path of ``(args, params)`` to geometric parameter steps.

    Yields the first args, then each whose params have fallen to ``keep`` × the last yielded
    one's, and stops below ``floor`` × the first one's params. With a 1 % width grid consecutive
    yields differ by 12-14 % in params, so any target in range lies within ±7.5 % of one of them,
    while the size builder instantiates only ~36 candidates per depth (the meta-device
    instantiation, not the count, is the builder's cost).
    """
    first = last = None
    for args, params in path:
        if first is None:
            first = last = params
            yield args
        elif params < floor * first:
            return
        elif params <= keep * last:
            last = params
            yield args


class GlobalLayerNorm(nn.Module):
    """Global layer norm (gLN, arXiv 1809.07454 §II; asteroid ``GlobLN``).

    Normalises each batch item over all its non-batch axes (channels and time together), then
    applies a per-channel gain γ and bias β: ``γ·(x − mean) / sqrt(var + 1e-8) + β``.

    Args:
        channels: size of the channel axis.
        channel_dim: which axis holds the channels (1 for ``(B, C, T)``, −1 for ``(B, T, C)``).
    """

    def __init__(self, channels: int, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return (x - mean) / torch.sqrt(var + _EPS) * self.gamma.view(shape) + self.beta.view(shape)


def mask_nonlinearity(score: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.relu(score) if kind == "relu" else torch.sigmoid(score)


class _Conv1DBlock(nn.Module):
    """One TCN block (arXiv 1809.07454 §II; asteroid ``Conv1DBlock``): 1×1 conv B→H, PReLU, gLN, depthwise dilated
    conv, PReLU, gLN; returns (residual ``(B, B_ch, T)``, skip ``(B, Sc, T)`` or None)."""

    def __init__(self, bn_chan: int, hid_chan: int, skip_chan: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(
            nn.Conv1d(bn_chan, hid_chan, 1),
            nn.PReLU(),
            GlobalLayerNorm(hid_chan),
            nn.Conv1d(hid_chan, hid_chan, kernel, padding=(kernel - 1) * dilation // 2, dilation=dilation,
                      groups=hid_chan),
            nn.PReLU(),
            GlobalLayerNorm(hid_chan),
        )
        self.res_conv = nn.Conv1d(hid_chan, bn_chan, 1)
        self.skip_conv = nn.Conv1d(hid_chan, skip_chan, 1) if skip_chan else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.shared(x)
        return self.res_conv(h), (self.skip_conv(h) if self.skip_conv is not None else None)


@register_model("convtasnet")
class ConvTasNet(SEModel):
    """Conv-TasNet for single-source enhancement (arXiv 1809.07454 §II; asteroid defaults, methods.md §2.4).

    Args:
        n_filters: N, learned encoder/decoder basis functions (asteroid 512).
        kernel_size: L, basis-function length in samples (16 = 1 ms at 16 kHz).
        stride: encoder hop in samples (L/2 = 8); 1 <= stride <= kernel_size.
        bn_chan: B, bottleneck (residual-path) channels of the TCN (128).
        hid_chan: H, channels inside each conv block (512).
        skip_chan: Sc, skip-connection channels (128); 0 = no skip path, the mask comes from the
            residual stream (per asteroid, the network of the paper's first arXiv version).
        conv_kernel: P, depthwise conv kernel (3); odd so "same" padding keeps T.
        n_blocks: X, conv blocks per repeat, dilations 1, 2, ..., 2^(X−1) (8).
        n_repeats: R, repeats of the X blocks (3).
        mask_act: ``sigmoid`` (asteroid's model default) or ``relu`` (the WHAM recipe's choice).
        sample_rate: Hz the model is trained for (metadata, checked by the trainer).

    Shapes: ``(B, L_in)`` → ``(B, L_in)``; taps ``(B, C, T, 1)`` (see the module docstring).
    Default config: 4,984,497 params, 9.81 G MACs per second of 16 kHz audio (asteroid's 2-source
    model has 5.05 M params, its mask conv being twice as wide).

    Raises:
        ConfigError: a non-integer or non-positive size, stride > kernel_size, an even conv_kernel
            or an unknown mask_act (the message names the arg).
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "n_filters": "encoder/decoder basis functions N (scaled first, with the TCN widths)",
        "bn_chan": "bottleneck channels B (scaled first)",
        "hid_chan": "conv-block channels H (scaled first)",
        "skip_chan": "skip channels Sc (scaled first)",
        "n_blocks": "blocks per repeat X (reduced after widths)",
        "n_repeats": "repeats R (reduced after X)",
    }
    #: the paper's objective (negative SI-SNR); taps are (B, C, T, 1): no frequency axis
    task_loss: ClassVar[dict[str, Any]] = {"name": "si_snr", "kwargs": {}}
    frequency_axis: ClassVar[bool] = False

    def __init__(
        self,
        n_filters: int = 512,
        kernel_size: int = 16,
        stride: int = 8,
        bn_chan: int = 128,
        hid_chan: int = 512,
        skip_chan: int = 128,
        conv_kernel: int = 3,
        n_blocks: int = 8,
        n_repeats: int = 3,
        mask_act: str = "sigmoid",
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        m = "convtasnet"
        n = check_int(m, "n_filters", n_filters, 1)
        self.kernel_size = check_int(m, "kernel_size", kernel_size, 1)
        self.stride = check_int(m, "stride", stride, 1)
        if self.stride > self.kernel_size:
            raise ConfigError(f"convtasnet.stride must be <= kernel_size ({kernel_size}), got {stride}")
        bn = check_int(m, "bn_chan", bn_chan, 1)
        hid = check_int(m, "hid_chan", hid_chan, 1)
        sc = check_int(m, "skip_chan", skip_chan, 0)
        p = check_int(m, "conv_kernel", conv_kernel, 1)
        if p % 2 == 0:
            raise ConfigError(f"convtasnet.conv_kernel must be odd (same-length dilated convs), got {conv_kernel}")
        self.n_blocks = check_int(m, "n_blocks", n_blocks, 1)
        self.n_repeats = check_int(m, "n_repeats", n_repeats, 1)
        self.mask_act = check_choice(m, "mask_act", mask_act, MASK_ACTS)
        self.sample_rate = check_int(m, "sample_rate", sample_rate, 1)

        self.encoder = nn.Conv1d(1, n, self.kernel_size, stride=self.stride, bias=False)
        self.bottleneck = nn.Sequential(GlobalLayerNorm(n), nn.Conv1d(n, bn, 1))
        self.blocks = nn.ModuleList(
            _Conv1DBlock(bn, hid, sc, p, 2**x) for _ in range(self.n_repeats) for x in range(self.n_blocks)
        )
        self.mask_net = nn.Sequential(nn.PReLU(), nn.Conv1d(sc or bn, n, 1))
        self.decoder = nn.ConvTranspose1d(n, 1, self.kernel_size, stride=self.stride, bias=False)
        # identity taps: forward hooks read (B, C, T, 1) views of the 3-D activations
        self.tap_encoder, self.tap_bottleneck, self.tap_score = nn.Identity(), nn.Identity(), nn.Identity()
        self.tap_repeat = nn.ModuleList(nn.Identity() for _ in range(self.n_repeats))
        self.tap_skip = nn.Identity() if sc else None

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        return {
            "encoder": ["tap_encoder", "tap_bottleneck"],
            "middle": [f"tap_repeat.{r}" for r in range(self.n_repeats)],
            "decoder": (["tap_skip"] if self.tap_skip is not None else []) + ["tap_score"],
        }

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"convtasnet expects a (B, L) waveform, got shape {tuple(wav.shape)}")
        length = wav.shape[-1]
        left, right, _ = frame_padding(length, self.kernel_size, self.stride)
        w = self.encoder(F.pad(wav.unsqueeze(1), (left, right)))  # (B, N, T)
        self.tap_encoder(w.unsqueeze(-1))
        y = self.bottleneck(w)
        self.tap_bottleneck(y.unsqueeze(-1))
        skip_sum: torch.Tensor | None = None
        for i, block in enumerate(self.blocks):
            res, skip = block(y)
            y = y + res
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
            if (i + 1) % self.n_blocks == 0:
                self.tap_repeat[i // self.n_blocks](y.unsqueeze(-1))
        if self.tap_skip is not None:
            self.tap_skip(skip_sum.unsqueeze(-1))
        score = self.mask_net(skip_sum if skip_sum is not None else y)  # (B, N, T)
        self.tap_score(score.unsqueeze(-1))
        out = self.decoder(w * mask_nonlinearity(score, self.mask_act))  # (B, 1, padded length)
        return out[:, 0, left:left + length]

    @staticmethod
    def analytic_params(args: dict[str, Any]) -> int:
        """Parameter count of ``ConvTasNet(**args)`` in closed form (the size builder's fast path)."""
        a = {**_DEFAULTS, **args}
        n, k, bn, hid, sc, p = (int(a[x]) for x in ("n_filters", "kernel_size", "bn_chan", "hid_chan",
                                                    "skip_chan", "conv_kernel"))
        block = (bn * hid + hid) + 1 + 2 * hid + (hid * p + hid) + 1 + 2 * hid + (hid * bn + bn)
        block += (hid * sc + sc) if sc else 0
        mask_net = 1 + (sc or bn) * n + n
        return 2 * n * k + (2 * n + n * bn + bn) + int(a["n_repeats"]) * int(a["n_blocks"]) * block + mask_net

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """N, B, H, Sc scaled together by s (fine geometric grid thinned to ~12 % parameter steps,
        down to 1 % of the full-width params), then fewer blocks: every (R', X') with
        R'·X' < R·X, fewest removed blocks first, X reduced before R."""
        widths = {k: int(args.get(k, _DEFAULTS[k])) for k in ("n_filters", "bn_chan", "hid_chan", "skip_chan")}
        reps = int(args.get("n_repeats", _DEFAULTS["n_repeats"]))
        blocks = int(args.get("n_blocks", _DEFAULTS["n_blocks"]))
        depths = sorted(((r, x) for r in range(1, reps + 1) for x in range(1, blocks + 1)),
                        key=lambda d: (reps * blocks - d[0] * d[1], reps - d[0]))
        for r, x in depths:
            def point(s: float, r: int = r, x: int = x) -> dict[str, Any]:
                scaled = {name: (max(2, round(w * s)) if w else 0) for name, w in widths.items()}
                return {**args, **scaled, "n_repeats": r, "n_blocks": x}

            path = ((a, cls.analytic_params(a)) for a in map(point, fine_scales()))
            for cand in thin_by_params(path):
                yield cand, reps * blocks - r * x


_DEFAULTS: dict[str, Any] = {
    k: v.default for k, v in inspect.signature(ConvTasNet.__init__).parameters.items() if k != "self"
}


__all__ = ["ConvTasNet", "GlobalLayerNorm", "fine_scales", "frame_padding", "thin_by_params"]
