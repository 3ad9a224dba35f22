"""DPDCRN: the dual-path dilated convolutional recurrent network of the I2RF-TFCKD paper (Cheng et al.,
arXiv 2506.13127), built from the authors' code: GitHub ``JMCheng-SEU/I2RF-TFCKD-SE``, file ``DPDCRN.py``
(commit 0c7a0cf8cb8181cf1eb669c2f8e02d37f2c18b6b; methods.md §9.1). This is an own implementation of that
architecture; the authors' ``DPDCRN_Tea`` is the default config, their ``DPDCRN_Stu_M`` is
``channels=64, n_aia_blocks=1``.

Pipeline for a noisy waveform ``(B, L)`` at 16 kHz:

1. STFT (Hann, ``n_fft`` 512 → F = 257 bins, ``hop_length`` 256, ``center=True``, T = L // hop + 1
   frames) → real/imag stacked as ``(B, 2, T, F)``, the authors' network input. [R] The authors' files
   fix F = 257 (n_fft 512) but not the hop or window; 256 (16 ms, 50 % overlap) is kdlib's choice.
2. Dense encoder: conv 1×3 stride (1, 2) with frequency padding 1 (F → F1 = (F − 1)/2 + 1 = 129), then
   conv 1×3 stride (1, 2) unpadded (F1 → F2 = (F1 − 3)/2 + 1 = 64), each InstanceNorm (affine) + PReLU
   (one slope per channel); then a dilated dense block.
3. Dilated dense block (the authors' ``DilatedDenseNet``): ``dense_depth`` (4) convs with kernel (2, 3)
   (time, frequency) and time dilation 1, 2, 4, 8, each padded with ``dilation`` past frames only
   (causal in time) and one bin on each side of frequency, InstanceNorm + PReLU; conv i sees the
   concatenation of all previous outputs and the block input (C·(i+1) channels); the block returns
   the last conv's output.
4. AIA dual path (the authors' ``AIA_Transformer_Res``): 1×1 conv C → d = C/2 + PReLU (one slope);
   per block a bidirectional transformer layer along frequency (sequences of F2 bins, one per frame)
   and a unidirectional one along time (sequences of T frames, one per bin), both reading the same
   block input; each output GroupNorm'ed (one group, eps 1e-8); the block output is
   ``x + k1·freq + k2·time`` with k1, k2 learned scalars (initialised to 1) shared by all blocks.
   Transformer layer: LayerNorm → multi-head self-attention (``n_heads`` 4) → residual → LayerNorm →
   GRU (hidden 2d, bidirectional along frequency, forward-only along time) → ReLU → Linear → residual →
   LayerNorm (a GRU in place of the feed-forward net). After every block the shared output head
   (PReLU, one slope → 1×1 conv d → C) gives that block's output; the last one feeds the decoder.
5. Complex decoder: dilated dense block → transposed conv 1×3 stride (1, 2) (F2 → F1) + InstanceNorm
   + PReLU → transposed conv 1×3 stride (1, 2) to 2 channels (F1 → F + 2, the last 2 bins cut).
6. Mask (the authors' polar masking): enhanced magnitude tanh(|M|)·|Y|, phase ∠Y + ∠M, i.e.
   Ŝ = tanh(|M|)·(M/|M|)·Y; iSTFT back to L samples. [R] The eps terms differ slightly (kdlib uses
   |M| = sqrt(M_r² + M_i² + 1e-8) and no eps on |Y|).

Causality. The authors' time-direction convs are causal and the time GRU runs forward only, but their
network as written is not causal: InstanceNorm and GroupNorm take statistics over all T frames, and
the time attention has no mask. ``causal=False`` (default) is the authors' network; ``causal=True``
masks the time attention to past frames and replaces both norms by cumulative ones (statistics over
frequency, and channels for the GroupNorm, and all frames up to t), with the same affine parameters
and state-dict keys. Then the mask at frame t depends only on input samples before t·hop + n_fft/2
(the iSTFT overlap adds n_fft/2 samples of look-ahead to the waveform).

Parameters: ``channels=128, n_aia_blocks=4`` (teacher) 3,218,118; ``channels=64, n_aia_blocks=1``
(student, 18.5 %) 595,494 — the counts of the authors' ``DPDCRN_Tea`` / ``DPDCRN_Stu_M``. MACs per second
of 16 kHz audio at hop 256 (:func:`~kdlib.models.complexity.macs_per_second`, FFTs excluded): teacher
13.26 G, student 2.42 G. The attention is written as linear layers and matmuls (the parameters of
``nn.MultiheadAttention``) so the FLOP counter sees it.

Feature taps (all ``(B, C, T, F')``, names in forward order; the encoder, middle and decoder sets are the
layers the authors' I2S-TFCKD demo (``I2S_TFCKD_demo.py``) distils):

- ``encoder.conv1`` ``(B, C, T, 129)``, ``encoder.conv2`` ``(B, C, T, 64)``, ``encoder.dense``
  ``(B, C, T, 64)``;
- ``aia.taps.i``: block i's output after the shared output head, ``(B, C, T, 64)``;
- ``decoder.dense`` ``(B, C, T, 64)``, ``decoder.up1`` ``(B, C, T, 129)``;
- ``mask``: the raw 2-channel (real, imag) decoder output M before the tanh magnitude, ``(B, 2, T, 257)``
  (the demo's third decoder feature).
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

_EPS = 1e-8


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CumulativeNorm(nn.Module):
    """Causal stand-in for InstanceNorm2d / GroupNorm(1, C) on ``(B, C, T, F)``.

    The mean and variance at frame t are taken over frequency (per channel, or over all channels with
    ``per_channel=False``) and over frames 0..t, so no statistic looks ahead; then a per-channel
    affine ``weight``/``bias`` (the same parameters as the module it replaces).

    Args:
        channels: C.
        per_channel: statistics per channel (InstanceNorm) or shared by all channels (GroupNorm with
            one group).
        eps: added to the variance.
    """

    def __init__(self, channels: int, per_channel: bool, eps: float) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (-1,) if self.per_channel else (1, -1)
        xf = x.float()  # cumulative sums of squares lose too much in half precision
        s1 = xf.sum(dim=dims, keepdim=True).cumsum(dim=2)
        s2 = (xf * xf).sum(dim=dims, keepdim=True).cumsum(dim=2)
        per_frame = x.shape[-1] * (1 if self.per_channel else x.shape[1])
        count = per_frame * torch.arange(1, x.shape[2] + 1, device=x.device, dtype=xf.dtype).view(1, 1, -1, 1)
        mean = s1 / count
        var = (s2 / count - mean * mean).clamp_min(0.0)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def _instance_norm(channels: int, causal: bool) -> nn.Module:
    return CumulativeNorm(channels, True, 1e-5) if causal else nn.InstanceNorm2d(channels, affine=True)


def _group_norm(channels: int, causal: bool) -> nn.Module:
    return CumulativeNorm(channels, False, _EPS) if causal else nn.GroupNorm(1, channels, eps=_EPS)


class DilatedDenseBlock(nn.Module):
    """Densely connected dilated convs, causal in time (the authors' ``DilatedDenseNet``).

    ``(B, C, T, F)`` → ``(B, C, T, F)``. Layer i: conv kernel (2, 3), time dilation 2^i, padded with 2^i
    past frames and one bin each side of frequency, on the concatenation ``[out_{i-1}, ..., out_0, x]``
    (C·(i+1) channels) → InstanceNorm → PReLU (per-channel slopes). Returns the last layer's output.
    """

    def __init__(self, channels: int, depth: int, causal: bool) -> None:
        super().__init__()
        self.dilations = [2**i for i in range(depth)]
        self.convs = nn.ModuleList(
            nn.Conv2d(channels * (i + 1), channels, kernel_size=(2, 3), dilation=(d, 1))
            for i, d in enumerate(self.dilations)
        )
        self.norms = nn.ModuleList(_instance_norm(channels, causal) for _ in range(depth))
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        out = x
        for d, conv, norm, act in zip(self.dilations, self.convs, self.norms, self.acts, strict=True):
            out = act(norm(conv(F.pad(feats, (1, 1, d, 0)))))  # (left F, right F, past T, future T)
            feats = torch.cat([out, feats], dim=1)  # newest first, as the authors concatenate
        return out


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention on ``(N, S, d)`` → ``(N, S, d)``, no dropout.

    The parameters of ``nn.MultiheadAttention`` (in-projection 3d×d + 3d, out-projection d×d + d),
    written as linear layers and matmuls so the FLOP counter sees every multiply (the fused eval-mode
    path of ``nn.MultiheadAttention`` is invisible to it). ``causal`` masks keys after the query.
    """

    def __init__(self, dim: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).view(n, s, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (N, h, S, d/h)
        scores = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5  # (N, h, S, S)
        if self.causal:
            future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return self.out((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, s, d))


class AIATransformerLayer(nn.Module):
    """Transformer layer with a GRU in place of the feed-forward net (the authors' ``TransformerEncoderLayer``).

    ``(N, S, d)`` sequences → ``(N, S, d)``: LayerNorm → multi-head self-attention → residual → LayerNorm
    → GRU (hidden 2d) → ReLU → Linear → residual → LayerNorm. No dropout (the authors' default is 0).

    Args:
        d_model: d.
        n_heads: attention heads (d divisible by it).
        bidirectional: bidirectional GRU (the frequency path) or forward-only (the time path).
        causal: mask the attention to positions ≤ the query's (the time path of ``causal=True``).
    """

    def __init__(self, d_model: int, n_heads: int, bidirectional: bool, causal: bool = False) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, causal)
        self.attn_norm = nn.LayerNorm(d_model)
        self.gru = nn.GRU(d_model, 2 * d_model, batch_first=True, bidirectional=bidirectional)
        self.proj = nn.Linear(2 * d_model * (2 if bidirectional else 1), d_model)
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(self.pre_norm(x)))
        return self.out_norm(x + self.proj(torch.relu(self.gru(x)[0])))


