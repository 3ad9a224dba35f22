"""Sub-band KD: one shared sub-band student guided by K elite sub-band teachers
(Hao et al., Interspeech 2020, arXiv 2005.14435 §2; reconstruction, see methods.md §3.2 [R])."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlib.errors import ConfigError
from kdlib.kd.base import KDConfig, KDInputs, KDMethod, register_kd_method
from kdlib.kd.hooks import probe_feature_shapes, resolve_tap


class SubbandKDConfig(KDConfig):
    loss: Literal["mse", "l1"] = "mse"
    hidden_weight: float = Field(0.0, ge=0)


@register_kd_method("subband_kd")
class SubbandKD(KDMethod):
    """Each band's mask of the shared student is pulled towards the mask of that band's elite teacher.

    L = D(M_s, M_t), D = MSE (or L1) over every element of the ``(B, 1, T, F)`` magnitude masks, i.e.
    Σ_k (W_k / F) · D(M_s^k, M_t^k): the per-band distances of the paper's per-band loss weighted by
    band width W_k (all W = ceil(F / K) wide but the last, F − (K − 1)·W; 65, 65, 65, 62 bins for
    F = 257, K = 4), so every bin counts once. With ``hidden_weight`` > 0, ``hidden_weight`` · D of the
    band LSTM outputs ``(B, H, T, K)`` is added (needs equal H). The paper's λ is the trial's
    ``kd_weight``. Needs ``subband`` models with the same ``n_bands`` on both sides.

    Raises:
        ConfigError: a model that is not a sub-band model, different band counts, or
            ``hidden_weight`` > 0 with different hidden sizes.
    """

    Config = SubbandKDConfig
    source = "arXiv 2005.14435 §2 (reconstruction, see methods.md §3.2)"

    def __init__(self, student, teacher, **kwargs) -> None:
        super().__init__(student, teacher, **kwargs)
        bands = (getattr(student, "n_bands", None), getattr(teacher, "n_bands", None))
        if None in bands or bands[0] != bands[1]:
            raise ConfigError(f"subband_kd needs sub-band student and teacher models with equal n_bands, got {bands}")
        self.mask_taps = (resolve_tap(student, "mask")[0], resolve_tap(teacher, "mask")[0])
        self.hidden_taps = (resolve_tap(student, "middle")[0], resolve_tap(teacher, "middle")[0])
        if self.cfg.hidden_weight > 0:
            s = probe_feature_shapes(student, [self.hidden_taps[0]])[self.hidden_taps[0]]
            t = probe_feature_shapes(teacher, [self.hidden_taps[1]])[self.hidden_taps[1]]
            if s[1] != t[1]:
                raise ConfigError(f"subband_kd.hidden_weight needs equal hidden sizes, got {s[1]} vs {t[1]}")

    def student_taps(self) -> list[str]:
        return [self.mask_taps[0], *([self.hidden_taps[0]] if self.cfg.hidden_weight > 0 else [])]

    def teacher_taps(self) -> list[str]:
        return [self.mask_taps[1], *([self.hidden_taps[1]] if self.cfg.hidden_weight > 0 else [])]

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        dist = F.mse_loss if self.cfg.loss == "mse" else F.l1_loss
        loss = dist(inputs.student_features[self.mask_taps[0]], inputs.teacher_features[self.mask_taps[1]].detach())
        if self.cfg.hidden_weight > 0:
            loss = loss + self.cfg.hidden_weight * dist(inputs.student_features[self.hidden_taps[0]],
                                                        inputs.teacher_features[self.hidden_taps[1]].detach())
        return loss
