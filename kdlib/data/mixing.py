"""On-the-fly mixing of clean speech with noise at a drawn SNR."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdlib.data.audio import read_audio
from kdlib.errors import DataError

_PEAK = 0.99  # keep mixtures below full scale so 16-bit export and models see no clipping
_MAX_TRIES = 10  # bounded re-draws of near-silent speech / all-zero noise segments
_SILENT_REL_DB = -30.0  # a speech segment this far below its file's mean power counts as near-silent


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Add ``noise`` to ``clean`` scaled so that ``10*log10(sum(clean**2) / sum(scaled**2)) == snr_db``.

    The gain is computed in float64; outputs use the promoted float dtype of the inputs (at least
    float32), so the SNR holds to float64 precision for float64 inputs and ~1e-5 dB for float32.

    Args:
        clean: ``(L,)`` clean speech.
        noise: ``(L,)`` noise, same length.
        snr_db: target global SNR in dB (finite).

    Returns:
        ``(noisy, scaled_noise)``, both ``(L,)``, with ``noisy = clean + scaled_noise``.

    Raises:
        ValueError: shapes differ / are not 1-D, or ``snr_db`` is not finite.
        DataError: ``clean`` or ``noise`` has zero energy (the SNR is undefined).
    """
    clean = np.asarray(clean)
    noise = np.asarray(noise)
    if clean.ndim != 1 or clean.shape != noise.shape:
        raise ValueError(
            f"mix_at_snr needs clean and noise of equal shape (L,), got {clean.shape} and {noise.shape}"
        )
    if not math.isfinite(snr_db):
        raise ValueError(f"mix_at_snr: snr_db must be finite, got {snr_db}")
    out_dtype = np.result_type(clean.dtype, noise.dtype, np.float32)
    c = clean.astype(np.float64)
    n = noise.astype(np.float64)
    e_clean, e_noise = float(np.dot(c, c)), float(np.dot(n, n))
    if e_clean == 0.0:
        raise DataError("mix_at_snr: clean segment is silent (zero energy), so the SNR is undefined")
    if e_noise == 0.0:
        raise DataError("mix_at_snr: noise segment is silent (zero energy), so it cannot be scaled to an SNR")
    gain = math.sqrt(e_clean / (e_noise * 10.0 ** (snr_db / 10.0)))
    scaled = n * gain
    return (c + scaled).astype(out_dtype), scaled.astype(out_dtype)


