"""Paired noisy/clean corpora (NOIZEUS, VoiceBank+DEMAND, or any folder with a ``pairs.csv``)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdlib.data.audio import AUDIO_SUFFIXES, audio_info, read_audio
from kdlib.errors import DataError

LAYOUTS = ("auto", "csv", "noizeus", "vb_demand")
_NOIZEUS_RE = re.compile(r"^sp(\d+)_.+_sn-?\d+$")
_SENTENCES_PER_TALKER = 5  # NOIZEUS records 5 consecutive sentences per talker


@dataclass(frozen=True)
class Pair:
    """One noisy/clean utterance pair.

    Attributes:
        noisy: absolute path of the noisy file.
        clean: absolute path of the clean reference (same length in samples as ``noisy``).
        speaker: speaker (or talker-group) label used for speaker-disjoint splits.
        utt_id: the noisy file's stem, unique within a corpus.
    """

    noisy: Path
    clean: Path
    speaker: str
    utt_id: str


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _partner(folder: Path, stem: str, suffix: str) -> Path | None:
    """Clean file ``folder/stem`` with the noisy file's suffix first, then any audio suffix."""
    for suf in (suffix, *AUDIO_SUFFIXES):
        cand = folder / f"{stem}{suf}"
        if cand.is_file():
            return cand
    return None


