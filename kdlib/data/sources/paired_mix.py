"""Mono training mixtures of ``speech/`` + ``noise/`` made on the fly; validation and test on paired corpora
(``data.valid`` + ``data.test``: VoiceBank+DEMAND, NOIZEUS, any folder with a ``pairs.csv``)."""

from __future__ import annotations

from pathlib import Path

from kdlib.config.data import DataConfig, PairedConfig
from kdlib.data.mixing import SpeechNoiseMixer
from kdlib.data.paired import PairedCorpus
from kdlib.data.scan import (
    ScanReport,
    scan_pairs,
    scan_training_mix,
)
from kdlib.data.sources.base import DataSource, SweepData, register_data_source
from kdlib.data.speech import list_noise, list_speech, speaker_matches
from kdlib.errors import DataError


@register_data_source("paired_mix")
class PairedMixSource(DataSource):
    """The default source: no ``data.array`` and no ``data.l3das23`` section.

    Training: :class:`SpeechNoiseMixer` over every ``data.train.speech`` speaker folder except the valid/test
    speakers and ``data.train.exclude_speakers`` (compared with :func:`speaker_matches`, so ``p232`` also
    removes ``vctk_p232``), all ``data.train.noise`` files, ``(L,)`` / ``(L,)`` items.
    """

    @classmethod
    def selected_by(cls, data: DataConfig) -> bool:
        return data.array is None and data.l3das23 is None

    @property
    def input_channels(self) -> int:
        return 1

    def split(self, part: PairedConfig) -> PairedCorpus:
        """The paired corpus of a valid/test section, restricted to its speakers and utterance cap.

        Raises:
            DataError: missing corpus, unpaired/unequal files, wrong sample rate, or no utterance left.
        """
        corpus = PairedCorpus(self.root / part.corpus, sample_rate=self.data.sample_rate)
        if part.speakers:
            unknown = sorted(set(part.speakers) - set(corpus.speakers()))
            if unknown:
                raise DataError(f"corpus '{part.corpus}' has no speaker(s) {unknown}; it has {corpus.speakers()}")
        return corpus.subset(part.speakers, part.max_utterances)

    def eval_sets(self) -> tuple[PairedCorpus, PairedCorpus]:
        assert self.data.valid is not None and self.data.test is not None  # the schema refuses neither/both
        return self.split(self.data.valid), self.split(self.data.test)

    def extra_test_sets(self) -> dict[str, PairedCorpus]:
        """The named test sets after the first of a ``data.test`` list, by name.

        Raises:
            DataError: as :meth:`split`.
        """
        return {str(part.name): self.split(part) for part in self.data.extra_tests}

    def _held_out(self, valid: PairedCorpus, test: PairedCorpus,
                  extra_sets: dict[str, PairedCorpus] | None = None) -> set[str]:
        sets = self.extra_test_sets() if extra_sets is None else extra_sets
        extra = {s for corpus in sets.values() for s in corpus.speakers()}
        return set(valid.speakers()) | set(test.speakers()) | extra | set(self.data.train.exclude_speakers)

    def train_speech(self, valid: PairedCorpus, test: PairedCorpus,
                     extra_sets: dict[str, PairedCorpus] | None = None) -> tuple[list[str], list[Path]]:
        """The training speakers (every ``data.train.speech`` folder with audio but the valid/test speakers
        and ``data.train.exclude_speakers``) and their files, as :meth:`build` uses them (no audio read).

        Raises:
            DataError: the speech folder is missing or empty, or no training speaker is left.
        """
        held_out = self._held_out(valid, test, extra_sets)
        speech = list_speech(self.root, self.data.train.speech)
        train_speakers = [s for s in speech if not any(speaker_matches(s, h) for h in held_out)]
        if not train_speakers:
            raise DataError("no training speaker left after excluding the validation/test speakers")
        return train_speakers, [f for s in train_speakers for f in speech[s]]

    def scan_files(self, depth: str) -> ScanReport:
        """:meth:`DataSource.scan` of paired mixing, in this order: the valid/test corpora's pairing and headers
        (:meth:`eval_sets`); the speaker folders of ``data.train.speech`` (one without audio directly in it is
        refused, unless held out); every training speech file (mono, ``data.sample_rate``); at least one
        training segment (``data.train.segment_seconds``) of speech in total; every ``data.train.noise`` file;
        at least one noise file as long as a segment; then the noisy and clean files of the valid and test
        sets (only their speakers and ``max_utterances``). Reads only; writes nothing.

        Raises:
            DataError: the first problem found, naming the file or folder (see :mod:`kdlib.data.scan`).
        """
        cfg, sr = self.data, self.data.sample_rate
        valid, test = self.eval_sets()
        extra = self.extra_test_sets()
        speech_dir, noise_dir = self.root / cfg.train.speech, self.root / cfg.train.noise
        _, files = self.train_speech(valid, test, extra)
        report = scan_training_mix(files, list_noise(self.root, cfg.train.noise), speech_dir=speech_dir,
                                   noise_dir=noise_dir, held_out=self._held_out(valid, test, extra), sample_rate=sr,
                                   segment_seconds=cfg.train.segment_seconds, depth=depth)
        sets = [("valid", valid, cfg.valid, "data.valid.corpus"), ("test", test, cfg.test, "data.test.corpus"),
                *(("test", extra[str(p.name)], p, f"data.test '{p.name}'") for p in cfg.extra_tests)]
        for kind, corpus, part, key in sets:
            report = report + scan_pairs([(p.noisy, p.clean) for p in corpus], sample_rate=sr, channels=1,
                                         kind=kind, depth=depth, where=f"the corpus '{part.corpus}' ({key})")
        return report

    def build(self, seed: int = 0) -> SweepData:
        cfg = self.data
        valid, test = self.eval_sets()
        extra = self.extra_test_sets()  # read once: the held-out speakers and the sets themselves
        train_speakers, files = self.train_speech(valid, test, extra)
        mixer = SpeechNoiseMixer(
            files, list_noise(self.root, cfg.train.noise), sample_rate=cfg.sample_rate,
            segment_seconds=cfg.train.segment_seconds, snr_db=tuple(cfg.train.snr_db),
            num_segments=cfg.train.segments_per_epoch, seed=seed,
        )
        return SweepData(mixer, valid, test, train_speakers, extra)
