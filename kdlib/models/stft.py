"""STFT / iSTFT pair shared by the TF-domain models and the spectral losses."""

from __future__ import annotations

import torch
from torch import nn


class STFT(nn.Module):
    """Hann-windowed STFT with its exact inverse (``center=True``, so iSTFT(STFT(x)) == x).

    Args:
        n_fft: FFT size in samples (F = n_fft // 2 + 1 bins).
        hop_length: frame shift in samples.
        win_length: window length in samples (defaults to ``n_fft``).
    """

    def __init__(self, n_fft: int = 512, hop_length: int = 256, win_length: int | None = None) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        # a buffer so .to(device) moves it; not persistent so checkpoints stay architecture-only
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` waveform → complex spectrum ``(..., F, T)`` (complex64: float32 even under bf16 autocast,
        whose half-precision FFTs are refused or inexact for these sizes)."""
        shape = wav.shape
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                _full(wav.reshape(-1, shape[-1])), self.n_fft, self.hop_length, self.win_length,
                window=self.window, center=True, return_complex=True,
            )
        return spec.reshape(*shape[:-1], *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Complex spectrum ``(..., F, T)`` → waveform ``(..., length)``."""
        shape = spec.shape
        with torch.autocast(spec.device.type, enabled=False):
            wav = torch.istft(
                _full(spec.reshape(-1, *shape[-2:])), self.n_fft, self.hop_length, self.win_length,
                window=self.window, center=True, length=length,
            )
        return wav.reshape(*shape[:-2], length)

    def frames(self, length: int) -> int:
        """Number of frames T for a signal of ``length`` samples."""
        return length // self.hop_length + 1


def _full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 / complex64 when it is in a half precision (bf16 / fp16), else unchanged."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.float()
    if x.dtype == torch.complex32:
        return x.to(torch.complex64)
    return x
