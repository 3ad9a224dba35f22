"""Reading and writing audio files (wav/flac via soundfile) as float32 arrays in [-1, 1]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from kdlib.errors import DataError

#: File suffixes (lower case) that the corpus helpers treat as audio.
AUDIO_SUFFIXES = (".wav", ".flac")

PathLike = str | os.PathLike[str]


def _open_error(path: Path, exc: Exception) -> DataError:
    if not path.exists():
        return DataError(f"audio file '{path}' does not exist: check the corpus folder or its pairs.csv")
    return DataError(f"audio file '{path}' cannot be read ({exc}): replace it with a valid wav/flac file")


def audio_info(path: PathLike) -> tuple[int, int, int]:
    """Read only the header of an audio file.

    Returns:
        ``(sample_rate [Hz], num_frames [samples per channel], channels)``.

    Raises:
        DataError: the file is missing or not a readable audio file.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _open_error(path, exc) from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def read_audio(
    path: PathLike, sample_rate: int | None = None, *, allow_multichannel: bool = False
) -> np.ndarray:
    """Read a wav/flac file as float32 in [-1, 1].

    Args:
        path: audio file.
        sample_rate: expected rate in Hz; ``None`` accepts any rate (no resampling is ever done).
        allow_multichannel: return ``(C, L)`` for a file with C > 1 channels instead of raising.

    Returns:
        ``(L,)`` float32 samples for a mono file; ``(C, L)`` for a multi-channel file when
        ``allow_multichannel`` (a mono file is still returned as ``(L,)``).

    Raises:
        DataError: the file is missing/unreadable, its rate differs from ``sample_rate``, or it has
            more than one channel and ``allow_multichannel`` is False.
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _open_error(path, exc) from None
    if sample_rate is not None and sr != sample_rate:
        raise DataError(
            f"audio file '{path}' has sample rate {sr} Hz but {sample_rate} Hz is expected: "
            f"resample it to {sample_rate} Hz"
        )
    channels = data.shape[1]
    if channels == 1:
        return np.ascontiguousarray(data[:, 0])
    if not allow_multichannel:
        raise DataError(
            f"audio file '{path}' has {channels} channels but mono is expected: downmix it to one channel"
        )
    return np.ascontiguousarray(data.T)


def write_audio(path: PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write ``wav`` as a 16-bit PCM wav file, creating parent folders.

    Args:
        path: output file (written as WAV whatever its suffix).
        wav: ``(L,)`` mono or ``(C, L)`` multi-channel samples, nominally in [-1, 1]; values
            outside are clipped. Any float/int dtype; a torch tensor may live on any device.
        sample_rate: in Hz, > 0.

    Raises:
        ValueError: ``wav`` is not 1-D/2-D, is empty, contains NaN/inf, or ``sample_rate`` <= 0.
    """
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(wav, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(
            f"write_audio('{path}'): wav must be a non-empty (L,) or (C, L) array, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"write_audio('{path}'): wav contains NaN or inf samples")
    if int(sample_rate) <= 0:
        raise ValueError(f"write_audio('{path}'): sample_rate must be > 0 Hz, got {sample_rate}")
    arr = np.clip(arr, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    # soundfile wants (frames, channels)
    sf.write(str(path), arr.T if arr.ndim == 2 else arr, int(sample_rate), subtype="PCM_16", format="WAV")
