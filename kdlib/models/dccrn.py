"""DCCRN: deep complex convolution recurrent network (Hu et al., Interspeech 2020, arXiv 2008.00264 §2).

Reference configs: methods.md §2.4 (official code huyanxin/DeepComplexCRN ``dc_crn.py``; asteroid
``asteroid/models/dccrnet.py`` + ``asteroid/masknn/_dccrn_architectures.py``). This is an own
implementation of the architecture the paper and the official code describe:

1. STFT: Hann window of ``win_length`` samples, hop ``hop_length``, ``n_fft``-point FFT (defaults
   400 / 100 / 512 at 16 kHz, F = 257 bins). kdlib's :class:`~kdlib.models.stft.STFT`
   (``torch.stft``, ``center=True``) replaces the official fixed conv-STFT (ConvSTFT/ConviSTFT): the
   same window, hop and FFT size, exactly invertible, so T = L // hop + 1 frames. [R] The official
   conv-STFT pads ``win - hop`` samples on both sides instead of centring, so frame alignment and
   the spectrum's scale differ slightly from a model trained with the official code.
2. The DC bin is dropped before the encoder (as the official code does), leaving F0 = n_fft / 2
   bins; the mask is zero-padded back at DC, so the enhanced DC bin is 0.
3. Encoder: one complex conv layer per ``channels`` entry. A complex conv with C_in → C_out total
   channels (real + imag halves, like the official code) is two real convs W_r, W_i with
   C_in/2 → C_out/2 channels, combined as ``(W_r·x_r − W_i·x_i, W_r·x_i + W_i·x_r)``. Kernel
   ``kernel_size = [k_f, k_t]`` (frequency, time; paper (5, 2)), stride 2 along frequency, 1 along
   time; frequency padding k_f // 2 and causal time padding (k_t − 1 past frames). Then BatchNorm
   (real BN over all channels, the official default, or complex BN with ``use_cbn``) and PReLU.
4. Middle: the deepest encoder output ``(B, C, T, F')`` (F' = F0 / 2^n_layers) is flattened per
   frame. ``use_clstm=True`` (DCCRN-CL): ``rnn_layers`` complex LSTM layers, each two real LSTMs
   L_r, L_i of ``rnn_units/2`` hidden units combined as ``(L_r(x_r) − L_i(x_i), L_r(x_i) + L_i(x_r))``
   with input ``C/2·F'`` per part; the last layer projects each part back to ``C/2·F'`` with a real
   Linear per part (official ``NavieComplexLSTM``). ``use_clstm=False``: one real LSTM of
   ``rnn_units`` hidden units and ``rnn_layers`` layers on the concatenated real/imag features,
   then a Linear back to ``C·F'``. Unidirectional, so the model is causal.
5. Decoder: mirrored complex transposed convs (stride 2 along frequency, kernel as the encoder),
   each fed the complex concatenation ``[x_r, skip_r, x_i, skip_i]`` of the previous output and
   the matching encoder output; BN + PReLU on every layer but the last, which outputs the 2-channel
   (real, imag) mask. Transposed-conv outputs keep the first T frames. [R] The official code drops
   the first frame instead (``out[..., 1:]``), which lets each decoder layer see one future frame;
   keeping the first T frames keeps the network causal as the paper's real-time system is.
6. Masking (§2.3): ``E`` (default): ``Ŝ = tanh(|M|)·|Y|·exp(i(∠Y + ∠M))`` — a tanh-bounded
   magnitude mask plus a phase rotation; ``C``: complex multiplication ``Ŝ = M·Y``; ``R``: real and
   imaginary parts scaled separately ``Ŝ = (M_r·Y_r, M_i·Y_i)``. iSTFT to the input length. [R] The
   official output clamp to [-1, 1] is left out (it zeroes gradients of loud samples).

Native loss in the paper: negative SI-SNR, this family's default task loss (``si_snr``; a sweep's
``training.task_loss`` may pick the scale-aware ``compressed_spectral`` of the other TF-domain families).

Shapes: input ``(B, L)`` noisy waveform in samples at ``sample_rate`` Hz → output ``(B, L)``.
Feature taps (all ``(B, C, T, F)``):

- ``encoder.i``: encoder layer i, ``(B, channels[i], T, F0 / 2^(i+1))``, channels ordered
  ``[real..., imag...]``;
- ``tap_middle``: the (complex) LSTM output reshaped to ``(B, channels[-1], T, F')`` (the decoder's
  input);
- ``decoder.i``: decoder layer i (all but the last), ``(B, channels[-2-i], T, F0 / 2^(n-1-i))``;
- ``mask``: the complex mask actually applied to the noisy spectrum, ``(B, 2, T, F)`` (real, imag;
  DC bin 0). Mode E: ``tanh(|M|)·M/|M|`` (modulus <= 1); mode C: ``M``; mode R: the two per-part
  real masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model
from kdlib.models.stft import STFT

MASKING_MODES = ("E", "C", "R")
DEFAULT_CHANNELS = (32, 64, 128, 256, 256, 256)
_EPS = 1e-8


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _complex_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a_r, a_i]``, ``[b_r, b_i]`` along dim 1 → ``[a_r, b_r, a_i, b_i]`` (official ``complex_cat``)."""
    ar, ai = a.chunk(2, dim=1)
    br, bi = b.chunk(2, dim=1)
    return torch.cat([ar, br, ai, bi], dim=1)


