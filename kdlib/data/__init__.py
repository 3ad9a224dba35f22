"""Audio I/O, paired corpora, unpaired speech/noise listing, speaker splits and on-the-fly mixing.

Also here, imported on demand: :mod:`kdlib.data.array` (simulated microphone arrays), :mod:`kdlib.data.l3das`
(the L3DAS23 corpus), :mod:`kdlib.data.cache` (write-once folders) and :mod:`kdlib.data.sources` (the sweep's
data sources, which read the ``data`` schema; this package itself imports no schema).
"""

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
