"""Shared test helpers: run a teacher/student pair through a KD method's taps, check that the KD
loss sends no gradient into the teacher, and naive reference implementations (written from the
formulas, never calling kdlib's own helpers) that the loss-value tests compare against."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from kdlib.kd import FeatureTaps, KDInputs


def kd_inputs(method, student, teacher, x: torch.Tensor, teacher_grad: bool = False) -> KDInputs:
    """Hook the method's taps, run the teacher (no grad unless ``teacher_grad``) and the student on
    ``x`` ``(B, L)`` (or ``(B, M, L)``), and return the :class:`KDInputs` the trainer would pass
    (clean = ``x``)."""
    st, tt = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    with torch.set_grad_enabled(teacher_grad):
        t_out = teacher(x)
    s_out = student(x)
    inputs = KDInputs(x, x, s_out, t_out, dict(st.features), dict(tt.features))
    st.remove()
    tt.remove()
    return inputs


# ------------------------------------------------------------------------------ gradient isolation


@dataclass
class GradientFlow:
    """Where the gradient of one KD loss went (parameter names with a non-zero ``.grad``)."""

    loss: float
    teacher: list[str] = field(default_factory=list)
    student: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    #: the method's own weight tensors (ndim > 1) whose gradient is None or all zero
    method_missing: list[str] = field(default_factory=list)


def _reached(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)]


def gradient_flow(method, student, teacher, x: torch.Tensor, cached_targets: bool = False) -> GradientFlow:
    """Backpropagate the KD loss with the teacher run **with autograd on** and report where it went.

    The trainer runs the teacher under ``no_grad``, so a method that forgets to detach the teacher
    would pass a test that does the same; here every teacher parameter requires grad and the teacher's
    output and tapped features carry their graph, so a missing ``.detach()`` shows up as teacher
    gradient. ``cached_targets`` also fills ``KDInputs.teacher_targets`` from the graph-carrying
    teacher (the teacher-output cache path).

    Raises:
        AssertionError: the teacher's output or a tapped teacher feature carries no graph (the
            check would be vacuous), or the loss is not a finite scalar.
    """
    teacher.requires_grad_(True)
    for module in (student, teacher, method):
        module.zero_grad(set_to_none=True)
    inputs = kd_inputs(method, student, teacher, x, teacher_grad=True)
    dead = [n for n, f in inputs.teacher_features.items() if not f.requires_grad]
    assert inputs.teacher_out.requires_grad and not dead, f"teacher carries no graph ({dead}): vacuous check"
    if cached_targets:
        inputs.teacher_targets = method.teacher_targets(inputs.teacher_out, inputs.teacher_features)
    loss = method(inputs)
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    loss.backward()
    missing = [n for n, p in method.named_parameters()
               if p.ndim > 1 and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    return GradientFlow(float(loss.detach()), _reached(teacher), _reached(student), _reached(method), missing)


def assert_gradient_isolated(method, student, teacher, x: torch.Tensor, cached_targets: bool = False
                             ) -> GradientFlow:
    """:func:`gradient_flow`, then: no teacher parameter got a non-zero gradient, some student
    parameter did, and every weight tensor of the method's own adapters did.

    Raises:
        AssertionError: naming the parameters that break the rule.
    """
    flow = gradient_flow(method, student, teacher, x, cached_targets)
    assert not flow.teacher, f"KD loss sent gradient into the teacher: {flow.teacher[:5]}"
    assert flow.student, "KD loss sent no gradient to the student"
    assert not flow.method_missing, f"method weights without gradient: {flow.method_missing}"
    return flow


# ---------------------------------------------------------------- naive references (from formulas)


def naive_stft(wav: np.ndarray, n_fft: int, hop: int, sqrt_window: bool = False) -> np.ndarray:
    """``(L,)`` → ``(F, T)`` complex STFT, frame by frame: reflect padding of n_fft/2 each side
    (``center=True``), periodic Hann window w[n] = 0.5 − 0.5·cos(2πn/N) (or its square root), rfft."""
    n = np.arange(n_fft)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    if sqrt_window:
        win = np.sqrt(win)
    pad = np.pad(wav, n_fft // 2, mode="reflect")
    frames = [np.fft.rfft(pad[t * hop: t * hop + n_fft] * win) for t in range(1 + len(wav) // hop)]
    return np.stack(frames, axis=1)


def naive_cosine_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    """N vectors → ``(N, N)`` matrix of cosines, pair by pair."""
    m = np.zeros((len(vectors), len(vectors)))
    for i, a in enumerate(vectors):
        for j, b in enumerate(vectors):
            m[i, j] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return m


def naive_row_kl(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """Mean over rows of KL(softmax(teacher_row/τ) ‖ softmax(student_row/τ)); ``(..., N)`` each."""
    def log_softmax(z):
        z = z / tau
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lt, ls = log_softmax(teacher), log_softmax(student)
    return float((np.exp(lt) * (lt - ls)).sum(-1).mean())


def naive_adaptive_avg_pool(x: np.ndarray, level: int) -> np.ndarray:
    """``(B, C, H, W)`` → ``(B, C, level, level)``: cell i spans rows floor(i·H/l) … ceil((i+1)·H/l)
    (the adaptive-average-pooling definition), same along W."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, level, level))
    for i in range(level):
        r0, r1 = (i * h) // level, math.ceil((i + 1) * h / level)
        for j in range(level):
            c0, c1 = (j * w) // level, math.ceil((j + 1) * w / level)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def naive_hcl(student: np.ndarray, teacher: np.ndarray, levels=(4, 2, 1)) -> float:
    """ReviewKD's hierarchical context loss (arXiv 2104.09044 §3.3; methods.md §5.4): MSE at full
    resolution (weight 1) plus, for each level smaller than both T and F, the MSE of the level×level
    average-pooled maps with a weight halving per level; divided by the sum of the weights."""
    total, weights, w = float(((student - teacher) ** 2).mean()), 1.0, 1.0
    for level in levels:
        if level >= min(student.shape[-2:]):
            continue
        w /= 2
        diff = naive_adaptive_avg_pool(student, level) - naive_adaptive_avg_pool(teacher, level)
        total += w * float((diff**2).mean())
        weights += w
    return total / weights


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def naive_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Zero-padded "same" 2-D convolution (cross-correlation) of ``(B, C_in, T, F)`` with
    ``(C_out, C_in, k, k)``, k odd, written as a sum over kernel offsets."""
    b, c_in, t, f = x.shape
    c_out, _, k, _ = weight.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((b, c_out, t, f))
    for di in range(k):
        for dj in range(k):
            out += np.einsum("oc,bctf->botf", weight[:, :, di, dj], xp[:, :, di:di + t, dj:dj + f])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def naive_batchnorm_train(x: np.ndarray, bn: torch.nn.BatchNorm2d) -> np.ndarray:
    """Training-mode batch norm: per channel (x − mean) / sqrt(biased var + eps) · γ + β, statistics
    over (B, T, F) of this batch."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    y = (x - mean) / np.sqrt(var + bn.eps)
    return y * _np(bn.weight)[None, :, None, None] + _np(bn.bias)[None, :, None, None]