class SourcePool:
    """Clean speech and noise recordings, loaded once, from which mixers draw random segments.

    Shared by :class:`SpeechNoiseMixer` (mono mixes) and ``kdlib.data.array.ArrayMixer`` (simulated
    arrays) so both draw segments the same way from the same random stream.

    Args:
        speech_files, noise_files: wav/flac files (mono) at ``sample_rate`` Hz.
        sample_rate: Hz.
        owner: the mixer's name, for error messages.

    Raises:
        DataError: an empty list, or a file that is empty, all zeros or at another rate.
    """

    def __init__(self, speech_files: Sequence[Path], noise_files: Sequence[Path], sample_rate: int,
                 owner: str) -> None:
        if len(speech_files) == 0:
            raise DataError(f"{owner}: speech_files is empty: pass clean speech files (list_speech)")
        if len(noise_files) == 0:
            raise DataError(f"{owner}: noise_files is empty: pass noise files (see list_noise)")
        self.sample_rate = int(sample_rate)
        self.speech_files = [Path(p) for p in speech_files]
        self.noise_files = [Path(p) for p in noise_files]
        self._speech = [self._load(p, "speech") for p in self.speech_files]
        self._noise = [self._load(p, "noise") for p in self.noise_files]
        self._speech_power = [float(np.mean(np.square(x, dtype=np.float64))) for x in self._speech]

    def _load(self, path: Path, kind: str) -> np.ndarray:
        wav = read_audio(path, self.sample_rate)
        if wav.size == 0 or not np.any(wav):
            raise DataError(f"{kind} file '{path}' is empty or all zeros: remove it from the {kind} list")
        return wav

    def speech_segment(self, rng: np.random.Generator, n: int, tail: int | None = None) -> tuple[np.ndarray, int]:
        """``n`` samples (float32 ``(n,)``) of a random speech file and its index; a file shorter than
        ``n`` is zero-padded at a random offset. Near-silent draws (judged on the last ``tail``
        samples, default all) are re-drawn up to ``_MAX_TRIES`` times and the loudest is kept.

        Raises:
            DataError: every draw was silent.
        """
        tail = n if tail is None else tail
        best, best_k, best_power = None, -1, -1.0
        for _ in range(_MAX_TRIES):
            k = int(rng.integers(len(self._speech)))
            wav = self._speech[k]
            if wav.size >= n:
                start = int(rng.integers(wav.size - n + 1))
                seg = wav[start : start + n].copy()
            else:
                seg = np.zeros(n, dtype=np.float32)
                off = int(rng.integers(n - wav.size + 1))
                seg[off : off + wav.size] = wav
            power = float(np.mean(np.square(seg[n - tail :], dtype=np.float64)))
            if power > best_power:
                best, best_k, best_power = seg, k, power
            if power >= self._speech_power[k] * 10.0 ** (_SILENT_REL_DB / 10.0):
                break
        assert best is not None
        if best_power == 0.0:
            raise DataError(f"speech file '{self.speech_files[best_k]}' gave only silent segments: remove it")
        return best, best_k

    def noise_segment(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
        """``n`` samples (float32 ``(n,)``) of a random noise file, not all zero, and its index; a short
        file is looped from a random phase.

        Raises:
            DataError: all-zero segments ``_MAX_TRIES`` times.
        """
        for _ in range(_MAX_TRIES):
            k = int(rng.integers(len(self._noise)))
            wav = self._noise[k]
            if wav.size >= n:
                start = int(rng.integers(wav.size - n + 1))
                seg = wav[start : start + n]
            else:
                seg = wav[(int(rng.integers(wav.size)) + np.arange(n)) % wav.size]
            if np.any(seg):
                return seg, k
        raise DataError(
            f"noise file '{self.noise_files[k]}' gave an all-zero segment {_MAX_TRIES} times: "
            "remove silent noise files"
        )


class EpochDataset(Dataset):
    """A dataset whose item ``i`` is a deterministic draw of ``(seed, epoch, i)``: the trainer calls
    :meth:`set_epoch` before each epoch so every epoch sees new mixtures, reproducibly."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (non-negative int) whose draws ``__getitem__`` returns."""
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)


