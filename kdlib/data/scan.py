"""Pre-flight scan of a sweep's audio: every file the sweep will read, checked once before any work starts.

The training mixers read their files lazily, inside the teacher's or a trial's process; a bad file found
there ends in a traceback after Ray and MLflow have started. :func:`scan_audio` checks a list of files up
front and raises one :class:`~kdlib.errors.DataError` whose one-line message names the file, what is wrong
and how to fix it. Each data source's :meth:`~kdlib.data.sources.DataSource.scan` calls it on what the
source reads and adds the checks of "enough material" (:func:`check_speech_material`,
:func:`check_noise_material`).

Depths (``data.scan``):

* ``"headers"``: per file, the header only: readable by soundfile, sample rate, channel count, at least one
  sample. Cheap (well under a millisecond a file), for very large corpora.
* ``"full"``: the headers, then every sample, read in blocks of :data:`BLOCK_FRAMES` frames (memory stays
  bounded for long files): no NaN or infinite sample, and not silent (peak ``<=`` :data:`SILENT_PEAK`).

A scan only reads: it writes nothing (no cache, no extraction). This module adds no import beyond numpy and
soundfile to what :mod:`kdlib.data` already loads, and does not import the data sources.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from kdlib.data.audio import AUDIO_SUFFIXES
from kdlib.data.speech import speaker_matches
from kdlib.errors import DataError

#: scan depths: "full" reads every sample, "headers" only the headers, "off" skips the scan
ScanDepth = Literal["full", "headers", "off"]
DEPTHS: tuple[str, ...] = ("full", "headers", "off")

#: frames read at a time by a full scan (~1 M frames: 4 MB a channel as float32)
BLOCK_FRAMES = 1 << 20
#: a file whose absolute peak is at or below this (full scale = 1.0; about -120 dBFS) counts as silent. The
#: smallest non-zero 16-bit PCM sample is 3.05e-5, so for PCM files this means "all samples zero"; the
#: threshold matters for float files holding only rounding noise.
SILENT_PEAK = 1e-6


@dataclass(frozen=True)
class ScanReport:
    """What a scan looked at.

    Attributes:
        files: number of audio files checked.
        seconds: their total duration in s (from the headers; per-channel length / sample rate).
        longest_seconds: the longest file's duration in s (0.0 when no file).
        elapsed_s: wall-clock time the scan took, in s.
        depth: ``"full"``, ``"headers"`` or ``"off"`` (nothing checked).
        notes: what was not scanned and why (e.g. L3DAS23 archives not extracted yet); empty normally.
    """

    files: int = 0
    seconds: float = 0.0
    longest_seconds: float = 0.0
    elapsed_s: float = 0.0
    depth: str = "full"
    notes: tuple[str, ...] = ()

    def __add__(self, other: ScanReport) -> ScanReport:
        """The combined report of two scans (counts and durations add up; notes are concatenated)."""
        return ScanReport(
            files=self.files + other.files, seconds=self.seconds + other.seconds,
            longest_seconds=max(self.longest_seconds, other.longest_seconds),
            elapsed_s=self.elapsed_s + other.elapsed_s, depth=self.depth, notes=self.notes + other.notes,
        )

    def __str__(self) -> str:
        extra = "".join(f"; {n}" for n in self.notes)
        return (f"scanned {self.files} audio files ({self.seconds / 60.0:.1f} min, depth {self.depth}) "
                f"in {self.elapsed_s:.2f} s{extra}")


def check_depth(depth: str) -> str:
    """``depth`` itself if it is one of :data:`DEPTHS`.

    Raises:
        ValueError: any other value.
    """
    if depth not in DEPTHS:
        raise ValueError(f"scan depth must be one of {', '.join(DEPTHS)}, got {depth!r}")
    return depth


def _fix(where: str | None) -> str:
    return f"remove it from {where}" if where else "remove it"


def _reason(exc: Exception | None) -> str:
    """soundfile's reason without its "Error opening '<path>': " prefix, on one line."""
    text = str(getattr(exc, "error_string", None) or exc)
    return " ".join(text.split()).rstrip(".")


def _channels_text(n: int) -> str:
    return "mono" if n == 1 else f"{n} channels"


