"""Run a model over a paired corpus and score it with the metric table (PESQ, STOI, ESTOI, SI-SDR);
enhance audio files and folders with a checkpoint (``kdlib enhance``)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kdlib.data import PairedCorpus, read_audio, write_audio
from kdlib.data.audio import AUDIO_SUFFIXES
from kdlib.errors import DataError
from kdlib.metrics import MetricSummary, evaluate_generated, evaluate_pairs, si_sdr
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


def utterance_ids(corpus) -> list[str]:
    """Stable ids of a valid/test set's utterances, in ``load(i)`` order: the noisy file's stem for a
    :class:`~kdlib.data.PairedCorpus` (simulated array sets included), the scene id for L3DAS23, else the
    index."""
    ids = getattr(corpus, "ids", None)
    if ids is not None and len(ids) == len(corpus):
        return [str(i) for i in ids]
    try:
        ids = [str(corpus[i].utt_id) for i in range(len(corpus))]
    except (AttributeError, TypeError, IndexError):
        return [str(i) for i in range(len(corpus))]
    if len(set(ids)) < len(ids):  # e.g. a pairs.csv corpus with one stem in two folders: the noisy file's path
        ids = [str(corpus[i].noisy) for i in range(len(corpus))]
    return ids


def resolve_pesq_mode(mode: str, corpus: PairedCorpus) -> str:
    """``auto`` → the corpus' hint (``nb`` for narrowband NOIZEUS material, else ``wb``)."""
    return corpus.pesq_mode_hint if mode == "auto" else mode


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch on ``n`` intra-op threads, then restore the caller's count (even on error)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread() -> None:
    """Worker initializer: single-threaded torch, so N workers on N cores do not oversubscribe them."""
    torch.set_num_threads(1)


class _EnhancedPair:
    """``i -> (clean, enhanced)`` of utterance ``i`` of a corpus: the per-utterance work of a scoring
    worker (a module-level class, so that a spawned worker can unpickle it)."""

    def __init__(self, model: SEModel, corpus: PairedCorpus, device: torch.device) -> None:
        self.model, self.corpus, self.device = model, corpus, device

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        noisy, clean = self.corpus.load(i)
        return clean, enhance(self.model, noisy, self.device)


