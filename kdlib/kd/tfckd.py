"""I2RF-TFCKD: intra-/inter-set knowledge distillation with time-frequency cross-calibration.

Cheng et al., arXiv 2506.13127 (v1 "I2S-TFCKD", v2 "I2RF-TFCKD", latest "I2SRF-TFCKD"). Two variants,
chosen by the knob ``variant``; it only sets the defaults of the other knobs (an explicitly given knob
always wins):

- ``"authors"`` (default): the loss of the authors' demo, GitHub ``JMCheng-SEU/I2RF-TFCKD-SE``, file
  ``I2S_TFCKD_demo.py``, commit 0949953525576453e8902342cf37ce80ff4a8276 (methods.md §9.1), re-written
  for kdlib (own code) and generalised to any number of frames T and any batch size B;
- ``"reconstruction"``: the loss reconstructed from the abstract before that code was found
  (methods.md §1.2 steps 1-7 [R]); it reproduces the pre-2026-12 ``i2rf_tfckd`` exactly.

The set-internal fusion is an attention-based fusion chain (ABF; ReviewKD arXiv 2104.09044 §3.2,
methods.md §5.4; the authors' ``ABF_res`` variant for ``fusion_block="authors"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from kdlib.errors import ConfigError
from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.kd.fusion import ABF
from kdlib.kd.hooks import probe_feature_shapes, resolve_tap
from kdlib.kd.similarity import (
    batch_similarity,
    frame_vectors,
    freq_self_similarity,
    match_size,
    row_distance,
    row_normalise,
    time_self_similarity,
)

STREAMS = ("time", "frequency")
AUTHORS_CODE = ("GitHub JMCheng-SEU/I2RF-TFCKD-SE, I2S_TFCKD_demo.py, "
                "commit 0949953525576453e8902342cf37ce80ff4a8276")

#: the defaults each ``variant`` gives the knobs it governs (explicit knobs override them)
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "authors": {
        "mask_in_decoder": True, "frequency_stream": "batch", "distance": "sym_kl", "rescale": True,
        "row_normalise": True, "weights": "gram_mlp", "cross_weighting": "none", "fusion": "bottleneck",
        "fusion_block": "authors", "fusion_channels": 128, "teacher_representative": "fused",
    },
    "reconstruction": {
        "mask_in_decoder": False, "frequency_stream": "bins", "distance": "mse", "rescale": False,
        "row_normalise": False, "weights": "softmax", "cross_weighting": "cross", "fusion": "residual",
        "fusion_block": "reviewkd", "fusion_channels": 16, "teacher_representative": "last",
    },
}


def _key(name: str) -> str:
    """Submodule key for a set name (a set may be given as a module path like ``encoder.1``)."""
    return name.replace(".", ":")


def _resize_frames(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Linear resampling of axis ``dim`` of ``x`` to ``n`` entries (a no-op when it has ``n``): puts
    layers with different numbers of frames (DPTNet's chunked taps) on one frame grid."""
    if x.shape[dim] == n:
        return x
    moved = x.movedim(dim, -1)
    out = F.interpolate(moved.reshape(-1, 1, moved.shape[-1]), size=n, mode="linear", align_corners=False)
    return out.reshape(*moved.shape[:-1], n).movedim(-1, dim)


def _match(student: torch.Tensor, teacher: torch.Tensor, per_frame: bool) -> torch.Tensor:
    """The student's similarity matrices on the teacher's grid: ``(M, N, N)`` stacks are resized
    bilinearly in N (time T, bins F); ``per_frame`` (batch-stream) stacks ``(T, B, B)`` linearly in T."""
    if per_frame:
        return _resize_frames(student, teacher.shape[0], 0)
    return match_size(student, teacher.shape[-1])


