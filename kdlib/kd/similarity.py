"""Channel-free similarity matrices of ``(B, C, T, F)`` features and distances between them.

Self-similarity between frames and between frequency bins: methods.md §1.2 steps 1-3 (reconstruction).
Similarity between the items of a batch per frame, row normalisation and the symmetric KL-type row
distance: the I2S-TFCKD authors' demo (GitHub ``JMCheng-SEU/I2RF-TFCKD-SE``, ``I2S_TFCKD_demo.py``,
commit 0949953525576453e8902342cf37ce80ff4a8276; arXiv 2506.13127; methods.md §9.1).

Because each matrix is computed from L2-normalised vectors of one tensor, teacher and student may
have different channel counts (and, for the frequency-bin stream, different F: the student's matrix is
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


def frame_vectors(feat: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, F)`` → ``(B, T, C·F)``: each frame flattened over channels and frequency (channel-major)."""
    b, c, t, f = feat.shape
    return feat.permute(0, 2, 1, 3).reshape(b, t, c * f)


def batch_similarity(feat: torch.Tensor, rescale: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """``(B, C, T, F)`` → ``(T, B, B)``: per frame, cosine similarities between the items of the batch
    (each item's frame flattened over C·F). Source: the authors' demo (module docstring), their
    "frequency" stream. With B = 1 every matrix is ``[[1]]`` (carries no information).

    ``rescale=True`` maps cosines from [-1, 1] to [0, 1] with (A + 1) / 2.
    """
    x = F.normalize(frame_vectors(feat), dim=-1, eps=eps).transpose(0, 1)  # (T, B, C·F)
    sim = x @ x.transpose(1, 2)
    return (sim + 1) / 2 if rescale else sim


def row_normalise(sim: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each row (last axis) of a non-negative ``(..., N, N)`` matrix by its sum, so rows sum to 1
    (the authors' demo does this after the (A + 1) / 2 rescale). ``eps`` guards an all-zero row."""
    return sim / sim.sum(-1, keepdim=True).clamp_min(eps)


def row_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str = "mse",
                 temperature: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """Distance per row between equal-shape ``(..., N, N)`` similarity matrices → ``(..., N)``.

    ``"mse"``: mean over the row of (s − t)². ``"kl"``: KL(softmax(t/τ) ‖ softmax(s/τ)) of the row.
    ``"sym_kl"``: Σ_n (t − s)·(log t − log s) over the row (the authors' demo; KL(t‖s) + KL(s‖t) when
    rows sum to 1), for non-negative matrices: entries are clamped to ≥ ``eps`` before the log (a
    rescaled cosine of exactly −1 is 0). Each is ≥ 0 and 0 iff the rows are equal (after softmax for kl).
    The mean of ``"mse"`` / ``"kl"`` rows is :func:`similarity_distance`.

    Raises:
        ValueError: unknown ``distance``.
    """
    if distance == "mse":
        return (student - teacher).pow(2).mean(-1)
    if distance == "kl":
        log_p_s = F.log_softmax(student / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher / temperature, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if distance == "sym_kl":
        s, t = student.clamp_min(eps), teacher.clamp_min(eps)
        return ((t - s) * (t.log() - s.log())).sum(-1)
    raise ValueError(f"unknown similarity distance '{distance}' (mse, kl, sym_kl)")


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
