"""Run a model over a paired corpus and score it with the metric table (PESQ, STOI, ESTOI, SI-SDR)."""

from __future__ import annotations

import numpy as np
import torch

from kdlib.data import PairedCorpus
from kdlib.metrics import MetricSummary, evaluate_pairs, si_sdr
from kdlib.models.base import SEModel

#: inputs shorter than this (samples) are zero-padded at the end for the model and cropped back, so
#: a 0.1 s or header-only file gets an output instead of an STFT/conv shape error
MIN_SAMPLES = 4096


@torch.no_grad()
def enhance(model: SEModel, noisy: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """Enhance one utterance: ``(L,)`` (or ``(M, L)`` multi-channel) float samples → ``(L,)``.

    Inputs shorter than :data:`MIN_SAMPLES` are zero-padded at the end and the output cropped to L.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.as_tensor(noisy, dtype=torch.float32, device=device)
    length = x.shape[-1]
    if length < MIN_SAMPLES:
        x = torch.nn.functional.pad(x, (0, MIN_SAMPLES - length))
    was_training = model.training
    model.eval()
    out = model(x.unsqueeze(0))[0][..., :length]
    model.train(was_training)
    return out.float().cpu().numpy()


def resolve_pesq_mode(mode: str, corpus: PairedCorpus) -> str:
    """``auto`` → the corpus' hint (``nb`` for narrowband NOIZEUS material, else ``wb``)."""
    return corpus.pesq_mode_hint if mode == "auto" else mode


def evaluate_model(model: SEModel, corpus: PairedCorpus, pesq_mode: str = "auto",
                   metrics: tuple[str, ...] | None = None, num_workers: int = 1,
                   device: torch.device | str | None = None) -> MetricSummary:
    """Enhance every noisy file of ``corpus`` and score it against the clean reference.

    ``metrics``: names from :data:`kdlib.metrics.specs.METRICS` (``None``: all of them). Metric failures
    (silence, too-short audio) are counted as missing, never raised; see :func:`kdlib.metrics.evaluate_pairs`
    for the errors raised on bad input.
    """
    refs, ests = [], []
    for i in range(len(corpus)):
        noisy, clean = corpus.load(i)
        refs.append(clean)
        ests.append(enhance(model, noisy, device))
    return evaluate_pairs(refs, ests, corpus.sample_rate, resolve_pesq_mode(pesq_mode, corpus),
                          metrics=metrics, num_workers=num_workers)


def evaluate_noisy(corpus: PairedCorpus, pesq_mode: str = "auto", num_workers: int = 1) -> MetricSummary:
    """Scores of the unprocessed noisy input (the floor every model should beat); for a
    multi-channel corpus the reference microphone (channel 0) is scored."""
    refs, noisy = zip(*[(c, n if n.ndim == 1 else n[0]) for n, c in (corpus.load(i) for i in range(len(corpus)))],
                      strict=True)
    return evaluate_pairs(list(refs), list(noisy), corpus.sample_rate, resolve_pesq_mode(pesq_mode, corpus),
                          num_workers=num_workers)


def mean_si_sdr(model: SEModel, corpus: PairedCorpus, device: torch.device | str | None = None) -> float:
    """Mean SI-SDR (dB) of the model's output over the corpus: the cheap per-epoch validation score."""
    scores = []
    for i in range(len(corpus)):
        noisy, clean = corpus.load(i)
        scores.append(si_sdr(enhance(model, noisy, device), clean))
    return float(np.mean(scores))