def evaluate_model(model: SEModel, corpus: PairedCorpus, pesq_mode: str = "auto",
                   metrics: tuple[str, ...] | None = None, num_workers: int = 1,
                   device: torch.device | str | None = None) -> MetricSummary:
    """Enhance every noisy file of ``corpus`` and score it against the clean reference.

    On a CPU device, ``num_workers`` = N means N single-threaded scorers, each reading, enhancing and scoring
    its share of the utterances (taken one at a time): N = 1 runs in this process with torch on one thread
    (the caller's thread count is restored afterwards); N > 1 uses N worker processes (see
    :func:`kdlib.metrics.evaluate_generated`), so N workers keep N cores busy and no more. Inference and
    scoring then run the same single-threaded code whatever N is, so the per-utterance scores are identical
    for every N (ESTOI up to pystoi's ~1e-15 call-to-call jitter). On another device (CUDA) the model runs in
    this process, since a CUDA context cannot be forked, and N processes score the outputs.

    Args:
        model: the enhancement model; its contract is ``model.sample_rate`` Hz, input ``(B, L)`` or
            ``(B, M, L)`` for an M-microphone model, output ``(B, L)``.
        corpus: the paired corpus (noisy ``(L,)`` or ``(M, L)``, clean ``(L,)``).
        pesq_mode: ``wb``, ``nb`` or ``auto`` (the corpus' hint, see :func:`resolve_pesq_mode`).
        metrics: names from :data:`kdlib.metrics.specs.METRICS` (``None``: all of them).
        num_workers: scorers, see above (values below 1 act as 1; capped at the number of utterances).
        device: where the model already is (``None``: the device of its parameters).

    Returns:
        A :class:`~kdlib.metrics.MetricSummary` with one entry per utterance, in corpus order. Metric
        failures (silence, too-short audio) are counted as missing, never raised.

    Raises:
        DataError: an unreadable pair, or an enhanced output the metrics refuse (NaN/inf; the message names
            the utterance); plus the errors of :func:`kdlib.metrics.evaluate_pairs` on bad requests.
        KdlibError: a worker process died (``num_workers > 1`` only).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mode = resolve_pesq_mode(pesq_mode, corpus)
    if device.type != "cpu":
        refs, ests = [], []
        for i in range(len(corpus)):
            noisy, clean = corpus.load(i)
            refs.append(clean)
            ests.append(enhance(model, noisy, device))
        return evaluate_pairs(refs, ests, corpus.sample_rate, mode, metrics=metrics, num_workers=num_workers)
    # one torch thread in the caller too: a lone scorer keeps one core busy, as each of N workers does, and
    # the outputs (hence the scores) do not depend on N
    with _torch_threads(1):
        return evaluate_generated(len(corpus), _EnhancedPair(model, corpus, device), corpus.sample_rate, mode,
                                  metrics=metrics, num_workers=num_workers, worker_init=_one_thread)


def evaluate_noisy(corpus: PairedCorpus, pesq_mode: str = "auto", num_workers: int = 1) -> MetricSummary:
    """Scores of the unprocessed noisy input (the floor every model should beat); for a
    multi-channel corpus the reference microphone (channel 0) is scored."""
    refs, noisy = zip(*[(c, n if n.ndim == 1 else n[0]) for n, c in (corpus.load(i) for i in range(len(corpus)))],
                      strict=True)
    return evaluate_pairs(list(refs), list(noisy), corpus.sample_rate, resolve_pesq_mode(pesq_mode, corpus),
                          num_workers=num_workers)


def mean_si_sdr(model: SEModel, corpus: PairedCorpus, device: torch.device | str | None = None) -> float:
    """Mean SI-SDR (dB) of the model's output over the corpus: the cheap per-epoch validation score.

    An utterance SI-SDR cannot score (e.g. a silent output) is left out of the mean, as in the test scores;
    NaN when the model outputs a NaN/inf sample anywhere or no utterance could be scored."""
    scores = []
    for i in range(len(corpus)):
        noisy, clean = corpus.load(i)
        estimate = enhance(model, noisy, device)
        if not np.all(np.isfinite(estimate)):
            return float("nan")
        value = si_sdr(estimate, clean)
        if math.isfinite(value):
            scores.append(value)
    return float(np.mean(scores)) if scores else float("nan")


# ---- enhancing files and folders (``kdlib enhance``) ---------------------------------------------
def _model_name(model: SEModel) -> str:
    return getattr(type(model), "registry_name", type(model).__name__)


def _channels_text(n: int) -> str:
    return "1 channel" if n == 1 else f"{n} channels"


def _check_channels(model: SEModel, path: Path, channels: int) -> None:
    """Refuse a file whose channel count differs from the model's ``n_channels`` (1 when absent)."""
    expected = int(getattr(model, "n_channels", 1))
    if channels == expected:
        return
    name = _model_name(model)
    if expected == 1:
        raise DataError(
            f"model '{name}' expects mono (1-channel) input, '{path}' has {channels} channels: "
            f"downmix it or keep one microphone (e.g. sox '{path}' out.wav remix 1), "
            f"or use a checkpoint of a {channels}-channel model such as ftjnf")
    if channels == 1:
        raise DataError(
            f"model '{name}' expects {expected}-channel input (one channel per microphone of its array), "
            f"'{path}' has 1 channel: give it a {expected}-channel recording, or use a mono model")
    raise DataError(
        f"model '{name}' expects {expected}-channel input (one channel per microphone of its array), "
        f"'{path}' has {channels} channels: give it a {expected}-channel recording of the same array")