def _check_header(path: Path, info: sf._SoundFileInfo | None, exc: Exception | None, *, sample_rate: int,
                  channels: int | None, kind: str, remedy: str) -> str | None:
    """The problem with one file's header, or None."""
    if info is None:
        if not path.exists():
            return f"{kind} file '{path}' does not exist: restore it or {remedy}"
        size = path.stat().st_size if path.is_file() else -1
        what = "0 bytes: the file is empty" if size == 0 else f"not a wav/flac file soundfile can open: {_reason(exc)}"
        return f"{kind} file '{path}' cannot be read ({what}): replace it with a valid wav/flac file or {remedy}"
    if int(info.samplerate) != sample_rate:
        return (f"{kind} file '{path}' has sample rate {info.samplerate} Hz but {sample_rate} Hz is expected "
                f"(data.sample_rate): resample it to {sample_rate} Hz or {remedy}")
    if channels is not None and int(info.channels) != channels:
        fix = "downmix it to one channel" if channels == 1 else f"give it {channels} channels"
        n = int(info.channels)
        return (f"{kind} file '{path}' has {n} channel{'s' if n != 1 else ''} but {_channels_text(channels)} "
                f"{'is' if channels == 1 else 'are'} expected: {fix} or {remedy}")
    if int(info.frames) < 1:
        return f"{kind} file '{path}' has no samples (a header without audio): {remedy}"
    return None


def _check_samples(path: Path, sample_rate: int, *, kind: str, remedy: str) -> str | None:
    """The problem with one file's samples (NaN/inf, silence, a read error), or None."""
    peak, start = 0.0, 0
    try:
        for block in sf.blocks(str(path), blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            finite = np.isfinite(block)
            if not finite.all():
                frame, ch = np.argwhere(~finite)[0]
                n = start + int(frame)
                chan = f" of channel {int(ch)}" if block.shape[1] > 1 else ""
                return (f"{kind} file '{path}' has NaN or infinite samples at sample {n}{chan} "
                        f"({n / sample_rate:.3f} s): re-export it with finite samples or {remedy}")
            if block.size:
                peak = max(peak, float(np.max(np.abs(block))))
            start += block.shape[0]
    except (sf.SoundFileError, RuntimeError) as exc:
        reason = _reason(exc)
        return (f"{kind} file '{path}' cannot be read after sample {start} ({reason}): replace it with a valid "
                f"wav/flac file or {remedy}")
    if peak == 0.0:
        return f"{kind} file '{path}' is silent (all samples zero): {remedy}"
    if peak <= SILENT_PEAK:
        return (f"{kind} file '{path}' is silent (peak {peak:.1e}, at or below {SILENT_PEAK:.0e} of full scale): "
                f"{remedy}")
    return None


def scan_audio(
    files: Iterable[str | os.PathLike[str]],
    *,
    sample_rate: int,
    channels: int | None = 1,
    kind: str = "speech",
    depth: str = "full",
    where: str | None = None,
    fix: str | None = None,
) -> ScanReport:
    """Check that every file can be read as the sweep expects it.

    Per file: soundfile can open it (a 0-byte or garbage file cannot), its rate is ``sample_rate``, its
    channel count is ``channels`` and it has at least one sample; with ``depth="full"`` also every sample
    (read in blocks of :data:`BLOCK_FRAMES` frames): no NaN or infinite value, and a peak above
    :data:`SILENT_PEAK`. Every file is checked, so the error can say how many more are bad.

    Args:
        files: the audio files (wav/flac), in the order they are reported.
        sample_rate: expected rate in Hz.
        channels: expected channel count (1 = mono); None accepts any.
        kind: what the files are, first word of a message (``"speech"``, ``"noise"``, ``"valid clean"``).
        depth: ``"full"``, ``"headers"`` or ``"off"`` (returns an empty report without reading anything).
        where: the YAML key the files come from, named in the fix: ``... or remove it from data.train.noise``;
            None: ``... or remove it``.
        fix: the whole remedy instead (``"remove the pair from the corpus 'vb_demand' (data.valid.corpus)"``).

    Returns:
        a :class:`ScanReport` (files, total and longest duration in s, elapsed s).

    Raises:
        DataError: no file, or a bad file; one line, e.g. ``noise file '<path>' is silent (all samples zero):
            remove it from data.train.noise``, followed by `` (and N more bad noise files)`` when others failed.
        ValueError: ``depth`` is not one of :data:`DEPTHS`.
    """
    return scan_frames(files, sample_rate=sample_rate, channels=channels, kind=kind, depth=depth, where=where,
                       fix=fix)[0]


def scan_frames(
    files: Iterable[str | os.PathLike[str]],
    *,
    sample_rate: int,
    channels: int | None = 1,
    kind: str = "speech",
    depth: str = "full",
    where: str | None = None,
    fix: str | None = None,
) -> tuple[ScanReport, list[int]]:
    """:func:`scan_audio`, also returning each file's length in frames (samples per channel), in order
    (empty with ``depth="off"``), for callers that compare the lengths of files that belong together.

    Raises:
        DataError, ValueError: see :func:`scan_audio`.
    """
    check_depth(depth)
    t0 = time.perf_counter()
    if depth == "off":
        return ScanReport(depth=depth), []
    paths = [Path(f) for f in files]
    remedy = fix or _fix(where)
    if not paths:
        raise DataError(f"no {kind} files to scan: add {kind} audio" + (f" ({where})" if where else ""))
    problems: list[str] = []
    frames: list[int] = []
    total, longest = 0.0, 0.0
    for path in paths:
        try:
            info, exc = sf.info(str(path)), None
        except (sf.SoundFileError, RuntimeError, OSError) as e:  # OSError: a folder, no permission
            info, exc = None, e
        problem = _check_header(path, info, exc, sample_rate=sample_rate, channels=channels, kind=kind,
                                remedy=remedy)
        if problem is None and depth == "full":
            problem = _check_samples(path, sample_rate, kind=kind, remedy=remedy)
        if problem is not None:
            problems.append(problem)
            continue
        assert info is not None
        frames.append(int(info.frames))
        seconds = int(info.frames) / int(info.samplerate)
        total += seconds
        longest = max(longest, seconds)
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more bad {kind} file{'s' if more > 1 else ''})" if more else ""
        raise DataError(problems[0] + suffix)
    report = ScanReport(files=len(paths), seconds=total, longest_seconds=longest,
                        elapsed_s=time.perf_counter() - t0, depth=depth)
    return report, frames


