"""Params and MACs per second of audio, counted with ``torch.utils.flop_counter``."""

from __future__ import annotations

import copy
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdlib.models.base import SEModel, count_params


def macs_per_second(model: SEModel, sample_rate: int | None = None, n_channels: int | None = None) -> int:
    """Multiply-accumulates to enhance one second of audio (batch 1, eval mode).

    Counted by ``FlopCounterMode`` (FLOPs / 2) on a CPU copy with oneDNN off: CPU LSTMs otherwise
    run as an opaque ``mkldnn_rnn_layer`` op the counter cannot see, while the decomposed kernels
    are plain matmuls it counts exactly. STFT/iSTFT (FFT) cost is not included.

    Args:
        model: the model to measure (left untouched).
        sample_rate: Hz; defaults to ``model.sample_rate``.
        n_channels: microphones for multi-channel input ``(1, M, L)``; 1 gives ``(1, L)``. Defaults
            to the model's ``n_channels`` (1 for mono families).
    """
    sr = int(sample_rate or getattr(model, "sample_rate", 16000))
    n_channels = int(n_channels or getattr(model, "n_channels", 1))
    probe = copy.deepcopy(model).cpu().eval()
    x = torch.randn(1, sr) if n_channels == 1 else torch.randn(1, n_channels, sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN flag toggling warns about TF32 on Intel GPUs
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
            probe(x)
    return int(fc.get_total_flops() // 2)


def complexity(model: SEModel, teacher_params: int | None = None) -> dict[str, float]:
    """``{"params", "macs", "params_pct"}``: params (count), MACs per second of audio, % of the teacher."""
    params = count_params(model)
    out: dict[str, float] = {"params": params, "macs": macs_per_second(model)}
    if teacher_params:
        out["params_pct"] = 100.0 * params / teacher_params
    return out
