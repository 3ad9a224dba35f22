"""Sub-band spectral-mapping model for sub-band KD (Hao et al., Interspeech 2020, arXiv 2005.14435;
reconstruction, see methods.md §3.2 [R]).

The STFT magnitude is cut into ``n_bands`` contiguous bands of equal width (plus ``context_bins``
neighbouring bins on each side as extra input). Each band is mapped to a magnitude mask by a small
network: Linear → LSTM over time → Linear → sigmoid.

- ``shared=False``: one network per band — the K "elite" sub-band teachers, held in one model so
  ``kdlib train-teacher`` trains all K at once. Each band's mask only touches its own bins and the
  family's task loss, ``band_spectral`` (:class:`kdlib.losses.BandSpectralLoss`), is computed on the
  model's own enhanced STFT bins (``tap_spectrum``, before the iSTFT), so every band network is trained
  on its band only: a band's loss sends exactly no gradient into another band's network. (A loss on
  the STFT of the output waveform would not: the iSTFT's overlap-add mixes neighbouring bins.)
- ``shared=True``: one network for all bands, with the band index appended as a one-hot input —
  the general sub-band student. ``n_bands=1, shared=True`` is the full-band baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model
from kdlib.models.stft import STFT


class _BandNet(nn.Module):
    def __init__(self, in_dim: int, hidden: int, n_layers: int, width: int, bidirectional: bool) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.rnn = nn.LSTM(hidden, hidden, num_layers=n_layers, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, T, in_dim)`` → (input embedding ``(N, T, H)``, RNN output ``(N, T, H')``, logits ``(N, T, W)``)."""
        e = self.inp(x)
        r = self.rnn(e)[0]
        return e, r, self.out(r)


@register_model("subband")
class SubbandNet(SEModel):
    """Sub-band magnitude-mask network (arXiv 2005.14435 §2, reconstruction [R]).

    Args:
        n_fft, hop_length: STFT size and hop in samples.
        n_bands: K contiguous bands of equal width W = ceil(F / K) bins (the last is zero-padded).
        context_bins: neighbouring bins on each side fed as context (not predicted).
        hidden: width of the input projection and the LSTM.
        n_layers: LSTM layers.
        shared: one network for every band (student / full-band) or one per band (elite teachers).
        bidirectional: bi-LSTM over time (offline) or uni-LSTM (streamable).
        sample_rate: Hz (metadata).

    Shapes: ``(B, L)`` → ``(B, L)``. Feature taps ``(B, C, T, K)`` with the band axis as the
    frequency axis: ``encoder`` (input embedding, C = hidden), ``middle`` (LSTM output),
    ``decoder`` (mask logits, C = W); ``mask`` is the ``(B, 1, T, F)`` magnitude mask. ``tap_spectrum``
    (not a feature set) gives the enhanced spectrum ``(B, F, T)`` the task loss reads.

    Raises:
        ConfigError: non-positive sizes or more bands than frequency bins.
    """

    size_knobs: ClassVar[dict[str, str]] = {"hidden": "band network width (scaled first)",
                                            "n_layers": "LSTM layers (reduced after width)"}
    #: band-decomposable task loss on the model's own STFT bins: no iSTFT → STFT path couples the bands
    task_loss: ClassVar[dict[str, Any]] = {"name": "band_spectral", "kwargs": {}}
    #: module whose output is the enhanced spectrum ``(B, F, T)`` before the iSTFT (read by ``band_spectral``)
    spectrum_tap: ClassVar[str] = "tap_spectrum"

    def __init__(self, n_fft: int = 512, hop_length: int = 256, n_bands: int = 4, context_bins: int = 2,
                 hidden: int = 64, n_layers: int = 1, shared: bool = True, bidirectional: bool = False,
                 sample_rate: int = 16000) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        n_freqs = n_fft // 2 + 1
        if min(n_bands, hidden, n_layers, hop_length) < 1 or context_bins < 0 or n_bands > n_freqs:
            raise ConfigError(f"subband: need 1 <= n_bands <= {n_freqs}, hidden/n_layers/hop >= 1, context_bins >= 0")
        self.sample_rate = sample_rate
        self.n_bands, self.context, self.shared = n_bands, context_bins, shared
        self.n_freqs = n_freqs
        self.width = math.ceil(n_freqs / n_bands)
        self.stft = STFT(n_fft, hop_length)
        in_dim = self.width + 2 * context_bins + (n_bands if shared else 0)
        n_nets = 1 if shared else n_bands
        self.bands = nn.ModuleList(_BandNet(in_dim, hidden, n_layers, self.width, bidirectional) for _ in range(n_nets))
        # identity taps give hooks (B, C, T, K) views of the per-band tensors
        self.tap_encoder, self.tap_middle, self.tap_decoder, self.mask = (nn.Identity() for _ in range(4))
        self.tap_spectrum = nn.Identity()

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        return {"encoder": ["tap_encoder"], "middle": ["tap_middle"], "decoder": ["tap_decoder"], "mask": ["mask"]}

    def band_slices(self) -> list[slice]:
        """The STFT bins each band's network predicts, band 0 first (the last bands may be narrower, or empty
        when K·W overshoots F)."""
        return [slice(min(k * self.width, self.n_freqs), min((k + 1) * self.width, self.n_freqs))
                for k in range(self.n_bands)]

    def _band_inputs(self, logmag: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` log-magnitude → ``(B, K, T, W + 2·context)`` band inputs."""
        pad_hi = self.width * self.n_bands - self.n_freqs
        x = F.pad(logmag, (self.context, pad_hi + self.context), mode="replicate")
        span = self.width + 2 * self.context
        return torch.stack([x[..., k * self.width: k * self.width + span] for k in range(self.n_bands)], dim=1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        length = wav.shape[-1]
        spec = self.stft(wav)  # (B, F, T)
        b, _, t = spec.shape
        logmag = torch.log1p(spec.abs()).transpose(1, 2)  # (B, T, F)
        x = self._band_inputs(logmag)  # (B, K, T, D)
        k = self.n_bands
        if self.shared:
            onehot = torch.eye(k, device=x.device, dtype=x.dtype)[None, :, None, :].expand(b, k, t, k)
            e, r, logits = self.bands[0](torch.cat([x, onehot], dim=-1).reshape(b * k, t, -1))
            e, r, logits = (z.reshape(b, k, t, -1) for z in (e, r, logits))
        else:
            outs = [net(x[:, i]) for i, net in enumerate(self.bands)]
            e, r, logits = (torch.stack([o[j] for o in outs], dim=1) for j in range(3))
        self.tap_encoder(e.permute(0, 3, 2, 1))  # (B, H, T, K)
        self.tap_middle(r.permute(0, 3, 2, 1))
        logits = self.tap_decoder(logits.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # back to (B, K, T, W)
        mask = torch.sigmoid(logits).permute(0, 2, 1, 3).reshape(b, t, k * self.width)[..., : self.n_freqs]
        mask = self.mask(mask.unsqueeze(1))  # (B, 1, T, F)
        return self.stft.inverse(self.tap_spectrum(spec * mask[:, 0].transpose(1, 2)), length)

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        base_h, base_l = int(args.get("hidden", 64)), int(args.get("n_layers", 1))
        for layers in range(base_l, 0, -1):
            for h in range(base_h, 0, -1):
                yield {**args, "hidden": h, "n_layers": layers}, base_l - layers