class AIADualPath(nn.Module):
    """Adaptive time-frequency attention dual path (the authors' ``AIA_Transformer_Res``).

    ``(B, C, T, F)`` → list of ``n_blocks`` outputs, each ``(B, C, T, F)`` (the last feeds the decoder).
    1×1 conv C → d = C/2 + PReLU; per block: ``x ← x + k1·GN(freq(x)) + k2·GN(time(x))`` with a
    bidirectional layer along F and a forward-only layer along T; after each block the shared head
    PReLU → 1×1 conv d → C gives that block's output, read through the identity tap ``taps.i``.
    """

    def __init__(self, channels: int, n_blocks: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        d = channels // 2
        self.inp = nn.Sequential(nn.Conv2d(channels, d, kernel_size=1), nn.PReLU())
        self.freq_layers = nn.ModuleList(AIATransformerLayer(d, n_heads, bidirectional=True) for _ in range(n_blocks))
        self.time_layers = nn.ModuleList(
            AIATransformerLayer(d, n_heads, bidirectional=False, causal=causal) for _ in range(n_blocks)
        )
        self.freq_norms = nn.ModuleList(_group_norm(d, causal) for _ in range(n_blocks))
        self.time_norms = nn.ModuleList(_group_norm(d, causal) for _ in range(n_blocks))
        # one pair of mixing scalars for all blocks, as in the authors' code
        self.k1 = nn.Parameter(torch.ones(1))
        self.k2 = nn.Parameter(torch.ones(1))
        self.out = nn.Sequential(nn.PReLU(), nn.Conv2d(d, channels, kernel_size=1))
        self.taps = nn.ModuleList(nn.Identity() for _ in range(n_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.inp(x)
        b, d, t, f = x.shape
        outs = []
        for fl, tl, fn, tn, tap in zip(self.freq_layers, self.time_layers, self.freq_norms, self.time_norms,
                                       self.taps, strict=True):
            along_f = fl(x.permute(0, 2, 3, 1).reshape(b * t, f, d))  # one sequence of F bins per frame
            along_f = along_f.reshape(b, t, f, d).permute(0, 3, 1, 2)
            along_t = tl(x.permute(0, 3, 2, 1).reshape(b * f, t, d))  # one sequence of T frames per bin
            along_t = along_t.reshape(b, f, t, d).permute(0, 3, 2, 1)
            x = x + self.k1 * fn(along_f) + self.k2 * tn(along_t)
            outs.append(tap(self.out(x)))
        return outs


class DenseEncoder(nn.Module):
    """Two stride-(1, 2) convs along frequency, then a dilated dense block (the authors' ``DenseEncoder_Res``).

    ``(B, 2, T, F)`` → ``(B, C, T, F2)`` with F1 = (F − 1)/2 + 1, F2 = (F1 − 3)/2 + 1 (257 → 129 → 64).
    """

    def __init__(self, channels: int, depth: int, causal: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(2, channels, (1, 3), stride=(1, 2), padding=(0, 1)),
                                   _instance_norm(channels, causal), nn.PReLU(channels))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, (1, 3), stride=(1, 2)),
                                   _instance_norm(channels, causal), nn.PReLU(channels))
        self.dense = DilatedDenseBlock(channels, depth, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv2(self.conv1(x)))


class ComplexDecoder(nn.Module):
    """Dilated dense block, then two stride-(1, 2) transposed convs (the authors' ``ComplexDecoder_Res_new``).

    ``(B, C, T, F2)`` → ``(B, 2, T, F)``: F2 → 2·F2 + 1 = F1 → 2·F1 + 1 = F + 2, the last 2 bins cut.
    """

    def __init__(self, channels: int, depth: int, causal: bool) -> None:
        super().__init__()
        self.dense = DilatedDenseBlock(channels, depth, causal)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(channels, channels, (1, 3), stride=(1, 2)),
                                 _instance_norm(channels, causal), nn.PReLU(channels))
        self.up2 = nn.ConvTranspose2d(channels, 2, (1, 3), stride=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up2(self.up1(self.dense(x)))[..., :-2]


@register_model("dpdcrn")
class DPDCRN(SEModel):
    """DPDCRN of arXiv 2506.13127 (authors' code ``JMCheng-SEU/I2RF-TFCKD-SE`` ``DPDCRN.py`` at commit
    0c7a0cf8cb8181cf1eb669c2f8e02d37f2c18b6b; methods.md §9.1). See the module docstring for the
    architecture, the taps and what is kdlib's choice ([R]).

    Defaults are the authors' teacher ``DPDCRN_Tea`` (3,218,118 params); ``channels=64, n_aia_blocks=1``
    is their student ``DPDCRN_Stu_M`` (595,494 params).

    Args:
        n_fft: STFT size in samples (F = n_fft/2 + 1 bins); a multiple of 8, >= 16 (so the two
            stride-2 convs and their transposes map F back to F); the authors' 512.
        hop_length: STFT hop in samples, in [1, n_fft) (kdlib's 256; not fixed by the authors' files).
        channels: C, the width of every conv and dense block; the AIA path runs at d = C/2 (even, and
            C/2 divisible by ``n_heads``).
        n_aia_blocks: AIA dual-path blocks (teacher 4, student 1).
        n_heads: attention heads in every AIA transformer layer (the authors' 4).
        dense_depth: convs per dilated dense block (dilations 1, 2, ..., 2^(depth−1); the authors' 4).
        causal: False = the authors' network (utterance-level norms, time attention over all frames);
            True = cumulative norms and past-only time attention (see the module docstring).
        sample_rate: Hz the model is trained for (metadata, checked by the trainer); 16000.

    Shapes: input ``(B, L)`` noisy waveform → output ``(B, L)`` enhanced waveform; inside, the complex
    STFT ``(B, 2, T, F)``. Feature taps ``(B, C, T, F')`` as listed in the module docstring.

    Raises:
        ConfigError: one line naming the bad arg.
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "channels": "conv / dense-block width C (AIA width C/2), steps of 2",
        "n_aia_blocks": "AIA dual-path blocks, tied to the width (teacher's at full width, 1 at half width)",
    }

    def __init__(
        self,
        n_fft: int = 512,
        hop_length: int = 256,
        channels: int = 128,
        n_aia_blocks: int = 4,
        n_heads: int = 4,
        dense_depth: int = 4,
        causal: bool = False,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        for name, value, low in (("n_fft", n_fft, 16), ("hop_length", hop_length, 1), ("channels", channels, 2),
                                 ("n_aia_blocks", n_aia_blocks, 1), ("n_heads", n_heads, 1),
                                 ("dense_depth", dense_depth, 1), ("sample_rate", sample_rate, 1)):
            if not _is_int(value) or value < low:
                raise ConfigError(f"dpdcrn.{name} must be an int >= {low}, got {value!r}")
        if n_fft % 8:
            raise ConfigError(f"dpdcrn.n_fft={n_fft} must be a multiple of 8 (two stride-2 convs and their "
                              "transposes must map the bins back)")
        if hop_length >= n_fft:
            raise ConfigError(f"dpdcrn.hop_length must be in [1, n_fft={n_fft}), got {hop_length}")
        if channels % 2 or (channels // 2) % n_heads:
            raise ConfigError(f"dpdcrn.channels={channels} must be even with channels/2 divisible by "
                              f"n_heads={n_heads}")
        if not isinstance(causal, bool):
            raise ConfigError(f"dpdcrn.causal must be true or false, got {causal!r}")
        self.sample_rate = sample_rate
        self.causal = causal
        self.stft = STFT(n_fft, hop_length)
        self.encoder = DenseEncoder(channels, dense_depth, causal)
        self.aia = AIADualPath(channels, n_aia_blocks, n_heads, causal)
        self.decoder = ComplexDecoder(channels, dense_depth, causal)
        self.mask = nn.Identity()  # (B, 2, T, F) raw mask M, tapped by name

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        return {
            "encoder": ["encoder.conv1", "encoder.conv2", "encoder.dense"],
            "middle": [f"aia.taps.{i}" for i in range(len(self.aia.taps))],
            "decoder": ["decoder.dense", "decoder.up1"],
            "mask": ["mask"],
        }

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` noisy waveform → ``(B, L)`` enhanced waveform."""
        if wav.dim() != 2:
            raise ValueError(f"dpdcrn expects a (B, L) waveform, got shape {tuple(wav.shape)}")
        length = wav.shape[-1]
        spec = self.stft(wav).transpose(1, 2)  # (B, T, F) complex
        x = torch.stack([spec.real, spec.imag], dim=1)  # (B, 2, T, F)
        m = self.mask(self.decoder(self.aia(self.encoder(x))[-1]))
        mr, mi = m[:, 0].float(), m[:, 1].float()
        mag = torch.sqrt(mr * mr + mi * mi + _EPS)
        gain = torch.tanh(mag) / mag  # tanh(|M|)·M/|M|: magnitude tanh(|M|), phase ∠M
        est = torch.complex(mr * gain, mi * gain) * spec  # magnitude tanh(|M|)·|Y|, phase ∠Y + ∠M
        return self.stft.inverse(est.transpose(1, 2), length)

    @staticmethod
    def blocks_for_width(channels: int, base_channels: int, base_blocks: int) -> int:
        """AIA blocks of a width-``channels`` student of a (``base_channels``, ``base_blocks``) teacher.

        The authors' student halves the teacher's width and keeps one of its 4 blocks; this rule
        interpolates linearly between those two layouts: ``base_blocks`` at the full width, 1 at half
        width and below, ``1 + (base_blocks − 1)·(2·channels/base_channels − 1)`` rounded half up between.
        """
        frac = 2.0 * channels / base_channels - 1.0
        return max(1, min(base_blocks, math.floor(1 + (base_blocks - 1) * frac + 0.5)))

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """Widths with the AIA depth tied to them, as the authors shrink their teacher.

        ``channels`` runs down from the teacher's in steps of 2 (param steps ≤ ~7 %, so every ratio from
        ~1.1 % to 1 has a candidate within ±10 %); each width gets :meth:`blocks_for_width` AIA blocks,
        so at half width the candidate is the authors' student (C/2, 1 block: 18.5 % of their teacher).
        ``depth_reduction`` = AIA blocks removed; it grows as the width shrinks, so the builder takes
        the widest fitting candidate. Widths alone (all blocks kept) are not offered: at 18.5 % they
        would give a narrower, deeper student (C = 56, 4 blocks) than the paper's. Where C/2 is not
        divisible by ``n_heads``, the heads drop to the largest divisor of ``n_heads`` that divides C/2
        (heads change no parameter count); at multiples of 2·n_heads, the authors' layouts, they stay.
        """
        heads = int(args.get("n_heads", 4))
        base_c = int(args.get("channels", 128))
        base_n = int(args.get("n_aia_blocks", 4))
        for c in range(base_c, 1, -2):
            n = cls.blocks_for_width(c, base_c, base_n)
            h = max(k for k in range(1, heads + 1) if heads % k == 0 and (c // 2) % k == 0)
            yield {**args, "channels": c, "n_aia_blocks": n, "n_heads": h}, base_n - n