class PairedCorpus:
    """A folder of paired noisy/clean utterances.

    Layouts (``layout=``):

    * ``"csv"``: ``<path>/pairs.csv`` with columns ``noisy``, ``clean`` (paths relative to ``path``),
      optional ``speaker`` (else the noisy stem up to the first ``_``) and ``orig_sr``.
    * ``"noizeus"``: ``clean/spNN.wav`` and ``noisy/spNN_<noise>_sn<SNR>.wav``; the clean partner is
      the noisy name up to the first ``_``; speaker = ``noizeus_spk{(NN-1)//5+1}``.
    * ``"vb_demand"``: identical file names in ``clean/`` and ``noisy/``; speaker = name up to the
      first ``_`` (``p232_001`` -> ``p232``).
    * ``"auto"``: csv if ``pairs.csv`` exists, else noizeus if every noisy name matches
      ``^sp\\d+_.+_sn-?\\d+``, else vb_demand.

    Pairs are sorted by noisy path. Clean files without a noisy partner are ignored. With
    ``check=True`` every header is read once (``audio_info``) to check sample rates and lengths;
    existence of both files is checked in any case because pairing needs it.

    Args:
        path: corpus folder.
        sample_rate: expected rate of every file, in Hz.
        layout: one of ``LAYOUTS``.
        check: read headers at construction (800 NOIZEUS pairs take well under a second).
        channels: expected channel count of the noisy files (1 = mono; e.g. 5 for a cached
            simulated array set; None = any). Clean files are always mono.

    Raises:
        DataError: missing folder, unknown layout, malformed ``pairs.csv``, a noisy file without a
            clean partner, a missing file, duplicate utterance ids, an empty corpus, or (``check``)
            a rate != ``sample_rate`` or unequal noisy/clean lengths in samples.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int = 16000,
        layout: str = "auto",
        check: bool = True,
        channels: int | None = 1,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.sample_rate = int(sample_rate)
        self.channels = channels
        if layout not in LAYOUTS:
            raise DataError(
                f"unknown corpus layout '{layout}' for '{self.path}': use one of {', '.join(LAYOUTS)}"
            )
        if not self.path.is_dir():
            raise DataError(f"corpus folder '{self.path}' does not exist: check the data root (KDLIB_DATA)")
        if layout == "auto":
            layout = self._detect_layout()
        self.layout = layout
        self._orig_sr: dict[Path, int | None] = {}
        if layout == "csv":
            pairs = self._pairs_from_csv()
        elif layout == "noizeus":
            pairs = self._pairs_noizeus()
        else:
            pairs = self._pairs_vb_demand()
        pairs.sort(key=lambda p: str(p.noisy))
        if not pairs:
            raise DataError(
                f"corpus '{self.path}' (layout {layout}) has no pairs: check its noisy/ folder or pairs.csv"
            )
        seen: dict[str, Path] = {}
        for p in pairs:
            if p.utt_id in seen:
                raise DataError(
                    f"corpus '{self.path}': utterance id '{p.utt_id}' appears twice "
                    f"('{seen[p.utt_id]}' and '{p.noisy}'): give the noisy files unique names"
                )
            seen[p.utt_id] = p.noisy
        self.pairs: list[Pair] = pairs
        if check:
            self._check_headers()

    # -- layouts -------------------------------------------------------------------------------

    def _detect_layout(self) -> str:
        if (self.path / "pairs.csv").is_file():
            return "csv"
        noisy_dir = self.path / "noisy"
        if noisy_dir.is_dir():
            stems = [p.stem for p in _audio_files(noisy_dir)]
            if stems and all(_NOIZEUS_RE.match(s) for s in stems):
                return "noizeus"
        return "vb_demand"

    def _noisy_files(self) -> list[Path]:
        noisy_dir = self.path / "noisy"
        if not noisy_dir.is_dir():
            raise DataError(
                f"corpus '{self.path}' has no noisy/ folder and no pairs.csv: "
                "add noisy/ and clean/ folders or a pairs.csv"
            )
        return _audio_files(noisy_dir)

    def _pairs_from_csv(self) -> list[Pair]:
        csv_path = self.path / "pairs.csv"
        if not csv_path.is_file():
            raise DataError(f"'{csv_path}' does not exist: use layout='auto' or add the manifest")
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or ())
            if not {"noisy", "clean"} <= cols:
                raise DataError(f"'{csv_path}' needs columns 'noisy' and 'clean' (paths relative to it)")
            rows = list(reader)
        pairs = []
        for line, row in enumerate(rows, start=2):
            noisy_rel, clean_rel = (row.get("noisy") or "").strip(), (row.get("clean") or "").strip()
            if not noisy_rel or not clean_rel:
                raise DataError(f"'{csv_path}' line {line}: empty 'noisy' or 'clean' cell: fill or drop it")
            noisy, clean = self.path / noisy_rel, self.path / clean_rel
            for p in (noisy, clean):
                if not p.is_file():
                    raise DataError(f"'{csv_path}' line {line}: file '{p}' does not exist: fix row or file")
            speaker = (row.get("speaker") or "").strip() or noisy.stem.split("_", 1)[0]
            orig = (row.get("orig_sr") or "").strip()
            try:
                self._orig_sr[noisy] = int(float(orig)) if orig else None
            except ValueError:
                raise DataError(f"'{csv_path}' line {line}: orig_sr '{orig}' is not a number") from None
            pairs.append(Pair(noisy=noisy, clean=clean, speaker=speaker, utt_id=noisy.stem))
        return pairs

    def _pairs_noizeus(self) -> list[Pair]:
        clean_dir = self.path / "clean"
        pairs = []
        for noisy in self._noisy_files():
            m = _NOIZEUS_RE.match(noisy.stem)
            if m is None:
                raise DataError(
                    f"noisy file '{noisy}' does not match the NOIZEUS name spNN_<noise>_sn<SNR>: "
                    "rename it or use another layout"
                )
            clean_stem = noisy.stem.split("_", 1)[0]
            clean = _partner(clean_dir, clean_stem, noisy.suffix)
            if clean is None:
                raise DataError(
                    f"noisy file '{noisy}' has no clean partner '{clean_dir / clean_stem}{noisy.suffix}'"
                )
            talker = (int(m.group(1)) - 1) // _SENTENCES_PER_TALKER + 1
            pairs.append(Pair(noisy=noisy, clean=clean, speaker=f"noizeus_spk{talker}", utt_id=noisy.stem))
        return pairs

    def _pairs_vb_demand(self) -> list[Pair]:
        clean_dir = self.path / "clean"
        pairs = []
        for noisy in self._noisy_files():
            clean = _partner(clean_dir, noisy.stem, noisy.suffix)
            if clean is None:
                raise DataError(f"noisy file '{noisy}' has no clean partner '{clean_dir / noisy.name}'")
            speaker = noisy.stem.split("_", 1)[0]
            pairs.append(Pair(noisy=noisy, clean=clean, speaker=speaker, utt_id=noisy.stem))
        return pairs

    def _check_headers(self) -> None:
        cache: dict[Path, tuple[int, int, int]] = {}  # NOIZEUS shares 25 clean files among 800 pairs

        def info(p: Path, channels: int | None) -> tuple[int, int, int]:
            if p not in cache:
                cache[p] = audio_info(p)
                sr, _, ch = cache[p]
                if sr != self.sample_rate:
                    raise DataError(
                        f"audio file '{p}' has sample rate {sr} Hz but the corpus expects "
                        f"{self.sample_rate} Hz: resample it or set sample_rate"
                    )
                if channels is not None and ch != channels:
                    expected = "mono" if channels == 1 else f"{channels} channels"
                    raise DataError(f"audio file '{p}' has {ch} channels but {expected} is expected")
            return cache[p]

        for p in self.pairs:
            n_noisy, n_clean = info(p.noisy, self.channels)[1], info(p.clean, 1)[1]
            if n_noisy != n_clean:
                raise DataError(
                    f"pair '{p.utt_id}': noisy '{p.noisy}' has {n_noisy} samples but clean '{p.clean}' "
                    f"has {n_clean}: the files of a pair must be aligned and of equal length"
                )

    # -- access --------------------------------------------------------------------------------

    @classmethod
    def _from_pairs(cls, parent: PairedCorpus, pairs: list[Pair]) -> PairedCorpus:
        obj = cls.__new__(cls)
        obj.path, obj.sample_rate, obj.layout = parent.path, parent.sample_rate, parent.layout
        obj.channels = parent.channels
        obj.pairs = pairs
        obj._orig_sr = {p.noisy: parent._orig_sr.get(p.noisy) for p in pairs}
        return obj

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return self.pairs[i]

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __repr__(self) -> str:
        return (
            f"PairedCorpus('{self.path}', layout={self.layout!r}, pairs={len(self)}, "
            f"sample_rate={self.sample_rate})"
        )

    def speakers(self) -> list[str]:
        """Sorted unique speaker labels of the pairs."""
        return sorted({p.speaker for p in self.pairs})

    @property
    def pesq_mode_hint(self) -> str:
        """``"nb"`` for narrowband material (NOIZEUS layout, or a csv whose ``orig_sr`` is 8000 Hz for
        every row of this corpus), else ``"wb"``."""
        if self.layout == "noizeus":
            return "nb"
        rates = [self._orig_sr.get(p.noisy) for p in self.pairs]
        if self.layout == "csv" and rates and all(r == 8000 for r in rates):
            return "nb"
        return "wb"

    def subset(
        self, speakers: Sequence[str] | None = None, max_utterances: int | None = None
    ) -> PairedCorpus:
        """A corpus restricted to ``speakers`` and at most ``max_utterances`` pairs, order kept.

        ``max_utterances`` keeps an even, deterministic spread over the (speaker-filtered) pairs:
        indices ``round(linspace(0, n-1, max_utterances))``, so the first and last pairs are always
        kept. (The first N of the sorted NOIZEUS list would be one sentence in one noise type.)

        Raises:
            DataError: a requested speaker is not in the corpus, or nothing is left.
            ValueError: ``max_utterances`` < 1.
        """
        keep = select_utterances([p.speaker for p in self.pairs], speakers, max_utterances, f"corpus '{self.path}'")
        pairs = [self.pairs[j] for j in keep]
        return PairedCorpus._from_pairs(self, pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Read pair ``i``.

        Returns:
            ``(noisy, clean)``: float32 arrays, noisy ``(L,)`` (mono corpus) or ``(C, L)``
            (multi-channel corpus), clean ``(L,)``, of equal length L (samples).

        Raises:
            DataError: a file is missing/unreadable, not mono, at another rate than ``sample_rate``,
                or the two lengths differ.
        """
        p = self.pairs[i]
        noisy = read_audio(p.noisy, self.sample_rate, allow_multichannel=self.channels != 1)
        clean = read_audio(p.clean, self.sample_rate)
        if noisy.shape[-1] != clean.shape[0]:
            raise DataError(
                f"pair '{p.utt_id}': noisy '{p.noisy}' has {noisy.shape[-1]} samples but clean '{p.clean}' "
                f"has {clean.shape[0]}: the files of a pair must be of equal length"
            )
        return noisy, clean


