"""A KD method that always crashes: lets tests check that a failed trial never takes the sweep down."""

import torch

from kdlib.kd import KDInputs, KDMethod, register_kd_method


@register_kd_method("exploding")
class ExplodingKD(KDMethod):
    """Raises on its first forward pass (test plugin, not a real method)."""

    source = "test plugin"
    needs_teacher = False

    def forward(self, inputs: KDInputs) -> torch.Tensor:
        raise RuntimeError("exploding KD method: deliberate failure")
