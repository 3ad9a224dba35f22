"""``dpcrn_lite``: a small DPCRN-family TF-domain enhancement network (kdlib's own design; it does not
claim to be the DPDCRN of arXiv 2506.13127, which is ``dpdcrn``, see kdlib/models/dpdcrn.py).

Built before the authors' code was found (methods.md §1.3, §9.1), from the DPCRN family: STFT → 2-D conv
encoder (stride 2 along frequency) → dilated conv blocks over time → dual-path RNN blocks (bi-LSTM across
frequency within a frame, LSTM across time per frequency) → mirrored transposed-conv decoder with skip
connections → complex ratio mask on the noisy spectrum → iSTFT. Every width and depth is a constructor arg
so the size builder can hit any parameter budget. The quickstart uses it because it trains in minutes on
2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model
from kdlib.models.stft import STFT


class _ConvBlock(nn.Module):
    """Conv2d (stride 2 along F) → BatchNorm → PReLU on ``(B, C, T, F)``."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=(1, 2), padding=(kernel[0] // 2, kernel[1] // 2))
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _DilatedBlock(nn.Module):
    """Residual conv along time with dilation ``d`` (receptive field grows 2^i over blocks)."""

    def __init__(self, channels: int, dilation: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        pad = (dilation * (kernel[0] - 1) // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(channels, channels, kernel, dilation=(dilation, 1), padding=pad)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class _DualPathBlock(nn.Module):
    """Intra-frame bi-LSTM over F, then inter-frame LSTM over T, each residual + LayerNorm."""

    def __init__(self, channels: int, hidden: int, bidirectional_time: bool) -> None:
        super().__init__()
        half = max(1, hidden // 2)
        self.intra = nn.LSTM(channels, half, batch_first=True, bidirectional=True)
        self.intra_fc = nn.Linear(2 * half, channels)
        self.intra_norm = nn.LayerNorm(channels)
        t_hidden = half if bidirectional_time else hidden
        self.inter = nn.LSTM(channels, t_hidden, batch_first=True, bidirectional=bidirectional_time)
        self.inter_fc = nn.Linear(t_hidden * (2 if bidirectional_time else 1), channels)
        self.inter_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b * t, f, c)  # sequences over frequency
        y = self.intra_norm(self.intra_fc(self.intra(y)[0])).reshape(b, t, f, c)
        x = x + y.permute(0, 3, 1, 2)
        y = x.permute(0, 3, 2, 1).reshape(b * f, t, c)  # sequences over time
        y = self.inter_norm(self.inter_fc(self.inter(y)[0])).reshape(b, f, t, c)
        return x + y.permute(0, 3, 2, 1)


class _DeconvBlock(nn.Module):
    """Skip-concat → ConvTranspose2d (×2 along F) → BatchNorm → PReLU (plain conv out for the mask)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], last: bool) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            2 * c_in, c_out, kernel, stride=(1, 2), padding=(kernel[0] // 2, kernel[1] // 2)
        )
        self.post = nn.Identity() if last else nn.Sequential(nn.BatchNorm2d(c_out), nn.PReLU(c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv(torch.cat([x, skip], dim=1)))


@register_model("dpcrn_lite")
class DPCRNLite(SEModel):
    """kdlib's small DPCRN-family network, not the paper's DPDCRN (``dpdcrn``): kdlib's own design (methods.md §1.3).

    Args:
        n_fft: STFT size in samples (F = n_fft/2 + 1 bins); must give an odd F so stride-2 convs invert.
        hop_length: STFT hop in samples.
        channels: encoder widths, one stride-2 (along F) conv per entry; the decoder mirrors them.
        kernel: conv kernel (time, frequency).
        n_dilated: dilated residual conv blocks (dilations 1, 2, 4, ...).
        n_dualpath: dual-path RNN blocks.
        rnn_hidden: LSTM hidden size of the dual-path blocks.
        bidirectional_time: bi-LSTM over time (offline) or uni-LSTM (streamable).
        compress: power-law exponent applied to the input magnitude (0 < c <= 1).
        sample_rate: sample rate in Hz the model is trained for (metadata, checked by the trainer).

    Shapes: input ``(B, L)`` noisy waveform → output ``(B, L)`` enhanced waveform. Feature taps
    (``encoder.i``, ``dilated.i``, ``dualpath.i``, ``decoder.i``) output ``(B, C, T, F_i)``.

    Raises:
        ConfigError: empty ``channels``, non-positive sizes, an even number of frequency bins or a
            compress exponent outside (0, 1].
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "channels": "encoder/decoder widths (scaled first)",
        "rnn_hidden": "dual-path LSTM width (scaled first)",
        "n_dualpath": "dual-path blocks (reduced after widths)",
        "n_dilated": "dilated conv blocks (reduced after widths)",
    }

    def __init__(
        self,
        n_fft: int = 512,
        hop_length: int = 256,
        channels: Sequence[int] = (32, 48, 48),
        kernel: Sequence[int] = (3, 3),
        n_dilated: int = 2,
        n_dualpath: int = 2,
        rnn_hidden: int = 64,
        bidirectional_time: bool = True,
        compress: float = 0.5,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        channels = [int(c) for c in channels]
        kernel_t = (int(kernel[0]), int(kernel[1]))
        if not channels or min(channels) < 1:
            raise ConfigError(f"dpcrn_lite.channels must be a non-empty list of positive ints, got {channels}")
        if (n_fft // 2) % (2 ** len(channels)) != 0:
            # each stride-2 conv maps F → (F-1)/2 + 1; the decoder inverts it only for odd F at every level
            raise ConfigError(f"dpcrn_lite.n_fft={n_fft}: n_fft/2 must be divisible by 2^len(channels); "
                              "use a power of two")
        if min(hop_length, rnn_hidden) < 1 or min(n_dilated, n_dualpath) < 0:
            raise ConfigError("dpcrn_lite: hop_length and rnn_hidden must be >= 1, block counts >= 0")
        if not 0 < compress <= 1:
            raise ConfigError(f"dpcrn_lite.compress must be in (0, 1], got {compress}")
        if kernel_t[0] % 2 == 0 or kernel_t[1] % 2 == 0:
            raise ConfigError(f"dpcrn_lite.kernel must be odd in both axes, got {kernel_t}")
        self.sample_rate = sample_rate
        self.compress = compress
        self.stft = STFT(n_fft, hop_length)
        widths = [2, *channels]
        self.encoder = nn.ModuleList(_ConvBlock(widths[i], widths[i + 1], kernel_t) for i in range(len(channels)))
        c = channels[-1]
        self.dilated = nn.ModuleList(_DilatedBlock(c, 2**i, kernel_t) for i in range(n_dilated))
        self.dualpath = nn.ModuleList(_DualPathBlock(c, rnn_hidden, bidirectional_time) for _ in range(n_dualpath))
        outs = [2, *channels[:-1]]
        self.decoder = nn.ModuleList(
            _DeconvBlock(channels[i], outs[i], kernel_t, last=(i == 0)) for i in reversed(range(len(channels)))
        )
        self.mask = nn.Tanh()  # a module so KD methods can tap the (B, 2, T, F) complex mask by name

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        return {
            "encoder": [f"encoder.{i}" for i in range(len(self.encoder))],
            "middle": [f"dilated.{i}" for i in range(len(self.dilated))]
            + [f"dualpath.{i}" for i in range(len(self.dualpath))],
            # the last decoder layer is the 2-channel mask itself, not a representation
            "decoder": [f"decoder.{i}" for i in range(len(self.decoder) - 1)] or ["decoder.0"],
            # (B, 2, T, F) real/imag compressed-range mask in [-1, 1]; not part of the default sets
            "mask": ["mask"],
        }

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        length = wav.shape[-1]
        spec = self.stft(wav)  # (B, F, T)
        mag = spec.abs().clamp_min(1e-8)
        compressed = spec * (mag ** (self.compress - 1.0))
        x = torch.stack([compressed.real, compressed.imag], dim=1).transpose(2, 3)  # (B, 2, T, F)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block in self.dilated:
            x = block(x)
        for block in self.dualpath:
            x = block(x)
        for block in self.decoder:
            x = block(x, skips.pop())
        mask = self.mask(x).transpose(2, 3)  # (B, 2, F, T), each part bounded in [-1, 1]
        est = torch.complex(
            mask[:, 0] * spec.real - mask[:, 1] * spec.imag,
            mask[:, 0] * spec.imag + mask[:, 1] * spec.real,
        )
        return self.stft.inverse(est, length)

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """Widths scaled by s (channels and rnn_hidden together), then fewer dual-path/dilated blocks."""
        base_ch = [int(c) for c in args.get("channels", (32, 48, 48))]
        base_h = int(args.get("rnn_hidden", 64))
        n_dp = int(args.get("n_dualpath", 2))
        n_dl = int(args.get("n_dilated", 2))
        depths = [(dp, dl) for dp in range(n_dp, 0, -1) for dl in range(n_dl, -1, -1)]
        for dp, dl in depths:
            reduction = (n_dp - dp) + (n_dl - dl)
            for k in range(400):
                s = math.exp(-k * 0.01)  # fine geometric grid down to ~2 % width
                ch = [max(2, round(c * s)) for c in base_ch]
                h = max(2, round(base_h * s))
                yield {**args, "channels": ch, "rnn_hidden": h, "n_dualpath": dp, "n_dilated": dl}, reduction
