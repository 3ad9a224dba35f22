"""Supervised enhancement losses (the task loss every trial adds KD to)."""

from __future__ import annotations

import torch
from torch import nn

from kdlib.models.stft import STFT


class CompressedSpectralLoss(nn.Module):
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

    def __init__(self, n_fft: int = 512, hop_length: int = 256, compress: float = 0.3,
                 wav_weight: float = 10.0) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop_length)
        self.compress = compress
        self.wav_weight = wav_weight

    def _compressed(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.stft(wav)
        mag = spec.abs().clamp_min(1e-8)  # clamp keeps the gradient of |S|^c finite at 0
        mag_c = mag**self.compress
        return mag_c, spec * (mag_c / mag)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mag_e, spec_e = self._compressed(estimate)
        mag_t, spec_t = self._compressed(target)
        loss = (mag_e - mag_t).abs().mean() + (spec_e - spec_t).abs().mean()
        if self.wav_weight:
            loss = loss + self.wav_weight * (estimate - target).abs().mean()
        return loss


def task_loss_for(model: nn.Module) -> nn.Module:
    """The supervised task loss a model is trained with: :class:`CompressedSpectralLoss` with the
    model family's overrides from its ``task_loss_kwargs`` attribute (e.g. sub-band models drop the
    waveform term, see ``kdlib/models/subband.py``), defaults otherwise.

    Shapes: the returned loss maps ``estimate``, ``target``: ``(B, L)`` → scalar.

    Raises:
        TypeError: ``task_loss_kwargs`` names an argument :class:`CompressedSpectralLoss` does not take.
    """
    return CompressedSpectralLoss(**getattr(model, "task_loss_kwargs", {}))