def enhance_file(model: SEModel, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                 device: torch.device | str | None = None) -> float:
    """Enhance one audio file with ``model`` and write the result as 16-bit PCM WAV.

    The file must match the model's contract: ``model.sample_rate`` Hz and
    ``getattr(model, "n_channels", 1)`` channels. It is read as ``(L,)`` (mono) or ``(M, L)``
    (M microphones, L samples); the output written to ``dst`` is always mono ``(L,)``, same L,
    at ``model.sample_rate`` Hz (parent folders are created; WAV whatever the suffix).

    Args:
        model: the enhancement model (put into eval mode for the call, then restored).
        src: input wav/flac file.
        dst: output file.
        device: where to run; the model must already be there. ``None``: the model's device.

    Returns:
        Duration of the file in seconds (L / ``model.sample_rate``).

    Raises:
        DataError: ``src`` is missing or unreadable, has another sample rate or channel count than
            the model expects, has 0 samples, or holds NaN/inf samples; or the model produced
            NaN/inf output. Each message is one line naming ``src``.
    """
    src = Path(src)
    sample_rate = int(model.sample_rate)
    noisy = read_audio(src, sample_rate=sample_rate, allow_multichannel=True)
    length = noisy.shape[-1]
    if length == 0:
        raise DataError(f"audio file '{src}' has 0 samples: nothing to enhance, remove it or re-export it")
    _check_channels(model, src, 1 if noisy.ndim == 1 else noisy.shape[0])
    bad = int(np.count_nonzero(~np.isfinite(noisy)))
    if bad:
        raise DataError(f"audio file '{src}' has {bad} NaN or inf sample(s): "
                        "repair it or re-export it with finite samples")
    out = enhance(model, noisy, device)
    if not np.all(np.isfinite(out)):
        raise DataError(f"enhancing '{src}' with model '{_model_name(model)}' gave NaN or inf samples: "
                        "the input level is extreme or the checkpoint's weights are broken")
    write_audio(dst, out, sample_rate)
    return length / sample_rate


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def enhance_path(model: SEModel, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                 device: torch.device | str | None = None, progress: bool = True) -> list[tuple[Path, Path]]:
    """Enhance one audio file, or every audio file of a folder, with :func:`enhance_file`.

    * ``src`` a file: ``dst`` is the output file; when ``dst`` is an existing folder the output is
      ``dst/<src stem>.wav``.
    * ``src`` a folder: every ``*.wav``/``*.flac`` below it (recursive, suffix case-insensitive,
      sorted) is written to ``dst/<same relative sub-folder>/<stem>.wav``; ``dst`` is created. A
      tqdm bar (on stderr; ``progress=False`` hides it) counts files and shows the audio seconds
      done. A bad file stops the run with its error; the outputs already written stay.

    Outputs are 16-bit PCM WAV, mono ``(L,)`` at ``model.sample_rate`` Hz, one per input, same
    length in samples; existing output files are overwritten.

    Args:
        model: the enhancement model; its contract is ``model.sample_rate`` (Hz) and
            ``getattr(model, "n_channels", 1)`` (microphones, i.e. input ``(M, L)`` when M > 1).
        src: input file or folder.
        dst: output file or folder.
        device: where to run; the model must already be there. ``None``: the model's device.
        progress: show the progress bar (folders only).

    Returns:
        ``[(input file, output file), ...]`` in processing order.

    Raises:
        DataError: ``src`` does not exist; a folder ``src`` holds no audio file, or two of its files
            would write the same output (``a.wav`` and ``a.flac``); ``dst`` is ``src`` itself, lies
            inside the folder ``src``, or is an existing file while ``src`` is a folder; plus every
            error of :func:`enhance_file` (the first bad file stops the run).
    """
    from tqdm import tqdm  # only `kdlib enhance` needs it

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DataError(f"input '{src}' does not exist: give an audio file or a folder of wav/flac files")
    if src.is_file():
        if dst.is_dir():
            dst = dst / (src.stem + ".wav")
        if dst.resolve() == src.resolve():
            raise DataError(f"output '{dst}' is the input file itself: choose another output path")
        enhance_file(model, src, dst, device)
        return [(src, dst)]

    if dst.exists() and not dst.is_dir():
        raise DataError(f"input '{src}' is a folder but output '{dst}' is an existing file: "
                        "give an output folder")
    if _inside(dst.resolve(), src.resolve()):
        raise DataError(f"output folder '{dst}' is inside input folder '{src}': the outputs would overwrite "
                        "or be mixed with the inputs; choose a folder outside it")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"input folder '{src}' holds no audio files ({'/'.join(AUDIO_SUFFIXES)}, searched "
                        "recursively)")
    jobs: dict[Path, Path] = {}
    for f in files:
        out = dst / f.relative_to(src).with_suffix(".wav")
        if out in jobs:
            raise DataError(f"'{jobs[out]}' and '{f}' would both be written to '{out}': rename one of them")
        jobs[out] = f

    done: list[tuple[Path, Path]] = []
    seconds = 0.0
    with tqdm(total=len(files), unit="file", desc="enhance", disable=not progress) as bar:
        for out, f in jobs.items():
            seconds += enhance_file(model, f, out, device)
            done.append((f, out))
            bar.update(1)
            bar.set_postfix_str(f"{seconds:.1f} s audio", refresh=False)
    return done