def check_speaker_folders(base: str | os.PathLike[str], skip: Iterable[str] = (), *,
                          where: str = "data.train.speech") -> None:
    """Refuse a speaker folder of ``base`` (``speech/<speaker>/``) without audio directly in it.

    :func:`kdlib.data.list_speech` silently leaves such folders out, so a corpus copied with one folder level
    too many (LibriSpeech's ``<speaker>/<chapter>/*.flac``) or in another format would train on less speech
    than intended. Folders whose name starts with ``.`` and those matching a label of ``skip`` (by
    :func:`kdlib.data.speaker_matches`: ``p232`` skips ``vctk_p232``) are not looked at.

    Args:
        base: the speech folder (``<root>/<data.train.speech>``); a missing folder is left to ``list_speech``.
        skip: speaker labels whose folders are not read (held-out or excluded speakers).
        where: the YAML key, for the message.

    Raises:
        DataError: ``speech speaker folder '<folder>' has no *.wav|*.flac files ...: add audio or remove
            the folder (data.train.speech)``.
    """
    base = Path(base)
    if not base.is_dir():
        return
    skip = set(skip)
    for spk in sorted(p for p in base.iterdir() if p.is_dir()):
        if spk.name.startswith(".") or any(speaker_matches(spk.name, h) for h in skip):
            continue
        if any(p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES for p in spk.iterdir()):
            continue
        nested = any(p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES for p in spk.rglob("*"))
        why = ("its audio is in sub-folders: move the files up to <speaker>/*.wav|*.flac" if nested
               else "add wav/flac files or remove the folder")
        raise DataError(f"speech speaker folder '{spk}' has no *.wav|*.flac files ({where}): {why}")


