"""Listening examples for the HTML report: three test utterances (lowest, median and highest input SNR), the
noisy input, the clean reference, the teacher and the students of the validation-chosen front, each as a
16-bit WAV and a spectrogram PNG (base64, embedded in ``report.html``). No torch here: the models come in as
functions (:mod:`kdlib.sweep.listening` loads them from their MLflow runs)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdlib.report.front import BASELINE_METHOD, PRIMARY_METRIC, cell_front, isnum
from kdlib.report.sets import SetResult

#: spectrogram: STFT frame (samples at 16 kHz; scaled with the rate), hop = frame / 4, dB range shown
SPEC_FRAME_16K = 512
SPEC_RANGE_DB = 80.0


@dataclass
class Clip:
    """One signal of an example: ``label`` (may hold a run id), WAV and PNG as base64, its scores as text."""

    label: str
    audio_b64: str
    spectrogram_b64: str
    scores: str = ""


@dataclass
class Example:
    """One utterance: its id, input SNR (dB) and clips (noisy, clean, teacher, students)."""

    utterance: str
    snr_db: float
    clips: list[Clip] = field(default_factory=list)


def input_snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Input SNR in dB, ``10·log10(Σ clean² / Σ (noisy − clean)²)``; for a multi-channel input ``(C, L)`` the
    reference channel 0. ``inf`` when the noisy signal equals the clean one."""
    x = noisy[0] if noisy.ndim > 1 else noisy
    noise = float(np.sum((x.astype(np.float64) - clean) ** 2))
    speech = float(np.sum(clean.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(speech, 1e-20) / noise)


def pick_utterances(snrs: Sequence[float], n: int = 3) -> list[int]:
    """Indices of the lowest, median and highest input SNR (``n`` spread evenly over the sorted SNRs;
    fewer when the set is smaller)."""
    order = np.argsort(np.asarray(snrs, dtype=float), kind="stable")
    if len(order) <= n:
        return [int(i) for i in order]
    picks = np.linspace(0, len(order) - 1, n).round().astype(int)
    return [int(order[p]) for p in picks]


def chosen_runs(result: SetResult) -> list[tuple[str, str]]:
    """``(label, run id)`` of the teacher, of one student per front cell of PESQ (chosen on validation) and, for
    each ratio of the front, of its ``none`` student (the baseline to hear a KD student against): in each cell
    the seed with the best validation PESQ (its ``best_val_si_sdr`` when PESQ was not scored on validation).
    The test set chooses nothing."""
    out = []
    teacher = result.rows.teacher
    if teacher is not None:
        out.append((f"teacher {teacher['run_id']}", str(teacher["run_id"])))
    finished = result.rows.finished
    cells = cell_front(finished, PRIMARY_METRIC, result.rows.extras)
    if cells.empty:
        return out
    front = cells[cells["on_front"]]
    baselines = cells[(cells["method"] == BASELINE_METHOD) & cells["student_ratio"].isin(front["student_ratio"])]
    for _, cell in pd.concat([front, baselines[~baselines.index.isin(front.index)]]).iterrows():
        runs = finished[finished["run_id"].astype(str).isin(str(cell["run_ids"]).split(","))]
        column = str(cell["selected_on"])
        best = runs.loc[runs[column].astype(float).idxmax()]
        out.append((f"{best['method']} {cell['student_ratio']:g} seed {best.get('seed')} {best['run_id']}",
                    str(best["run_id"])))
    return out


def _wav_b64(audio: np.ndarray, sample_rate: int) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def spectrogram_png(audio: np.ndarray, sample_rate: int) -> bytes:
    """A small log-magnitude spectrogram (0 to Nyquist, :data:`SPEC_RANGE_DB` dB below the peak) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import stft

    frame = max(64, SPEC_FRAME_16K * sample_rate // 16000)
    f, t, z = stft(audio, fs=sample_rate, nperseg=frame, noverlap=frame - frame // 4)
    db = 20 * np.log10(np.abs(z) + 1e-10)
    fig, ax = plt.subplots(figsize=(3.6, 1.25), dpi=90)
    ax.pcolormesh(t, f / 1000, db, vmin=db.max() - SPEC_RANGE_DB, vmax=db.max(), cmap="magma", shading="auto")
    ax.set_ylabel("kHz", fontsize=6)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _scores_text(table: pd.DataFrame | None, utterance: str) -> str:
    if table is None or "utterance" not in table:
        return ""
    row = table[table["utterance"].astype(str) == utterance]
    if row.empty:
        return ""
    r = row.iloc[0]
    parts = [f"{label} {r[col]:.{digits}f}" for col, label, digits in
             (("pesq", "PESQ", 2), ("stoi", "STOI", 3), ("si_sdr", "SI-SDR", 1)) if col in r and isnum(r[col])]
    return ", ".join(parts)


#: ``(label, run id, enhance)``: a model to play, ``enhance(noisy) -> (L,) samples``
Player = tuple[str, str, Callable[[np.ndarray], np.ndarray]]


def build_examples(result: SetResult, corpus: Any, players: Sequence[Player], *, ids: Sequence[str] | None = None,
                   n: int = 3) -> list[Example]:
    """The listening examples of ``n`` utterances of ``corpus`` (lowest, median and highest input SNR).

    Args:
        result: the primary set's :class:`~kdlib.report.sets.SetResult` (its ``scores`` give each clip's
            per-utterance scores, as the sweep logged them).
        corpus: the test set (``load(i) -> (noisy, clean)``, ``sample_rate``).
        players: the models, in order (:func:`chosen_runs` decides which; the sweep layer loads them).
        ids: the utterance ids the per-utterance scores use (:func:`kdlib.evaluation.utterance_ids`); None: the
            indices.

    Returns:
        one :class:`Example` per picked utterance: noisy input, clean reference, then each player.
    """
    ids = [str(i) for i in (ids if ids is not None else range(len(corpus)))]
    snrs = [input_snr_db(*corpus.load(i)) for i in range(len(corpus))]
    sr = int(corpus.sample_rate)
    examples = []
    for i in pick_utterances(snrs, n):
        noisy, clean = corpus.load(i)
        signals = [("noisy input", noisy[0] if noisy.ndim > 1 else noisy, ""), ("clean reference", clean, "")]
        signals += [(label, enhance(noisy), _scores_text(result.scores.get(run_id), ids[i]))
                    for label, run_id, enhance in players]
        # one gain per example keeps the loudness comparable between clips
        peak = max(float(np.max(np.abs(s))) for _, s, _ in signals)
        gain = 0.99 / peak if peak > 0.99 else 1.0
        clips = [Clip(label, _wav_b64(s * gain, sr), base64.b64encode(spectrogram_png(s, sr)).decode("ascii"), text)
                 for label, s, text in signals]
        examples.append(Example(ids[i], snrs[i], clips))
    return examples