class SpeechNoiseMixer(EpochDataset):
    """Random noisy/clean segments mixed on the fly from clean speech and noise files.

    Every file is read once at construction (float32, mono, at ``sample_rate``). Item ``i`` depends
    only on ``(seed, epoch, i)`` through ``np.random.default_rng([seed, epoch, i])``:

    1. pick a speech file and a random segment of L samples (a shorter file is zero-padded at a
       random offset); re-draw file and segment (at most 10 tries, keeping the loudest) while the
       segment is near-silent (> 30 dB below its file's mean power), so the SNR is meaningful;
    2. pick a noise file and a random segment (a shorter file is looped from a random start);
       re-drawn the same way if it is all zeros;
    3. draw the SNR uniformly in ``snr_db`` (dB) and mix with :func:`mix_at_snr`;
    4. if ``max|noisy| > 0.99`` scale noisy and clean by the same factor (SNR unchanged).

    ``set_epoch`` changes the draw. With DataLoader workers call it before creating the iterator
    (workers copy the dataset then; ``persistent_workers=True`` would keep the old epoch).

    Args:
        speech_files: clean speech files (wav/flac).
        noise_files: noise files (wav/flac).
        sample_rate: in Hz; every file must have this rate.
        segment_seconds: segment length in seconds; L = round(segment_seconds * sample_rate) samples.
        snr_db: ``(low, high)`` SNR range in dB (low <= high), or one number for a fixed SNR.
        num_segments: items per epoch (``len``).
        seed: non-negative int.

    Raises:
        ValueError: an argument is out of range (the message names it).
        DataError: a file list is empty, a file is missing/unreadable/not mono/at another rate,
            or a speech or noise file is entirely silent.
    """

    def __init__(
        self,
        speech_files: Sequence[Path],
        noise_files: Sequence[Path],
        sample_rate: int = 16000,
        segment_seconds: float = 2.0,
        snr_db: tuple[float, float] | float = (-5.0, 15.0),
        num_segments: int = 256,
        seed: int = 0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"SpeechNoiseMixer: sample_rate must be > 0 Hz, got {sample_rate}")
        if not segment_seconds > 0:
            raise ValueError(f"SpeechNoiseMixer: segment_seconds must be > 0, got {segment_seconds}")
        if isinstance(snr_db, int | float):
            snr_db = (float(snr_db), float(snr_db))
        if len(snr_db) != 2 or not all(math.isfinite(x) for x in snr_db) or snr_db[0] > snr_db[1]:
            raise ValueError(
                f"SpeechNoiseMixer: snr_db must be a finite (low, high) range with low <= high, got {snr_db}"
            )
        if num_segments < 1:
            raise ValueError(f"SpeechNoiseMixer: num_segments must be >= 1, got {num_segments}")
        if seed < 0:
            raise ValueError(f"SpeechNoiseMixer: seed must be >= 0, got {seed}")
        self.sample_rate = int(sample_rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_length = round(self.segment_seconds * self.sample_rate)
        if self.segment_length < 1:
            raise ValueError(f"SpeechNoiseMixer: segment_seconds={segment_seconds} gives < 1 sample")
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.num_segments = int(num_segments)
        self.seed = int(seed)
        self.epoch = 0
        self.pool = SourcePool(speech_files, noise_files, self.sample_rate, "SpeechNoiseMixer")
        self.speech_files, self.noise_files = self.pool.speech_files, self.pool.noise_files

    def __len__(self) -> int:
        return self.num_segments

    def draw(self, i: int) -> dict[str, Any]:
        """Draw item ``i`` of the current epoch.

        Returns:
            ``{"noisy": (L,) float32, "clean": (L,) float32, "snr_db": float (dB, the drawn target;
            ``noisy - clean`` vs ``clean`` measures it), "speech_file": Path, "noise_file": Path}``.

        Raises:
            IndexError: ``i`` outside ``[-len, len)``.
        """
        if not -self.num_segments <= i < self.num_segments:
            raise IndexError(f"SpeechNoiseMixer index {i} out of range for {self.num_segments} segments")
        i = int(i) % self.num_segments
        rng = np.random.default_rng([self.seed, self.epoch, i])
        clean, k_speech = self.pool.speech_segment(rng, self.segment_length)
        noise, k_noise = self.pool.noise_segment(rng, self.segment_length)
        snr = float(rng.uniform(self.snr_db[0], self.snr_db[1]))
        noisy, _ = mix_at_snr(clean, noise, snr)  # the pool never returns silent speech or noise
        peak = float(np.max(np.abs(noisy)))
        if peak > _PEAK:
            g = np.float32(_PEAK / peak)
            noisy, clean = noisy * g, clean * g
        return {
            "noisy": noisy.astype(np.float32, copy=False),
            "clean": clean.astype(np.float32, copy=False),
            "snr_db": snr,
            "speech_file": self.speech_files[k_speech],
            "noise_file": self.noise_files[k_noise],
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)``: float32 tensors of shape ``(L,)`` for item ``i`` of the current epoch."""
        d = self.draw(i)
        return torch.from_numpy(d["noisy"]), torch.from_numpy(d["clean"])
