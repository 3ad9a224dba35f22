"""DPTNet: dual-path transformer network (Chen, Mao & Liu, Interspeech 2020, arXiv 2007.13975 §2),
used here for single-source enhancement (one mask on a learned encoder).

Reference config: methods.md §2.4 (asteroid ``asteroid/models/dptnet.py`` and
``asteroid/masknn/attention.py`` ``DPTransformer``/``ImprovedTransformedLayer``). Own
implementation of the architecture the paper and asteroid describe:

1. Encoder: a learned filterbank ``Conv1d(1, N, L, stride)`` without bias, then ReLU
   (asteroid's DPTNet default ``encoder_activation="relu"``) → ``w`` ``(B, N, T)``.
2. Separation: gLN of ``w``; segmentation into chunks of K = ``chunk_size`` frames
   every ``hop_size`` frames → ``(B, N, K, S)`` (S chunks); ``n_repeats`` dual-path blocks, each an
   intra-chunk "improved transformer" (sequences of K frames within each chunk) followed by an
   inter-chunk one (sequences of S chunks at each chunk position). An improved transformer layer
   on a ``(B', seq, N)`` sequence: multi-head self-attention (``n_heads`` heads, no positional
   encoding: the LSTM supplies order), residual add, gLN; then the feed-forward network whose
   first layer is an LSTM (``ff_hid`` units; bidirectional in the intra-chunk layers always, in
   the inter-chunk layers when ``bidirectional``), ReLU and a linear layer back to N, residual
   add, gLN. The norm is asteroid's default ``norm_type="gLN"``: a layer norm over each whole
   sequence (seq × N) with per-feature gain and bias [R].
3. Mask (asteroid): PReLU + 1×1 Conv2d on the chunked features, overlap-add back to
   ``(B, N, T)``, then a gated output ``tanh(conv1x1(·)) ⊙ sigmoid(conv1x1(·))`` and ``mask_act``
   (relu, asteroid's default, or sigmoid).
4. Decoder: ``ConvTranspose1d(N, 1, L, stride)`` without bias on ``w ⊙ m``.

Framing and chunking [R]: the waveform is padded as in :func:`kdlib.models.convtasnet.frame_padding`
(edge samples in as many frames as interior ones; output cropped to the input length). The frame
sequence is padded with ``K − hop`` zero frames on the left and enough on the right for a whole
number of chunks (close to Luo's DPRNN segmentation; asteroid pads K frames on each side, which
adds chunks of padding only), and overlap-add divides by the number of chunks covering each frame
(exactly K/hop when hop divides K, as in asteroid's fold).

Multi-head attention is written out as linear projections and batched matmuls (the same
parameters as ``nn.MultiheadAttention``: in-projection 3N×N + 3N, out-projection N×N + N) so the
FLOP counter sees every multiply.

Shapes: input ``(B, L_in)`` in samples at ``sample_rate`` Hz → output ``(B, L_in)``. Feature taps:

- ``encoder``: ``tap_encoder``, the (ReLU'd) encoder output ``(B, N, T, 1)``;
- ``middle``: ``blocks.i``, the output of dual-path block i in its natural chunked layout
  ``(B, N, K, S)``: C = N features, the "time" axis is the frame within a chunk (K), the
  "frequency" axis the chunk index (S);
- ``decoder``: ``tap_overlap_add`` (the overlap-added mask features after PReLU + 1×1 conv) and
  ``tap_gated`` (the gated, pre-activation mask), both ``(B, N, T, 1)``.

Native loss in the paper: negative SI-SNR, this family's default task loss (``si_snr``). The taps'
F axis is 1 or the chunk index, never frequency (``frequency_axis = False``): :mod:`kdlib.kd.compat`
refuses the methods that compare features across frequency.

No ``mask`` set, for the reason given in :mod:`kdlib.models.convtasnet` (the mask lives on the
model's own learned basis, whose size N the size builder scales), so ``mask_matching`` refuses this
family. The sets mix layouts (``(B, N, T, 1)`` encoder/decoder, ``(B, N, K, S)`` middle): methods
that fuse across sets (ReviewKD, ``fused_multilayer``, I2RF-TFCKD's inter-set fusion) resize one
layout onto the other, which runs but has no frequency meaning.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model
from kdlib.models.convtasnet import (
    MASK_ACTS,
    GlobalLayerNorm,
    check_choice,
    check_int,
    fine_scales,
    frame_padding,
    mask_nonlinearity,
    thin_by_params,
)


class _SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention on ``(B', seq, d)`` (no masking, no dropout)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B', h, seq, d/h)
        att = torch.softmax((q @ k.transpose(-1, -2)) * (d // h) ** -0.5, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, s, d))


class _ImprovedTransformer(nn.Module):
    """DPTNet's improved transformer layer (arXiv 2007.13975 §2) on ``(B', seq, d)``:
    x ← gLN(x + MHA(x)); x ← gLN(x + Linear(ReLU(LSTM(x))))."""

    def __init__(self, dim: int, n_heads: int, ff_hid: int, bidirectional: bool) -> None:
        super().__init__()
        self.attention = _SelfAttention(dim, n_heads)
        self.norm_attention = GlobalLayerNorm(dim, channel_dim=-1)
        self.lstm = nn.LSTM(dim, ff_hid, batch_first=True, bidirectional=bidirectional)
        self.linear = nn.Linear(ff_hid * (2 if bidirectional else 1), dim)
        self.norm_ff = GlobalLayerNorm(dim, channel_dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_attention(x + self.attention(x))
        return self.norm_ff(x + self.linear(torch.relu(self.lstm(x)[0])))


class _DualPathBlock(nn.Module):
    """Intra-chunk then inter-chunk improved transformer on ``(B, N, K, S)`` → ``(B, N, K, S)``."""

    def __init__(self, dim: int, n_heads: int, ff_hid: int, bidirectional: bool) -> None:
        super().__init__()
        self.intra = _ImprovedTransformer(dim, n_heads, ff_hid, True)
        self.inter = _ImprovedTransformer(dim, n_heads, ff_hid, bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, k, s = x.shape
        y = self.intra(x.permute(0, 3, 2, 1).reshape(b * s, k, n))  # sequences of K frames
        y = y.reshape(b, s, k, n).transpose(1, 2).reshape(b * k, s, n)  # sequences of S chunks
        return self.inter(y).reshape(b, k, s, n).permute(0, 3, 1, 2)


@register_model("dptnet")
class DPTNet(SEModel):
    """DPTNet for single-source enhancement (arXiv 2007.13975 §2; asteroid defaults, methods.md §2.4).

    Args:
        n_filters: N, learned basis functions = transformer feature size (asteroid 64); a multiple
            of ``n_heads``.
        kernel_size: L, basis-function length in samples (16).
        stride: encoder hop in samples (8); 1 <= stride <= kernel_size.
        n_heads: attention heads (4).
        ff_hid: LSTM units per direction of the feed-forward network (256).
        chunk_size: K, frames per chunk (100).
        hop_size: frames between chunk starts (50); 1 <= hop_size <= chunk_size.
        n_repeats: dual-path blocks (6; asteroid's WHAM recipe uses 2).
        bidirectional: bidirectional inter-chunk LSTMs (intra-chunk LSTMs are always bidirectional).
        mask_act: ``relu`` (asteroid's default) or ``sigmoid``.
        sample_rate: Hz the model is trained for (metadata, checked by the trainer).

    Shapes: ``(B, L_in)`` → ``(B, L_in)``; taps see the module docstring. Default config:
    8,524,865 params, 36.0 G MACs per second of 16 kHz audio (n_repeats 2: 2,851,393 params, 12.0 G).

    Raises:
        ConfigError: a non-integer or non-positive size, n_filters not a multiple of n_heads,
            stride > kernel_size, hop_size > chunk_size, a non-bool bidirectional or an unknown
            mask_act (the message names the arg).
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "n_filters": "basis functions = attention width N, in multiples of n_heads (scaled first)",
        "ff_hid": "feed-forward LSTM units (scaled first, with n_filters)",
        "n_repeats": "dual-path blocks (reduced after widths)",
    }
    #: the paper's objective (negative SI-SNR); the taps' F axis is 1 or the chunk index: not frequency
    task_loss: ClassVar[dict[str, Any]] = {"name": "si_snr", "kwargs": {}}
    frequency_axis: ClassVar[bool] = False

    def __init__(
        self,
        n_filters: int = 64,
        kernel_size: int = 16,
        stride: int = 8,
        n_heads: int = 4,
        ff_hid: int = 256,
        chunk_size: int = 100,
        hop_size: int = 50,
        n_repeats: int = 6,
        bidirectional: bool = True,
        mask_act: str = "relu",
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        m = "dptnet"
        n = check_int(m, "n_filters", n_filters, 1)
        self.kernel_size = check_int(m, "kernel_size", kernel_size, 1)
        self.stride = check_int(m, "stride", stride, 1)
        if self.stride > self.kernel_size:
            raise ConfigError(f"dptnet.stride must be <= kernel_size ({kernel_size}), got {stride}")
        heads = check_int(m, "n_heads", n_heads, 1)
        if n % heads:
            raise ConfigError(f"dptnet.n_filters must be a multiple of n_heads ({n_heads}), got {n_filters}")
        ff = check_int(m, "ff_hid", ff_hid, 1)
        self.chunk_size = check_int(m, "chunk_size", chunk_size, 1)
        self.hop_size = check_int(m, "hop_size", hop_size, 1)
        if self.hop_size > self.chunk_size:
            raise ConfigError(f"dptnet.hop_size must be <= chunk_size ({chunk_size}), got {hop_size}")
        reps = check_int(m, "n_repeats", n_repeats, 1)
        if not isinstance(bidirectional, bool):
            raise ConfigError(f"dptnet.bidirectional must be true or false, got {bidirectional!r}")
        self.mask_act = check_choice(m, "mask_act", mask_act, MASK_ACTS)
        self.sample_rate = check_int(m, "sample_rate", sample_rate, 1)

        self.encoder = nn.Conv1d(1, n, self.kernel_size, stride=self.stride, bias=False)
        self.in_norm = GlobalLayerNorm(n)
        self.blocks = nn.ModuleList(_DualPathBlock(n, heads, ff, bidirectional) for _ in range(reps))
        self.first_out = nn.Sequential(nn.PReLU(), nn.Conv2d(n, n, 1))
        self.net_out = nn.Sequential(nn.Conv1d(n, n, 1), nn.Tanh())
        self.net_gate = nn.Sequential(nn.Conv1d(n, n, 1), nn.Sigmoid())
        self.decoder = nn.ConvTranspose1d(n, 1, self.kernel_size, stride=self.stride, bias=False)
        self.tap_encoder, self.tap_overlap_add, self.tap_gated = nn.Identity(), nn.Identity(), nn.Identity()

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        return {
            "encoder": ["tap_encoder"],
            "middle": [f"blocks.{i}" for i in range(len(self.blocks))],
            "decoder": ["tap_overlap_add", "tap_gated"],
        }

    def chunk_padding(self, n_frames: int) -> tuple[int, int, int]:
        """``(left, right, n_chunks)``: zero frames added before chunking ``n_frames`` frames."""
        return frame_padding(n_frames, self.chunk_size, self.hop_size)

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, T)`` → ``(B, N, K, S)`` overlapping chunks."""
        left, right, _ = self.chunk_padding(x.shape[-1])
        return F.pad(x, (left, right)).unfold(-1, self.chunk_size, self.hop_size).transpose(2, 3)

    def _overlap_add(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """``(B, N, K, S)`` → ``(B, N, T)``: overlap-add, divided by the chunks covering each frame."""
        b, n, k, s = x.shape
        left, right, _ = self.chunk_padding(n_frames)
        size, kernel, stride = (left + n_frames + right, 1), (k, 1), (self.hop_size, 1)
        summed = F.fold(x.reshape(b, n * k, s), size, kernel, stride=stride)
        count = F.fold(x.new_ones(1, k, s), size, kernel, stride=stride)
        return (summed / count)[:, :, left:left + n_frames, 0]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"dptnet expects a (B, L) waveform, got shape {tuple(wav.shape)}")
        length = wav.shape[-1]
        left, right, n_frames = frame_padding(length, self.kernel_size, self.stride)
        w = torch.relu(self.encoder(F.pad(wav.unsqueeze(1), (left, right))))  # (B, N, T)
        self.tap_encoder(w.unsqueeze(-1))
        y = self._chunk(self.in_norm(w))
        for block in self.blocks:
            y = block(y)
        y = self._overlap_add(self.first_out(y), n_frames)
        self.tap_overlap_add(y.unsqueeze(-1))
        score = self.net_out(y) * self.net_gate(y)
        self.tap_gated(score.unsqueeze(-1))
        out = self.decoder(w * mask_nonlinearity(score, self.mask_act))
        return out[:, 0, left:left + length]

    @staticmethod
    def analytic_params(args: dict[str, Any]) -> float:
        """Parameter count of ``DPTNet(**args)`` in closed form (the size builder's fast path).
        Polynomial in n_filters and ff_hid, so it also takes fractional widths (used to smooth the
        size path); an int for integer widths."""
        a = {**_DEFAULTS, **args}
        n, ff = a["n_filters"], a["ff_hid"]

        def layer(dirs: int) -> float:  # attention + 2 gLN + LSTM + linear
            return 4 * n * n + 4 * n + 4 * n + dirs * (4 * ff * (n + ff) + 8 * ff) + dirs * ff * n + n

        block = layer(2) + layer(2 if a["bidirectional"] else 1)
        head = (1 + n * n + n) + 2 * (n * n + n)  # first_out (PReLU + 1x1 conv), tanh and gate convs
        return 2 * n * int(a["kernel_size"]) + 2 * n + int(a["n_repeats"]) * block + head

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """n_filters and ff_hid scaled together by s, then fewer dual-path blocks.

        n_filters is rounded to a multiple of n_heads, which moves the params in jumps at small
        widths; ff_hid absorbs the rounding: it is the integer whose model is closest in params to
        the unrounded (s·N, s·ff_hid) one. The fine s grid is thinned to ~12 % parameter steps
        down to 1 % of the full-width params (see :func:`~kdlib.models.convtasnet.thin_by_params`).
        """
        heads = int(args.get("n_heads", _DEFAULTS["n_heads"]))
        base_n = int(args.get("n_filters", _DEFAULTS["n_filters"]))
        base_ff = int(args.get("ff_hid", _DEFAULTS["ff_hid"]))
        reps = int(args.get("n_repeats", _DEFAULTS["n_repeats"]))
        for r in range(reps, 0, -1):
            def point(s: float, r: int = r) -> tuple[dict[str, Any], int]:
                target = cls.analytic_params({**args, "n_filters": base_n * s, "ff_hid": base_ff * s, "n_repeats": r})
                n = max(1, round(base_n * s / heads)) * heads
                cand = {**args, "n_filters": n, "n_repeats": r}
                lo, hi = 1, max(1, base_ff)  # smallest ff_hid in [1, base] whose params reach the target
                while lo < hi:
                    mid = (lo + hi) // 2
                    if cls.analytic_params({**cand, "ff_hid": mid}) < target:
                        lo = mid + 1
                    else:
                        hi = mid
                ff = min((f for f in (lo - 1, lo) if f >= 1),
                         key=lambda f: abs(cls.analytic_params({**cand, "ff_hid": f}) - target))
                cand["ff_hid"] = ff
                return cand, int(cls.analytic_params(cand))

            for cand in thin_by_params(map(point, fine_scales())):
                yield cand, reps - r


_DEFAULTS: dict[str, Any] = {
    k: v.default for k, v in inspect.signature(DPTNet.__init__).parameters.items() if k != "self"
}


__all__ = ["DPTNet"]
