"""Datasets a sweep trains, validates and tests on, built from the ``data`` section."""

from __future__ import annotations

from dataclasses import dataclass

from kdlib.config import DataConfig, PairedConfig, SweepConfig
from kdlib.data import (
    PairedCorpus,
    SpeechNoiseMixer,
    list_noise,
    list_speech,
    resolve_data_root,
    speaker_matches,
)
from kdlib.errors import DataError


@dataclass
class SweepData:
    """Training mixtures plus the speaker-disjoint validation and test corpora."""

    train: SpeechNoiseMixer
    valid: PairedCorpus
    test: PairedCorpus
    train_speakers: list[str]


def paired_split(cfg: DataConfig, split: PairedConfig) -> PairedCorpus:
    """The paired corpus of a valid/test section, restricted to its speakers and utterance cap.

    Raises:
        DataError: missing corpus, unpaired/unequal files, wrong sample rate, or no utterance left.
    """
    corpus = PairedCorpus(resolve_data_root(cfg.root) / split.corpus, sample_rate=cfg.sample_rate)
    if split.speakers:
        unknown = sorted(set(split.speakers) - set(corpus.speakers()))
        if unknown:
            raise DataError(f"corpus '{split.corpus}' has no speaker(s) {unknown}; it has {corpus.speakers()}")
    return corpus.subset(split.speakers, split.max_utterances)


def eval_sets(sweep: SweepConfig) -> tuple[PairedCorpus, PairedCorpus]:
    """The sweep's ``(valid, test)`` corpora. The driver calls this before any trial starts, so
    data problems stop the sweep before work is wasted.

    Raises:
        DataError: missing corpus, unpaired/unequal files, wrong sample rate, or no utterance left.
    """
    cfg = sweep.data
    return paired_split(cfg, cfg.valid), paired_split(cfg, cfg.test)


def build_sweep_data(sweep: SweepConfig, seed: int = 0) -> SweepData:
    """Training mixes from ``speech/`` + ``noise/`` with every validation/test speaker left out.

    Raises:
        DataError: missing data root or folders, or no training speaker left after exclusion.
    """
    cfg = sweep.data
    root = resolve_data_root(cfg.root)
    valid, test = eval_sets(sweep)
    held_out = set(valid.speakers()) | set(test.speakers()) | set(cfg.train.exclude_speakers)
    speech = list_speech(root, cfg.train.speech)
    train_speakers = [s for s in speech if not any(speaker_matches(s, h) for h in held_out)]
    if not train_speakers:
        raise DataError("no training speaker left after excluding the validation/test speakers")
    files = [f for s in train_speakers for f in speech[s]]
    mixer = SpeechNoiseMixer(
        files, list_noise(root, cfg.train.noise), sample_rate=cfg.sample_rate,
        segment_seconds=cfg.train.segment_seconds, snr_db=tuple(cfg.train.snr_db),
        num_segments=cfg.train.segments_per_epoch, seed=seed,
    )
    return SweepData(mixer, valid, test, train_speakers)
