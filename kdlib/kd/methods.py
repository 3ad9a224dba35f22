"""The spine's KD methods: ``none``, ``output`` and ``self_similarity``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.kd.hooks import resolve_tap_pairs
from kdlib.kd.similarity import freq_self_similarity, similarity_distance, time_self_similarity
from kdlib.losses import CompressedSpectralLoss


@register_kd_method("none")
class NoKD(KDMethod):
    """The student trained alone (loss = task loss only): the baseline every method is compared to.

    Returns a zero scalar; reads no teacher output, so trials skip the teacher forward pass.
    """

    source = "baseline (no distillation)"
    needs_teacher = False

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        return inputs.student_out.new_zeros(())


class OutputConfig(KDConfig):
    n_fft: int = Field(512, gt=0)
    hop_length: int = Field(256, gt=0)
    compress: float = Field(0.3, gt=0, le=1)
    wav_weight: float = Field(10.0, ge=0)


@register_kd_method("output")
class OutputKD(KDMethod):
    """Output KD: the student's enhanced signal is pulled towards the teacher's.

    L_KD = mean|(|Ŝ_s|^c − |Ŝ_t|^c)| + mean|Ŝ_s,c − Ŝ_t,c| + w_wav · mean|ŝ_s − ŝ_t|, on STFTs of
    the ``(B, L)`` outputs (compressed magnitude and compressed complex L1, plus waveform L1).
    The SE analogue of Hinton KD (methods.md §5.1; the FT-JNF study's "signal matching",
    arXiv 2507.19208 §4.2 [R]).

    Knobs: ``n_fft``, ``hop_length`` (samples), ``compress`` (c), ``wav_weight`` (w_wav).
    """

    Config = OutputConfig
    source = "SE output matching, methods.md §5.1 / arXiv 2507.19208 [R]"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        c = self.cfg
        self.loss = CompressedSpectralLoss(c.n_fft, c.hop_length, c.compress, c.wav_weight)

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        return self.loss(inputs.student_out, inputs.teacher_out.detach())


class SelfSimilarityConfig(KDConfig):
    layers: list[str | tuple[str, str]] = Field(
        default_factory=lambda: ["encoder", "middle", "decoder"], min_length=1
    )
    streams: list[Literal["time", "frequency"]] = Field(
        default_factory=lambda: ["time", "frequency"], min_length=1
    )
    distance: Literal["mse", "kl"] = "mse"
    temperature: float = Field(1.0, gt=0)
    rescale: bool = False


@register_kd_method("self_similarity")
class SelfSimilarityKD(KDMethod):
    """Time and frequency self-similarity KD of named intermediate layers.

    For each layer pair (student tap, teacher tap) with features ``(B, C, T, F)``:
    A_T = X Xᵀ over L2-normalised frames (``(B, T, T)``), A_F = Y Yᵀ over L2-normalised frequency
    bins (``(B, F, F)``; the student's is resized to the teacher's F). The loss is the mean over
    layers and streams of D(A_s, A_t), D = MSE or row-softmax KL. Channel-free, so teacher and
    student widths may differ. Source: methods.md §1.2 steps 1-3 (arXiv 2506.13127) and the
    FT-JNF study's self-similarity losses (arXiv 2507.19208) — reconstruction [R].

    Knobs: ``layers`` (set names like ``encoder``/``middle``/``decoder``, meaning the set's last
    layer, or module names; a ``[student, teacher]`` pair for different names), ``streams``,
    ``distance`` (mse | kl), ``temperature`` (KL only), ``rescale`` (cosines to [0, 1]).
    """

    Config = SelfSimilarityConfig
    source = "arXiv 2506.13127 §1.2 steps 1-3 / arXiv 2507.19208 §4.2 (reconstruction, see methods.md)"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        self.pairs = resolve_tap_pairs(student, teacher, self.cfg.layers)

    def teacher_targets(self, teacher_out: torch.Tensor, teacher_features: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """The teacher's matrices, ``"<tap>/<stream>"`` → ``(B, N, N)`` (per item, so cacheable)."""
        c = self.cfg
        return {f"{t}/{stream}": _SIMILARITY[stream](teacher_features[t].detach(), c.rescale)
                for t in dict.fromkeys(t for _, t in self.pairs) for stream in c.streams}

    def target_taps(self) -> list[str]:
        return self.teacher_taps()

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        c = self.cfg
        terms = []
        for s_name, t_name in self.pairs:
            fs = inputs.student_features[s_name]
            for stream in c.streams:
                sim = _SIMILARITY[stream]
                target = inputs.teacher_targets.get(f"{t_name}/{stream}")
                if target is None:
                    target = sim(inputs.teacher_features[t_name].detach(), c.rescale)
                terms.append(similarity_distance(sim(fs, c.rescale), target, c.distance, c.temperature))
        return torch.stack(terms).mean()


_SIMILARITY = {"time": time_self_similarity, "frequency": freq_self_similarity}