class TFCKDConfig(KDConfig):
    """Knobs of ``i2rf_tfckd`` (see :class:`I2RFTFCKD`). The field defaults are the ``authors``
    variant's; ``variant="reconstruction"`` replaces the governed ones by :data:`VARIANT_DEFAULTS`."""

    variant: Literal["authors", "reconstruction"] = "authors"
    sets: list[str] = Field(default_factory=lambda: ["encoder", "middle", "decoder"], min_length=1)
    mask_in_decoder: bool = True
    intra_set: bool = True
    inter_set_fusion: bool = True
    lambda_intra: float = Field(1.0, ge=0)
    lambda_inter: float = Field(1.0, ge=0)
    frequency_stream: Literal["batch", "bins"] = "batch"
    distance: Literal["mse", "kl", "sym_kl"] = "sym_kl"
    kl_temperature: float = Field(1.0, gt=0)
    temperature: float = Field(0.1, gt=0)
    rescale: bool = True
    row_normalise: bool = True
    calibration: Literal["none", "time", "frequency", "dual"] = "dual"
    weights: Literal["softmax", "learned", "gram_mlp"] = "gram_mlp"
    cross_weighting: Literal["cross", "product", "none"] = "none"
    fusion: Literal["residual", "recursive", "bottleneck"] = "bottleneck"
    fusion_block: Literal["reviewkd", "authors"] = "authors"
    fusion_channels: int = Field(128, ge=1, le=4096)
    teacher_representative: Literal["last", "mean", "fused"] = "fused"
    embed_dim: int = Field(8, ge=1, le=1024)
    pool_size: int = Field(4, ge=1, le=64)
    time_embed_size: int = Field(32, ge=1, le=4096)
    batch_embed_size: int = Field(8, ge=1, le=1024)
    embed_factor: int = Field(2, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = VARIANT_DEFAULTS.get(data.get("variant", "authors"))
        # an unknown variant is left to the Literal check, which names the key
        return data if defaults is None else {**defaults, **data}

    @field_validator("sets")
    @classmethod
    def _unique_sets(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"set names must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TFCKDConfig:
        if not (self.intra_set or self.inter_set_fusion):
            raise ValueError("intra_set and inter_set_fusion are both false: enable at least one of them")
        if self.distance == "sym_kl" and not self.rescale:
            raise ValueError("distance='sym_kl' takes logs of the similarities: it needs rescale=true "
                             "(cosines mapped to [0, 1])")
        if (self.weights == "gram_mlp" and self.frequency_stream == "bins"
                and self.calibration in ("dual", "frequency")):
            raise ValueError("weights='gram_mlp' weighs rows indexed by (utterance, frame); the rows of "
                             "frequency_stream='bins' are (utterance, bin): use frequency_stream='batch', "
                             "calibration='time' or weights='softmax'/'learned'")
        return self


@dataclass
class _Sim:
    """One feature ``(B, C, T, F)`` in similarity space.

    Attributes:
        n_items: the batch size B.
        value: stream → ``(M, N, N)`` matrices whose rows the distance compares: time ``(B, T, T)``,
            frequency ``(T, B, B)`` (batch stream) or ``(B, F, F)`` (bins stream).
        gram: stream → raw (unnormalised) Gram rows ``(B, T, K)`` for ``weights="gram_mlp"``: time
            ``(B, T, T)``, frequency ``(B, T, B)`` (entry [b, t, b'] = ⟨x_bt, x_b't⟩); empty otherwise.
    """

    n_items: int
    value: dict[str, torch.Tensor]
    gram: dict[str, torch.Tensor]

    def value_detached(self) -> _Sim:
        return _Sim(self.n_items, {k: v.detach() for k, v in self.value.items()}, self.gram)


class _PairAttention(nn.Module):
    """``weights="learned"`` (reconstruction, methods.md §1.2 step 4): calibration weights of one stream
    of one group of layer pairs.

    Each similarity matrix ``(M, N, N)`` is average-pooled to ``p × p`` and averaged over M (``p²``
    statistics, size- and channel-free); a linear map + LayerNorm without affine gain gives a
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
        """Lists of ``(M, N, N)`` matrices → weights ``(Ns, Nt)`` summing to 1 over all pairs."""
        q, k = self.query(self._stats(student)), self.key(self._stats(teacher))
        logits = q @ k.T * self.scale  # (Ns, Nt)
        return torch.softmax(logits.flatten(), 0).view_as(logits)


class _GramEmbed(nn.Module):
    """One layer's query or key for ``weights="gram_mlp"``: Gram rows ``(B, T, K)`` → embeddings
    ``(B, T', out)``. Each row is resampled to ``size`` entries (adaptive average pooling over K; a no-op
    when K = size), then Linear(size → hidden) → ReLU → Linear(hidden → out); the frames are resampled
    linearly to the group's T' (a no-op unless the group's layers differ in T), then every embedding
    dimension is L2-normalised over the frames (axis 1), as the authors' ``Normalize`` does on their
    ``(B, T, ·)`` tensors."""

    def __init__(self, size: int, hidden: int, out: int) -> None:
        super().__init__()
        self.size = size
        self.mlp = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, gram: torch.Tensor, n_frames: int) -> torch.Tensor:
        if gram.shape[-1] != self.size:
            gram = F.adaptive_avg_pool1d(gram, self.size)
        e = _resize_frames(self.mlp(gram), n_frames, 1)
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _FrameCalibration(nn.Module):
    """``weights="gram_mlp"``: the authors' calibration of one stream of one group (their
    ``TF_calibration_block``). Student layer i → query q_i, teacher layer j → key k_j (one
    :class:`_GramEmbed` per layer); energy e_btij = q_bti·k_btj (times T / ``size`` for the time stream,
    see :class:`I2RFTFCKD`); weights softmax over the teacher layers j.

    Time stream: embedding size = ``size`` (the authors: T), hidden 2·size. Frequency (batch) stream:
    embedding and hidden size = ``size``·``factor`` (the authors: B·2).
    """

    def __init__(self, n_student: int, n_teacher: int, stream: str, size: int, factor: int) -> None:
        super().__init__()
        hidden, out = (2 * size, size) if stream == "time" else (size * factor, size * factor)
        self.stream, self.size = stream, size
        self.query = nn.ModuleList(_GramEmbed(size, hidden, out) for _ in range(n_student))
        self.key = nn.ModuleList(_GramEmbed(size, hidden, out) for _ in range(n_teacher))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """Gram rows ``(B, T_k, K)`` per layer → weights ``(B, T, Ns, Nt)``, summing to 1 over Nt, on the
        frame grid T = max_k T_k (all T_k are equal in the demo and for the STFT families)."""
        n = max(g.shape[1] for g in [*student, *teacher])
        q = torch.stack([m(g, n) for m, g in zip(self.query, student, strict=True)], 2)  # (B, T, Ns, d)
        k = torch.stack([m(g, n) for m, g in zip(self.key, teacher, strict=True)], 2)  # (B, T, Nt, d)
        energy = q @ k.transpose(-1, -2)
        if self.stream == "time":
            energy = energy * (q.shape[1] / self.size)
        return torch.softmax(energy, dim=-1)


class _SetFusion(nn.Module):
    """ABF chain reducing one set's layers (forward order, ``(B, C_k, T, F_k)``) to one representative.

    Order: ``residual``: deep → shallow (last layer first), ending at the first layer's F;
    ``recursive``: shallow → deep, ending at the last layer's F; ``bottleneck`` (the authors' demo):
    towards the set's coarser end — forward order unless the last layer has more bins than the first
    (a decoder ending in the full-resolution mask), so every chain ends at the bottleneck side.
    Block: ``reviewkd`` — BN, no activation, output ``out`` channels; ``authors`` — InstanceNorm +
    PReLU, output as many channels as the chain's last layer (the demo's ``out_channels``).
    The first ABF of the chain has no residual input, so it is built without the attention conv;
    only the last ABF's output conv gives the representative, so the earlier ones have none (the demo
    builds and discards them). Output ``(B, out or C_last, T, F_last)``.
    """

    def __init__(self, channels: list[int], freqs: list[int], mid: int, out: int, order: str, block: str) -> None:
        super().__init__()
        self.order = list(range(len(channels)))
        if order == "residual" or (order == "bottleneck" and freqs[-1] > freqs[0]):
            self.order.reverse()
        authors = block == "authors"
        out = channels[self.order[-1]] if authors else out
        self.abfs = nn.ModuleList(
            ABF(channels[k], mid, out, fuse=n > 0, norm="instance" if authors else "batch", prelu=authors)
            for n, k in enumerate(self.order))
        for abf in self.abfs[:-1]:
            abf.conv2 = nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        running = None
        for abf, k in zip(self.abfs, self.order, strict=True):
            out, running = abf(feats[k], running)
        return out


@register_kd_method("i2rf_tfckd")
class I2RFTFCKD(KDMethod):
    """I2RF-TFCKD: intra-set pairwise + inter-set fused distillation with time-frequency calibration
    (arXiv 2506.13127). ``variant="authors"`` (default) follows the authors' demo (GitHub
    ``JMCheng-SEU/I2RF-TFCKD-SE``, ``I2S_TFCKD_demo.py``, commit 0949953525576453e8902342cf37ce80ff4a8276;
    methods.md §9.1); ``variant="reconstruction"`` is the pre-code reconstruction of methods.md §1.2 [R],
    value for value the method as it was before (regression-tested).

    **Similarity space.** Each feature ``(B, C, T, F)`` is flattened per frame to x_bt ∈ R^{C·F}.
    Time stream: per utterance, cosines between frames, ``(B, T, T)``. Frequency stream,
    ``frequency_stream="batch"`` (authors): per frame, cosines between the items of the batch,
    ``(T, B, B)`` (needs B ≥ 2: :class:`ConfigError` otherwise); ``"bins"`` (reconstruction): per
    utterance, cosines between frequency bins flattened over C·T, ``(B, F, F)`` (the student's matrix
    resized bilinearly to the teacher's F). ``rescale``: (A + 1)/2; ``row_normalise``: rows divided by
    their sum (authors: both). Channel-free, so teacher and student widths may differ.

    **Per-row distance** r (``distance``): ``sym_kl`` (authors) Σ_n (t − s)(log t − log s) over the row;
    ``mse`` mean of (s − t)²; ``kl`` KL(softmax(t/τ_kl) ‖ softmax(s/τ_kl)). A pair's stream loss is
    Σ_rows α·r / (B·N), N the matrix size (time T, batch B, bins F) — the demo's reduction (for
    ``(B, N, N)`` stacks the mean over rows; for the batch stream Σ_t Σ_b α·r / B²).

    **Calibration weights** α over the Ns student × Nt teacher layers of a group, summing to 1 over the
    pairs (per row for ``gram_mlp``). ``weights="gram_mlp"`` (authors): each layer's raw Gram rows
    (time ⟨x_bt, x_bt'⟩ ``(B, T, T)``; frequency ⟨x_bt, x_b't⟩ ``(B, T, B)``) are embedded per
    frame (student → query, teacher → key, one MLP per layer: :class:`_GramEmbed`); α_btij =
    softmax_j(q_bti·k_btj) / Ns, so the loss is the mean over student layers of a per-row weighted
    sum over teacher layers. Time weights per (utterance, frame) weigh time rows (b, t); frequency
    weights per (utterance, frame) weigh batch-stream rows (t, b). The query Gram keeps its graph
    (gradient reaches the student through the weights, as in the demo); teacher Grams are detached,
    except the fused teacher representatives', through which the teacher-side fusion trains.
    *Any T and B* (the demo fixes both: its time MLP takes T inputs and embeds in T dims, its
    frequency MLP takes B = 8): Gram rows are resampled by adaptive average pooling to
    ``time_embed_size`` (time) / ``batch_embed_size`` (frequency) entries — the demo's network
    exactly when T / B equal them; time MLP size → 2·size → size, frequency size → size·f → size·f,
    f = ``embed_factor`` (demo 2); the embeddings are L2-normalised over the frames (the demo's
    ``Normalize`` on ``(B, T, ·)``), which makes q·k scale with (embedding size)/T, so the time
    energies are multiplied by T/``time_embed_size`` to keep the demo's scale (its embedding size is T).
    Layers with different T in one group (DPTNet's chunked taps; never for the STFT families) are put
    on one frame grid by linear resampling: embeddings and weights to the group's largest T, batch-stream
    stacks to the teacher layer's T (time matrices are resized bilinearly, as in the reconstruction).
    ``weights="softmax"`` (reconstruction): α_ij = softmax_ij(−d_ij/τ), d_ij the pair's stream loss
    with uniform row weights, gradient stopped; ``"learned"``: :class:`_PairAttention`.
    ``calibration``: ``dual`` both streams, ``time`` / ``frequency`` that stream alone, ``none`` both
    streams with α = 1/(Ns·Nt). ``cross_weighting`` (dual only): ``none`` (authors) each stream by its
    own weights; ``cross`` time rows by the frequency weights and vice versa (reconstruction);
    ``product`` both by α^T⊙α^F renormalised over the pairs.

    **Sets.** Each name in ``sets`` is resolved with ``resolve_tap(model, name, "all")`` on student and
    teacher separately (depths may differ); ``mask_in_decoder`` appends the model's ``mask`` feature
    set (the 2-channel mask output) to the set named ``decoder`` (the demo's third decoder feature);
    a model without a ``mask`` set (the time-domain families) keeps its decoder set unchanged.
    L_intra = Σ_sets group loss over all (student, teacher) layer pairs of the set.

    **Inter-set fusion** (L_inter). Each set's student layers are fused into one representative by an
    ABF chain (:class:`_SetFusion`: ``fusion`` order, ``fusion_block``, ``fusion_channels`` mid width;
    authors: ``bottleneck``, ``authors``, 128). Teacher representative: ``fused`` (authors) its own ABF
    chain over the set's detached teacher layers (no gradient reaches the teacher model; its parameters
    learn through the calibration keys only, so with ``weights`` ≠ ``gram_mlp`` they keep their
    initial values); ``last`` the set's last layer; ``mean`` the mean of the set's similarity matrices
    (and Grams). The len(sets) representatives form one more group with its own weights.

    **Total.** ``lambda_intra``·L_intra + ``lambda_inter``·L_inter (the demo: both 1); the trainer adds
    the task loss and multiplies this by the trial's ``kd_weight``. Not zero when student == teacher
    (off-diagonal layer pairs, learned fusion).

    Differences from the demo (besides any T and B): similarities use ``F.normalize`` (eps 1e-8 on
    the norm) instead of x/(‖x‖ + 1e-6); sym_kl clamps entries to ≥ 1e-8 before the log; each
    layer's similarities are computed once, not once per pair; the unused output convs are not built.

    Teacher-output cache: the loss reads the teacher's features (:meth:`teacher_taps`); it has no
    item-wise :meth:`teacher_targets` (the batch stream mixes the items of a batch).

    Learnable parts (``extra_params``): the student ABF chains and, for ``teacher_representative=
    fused``, the teacher ones (only with ``inter_set_fusion``); the calibration networks (one per used
    stream per group: each intra set and ``inter``) for ``weights`` learned / gram_mlp (gram_mlp: none for
    a group with one teacher layer, whose weights are constant).

    Raises:
        ConfigError: bad knobs; a tap that is not ``(B, C, T, F)``; ``mask_in_decoder`` with ``mask``
            also in ``sets``; B < 2 with the batch stream (at the forward).
    """

    Config = TFCKDConfig
    source = (f"arXiv 2506.13127; variant authors: {AUTHORS_CODE} (methods.md §9.1); variant reconstruction: "
              "methods.md §1.2 steps 1-7 and §5.4 ABF (reconstruction, see methods.md)")
    needs_teacher = True

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.s_sets = {name: self._set_taps(student, name) for name in c.sets}
        self.t_sets = {name: self._set_taps(teacher, name) for name in c.sets}
        self.streams = [s for s in STREAMS if c.calibration in ("none", "dual", s)]
        self.gram_weights = c.weights == "gram_mlp" and c.calibration != "none"
        s_shapes = self._shapes(student, self.student_taps(), "student")
        self.fusion = nn.ModuleDict()
        self.teacher_fusion = nn.ModuleDict()
        if c.inter_set_fusion:
            t_shapes = (self._shapes(teacher, self.teacher_taps(), "teacher")
                        if c.teacher_representative == "fused" else {})
            for name in c.sets:
                self.fusion[_key(name)] = self._set_fusion([s_shapes[n] for n in self.s_sets[name]])
                if t_shapes:
                    self.teacher_fusion[_key(name)] = self._set_fusion([t_shapes[n] for n in self.t_sets[name]])
        groups = {name: (len(self.s_sets[name]), len(self.t_sets[name])) for name in c.sets} if c.intra_set else {}
        if c.inter_set_fusion:
            groups["inter"] = (len(c.sets), len(c.sets))
        self.attention = nn.ModuleDict()
        if c.weights == "learned" and c.calibration != "none":
            for group in groups:
                for stream in self.streams:
                    self.attention[_key(f"{group}/{stream}")] = _PairAttention(c.pool_size, c.embed_dim)
        self.calibration = nn.ModuleDict()
        if self.gram_weights:
            for group, (n_s, n_t) in groups.items():
                if n_t == 1:
                    continue  # a softmax over one teacher layer is constant 1: nothing to learn
                for stream in self.streams:
                    size = c.time_embed_size if stream == "time" else c.batch_embed_size
                    self.calibration[_key(f"{group}/{stream}")] = _FrameCalibration(n_s, n_t, stream, size,
                                                                                   c.embed_factor)

    # ---- construction helpers ------------------------------------------------------------------
    def _set_taps(self, model, name: str) -> list[str]:
        taps = resolve_tap(model, name, pick="all")
        sets = getattr(model, "feature_sets", {})
        # families without a mask set (the time-domain ones) keep their decoder set as it is
        if name == "decoder" and self.cfg.mask_in_decoder and "mask" in sets:
            if "mask" in self.cfg.sets:
                raise ConfigError("kd.i2rf_tfckd.mask_in_decoder: 'mask' is also one of the sets; "
                                  "set mask_in_decoder=false or drop 'mask' from sets")
            taps = [*taps, *(t for t in sets["mask"] if t not in taps)]
        return taps

    @staticmethod
    def _shapes(model, taps: list[str], who: str) -> dict[str, torch.Size]:
        shapes = probe_feature_shapes(model, taps)
        bad = [n for n in shapes if len(shapes[n]) != 4]
        if bad:
            raise ConfigError(f"kd.i2rf_tfckd: {who} tap '{bad[0]}' outputs shape {tuple(shapes[bad[0]])}, "
                              "not (B, C, T, F)")
        return shapes

    def _set_fusion(self, shapes: list[torch.Size]) -> _SetFusion:
        c = self.cfg
        return _SetFusion([int(s[1]) for s in shapes], [int(s[3]) for s in shapes], c.fusion_channels,
                          c.fusion_channels, c.fusion, c.fusion_block)

    def student_taps(self) -> list[str]:
        return [n for names in self.s_sets.values() for n in names]

    def teacher_taps(self) -> list[str]:
        return [n for names in self.t_sets.values() for n in names]

    # ---- similarity space ----------------------------------------------------------------------
    @classmethod
    def min_batch_size(cls, cfg: KDConfig) -> int:
        """2 when the batch (item × item) frequency stream is in use, else 1."""
        uses_frequency = cfg.calibration in ("none", "dual", "frequency")  # type: ignore[attr-defined]
        return 2 if uses_frequency and cfg.frequency_stream == "batch" else 1  # type: ignore[attr-defined]

    def _sim(self, feat: torch.Tensor) -> _Sim:
        """``(B, C, T, F)`` → its :class:`_Sim` (the streams in use; Grams only for ``gram_mlp``). Computed in
        float32 even under bf16 autocast: bf16 cosines are off by ~4e-3, about the student-teacher gap."""
        with torch.autocast(feat.device.type, enabled=False):
            return self._sim_f32(feat.float())

    def _sim_f32(self, feat: torch.Tensor) -> _Sim:
        c = self.cfg
        value, gram = {}, {}
        x = frame_vectors(feat) if self.gram_weights else None  # (B, T, C·F)
        if x is not None:
            # one Gram per stream serves both the calibration and (divided by the norms) the cosines
            inv = 1.0 / x.norm(dim=-1).clamp_min(1e-8)  # (B, T)
        if "time" in self.streams:
            if x is None:
                value["time"] = time_self_similarity(feat)
            else:
                gram["time"] = x @ x.transpose(1, 2)
                value["time"] = gram["time"] * inv[:, :, None] * inv[:, None, :]
        if "frequency" in self.streams:
            if c.frequency_stream == "bins":
                value["frequency"] = freq_self_similarity(feat)
            elif x is None:
                value["frequency"] = batch_similarity(feat)
            else:
                gram["frequency"] = torch.einsum("btd,ctd->btc", x, x)  # (B, T, B)
                cos = gram["frequency"] * inv[:, :, None] * inv.T[None]
                value["frequency"] = cos.transpose(0, 1)  # (T, B, B)
        for k, v in value.items():
            v = (v + 1) / 2 if c.rescale else v
            value[k] = row_normalise(v) if c.row_normalise else v
        return _Sim(feat.shape[0], value, gram)

    def _teacher_representative(self, name: str, feats: list[torch.Tensor], sims: list[_Sim]) -> _Sim:
        mode = self.cfg.teacher_representative
        if mode == "fused":
            # the value is a target (detached); the Gram keeps the teacher fusion's graph for the keys
            return self._sim(self.teacher_fusion[_key(name)](feats)).value_detached()
        if mode == "last":
            return sims[-1]
        last = sims[-1]
        value = {k: torch.stack([_match(s.value[k], v, self._per_frame(k)) for s in sims]).mean(0)
                 for k, v in last.value.items()}
        # Grams (B, T, T) / (B, T, B) on the last layer's frames (all equal for the STFT families)
        gram = {}
        for k, v in last.gram.items():
            n = v.shape[1]
            gram[k] = torch.stack([match_size(s.gram[k], n) if k == "time" else _resize_frames(s.gram[k], n, 1)
                                   for s in sims]).mean(0)
        return _Sim(last.n_items, value, gram)

    # ---- calibrated pairwise distillation --------------------------------------------------------
    def _per_frame(self, stream: str) -> bool:
        """Whether the stream's matrices are a per-frame stack ``(T, B, B)`` (the batch stream)."""
        return stream == "frequency" and self.cfg.frequency_stream == "batch"

    @staticmethod
    def _weighted(stream: str, rows: list[list[torch.Tensor]], norms: list[int], w: torch.Tensor) -> torch.Tensor:
        """Σ_ij Σ_rows w_ij·r_ij / norm_j; ``w`` is ``(Ns, Nt)`` or per frame ``(Ns, Nt, B, T)``."""
        total = rows[0][0].new_zeros(())
        for i, row_i in enumerate(rows):
            for j, r in enumerate(row_i):
                wij = w[i, j]
                if wij.ndim == 2:  # per frame (B, T) → the rows' frames: time (B, T_j), batch stream (T_j, B)
                    wij = _resize_frames(wij, r.shape[1] if stream == "time" else r.shape[0], 1)
                    wij = wij.T if stream == "frequency" else wij
                total = total + (wij * r).sum() / norms[j]
        return total

    def _weights(self, group: str, stream: str, student: list[_Sim], teacher: list[_Sim],
                 rows: list[list[torch.Tensor]], norms: list[int]) -> torch.Tensor:
        """Calibration weights of one stream: ``(Ns, Nt)``, or ``(Ns, Nt, B, T)`` for ``gram_mlp``."""
        c = self.cfg
        n_s, n_t = len(student), len(teacher)
        if c.calibration == "none":
            return rows[0][0].new_full((n_s, n_t), 1.0 / (n_s * n_t))
        if c.weights == "gram_mlp":
            if n_t == 1:
                return rows[0][0].new_full((n_s, n_t), 1.0 / n_s)
            calib = self.calibration[_key(f"{group}/{stream}")]
            alpha = calib([s.gram[stream] for s in student], [t.gram[stream] for t in teacher])  # (B, T, Ns, Nt)
            return alpha.permute(2, 3, 0, 1) / n_s
        if c.weights == "learned":
            attention = self.attention[_key(f"{group}/{stream}")]
            return attention([s.value[stream] for s in student], [t.value[stream] for t in teacher])
        d = torch.stack([torch.stack([r.detach().sum() / norms[j] for j, r in enumerate(row_i)]) for row_i in rows])
        return torch.softmax(-d.flatten() / c.temperature, 0).view_as(d)

    def pair_loss(self, group: str, student: list[_Sim], teacher: list[_Sim]) -> torch.Tensor:
        """Calibrated loss over all (student i, teacher j) pairs of one group (a set, or ``inter``)."""
        c = self.cfg
        rows, norms, alpha = {}, {}, {}
        for stream in self.streams:
            per_frame = self._per_frame(stream)
            rows[stream] = [[row_distance(_match(s.value[stream], t.value[stream], per_frame), t.value[stream],
                                          c.distance, c.kl_temperature) for t in teacher] for s in student]
            norms[stream] = [t.n_items * t.value[stream].shape[-1] for t in teacher]
            alpha[stream] = self._weights(group, stream, student, teacher, rows[stream], norms[stream])
        if len(self.streams) == 1:
            (stream,) = self.streams
            return self._weighted(stream, rows[stream], norms[stream], alpha[stream])
        a_t, a_f = alpha["time"], alpha["frequency"]
        if c.cross_weighting == "cross":
            w_t, w_f = a_f, a_t
        elif c.cross_weighting == "product":
            w = a_t * a_f
            w_t = w_f = w / w.sum((0, 1), keepdim=True).clamp_min(1e-12)
        else:
            w_t, w_f = a_t, a_f
        return (self._weighted("time", rows["time"], norms["time"], w_t)
                + self._weighted("frequency", rows["frequency"], norms["frequency"], w_f))

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        c = self.cfg
        s_feats = inputs.student_features
        t_feats = {n: f.detach() for n, f in inputs.teacher_features.items()}  # nothing reaches the teacher
        n_items = inputs.student_out.shape[0]
        if "frequency" in self.streams and c.frequency_stream == "batch" and n_items < 2:
            raise ConfigError(f"kd.i2rf_tfckd.frequency_stream='batch' compares the items of a batch: it needs "
                              f"a batch size >= 2, got {n_items} (or set frequency_stream='bins')")
        intra, fused_s, fused_t = [], [], []
        for name in c.sets:
            s_list = [s_feats[n] for n in self.s_sets[name]]
            t_list = [t_feats[n] for n in self.t_sets[name]]
            needs_t_sims = c.intra_set or (c.inter_set_fusion and c.teacher_representative != "fused")
            t_sims = [self._sim(f) for f in t_list] if needs_t_sims else []
            if c.intra_set:
                intra.append(self.pair_loss(name, [self._sim(f) for f in s_list], t_sims))
            if c.inter_set_fusion:
                fused_s.append(self._sim(self.fusion[_key(name)](s_list)))
                fused_t.append(self._teacher_representative(name, t_list, t_sims))
        loss = inputs.student_out.new_zeros(())
        if intra:
            loss = loss + c.lambda_intra * torch.stack(intra).sum()
        if fused_s:
            loss = loss + c.lambda_inter * self.pair_loss("inter", fused_s, fused_t)
        return loss

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"variant={c.variant}, sets={c.sets}, frequency_stream={c.frequency_stream}, "
                f"distance={c.distance}, calibration={c.calibration}, weights={c.weights}, "
                f"cross_weighting={c.cross_weighting}, fusion={c.fusion if c.inter_set_fusion else 'off'}, "
                f"teacher_representative={c.teacher_representative}")


__all__ = ["VARIANT_DEFAULTS", "I2RFTFCKD", "TFCKDConfig"]