def check_speech_material(report: ScanReport, segment_seconds: float, *, folder: str | os.PathLike[str],
                          where: str = "data.train.speech") -> None:
    """Refuse training speech shorter in total than one training segment.

    The mixer zero-pads a file shorter than a segment, so training still runs on less speech than that, but
    every item would then hold the same few words padded with silence: a data mistake, not a choice.

    Args:
        report: the scan of the training speech files.
        segment_seconds: one training segment, in s (``data.train.segment_seconds``).
        folder: the speech folder, for the message.
        where: the YAML key of the speech folder.

    Raises:
        DataError: ``where: the N training speech files in '<folder>' hold X s of audio, less than one training
            segment (Y s, data.train.segment_seconds): ...``.
    """
    if report.depth != "off" and report.seconds < segment_seconds:
        raise DataError(
            f"{where}: the {report.files} training speech files in '{folder}' hold {report.seconds:.2f} s of audio, "
            f"less than one training segment ({segment_seconds:g} s, data.train.segment_seconds): add speech "
            "or lower data.train.segment_seconds"
        )


def check_noise_material(report: ScanReport, segment_seconds: float, *, folder: str | os.PathLike[str],
                         where: str = "data.train.noise") -> None:
    """Refuse training noise whose every file is shorter than one training segment.

    A noise file shorter than a segment is looped by the mixer. Some short files among longer ones are fine,
    but when every file is shorter, every training mixture holds a repeating clip (an audible periodic
    pattern a model can learn instead of the noise).

    Args:
        report: the scan of the training noise files.
        segment_seconds: one training segment, in s (``data.train.segment_seconds``).
        folder: the noise folder, for the message.
        where: the YAML key of the noise folder.

    Raises:
        DataError: ``where: every one of the N noise files in '<folder>' is shorter than one training
            segment (the longest is X s, data.train.segment_seconds is Y s) ...``.
    """
    if report.depth != "off" and report.files and report.longest_seconds < segment_seconds:
        raise DataError(
            f"{where}: every one of the {report.files} noise files in '{folder}' is shorter than one training "
            f"segment (the longest is {report.longest_seconds:.2f} s, data.train.segment_seconds is "
            f"{segment_seconds:g} s), so every mixture would loop a short clip: add longer noise recordings "
            "or lower data.train.segment_seconds"
        )


def scan_pairs(pairs: Sequence[tuple[Path, Path]], *, sample_rate: int, channels: int | None, kind: str,
               depth: str = "full", where: str | None = None) -> ScanReport:
    """Scan the noisy and clean files of paired (valid/test) material: noisy with ``channels`` channels,
    clean mono. Each file is scanned once even when pairs share it (NOIZEUS shares its clean files).

    Args:
        pairs: ``(noisy, clean)`` paths.
        sample_rate, depth: as :func:`scan_audio`.
        where: the corpus, for the fix: ``... or remove the pair from <where>``.
        channels: expected channel count of the noisy files.
        kind: the set's name, e.g. ``"valid"``: messages say ``valid noisy file ...`` / ``valid clean file ...``.

    Returns:
        the combined :class:`ScanReport` of the noisy and clean files.

    Raises:
        DataError: see :func:`scan_audio`.
    """
    noisy = list(dict.fromkeys(p for p, _ in pairs))
    clean = list(dict.fromkeys(c for _, c in pairs))
    fix = f"remove the pair from {where}" if where else "remove the pair"
    return (scan_audio(noisy, sample_rate=sample_rate, channels=channels, kind=f"{kind} noisy", depth=depth, fix=fix)
            + scan_audio(clean, sample_rate=sample_rate, channels=1, kind=f"{kind} clean", depth=depth, fix=fix))


def scan_training_mix(speech_files: Sequence[Path], noise_files: Sequence[Path], *, speech_dir: Path, noise_dir: Path,
                      held_out: Iterable[str], sample_rate: int, segment_seconds: float,
                      depth: str) -> ScanReport:
    """The training side of an on-the-fly mixing source: the speaker folders of ``data.train.speech`` (held-out
    speakers skipped), every training speech file, at least one segment of speech, every ``data.train.noise``
    file and at least one noise file as long as a segment (``segment_seconds``, s).

    Raises:
        DataError: the first problem found, naming the file or folder.
    """
    check_speaker_folders(speech_dir, held_out)
    speech = scan_audio(speech_files, sample_rate=sample_rate, kind="speech", depth=depth, where="data.train.speech")
    check_speech_material(speech, segment_seconds, folder=speech_dir)
    noise = scan_audio(noise_files, sample_rate=sample_rate, kind="noise", depth=depth, where="data.train.noise")
    check_noise_material(noise, segment_seconds, folder=noise_dir)
    return speech + noise
