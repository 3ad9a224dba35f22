"""Audio I/O, paired corpora, unpaired speech/noise listing, speaker splits and on-the-fly mixing."""

from kdlib.data.audio import AUDIO_SUFFIXES, audio_info, read_audio, write_audio
from kdlib.data.mixing import SpeechNoiseMixer, mix_at_snr
from kdlib.data.paired import LAYOUTS, Pair, PairedCorpus
from kdlib.data.root import DEFAULT_ROOT, ENV_VAR, resolve_data_root
from kdlib.data.speech import list_noise, list_speech, speaker_matches, split_by_speaker

__all__ = [
    "AUDIO_SUFFIXES",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "LAYOUTS",
    "Pair",
    "PairedCorpus",
    "SpeechNoiseMixer",
    "audio_info",
    "list_noise",
    "list_speech",
    "mix_at_snr",
    "read_audio",
    "resolve_data_root",
    "speaker_matches",
    "split_by_speaker",
    "write_audio",
]
