"""Generic feature-KD baselines adapted to TF features ``(B, C, T, F)``: FitNets hints, similarity-
preserving KD and ReviewKD (methods.md §5.2-5.4).

All three read intermediate features through forward-hook taps named by correlated-set name
(``"encoder"``, ``"middle"``, ``"decoder"``: the set's last layer) or by module path, so they run on
any model family that exposes ``feature_sets``. Teacher and student may differ in channel count C
and in frequency resolution F; T is assumed equal (it is resized along with F when it is not).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.kd.fusion import ABF, hcl_loss
from kdlib.kd.hooks import TapSpec, probe_feature_shapes, resolve_tap_pairs
from kdlib.kd.similarity import match_size

LayerSpec = TapSpec


def _resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinearly resize ``(B, C, T, F)`` to ``(B, C, *size)`` (no-op when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------- FitNets


class FitNetsConfig(KDConfig):
    layers: list[LayerSpec] = Field(
        default_factory=lambda: ["middle"], min_length=1,
        description="hinted layers: set names / module names, or [student, teacher] pairs",
    )
    adapter: Literal["conv1x1", "conv3x3"] = Field("conv1x1", description="regressor r: 1x1 or 3x3 conv (with bias)")
    loss: Literal["mse", "l1"] = Field("mse", description="distance between r(F_s) and F_t")
    init: Literal["default", "identity"] = Field(
        "default", description="adapter init; identity (Dirac weights, zero bias) where C_s == C_t")


@register_kd_method("fitnets")
class FitNetsKD(KDMethod):
    """FitNets hint loss (Romero et al., arXiv 1412.6550 §2; methods.md §5.2).

    For each layer pair with student feature F_s ``(B, C_s, T, F_s)`` and teacher feature F_t
    ``(B, C_t, T, F_t)``, a learnable regressor r (a conv from C_s to C_t channels) maps the
    student feature to the teacher's width; if the (T, F) sizes differ its output is resized
    bilinearly to the teacher's. L_KD = mean over layers of D(r(F_s), F_t), D = mean squared or
    mean absolute error over all elements. The paper's stage-1 hint pre-training is not done: as
    in most SE papers the hint is trained jointly with the task loss [R].

    The regressors are submodules of the method (trained by the trainer's optimiser, counted by
    :meth:`extra_params`, never part of the deployed student); they are sized from the tap shapes
    found by :func:`probe_feature_shapes`.

    Knobs:
        layers: which layers get a hint (default ``["middle"]``, the last middle-block output) [R].
        adapter: ``conv1x1`` (the paper's regressor for conv features is a conv; 1×1 is the usual
            choice) or ``conv3x3`` (padding 1, same T×F) [R].
        loss: ``mse`` (the paper's L2) or ``l1`` [R].
        init: ``default`` (PyTorch's conv init) or ``identity``: Dirac weights and zero bias where
            C_s == C_t, so a student equal to the teacher starts at zero loss; layers with C_s ≠ C_t
            keep the default init (a warning says so).
    """

    Config = FitNetsConfig
    source = "arXiv 1412.6550 §2 (FitNets hint; joint training and SE taps are a reconstruction, see methods.md §5.2)"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.pairs = resolve_tap_pairs(student, teacher, c.layers)
        s_shapes = probe_feature_shapes(student, [s for s, _ in self.pairs])
        t_shapes = probe_feature_shapes(teacher, [t for _, t in self.pairs])
        kernel = 1 if c.adapter == "conv1x1" else 3
        self.adapters = nn.ModuleList()
        skipped = []
        for s_name, t_name in self.pairs:
            c_s, c_t = s_shapes[s_name][1], t_shapes[t_name][1]
            conv = nn.Conv2d(c_s, c_t, kernel, padding=kernel // 2)
            if c.init == "identity":
                if c_s == c_t:
                    with torch.no_grad():
                        nn.init.dirac_(conv.weight)
                        conv.bias.zero_()
                else:
                    skipped.append(f"{s_name}->{t_name} ({c_s}->{c_t} channels)")
            self.adapters.append(conv)
        if skipped:
            warnings.warn("fitnets init='identity' needs equal channel counts; default init kept for "
                          + ", ".join(skipped), stacklevel=2)

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        dist = F.mse_loss if self.cfg.loss == "mse" else F.l1_loss
        terms = []
        for (s_name, t_name), adapter in zip(self.pairs, self.adapters, strict=True):
            ft = inputs.teacher_features[t_name].detach()
            hint = _resize_to(adapter(inputs.student_features[s_name]), ft.shape[-2:])
            terms.append(dist(hint, ft))
        return torch.stack(terms).mean()


# ------------------------------------------------------------------------------- similarity-preserving


def spkd_gram(feat: torch.Tensor, axis: str) -> torch.Tensor:
    """Un-normalised similarity matrix G = Q Qᵀ of a ``(B, C, T, F)`` feature.

    ``batch``: Q = the feature flattened per item, ``(B, C·T·F)`` → G ``(B, B)``.
    ``time``: per utterance Q = frames ``(T, C·F)`` → G ``(B, T, T)``.
    ``frequency``: per utterance Q = bins ``(F, C·T)`` → G ``(B, F, F)``.
    """
    b, c, t, f = feat.shape
    if axis == "batch":
        q = feat.reshape(b, c * t * f)
        return q @ q.t()
    if axis == "time":
        q = feat.permute(0, 2, 1, 3).reshape(b, t, c * f)
    elif axis == "frequency":
        q = feat.permute(0, 3, 1, 2).reshape(b, f, c * t)
    else:
        raise ValueError(f"unknown spkd axis '{axis}' (batch, time, frequency)")
    return q @ q.transpose(1, 2)


class SPKDConfig(KDConfig):
    layers: list[LayerSpec] = Field(
        default_factory=lambda: ["encoder", "middle", "decoder"], min_length=1,
        description="layers compared: set names / module names, or [student, teacher] pairs",
    )
    axis: Literal["batch", "time", "frequency"] = Field(
        "batch", description="items whose similarities are preserved: batch items (paper), or frames / bins")


@register_kd_method("spkd")
class SPKD(KDMethod):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, arXiv 1907.09682 §3; methods.md §5.3;
    cf. torchdistill ``SPKDLoss``).

    Per layer pair, G = Q Qᵀ from the flattened feature Q (:func:`spkd_gram`), each row of G is
    L2-normalised, and the layer term is ‖G_s − G_t‖²_F / n² with n the size of G. L_KD is the
    **sum** over layers (the paper's Σ_layers; the paper's β is the trainer's KD weight).

    ``axis="batch"`` is the paper's loss: n = b, the batch size, G ``(b, b)``. With b = 1 the
    normalised G is always [[1]] and the loss is 0, so use batches of 2 or more.
    ``axis="time"`` / ``"frequency"`` are the SE variant [R]: the batch axis is replaced by the T
    frames or F bins of each utterance, G ``(B, T, T)`` / ``(B, F, F)``, and the per-utterance term
    ‖G_s − G_t‖²_F / n² is averaged over the batch. When the student's n differs from the teacher's
    (e.g. different F), the student's un-normalised G is resized bilinearly to n×n before the row
    normalisation.

    Parameter-free and channel-free: C only enters through the inner products, so teacher and
    student widths may differ; duplicating channels scales G by a constant, which the row
    normalisation removes.

    Knobs: ``layers`` (default encoder, middle, decoder: each set's last layer) [R], ``axis`` [R].
    """

    Config = SPKDConfig
    source = "arXiv 1907.09682 §3 (time/frequency axes are an SE reconstruction, see methods.md §5.3)"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        self.pairs = resolve_tap_pairs(student, teacher, self.cfg.layers)

    def layer_loss(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """‖norm(G_s) − norm(G_t)‖²_F / n², averaged over utterances for the time/frequency axes."""
        axis = self.cfg.axis
        g_s, g_t = spkd_gram(fs, axis), spkd_gram(ft, axis)
        n = g_t.shape[-1]
        if axis != "batch":
            g_s = match_size(g_s, n)
        g_s, g_t = F.normalize(g_s, dim=-1), F.normalize(g_t, dim=-1)
        sq = (g_s - g_t).pow(2)
        if axis == "batch":
            return sq.sum() / n**2
        return (sq.sum(dim=(-2, -1)) / n**2).mean()

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        terms = [self.layer_loss(inputs.student_features[s], inputs.teacher_features[t].detach())
                 for s, t in self.pairs]
        return torch.stack(terms).sum()


# ------------------------------------------------------------------------------------------- ReviewKD


class ReviewKDConfig(KDConfig):
    sets: list[LayerSpec] = Field(
        default_factory=lambda: ["encoder", "middle", "decoder"], min_length=1,
        description="stages, shallow to deep (forward order): set names / module names or [student, teacher]",
    )
    mid_channels: int | None = Field(None, ge=1, description="ABF width; None = min of the teacher stage channels")
    fuse: bool = Field(True, description="attention fusion with the deeper stage (False: independent stages)")
    hcl_levels: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [4, 2, 1], description="HCL pooling grids (empty: plain MSE)")


@register_kd_method("reviewkd")
class ReviewKD(KDMethod):
    """Knowledge review (Chen et al., CVPR 2021, arXiv 2104.09044 §3; methods.md §5.4; official
    code dvlab-research/ReviewKD) on TF features.

    Stages are the last layer of each entry of ``sets``, listed shallow to deep in forward order
    (student feature X_i ``(B, C_s,i, T, F_s,i)``, teacher feature Y_i ``(B, C_t,i, T, F_t,i)``).
    Processing runs deep to shallow: the deepest stage's ABF has no residual (fuse=False); every
    shallower stage i fuses its projected feature with the fused output of stage i+1
    (:class:`~kdlib.kd.fusion.ABF`: 1×1 conv+BN to ``mid`` channels, nearest-resized residual,
    sigmoid attention maps a, b: a·x + b·residual, then 3×3 conv+BN to C_t,i channels). Each
    stage's output O_i is resized bilinearly to the teacher tap's (T, F) and
    L_KD = mean_i HCL(O_i, Y_i), HCL = MSE at full resolution plus MSE after adaptive average
    pooling to each level×level grid, weights halving per level, normalised by their sum
    (:func:`~kdlib.kd.fusion.hcl_loss`). The official code sums over stages; the mean keeps the
    scale independent of the number of stages [R]. The ABFs are learnable submodules of the method
    (counted by :meth:`extra_params`). Not zero when the student equals the teacher: the ABFs are
    random projections until trained.

    Knobs:
        sets: the stages (default encoder, middle, decoder) [R].
        mid_channels: ABF width shared by all stages (default: the smallest teacher stage width) [R].
        fuse: ``False`` disables the residual attention fusion (ablation: per-stage adapters only).
        hcl_levels: pooling grids of HCL (default 4, 2, 1 as in the official code; levels not
            smaller than both T and F are skipped; ``[]`` = plain MSE).
    """

    Config = ReviewKDConfig
    source = "arXiv 2104.09044 §3 (ABF + HCL; SE stage choice is a reconstruction, see methods.md §5.4)"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.pairs = resolve_tap_pairs(student, teacher, c.sets)
        s_shapes = probe_feature_shapes(student, [s for s, _ in self.pairs])
        t_shapes = probe_feature_shapes(teacher, [t for _, t in self.pairs])
        t_channels = [t_shapes[t][1] for _, t in self.pairs]
        self.mid_channels = c.mid_channels or min(t_channels)
        n = len(self.pairs)
        self.abfs = nn.ModuleList(
            ABF(s_shapes[s][1], self.mid_channels, c_t, fuse=c.fuse and i < n - 1)
            for i, ((s, _), c_t) in enumerate(zip(self.pairs, t_channels, strict=True))
        )

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        levels = tuple(self.cfg.hcl_levels)
        residual = None
        terms = []
        for i in reversed(range(len(self.pairs))):  # deep to shallow
            s_name, t_name = self.pairs[i]
            out, residual = self.abfs[i](inputs.student_features[s_name], residual)
            ft = inputs.teacher_features[t_name].detach()
            terms.append(hcl_loss(_resize_to(out, ft.shape[-2:]), ft, levels))
        return torch.stack(terms).mean()