def select_utterances(labels: Sequence[str], speakers: Sequence[str] | str | None, max_utterances: int | None,
                      what: str) -> list[int]:
    """Indices (order kept) of the utterances of ``speakers`` (labels per utterance in ``labels``), cut to
    at most ``max_utterances`` with an even, deterministic spread: ``round(linspace(0, n-1, N))``, so the
    first and last are always kept. ``what`` names the set in messages (e.g. ``corpus '<path>'``).

    Raises:
        DataError: a requested speaker is not among ``labels``, or nothing is left.
        ValueError: ``max_utterances`` < 1.
    """
    keep = list(range(len(labels)))
    if speakers is not None:
        if isinstance(speakers, str):
            speakers = [speakers]
        known = set(labels)
        unknown = [s for s in speakers if s not in known]
        if unknown:
            raise DataError(f"{what} has no speaker(s) {unknown}: choose from {sorted(known)}")
        wanted = set(speakers)
        keep = [j for j in keep if labels[j] in wanted]
    if max_utterances is not None:
        if max_utterances < 1:
            raise ValueError(f"max_utterances must be >= 1, got {max_utterances}")
        if max_utterances < len(keep):
            # spacing >= 1 so the rounded indices are distinct
            idx = np.round(np.linspace(0, len(keep) - 1, max_utterances)).astype(int)
            keep = [keep[j] for j in idx]
    if not keep:
        raise DataError(f"subset of {what} is empty: choose other speakers")
    return keep
