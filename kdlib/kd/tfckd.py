"""I2RF-TFCKD: intra-/inter-set knowledge distillation with time-frequency cross-calibration.

Cheng et al., arXiv 2506.13127 (v1 "I2S-TFCKD", v2 "I2RF-TFCKD", latest "I2SRF-TFCKD"). Only the
abstract could be read, so the loss below is the reconstruction of methods.md §1.2 steps 1-7 [R];
every reconstructed choice is a knob of :class:`TFCKDConfig`. The set-internal fusion is ReviewKD's
attention-based fusion (ABF, arXiv 2104.09044 §3.2, methods.md §5.4).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from kdlib.errors import ConfigError
from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.kd.fusion import ABF
from kdlib.kd.hooks import probe_feature_shapes, resolve_tap
from kdlib.kd.similarity import freq_self_similarity, match_size, similarity_distance, time_self_similarity

#: one feature in similarity space: (time matrix (B, T, T) or None, frequency matrix (B, F, F) or None)
Mats = tuple[torch.Tensor | None, torch.Tensor | None]
STREAMS = ("time", "frequency")


def _key(name: str) -> str:
    """Submodule key for a set name (a set may be given as a module path like ``encoder.1``)."""
    return name.replace(".", ":")


class TFCKDConfig(KDConfig):
    """Knobs of ``i2rf_tfckd`` (all [R] unless noted; see :class:`I2RFTFCKD`)."""

    sets: list[str] = Field(default_factory=lambda: ["encoder", "middle", "decoder"], min_length=1)
    intra_set: bool = True
    inter_set_fusion: bool = True
    lambda_intra: float = Field(1.0, ge=0)
    lambda_inter: float = Field(1.0, ge=0)
    distance: Literal["mse", "kl"] = "mse"
    kl_temperature: float = Field(1.0, gt=0)
    temperature: float = Field(0.1, gt=0)
    rescale: bool = False
    calibration: Literal["none", "time", "frequency", "dual"] = "dual"
    weights: Literal["softmax", "learned"] = "softmax"
    cross_weighting: Literal["cross", "product", "none"] = "cross"
    fusion: Literal["residual", "recursive"] = "residual"
    fusion_channels: int = Field(16, ge=1, le=4096)
    teacher_representative: Literal["last", "mean"] = "last"
    embed_dim: int = Field(8, ge=1, le=1024)
    pool_size: int = Field(4, ge=1, le=64)

    @field_validator("sets")
    @classmethod
    def _unique_sets(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"set names must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _some_term(self) -> TFCKDConfig:
        if not (self.intra_set or self.inter_set_fusion):
            raise ValueError("intra_set and inter_set_fusion are both false: enable at least one of them")
        return self


class _PairAttention(nn.Module):
    """Learned calibration weights of one stream of one group of layer pairs (methods.md §1.2 step 4).

    Each similarity matrix ``(B, N, N)`` is average-pooled to ``p × p`` and averaged over the batch
    (``p²`` statistics, size- and channel-free); a linear map + LayerNorm without affine gain gives a
    ``d``-dim query (student layer) or key (teacher layer). α = softmax over all pairs of
    q_i·k_j/√d. The LayerNorm fixes ‖q‖ = ‖k‖ = √d, so the logits stay in [−√d, √d] and the weights
    cannot collapse onto a single pair without bound.
    """

    def __init__(self, pool_size: int, embed_dim: int) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.scale = 1.0 / math.sqrt(embed_dim)
        dim = pool_size * pool_size
        self.query = nn.Sequential(nn.Linear(dim, embed_dim), nn.LayerNorm(embed_dim, elementwise_affine=False))
        self.key = nn.Sequential(nn.Linear(dim, embed_dim), nn.LayerNorm(embed_dim, elementwise_affine=False))

    def _stats(self, mats: list[torch.Tensor]) -> torch.Tensor:
        # detached: the weights are trained through the loss, the student is not rewarded for moving them
        pooled = [F.adaptive_avg_pool2d(m.detach().unsqueeze(1), self.pool_size).mean(0).flatten() for m in mats]
        return torch.stack(pooled)  # (N, p²)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        q, k = self.query(self._stats(student)), self.key(self._stats(teacher))
        logits = q @ k.T * self.scale  # (Ns, Nt)
        return torch.softmax(logits.flatten(), 0).view_as(logits)


class _SetFusion(nn.Module):
    """ABF chain reducing one set's student layers (forward order, ``(B, C_k, T, F_k)``) to one
    representative ``(B, out, T, F_r)``. ``residual``: deep → shallow, representative at the
    shallowest layer's F; ``recursive``: shallow → deep, representative at the deepest layer's F.
    The first ABF of the chain has no residual input, so it is built without the attention conv;
    only the last ABF's output (3×3 conv + BN) is the representative, so the earlier ones pass their
    fused ``mid``-channel feature on and have no output conv (no dead parameters)."""

    def __init__(self, channels: list[int], mid: int, out: int, order: str) -> None:
        super().__init__()
        self.order = list(range(len(channels)))
        if order == "residual":
            self.order.reverse()
        self.abfs = nn.ModuleList(ABF(channels[k], mid, out, fuse=n > 0) for n, k in enumerate(self.order))
        for abf in self.abfs[:-1]:
            abf.conv2 = nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        running = None
        for abf, k in zip(self.abfs, self.order, strict=True):
            out, running = abf(feats[k], running)
        return out


@register_kd_method("i2rf_tfckd")
class I2RFTFCKD(KDMethod):
    """I2RF-TFCKD: intra-set pairwise + inter-set fused distillation with dual-stream time-frequency
    cross-calibration (arXiv 2506.13127 abstract [V]; equations reconstructed, methods.md §1.2 [R]).

    **Similarity space** (steps 1-2). Every feature ``(B, C, T, F)`` becomes A_T ``(B, T, T)``
    (cosines between frames flattened over C·F) and A_F ``(B, F, F)`` (cosines between bins flattened
    over C·T); ``rescale`` maps cosines to [0, 1]. Channel-free, so teacher and student widths, and
    the widths of layers inside a set, may differ.

    **Calibrated pairwise distillation of a group** (steps 3-5). For student layers i = 1..Ns and
    teacher layers j = 1..Nt: d^T_ij = D(A_T(s_i), A_T(t_j)), d^F_ij = D(A_F(s_i), A_F(t_j)) (the
    student's A_F resized bilinearly to the teacher's F), D = ``distance`` (Frobenius MSE, or row-softmax
    KL at ``kl_temperature``). Calibration weights per stream over the Ns·Nt pairs:
    ``weights=softmax``: α^T = softmax_ij(−d^T_ij/τ), α^F = softmax_ij(−d^F_ij/τ), τ = ``temperature``,
    gradient stopped through α; ``weights=learned``: α = softmax_ij(q_i·k_j/√d) from query/key
    embeddings of pooled similarity statistics (see ``_PairAttention``; its parameters train through
    α, the statistics are detached). The group loss, for ``calibration=dual``, is
    ``cross``: Σ_ij α^F_ij·d^T_ij + α^T_ij·d^F_ij (each stream weighted by the other's weights);
    ``product``: Σ_ij w_ij·(d^T_ij + d^F_ij), w = α^T⊙α^F / Σ α^T⊙α^F; ``none``: Σ_ij α^T_ij·d^T_ij +
    α^F_ij·d^F_ij. ``calibration=time`` / ``frequency``: Σ_ij α_ij·d_ij of that stream alone
    (``cross_weighting`` is then moot); ``calibration=none``: uniform α = 1/(Ns·Nt), both streams
    (all three ``cross_weighting`` modes then coincide). The weights sum to 1, so a group loss is a
    weighted mean over pairs, summed over streams.

    **Intra-set** (L_intra). Each set name in ``sets`` is resolved with ``resolve_tap(model, name,
    "all")`` on the student and on the teacher separately (they may have different depths); every
    student layer is paired with every teacher layer of the same set.

    **Inter-set fusion** (step 6, L_inter). Each set's student layers are fused into one
    representative by a chain of ReviewKD ABF blocks (1×1 conv+BN to ``fusion_channels``; with a
    running fused feature resized (nearest) to the current T×F, a 1×1 conv + sigmoid on the
    concatenation gives maps a, b and fused = a·x + b·running; a 3×3 conv+BN gives the output).
    ``fusion=residual`` (v2, ReviewKD order): the chain runs deep → shallow in the set's forward
    order, the representative is the last ABF output at the shallowest layer's resolution;
    ``fusion=recursive`` (latest version): the chain runs shallow → deep, each fused output feeding
    the next layer's ABF, the representative is at the deepest layer's resolution. Teacher side
    (no learnable parts): ``teacher_representative=last`` uses the set's last layer;
    ``mean`` averages the set's similarity matrices (A_F resized to the last layer's F) — the mean is
    taken in similarity space, not feature space, because a set's layers may have different channel
    counts. The Ns = Nt = len(sets) representatives form the fused feature set, distilled with the
    same calibrated pairwise loss (all representative pairs, own learned weights if ``learned``).

    **Total.** ``lambda_intra``·Σ_sets L_intra(set) + ``lambda_inter``·L_inter; the trainer adds the
    task loss and multiplies this by the trial's ``kd_weight``. Not zero when student == teacher:
    off-diagonal layer pairs have non-zero distances (their weight → 0 as τ → 0, softmax mode) and
    the ABF representative is a learned transform of the student's layers.

    Knobs: ``sets`` (correlated-set names), ``intra_set`` / ``inter_set_fusion`` (switch the terms;
    at least one must be on), ``lambda_intra`` / ``lambda_inter`` (≥ 0), ``distance`` (mse | kl),
    ``kl_temperature`` (KL only), ``temperature`` (τ of softmax calibration), ``rescale``,
    ``calibration`` (none | time | frequency | dual), ``weights`` (softmax | learned),
    ``cross_weighting`` (cross | product | none), ``fusion`` (residual | recursive),
    ``fusion_channels`` (ABF mid and output width), ``teacher_representative`` (last | mean),
    ``embed_dim`` / ``pool_size`` (learned weights: embedding size d and p of the p×p pooled statistics).

    Learnable parts (``extra_params``): the ABF chains (only when ``inter_set_fusion``) and, for
    ``weights=learned`` with calibration on, one query/key pair per used stream per group (each
    intra set, and the inter-set group).
    """

    Config = TFCKDConfig
    source = "arXiv 2506.13127 abstract; methods.md §1.2 steps 1-7 and §5.4 ABF (reconstruction, see methods.md)"
    needs_teacher = True

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.s_sets = {name: resolve_tap(student, name, pick="all") for name in c.sets}
        self.t_sets = {name: resolve_tap(teacher, name, pick="all") for name in c.sets}
        self.streams = [s for s in STREAMS if c.calibration in ("none", "dual", s)]
        shapes = probe_feature_shapes(student, self.student_taps())
        bad = [n for n in shapes if len(shapes[n]) != 4]
        if bad:
            raise ConfigError(f"kd.i2rf_tfckd: student tap '{bad[0]}' outputs shape {tuple(shapes[bad[0]])}, "
                              "not (B, C, T, F)")
        self.fusion = nn.ModuleDict()
        if c.inter_set_fusion:
            for name, names in self.s_sets.items():
                channels = [int(shapes[n][1]) for n in names]
                self.fusion[_key(name)] = _SetFusion(channels, c.fusion_channels, c.fusion_channels, c.fusion)
        self.attention = nn.ModuleDict()
        if c.weights == "learned" and c.calibration != "none":
            groups = [*(c.sets if c.intra_set else []), *(["inter"] if c.inter_set_fusion else [])]
            for group in groups:
                for stream in self.streams:
                    self.attention[_key(f"{group}/{stream}")] = _PairAttention(c.pool_size, c.embed_dim)

    def student_taps(self) -> list[str]:
        return [n for names in self.s_sets.values() for n in names]

    def teacher_taps(self) -> list[str]:
        return [n for names in self.t_sets.values() for n in names]

    # ---- similarity space --------------------------------------------------------------------
    def _mats(self, feat: torch.Tensor) -> Mats:
        r = self.cfg.rescale
        return (time_self_similarity(feat, r) if "time" in self.streams else None,
                freq_self_similarity(feat, r) if "frequency" in self.streams else None)

    def _teacher_representative(self, mats: list[Mats]) -> Mats:
        if self.cfg.teacher_representative == "last":
            return mats[-1]
        out = []
        for k in range(2):
            if mats[-1][k] is None:
                out.append(None)
                continue
            size = mats[-1][k].shape[-1]
            out.append(torch.stack([match_size(m[k], size) for m in mats]).mean(0))
        return out[0], out[1]

    # ---- calibrated pairwise distillation ------------------------------------------------------
    def pair_loss(self, group: str, student: list[Mats], teacher: list[Mats]) -> torch.Tensor:
        """Calibrated loss over all (student i, teacher j) pairs of one group (a set, or ``inter``)."""
        c = self.cfg
        dist, alpha = {}, {}
        for k, stream in enumerate(STREAMS):
            if stream not in self.streams:
                continue
            d = torch.stack([torch.stack([similarity_distance(s[k], t[k], c.distance, c.kl_temperature)
                                          for t in teacher]) for s in student])  # (Ns, Nt)
            dist[stream] = d
            if c.calibration == "none":
                alpha[stream] = torch.full_like(d, 1.0 / d.numel()).detach()
            elif c.weights == "learned":
                attention = self.attention[_key(f"{group}/{stream}")]
                alpha[stream] = attention([s[k] for s in student], [t[k] for t in teacher])
            else:
                alpha[stream] = torch.softmax(-d.detach().flatten() / c.temperature, 0).view_as(d)
        if len(self.streams) == 1:
            (stream,) = self.streams
            return (alpha[stream] * dist[stream]).sum()
        d_t, d_f, a_t, a_f = dist["time"], dist["frequency"], alpha["time"], alpha["frequency"]
        if c.cross_weighting == "cross":
            return (a_f * d_t + a_t * d_f).sum()
        if c.cross_weighting == "product":
            w = a_t * a_f
            return (w / w.sum().clamp_min(1e-12) * (d_t + d_f)).sum()
        return (a_t * d_t + a_f * d_f).sum()

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        c = self.cfg
        s_feats, t_feats = inputs.student_features, inputs.teacher_features
        intra, fused_s, fused_t = [], [], []
        for name in c.sets:
            s_list = [s_feats[n] for n in self.s_sets[name]]
            t_mats = [self._mats(t_feats[n].detach()) for n in self.t_sets[name]]
            if c.intra_set:
                intra.append(self.pair_loss(name, [self._mats(f) for f in s_list], t_mats))
            if c.inter_set_fusion:
                fused_s.append(self._mats(self.fusion[_key(name)](s_list)))
                fused_t.append(self._teacher_representative(t_mats))
        loss = inputs.student_out.new_zeros(())
        if intra:
            loss = loss + c.lambda_intra * torch.stack(intra).sum()
        if fused_s:
            loss = loss + c.lambda_inter * self.pair_loss("inter", fused_s, fused_t)
        return loss

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"sets={c.sets}, calibration={c.calibration}, weights={c.weights}, "
                f"cross_weighting={c.cross_weighting}, fusion={c.fusion if c.inter_set_fusion else 'off'}")


__all__ = ["I2RFTFCKD", "TFCKDConfig"]