def naive_nearest_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(B, C, H, W)``: output row i reads input row floor(i·H/H')."""
    h, w = x.shape[-2:]
    rows = [(i * h) // size[0] for i in range(size[0])]
    cols = [(j * w) // size[1] for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def naive_abf(abf, x: np.ndarray, residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """ReviewKD's attention-based fusion with ``abf``'s weights, training mode (methods.md §5.4):
    1×1 conv + BN → x'; with a residual r (nearest-resized to x'), [a, b] = sigmoid(1×1 conv of
    [x'; r]) and x' ← a·x' + b·r; output = BN(3×3 conv(x')). Returns (output, x')."""
    h = naive_batchnorm_train(naive_conv2d(x, _np(abf.conv1[0].weight)), abf.conv1[1])
    if abf.att is not None and residual is not None:
        r = naive_nearest_resize(residual, h.shape[-2:])
        conv = abf.att[0]
        logits = naive_conv2d(np.concatenate([h, r], axis=1), _np(conv.weight), _np(conv.bias))
        maps = 1 / (1 + np.exp(-logits))
        h = h * maps[:, :1] + r * maps[:, 1:2]
    out = naive_batchnorm_train(naive_conv2d(h, _np(abf.conv2[0].weight)), abf.conv2[1])
    return out, h


def naive_review(abfs, student_feats: list[np.ndarray], teacher_feats: list[np.ndarray], fuse: bool,
                 levels=(4, 2, 1), loss: str = "hcl") -> float:
    """Review loss over stages listed shallow → deep, processed deep → shallow: each stage's ABF
    fuses with the deeper stage's fused feature (none at the deepest, none without ``fuse``); the
    mean over stages of HCL (or MSE) against the teacher feature of the same (T, F)."""
    residual, terms = None, []
    for i in reversed(range(len(student_feats))):
        out, fused = naive_abf(abfs[i], student_feats[i], residual if fuse else None)
        residual = fused
        yt = teacher_feats[i]
        terms.append(naive_hcl(out, yt, levels) if loss == "hcl" else float(((out - yt) ** 2).mean()))
    return float(np.mean(terms))
