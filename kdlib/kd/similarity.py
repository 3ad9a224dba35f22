"""Channel-free self-similarity matrices of ``(B, C, T, F)`` features (methods.md §1.2 steps 1-3).

Because each matrix is computed from L2-normalised vectors of one tensor, teacher and student may
have different channel counts (and, for the frequency stream, different F: the student's matrix is
resized to the teacher's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def time_self_similarity(feat: torch.Tensor, rescale: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """``(B, C, T, F)`` → ``(B, T, T)`` cosine similarities between frames (each frame flattened over C·F).

    ``rescale=True`` maps cosines from [-1, 1] to [0, 1] with (A + 1) / 2.
    """
    b, c, t, f = feat.shape
    x = F.normalize(feat.permute(0, 2, 1, 3).reshape(b, t, c * f), dim=-1, eps=eps)
    sim = x @ x.transpose(1, 2)
    return (sim + 1) / 2 if rescale else sim


def freq_self_similarity(feat: torch.Tensor, rescale: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """``(B, C, T, F)`` → ``(B, F, F)`` cosine similarities between frequency bins (flattened over C·T)."""
    b, c, t, f = feat.shape
    y = F.normalize(feat.permute(0, 3, 1, 2).reshape(b, f, c * t), dim=-1, eps=eps)
    sim = y @ y.transpose(1, 2)
    return (sim + 1) / 2 if rescale else sim


def match_size(sim: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize a ``(B, N, N)`` similarity matrix to ``(B, size, size)`` (no-op if equal)."""
    if sim.shape[-1] == size:
        return sim
    return F.interpolate(sim.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)


def similarity_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str = "mse",
                        temperature: float = 1.0) -> torch.Tensor:
    """Distance between ``(B, N, N)`` similarity matrices, resizing the student's to the teacher's N.

    ``"mse"``: mean squared (Frobenius) difference, zero iff equal. ``"kl"``: row-wise
    KL(softmax(teacher/τ) ‖ softmax(student/τ)) averaged over rows and batch, also zero iff equal
    rows after softmax.
    """
    student = match_size(student, teacher.shape[-1])
    if distance == "mse":
        return F.mse_loss(student, teacher)
    if distance == "kl":
        log_p_s = F.log_softmax(student / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher / temperature, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    raise ValueError(f"unknown similarity distance '{distance}' (mse, kl)")