class ComplexConv2d(nn.Module):
    """Complex 2-D conv on ``(B, C_in, T, F)`` with channels ``[real..., imag...]`` → ``(B, C_out, T, F')``.

    Two real convs (C_in/2 → C_out/2 each) combined as ``(W_r·x_r − W_i·x_i, W_r·x_i + W_i·x_r)``.
    Stride 2 along F (padding k_f // 2, so F' = ceil(F / 2)) and causal along T (k_t − 1 past frames).
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        k_f, k_t = kernel
        self.t_pad = k_t - 1
        self.real = nn.Conv2d(c_in // 2, c_out // 2, (k_t, k_f), stride=(1, 2), padding=(0, k_f // 2))
        self.imag = nn.Conv2d(c_in // 2, c_out // 2, (k_t, k_f), stride=(1, 2), padding=(0, k_f // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, self.t_pad, 0))
        xr, xi = x.chunk(2, dim=1)
        return torch.cat([self.real(xr) - self.imag(xi), self.real(xi) + self.imag(xr)], dim=1)


class ComplexConvTranspose2d(nn.Module):
    """Complex transposed conv, ×2 along F (output padding 1, so F' = 2F), causal along T (first T frames)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        k_f, k_t = kernel

        def conv() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(c_in // 2, c_out // 2, (k_t, k_f), stride=(1, 2), padding=(0, k_f // 2),
                                      output_padding=(0, 1))

        self.real, self.imag = conv(), conv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[2]
        xr, xi = x.chunk(2, dim=1)
        y = torch.cat([self.real(xr) - self.imag(xi), self.real(xi) + self.imag(xr)], dim=1)
        return y[:, :, :t]


class ComplexBatchNorm(nn.Module):
    """Complex batch norm (Trabelsi et al. 2018, as the official ``ComplexBatchNorm``) on ``[real..., imag...]``.

    Each complex channel is centred and whitened with the inverse square root of its 2×2 real/imag
    covariance, then scaled by a learnt symmetric 2×2 matrix (γ_rr, γ_ri, γ_ii) and shifted (β_r, β_i).
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        n = channels // 2
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.stack([torch.full((n,), 2**-0.5), torch.zeros(n), torch.full((n,), 2**-0.5)]))
        self.bias = nn.Parameter(torch.zeros(2, n))
        self.register_buffer("running_mean", torch.zeros(2, n))
        self.register_buffer("running_cov", torch.stack([torch.ones(n), torch.zeros(n), torch.ones(n)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr, xi = x.chunk(2, dim=1)  # (B, n, T, F) each
        dims = (0, 2, 3)
        if self.training:
            mean = torch.stack([xr.mean(dims), xi.mean(dims)])
        else:
            mean = self.running_mean
        xr = xr - mean[0].view(1, -1, 1, 1)
        xi = xi - mean[1].view(1, -1, 1, 1)
        if self.training:
            cov = torch.stack([(xr * xr).mean(dims), (xr * xi).mean(dims), (xi * xi).mean(dims)])
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_cov.lerp_(cov.detach(), self.momentum)
        else:
            cov = self.running_cov
        vrr, vri, vii = cov[0] + self.eps, cov[1], cov[2] + self.eps
        # inverse square root of [[vrr, vri], [vri, vii]]
        s = torch.sqrt(vrr * vii - vri * vri)
        t = torch.sqrt(vrr + vii + 2 * s)
        inv = 1.0 / (s * t)
        wrr, wri, wii = ((vii + s) * inv, -vri * inv, (vrr + s) * inv)
        wrr, wri, wii = (w.view(1, -1, 1, 1) for w in (wrr, wri, wii))
        nr, ni = wrr * xr + wri * xi, wri * xr + wii * xi
        grr, gri, gii = (g.view(1, -1, 1, 1) for g in self.weight)
        br, bi = (b.view(1, -1, 1, 1) for b in self.bias)
        return torch.cat([grr * nr + gri * ni + br, gri * nr + gii * ni + bi], dim=1)


class _EncoderLayer(nn.Module):
    """Complex conv → BN (real or complex) → PReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], use_cbn: bool) -> None:
        super().__init__()
        self.conv = ComplexConv2d(c_in, c_out, kernel)
        self.norm = ComplexBatchNorm(c_out) if use_cbn else nn.BatchNorm2d(c_out)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _DecoderLayer(nn.Module):
    """Complex skip-concat → complex transposed conv → BN → PReLU (plain transposed conv for the last layer)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], use_cbn: bool, last: bool) -> None:
        super().__init__()
        self.conv = ComplexConvTranspose2d(2 * c_in, c_out, kernel)
        if last:
            self.post: nn.Module = nn.Identity()
        else:
            self.post = nn.Sequential(ComplexBatchNorm(c_out) if use_cbn else nn.BatchNorm2d(c_out), nn.PReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv(_complex_cat(x, skip)))


class ComplexLSTM(nn.Module):
    """One complex LSTM layer (official ``NavieComplexLSTM``): real LSTMs L_r, L_i shared by both parts.

    ``(x_r, x_i)`` each ``(B, T, in_dim)`` → ``(L_r(x_r) − L_i(x_i), L_r(x_i) + L_i(x_r))`` each
    ``(B, T, hidden)``, optionally projected to ``proj_dim`` by one real Linear per part.
    """

    def __init__(self, in_dim: int, hidden: int, proj_dim: int | None) -> None:
        super().__init__()
        self.real = nn.LSTM(in_dim, hidden, batch_first=True)
        self.imag = nn.LSTM(in_dim, hidden, batch_first=True)
        self.proj_r = nn.Linear(hidden, proj_dim) if proj_dim else None
        self.proj_i = nn.Linear(hidden, proj_dim) if proj_dim else None

    def forward(self, xr: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # one LSTM call per weight set on the stacked parts (same maths as four separate calls)
        b = xr.shape[0]
        rr, ri = self.real(torch.cat([xr, xi]))[0].split(b)
        ir, ii = self.imag(torch.cat([xr, xi]))[0].split(b)
        yr, yi = rr - ii, ri + ir
        if self.proj_r is not None and self.proj_i is not None:
            yr, yi = self.proj_r(yr), self.proj_i(yi)
        return yr, yi


@register_model("dccrn")
class DCCRN(SEModel):
    """DCCRN (arXiv 2008.00264 §2; official code huyanxin/DeepComplexCRN ``dc_crn.py``, methods.md §2.4).

    Defaults are DCCRN-CL (complex LSTM, ``channels`` [32, 64, 128, 256, 256, 256], ``rnn_units``
    256 = 128 real + 128 imag, 2 layers, masking E): 3,671,053 parameters (paper: 3.7M). See the
    module docstring for the architecture, the taps and what is reconstructed ([R]).

    Args:
        n_fft: FFT size in samples (F = n_fft/2 + 1 bins); n_fft/2 must be divisible by
            2^len(channels) (the DC bin is dropped, each encoder layer halves the bins).
        win_length: Hann window length in samples (<= n_fft; 400 = 25 ms at 16 kHz).
        hop_length: STFT hop in samples, < win_length (100 = 6.25 ms at 16 kHz).
        channels: encoder output channels per layer, real + imag total as in the official code
            (each even); the decoder mirrors them.
        kernel_size: ``[k_f, k_t]`` complex conv kernel along frequency (odd) and time (causal), paper (5, 2).
        rnn_units: LSTM hidden units in total (real + imag halves when ``use_clstm``, so even).
        rnn_layers: LSTM layers.
        use_clstm: complex LSTM (DCCRN-CL) or one real LSTM on the concatenated real/imag features.
        use_cbn: complex batch norm instead of real BN over all channels (official default: off).
        masking_mode: ``"E"`` (tanh magnitude mask + phase rotation), ``"C"`` (complex
            multiplication) or ``"R"`` (real and imaginary parts masked separately).
        sample_rate: sample rate in Hz the model is trained for (metadata, checked by the trainer).

    Raises:
        ConfigError: one line naming the bad arg.
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "channels": "encoder/decoder widths, real+imag total (scaled first)",
        "rnn_units": "LSTM width, real+imag total (scaled first)",
        "n_layers": "encoder/decoder layers, via len(channels) (removed after widths, deepest first)",
        "rnn_layers": "LSTM layers (reduced last)",
    }
    #: the paper's objective (negative SI-SNR)
    task_loss: ClassVar[dict[str, Any]] = {"name": "si_snr", "kwargs": {}}

    def __init__(
        self,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 100,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        kernel_size: Sequence[int] = (5, 2),
        rnn_units: int = 256,
        rnn_layers: int = 2,
        use_clstm: bool = True,
        use_cbn: bool = False,
        masking_mode: str = "E",
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        # tuples (the defaults) are stored as lists so the args stay plain JSON types
        self._save_args({**locals(), "channels": _as_list(channels), "kernel_size": _as_list(kernel_size)})
        channels = _as_list(channels)
        if not isinstance(channels, list) or not channels or any(not _is_int(c) or c < 2 or c % 2 for c in channels):
            raise ConfigError(f"dccrn.channels must be a non-empty list of even ints >= 2, got {channels}")
        if not _is_int(n_fft) or n_fft < 2 or (n_fft // 2) % (2 ** len(channels)) or n_fft % 2:
            raise ConfigError(f"dccrn.n_fft={n_fft}: n_fft/2 must be divisible by 2^len(channels) = "
                              f"{2 ** len(channels)}")
        if not _is_int(win_length) or not 1 <= win_length <= n_fft:
            raise ConfigError(f"dccrn.win_length must be in [1, n_fft={n_fft}], got {win_length}")
        if not _is_int(hop_length) or not 1 <= hop_length < win_length:
            # hop >= win leaves samples no window covers: the iSTFT cannot invert
            raise ConfigError(f"dccrn.hop_length must be in [1, win_length={win_length}), got {hop_length}")
        if (not isinstance(kernel_size, (list, tuple)) or len(kernel_size) != 2
                or any(not _is_int(k) or k < 1 for k in kernel_size)
                or kernel_size[0] % 2 == 0):
            raise ConfigError(f"dccrn.kernel_size must be [k_f, k_t] positive ints with k_f odd, got {kernel_size}")
        if not _is_int(rnn_units) or rnn_units < 2 or (use_clstm and rnn_units % 2):
            raise ConfigError(f"dccrn.rnn_units must be an int >= 2 (even with use_clstm), got {rnn_units}")
        if not _is_int(rnn_layers) or rnn_layers < 1:
            raise ConfigError(f"dccrn.rnn_layers must be an int >= 1, got {rnn_layers}")
        for name, flag in (("use_clstm", use_clstm), ("use_cbn", use_cbn)):
            if not isinstance(flag, bool):
                raise ConfigError(f"dccrn.{name} must be true or false, got {flag!r}")
        if masking_mode not in MASKING_MODES:
            raise ConfigError(f"dccrn.masking_mode must be one of {', '.join(MASKING_MODES)}, got {masking_mode!r}")
        if not _is_int(sample_rate) or sample_rate < 1:
            raise ConfigError(f"dccrn.sample_rate must be a positive int (Hz), got {sample_rate}")
        self.sample_rate = sample_rate
        self.masking_mode = masking_mode
        self.use_clstm = use_clstm
        kernel = (int(kernel_size[0]), int(kernel_size[1]))
        self.stft = STFT(n_fft, hop_length, win_length)
        self.n_freqs = n_fft // 2 + 1
        self.f_mid = (n_fft // 2) // (2 ** len(channels))  # F' at the LSTM
        widths = [2, *channels]
        self.encoder = nn.ModuleList(_EncoderLayer(widths[i], widths[i + 1], kernel, use_cbn)
                                     for i in range(len(channels)))
        c = channels[-1]
        if use_clstm:
            feat = c // 2 * self.f_mid
            hidden = rnn_units // 2
            self.rnn = nn.ModuleList(
                ComplexLSTM(feat if i == 0 else hidden, hidden, feat if i == rnn_layers - 1 else None)
                for i in range(rnn_layers)
            )
        else:
            self.rnn = nn.ModuleList([nn.LSTM(c * self.f_mid, rnn_units, num_layers=rnn_layers, batch_first=True)])
            self.rnn_proj = nn.Linear(rnn_units, c * self.f_mid)
        self.tap_middle = nn.Identity()  # (B, C, T, F') view of the LSTM output
        self.decoder = nn.ModuleList(
            _DecoderLayer(widths[i + 1], widths[i], kernel, use_cbn, last=(i == 0))
            for i in reversed(range(len(channels)))
        )
        self.mask = nn.Identity()  # (B, 2, T, F) applied complex mask

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        n = len(self.decoder)
        return {
            "encoder": [f"encoder.{i}" for i in range(len(self.encoder))],
            "middle": ["tap_middle"],
            # the last decoder layer is the raw 2-channel mask, not a representation
            "decoder": [f"decoder.{i}" for i in range(n - 1)] or ["decoder.0"],
            "mask": ["mask"],
        }

    def _middle(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, F')`` → LSTM → ``(B, C, T, F')`` (same channel layout)."""
        b, c, t, f = x.shape
        if self.use_clstm:
            xr, xi = (p.permute(0, 2, 1, 3).reshape(b, t, c // 2 * f) for p in x.chunk(2, dim=1))
            for layer in self.rnn:
                xr, xi = layer(xr, xi)
            xr, xi = (p.reshape(b, t, c // 2, f) for p in (xr, xi))
            return torch.cat([xr, xi], dim=2).permute(0, 2, 1, 3)
        y = self.rnn[0](x.permute(0, 2, 1, 3).reshape(b, t, c * f))[0]
        return self.rnn_proj(y).reshape(b, t, c, f).permute(0, 2, 1, 3)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"dccrn expects a (B, L) waveform, got shape {tuple(wav.shape)}")
        length = wav.shape[-1]
        spec = self.stft(wav).transpose(1, 2)  # (B, T, F) complex
        x = torch.stack([spec.real, spec.imag], dim=1)[..., 1:]  # (B, 2, T, F-1): DC dropped
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        x = self.tap_middle(self._middle(x))
        for layer in self.decoder:
            x = layer(x, skips.pop())
        m = F.pad(x, (1, 0))  # (B, 2, T, F): DC bin of the mask = 0
        mr, mi = m[:, 0], m[:, 1]
        if self.masking_mode == "E":
            mag = torch.sqrt(mr * mr + mi * mi + _EPS)
            gain = torch.tanh(mag) / mag  # tanh(|M|)·M/|M|: bounded magnitude, phase of M
            mr, mi = mr * gain, mi * gain
        mask = self.mask(torch.stack([mr, mi], dim=1))
        mr, mi = mask[:, 0], mask[:, 1]
        if self.masking_mode == "R":
            est = torch.complex(mr * spec.real, mi * spec.imag)
        else:  # E and C: complex multiplication (E = magnitude tanh(|M|)·|Y|, phase ∠Y + ∠M)
            est = torch.complex(mr * spec.real - mi * spec.imag, mr * spec.imag + mi * spec.real)
        return self.stft.inverse(est.transpose(1, 2), length)

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """Widths first: channels and rnn_units scaled together by s on a geometric grid from 1 down
        to 0.1 in 3.5 % steps, each rounded to even (where channels are down to a few, rnn_units ±2
        too, to fill the gaps rounding leaves). Then blocks are removed (``depth_reduction`` = blocks
        removed), each depth again combined with the width grid: encoder/decoder layer pairs from
        the deep end (``len(channels)``, symmetric) before LSTM layers (``rnn_layers``).

        Removing an encoder layer doubles F' at the LSTM (as in the official code), so depth
        reduction alone does not always shrink the model; it is only reached when no width-only
        candidate fits.
        """
        base_ch = [int(c) for c in args.get("channels", DEFAULT_CHANNELS)]
        base_h = int(args.get("rnn_units", 256))
        base_l = int(args.get("rnn_layers", 2))

        def even(v: float) -> int:
            return max(2, 2 * round(v / 2))

        # sorted by (blocks removed, LSTM layers removed): at equal blocks removed, encoder/decoder
        # layer pairs go before LSTM layers
        depths = sorted(((len(base_ch) - n) + (base_l - layers), base_l - layers, n, layers)
                        for n in range(len(base_ch), 0, -1) for layers in range(base_l, 0, -1))
        for reduction, _, n, layers in depths:
            for k in range(66):  # s from 1 down to 0.1 (params down to ~1 %), 3.5 % steps (~7 % in params)
                s = math.exp(-k * 0.035)
                ch = [even(c * s) for c in base_ch[:n]]
                h0 = even(base_h * s)
                # at a few channels, rounding to even makes the grid coarse: also try rnn_units ±2
                for h in (h0, h0 - 2, h0 + 2) if min(ch) <= 4 else (h0,):
                    if not 2 <= h <= base_h:
                        continue
                    yield {**args, "channels": ch, "rnn_units": h, "rnn_layers": layers}, reduction
