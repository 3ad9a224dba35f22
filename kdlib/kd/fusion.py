"""ReviewKD building blocks shared by several methods: attention-based fusion (ABF) and the
hierarchical context loss (HCL). Chen et al., "Distilling Knowledge via Knowledge Review",
CVPR 2021 (arXiv 2104.09044) §3.2-3.3; methods.md §5.4. Adapted from images ``(B, C, H, W)`` to
TF features ``(B, C, T, F)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm_act(channels: int, norm: str, prelu: bool) -> list[nn.Module]:
    if norm == "batch":
        layers: list[nn.Module] = [nn.BatchNorm2d(channels)]
    elif norm == "instance":
        layers = [nn.InstanceNorm2d(channels, affine=True)]
    else:
        raise ValueError(f"unknown ABF norm '{norm}' (batch, instance)")
    return [*layers, nn.PReLU()] if prelu else layers


class ABF(nn.Module):
    """Attention-based fusion of a student feature with the running (deeper) fused feature.

    ``x`` ``(B, C_in, T, F)`` → 1×1 conv + norm to ``mid`` channels; if a residual ``y`` ``(B, mid,
    T', F')`` is given it is resized (nearest) to ``x``'s T×F, a 1×1 conv + sigmoid on their
    concatenation gives two maps a, b and the fusion is ``a·x + b·y``; a 3×3 conv + norm maps the
    fused feature to ``out`` channels, the tensor compared with the teacher.

    ``norm="batch"``, ``prelu=False`` (default): ReviewKD's block (BatchNorm, no activation).
    ``norm="instance"``, ``prelu=True``: the I2S-TFCKD authors' ``ABF_res`` (both convs followed by an
    affine InstanceNorm and a one-slope PReLU; GitHub ``JMCheng-SEU/I2RF-TFCKD-SE``,
    ``I2S_TFCKD_demo.py``, commit 0949953525576453e8902342cf37ce80ff4a8276).

    Returns:
        ``(output (B, out, T, F), fused (B, mid, T, F))`` — ``fused`` is passed to the next
        (shallower) stage as its residual.

    Raises:
        ValueError: unknown ``norm``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool = True,
                 norm: str = "batch", prelu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                   *_norm_act(mid_channels, norm, prelu))
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   *_norm_act(out_channels, norm, prelu))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            # the 1×1 conv of the concatenation [x, residual], as two convs on the halves of its weight:
            # the same maps without the (B, 2·mid, T, F) concatenated copy (half the time on CPU)
            conv, m = self.att[0], x.shape[1]
            maps = torch.sigmoid(F.conv2d(x, conv.weight[:, :m]) + F.conv2d(residual, conv.weight[:, m:], conv.bias))
            x = x * maps[:, :1] + residual * maps[:, 1:2]
        return self.conv2(x), x


def hcl_loss(student: torch.Tensor, teacher: torch.Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss: MSE at full resolution plus MSE after adaptive average pooling to
    each ``level``×``level`` grid, weights halving per level and normalised by their sum.

    Shapes: ``(B, C, T, F)`` each, equal (resize the student first). Returns a scalar, zero iff the
    inputs are equal at full resolution.
    """
    loss = F.mse_loss(student, teacher)
    weight, total = 1.0, 1.0
    for level in levels:
        if level >= min(student.shape[-2:]):
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level))
        total += weight
    return loss / total
