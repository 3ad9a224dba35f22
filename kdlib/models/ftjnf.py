"""FT-JNF: frequency-time joint non-linear filter (Tesch & Gerkmann, "Insights into Deep Non-linear
Filters for Improved Multi-channel Speech Enhancement", arXiv 2206.13310, TASLP 2023, §IV; the
backbone of the KD study of Metzger, Ohlenbusch, Rollwage & Doclo, arXiv 2507.19208).

Built from methods.md §4.3 and the official code (sp-uhh/deep-non-linear-filter:
``src/models/models.py`` class ``FTJNF``; mask decompression and reference-mic filtering in
``src/models/exp_enhancement.py`` / ``src/models/exp_jnf.py``) [V]; this is an own implementation.

Pipeline for an ``M``-microphone input waveform ``(B, M, L)``:

1. STFT of every mic (``n_fft`` / ``hop_length`` samples, √Hann or Hann window, ``center=True``):
   F = n_fft/2 + 1 bins, T = L // hop + 1 frames. Real parts of all mics, then imaginary parts of all
   mics, stacked as ``(B, 2M, F, T)`` (the official ``concat((real, imag), dim=1)`` order).
2. LSTM-1 (hidden ``n_lstm_hidden1``): with ``freq_first`` (default) the **wide-band** LSTM, run
   along frequency for every frame (sequence length F, batch B·T), input 2M per bin.
3. LSTM-2 (hidden ``n_lstm_hidden2``): the **narrow-band** LSTM, run along time for every frequency
   bin (sequence length T, batch B·F), input = LSTM-1's output (2·h1 when bidirectional).
   ``freq_first=False`` swaps the directions (LSTM-1 along time, LSTM-2 along frequency); the hidden
   sizes stay tied to the order, as in the official code.
4. Linear (2·h2 → 2) per TF bin, then tanh → the compressed complex mask in [-1, 1].
5. Decompression (``mask_compression="cirm"``, K = 1, C = 1): the official inverse of the cIRM
   compression c = K(1 − e^{−C·M}) / (1 + e^{−C·M}), applied to the complex number y = y_r + j·y_i
   as a whole (not per part): M = −(1/C)·log((K − K·y) / (K + K·y)) = 2·atanh(y) for K = C = 1,
   computed with real arithmetic: Re M = ½·[log((1 + y_r)² + y_i²) − log((1 − y_r)² + y_i²)],
   Im M = atan2(y_i, 1 − y_r) + atan2(y_i, 1 + y_r) (so |Im M| < π). y_r is clamped to
   ±(1 − 1e-4) so tanh saturation in float32 never reaches the pole at y = ±1 (|Re M| ≤ 9.9).
   ``mask_compression="none"`` uses the tanh output directly as the complex mask.
6. The complex mask multiplies the STFT of the reference mic (``reference_channel``); iSTFT →
   ``(B, L)``.

Omitted official options (all off by default there): dropout, frequency-index appending, sequence
permutation, the real-valued IRM output. Parameters (M mics, bidirectional, PyTorch's 2 bias vectors
per gate; D = 2 directions): D·4·h1·(2M + h1 + 2) + D·4·h2·(D·h1 + h2 + 2) + (D·h2 + 1)·2 — for M = 5:
512/128 → 3,328,514; 256/64 → 845,058; 96/32 → 140,930 (methods.md §4.3 table, matched exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from kdlib.errors import ConfigError
from kdlib.models.base import SEModel, register_model
from kdlib.models.stft import STFT

#: y_r is clamped to ±(1 − _CIRM_EPS) before the inverse compression (its pole is at y = ±1)
_CIRM_EPS = 1e-4
_WINDOWS = ("sqrt_hann", "hann")
_COMPRESSIONS = ("cirm", "none")


def decompress_cirm(mask: torch.Tensor, eps: float = _CIRM_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Official inverse cIRM compression (K = C = 1) of a ``(..., 2, ...)``-split complex mask.

    Args:
        mask: ``(B, 2, T, F)`` compressed mask (real, imag) in [-1, 1].
        eps: y_r is clamped to ±(1 − eps).

    Returns:
        ``(real, imag)`` of M = −log((1 − y) / (1 + y)) for complex y = y_r + j·y_i, each ``(B, T, F)``.
    """
    yr = mask[:, 0].clamp(-1.0 + eps, 1.0 - eps)
    yi = mask[:, 1]
    yi2 = yi * yi
    real = 0.5 * (torch.log((1.0 + yr) ** 2 + yi2) - torch.log((1.0 - yr) ** 2 + yi2))
    imag = torch.atan2(yi, 1.0 - yr) + torch.atan2(yi, 1.0 + yr)
    return real, imag


@register_model("ftjnf")
class FTJNF(SEModel):
    """FT-JNF multi-channel mask estimator (arXiv 2206.13310 §IV; official ``src/models/models.py``
    class ``FTJNF``) [V].

    Args:
        n_channels: M microphones; the input is ``(B, M, L)`` (``(B, L)`` is also taken when M = 1).
        n_fft: STFT size in samples (F = n_fft // 2 + 1 bins); official 512.
        hop_length: STFT hop in samples (1 ≤ hop ≤ n_fft); official 256.
        window: ``"sqrt_hann"`` (official) or ``"hann"`` analysis/synthesis window.
        n_lstm_hidden1: hidden units per direction of LSTM-1 (wide-band when ``freq_first``); official 512.
        n_lstm_hidden2: hidden units per direction of LSTM-2 (narrow-band when ``freq_first``); official 128.
        freq_first: LSTM-1 runs along frequency (wide-band) and LSTM-2 along time (True, official
            FT-JNF), or the reverse (False).
        bidirectional: both LSTMs bidirectional (True, offline) or unidirectional.
        reference_channel: index of the mic whose spectrum the mask filters (and whose clean signal
            is the target); official 0.
        mask_compression: ``"cirm"`` (decompress the tanh output with the official inverse cIRM
            compression, K = C = 1) or ``"none"`` (use the tanh output as the mask).
        sample_rate: Hz the model is trained for (metadata, checked by the trainer).

    Shapes: ``(B, M, L)`` → ``(B, L)`` (same L). Feature taps, all ``(B, C, T, F)``:
    ``wideband`` (the frequency-LSTM output, C = 2·h of that LSTM when bidirectional), ``narrowband``
    (the time-LSTM output), ``decoder`` (the linear output before tanh, C = 2) and ``mask`` (the
    compressed mask after tanh, C = 2, in [-1, 1]). Sets: ``encoder`` = LSTM-1's tap and ``middle``
    = LSTM-2's tap (forward order; with ``freq_first`` encoder = wide-band, middle = narrow-band,
    so the KD study's wide-band / narrow-band self-similarity reads ``encoder`` / ``middle``; the
    module names ``wideband`` / ``narrowband`` name them whatever the order), ``decoder``, ``mask``.

    Raises:
        ConfigError: an arg out of range (named in the message).
    """

    size_knobs: ClassVar[dict[str, str]] = {
        "n_lstm_hidden1": "LSTM-1 width (scaled together with n_lstm_hidden2)",
        "n_lstm_hidden2": "LSTM-2 width (scaled together with n_lstm_hidden1); no depth knob",
    }
    #: the official training loss (time + magnitude L1 of speech and noise, sp-uhh/deep-non-linear-filter)
    task_loss: ClassVar[dict[str, Any]] = {"name": "ftjnf", "kwargs": {}}

    def __init__(
        self,
        n_channels: int = 5,
        n_fft: int = 512,
        hop_length: int = 256,
        window: str = "sqrt_hann",
        n_lstm_hidden1: int = 512,
        n_lstm_hidden2: int = 128,
        freq_first: bool = True,
        bidirectional: bool = True,
        reference_channel: int = 0,
        mask_compression: str = "cirm",
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self._save_args(dict(locals()))
        for name, value, low in (("n_channels", n_channels, 1), ("n_fft", n_fft, 2), ("hop_length", hop_length, 1),
                                 ("n_lstm_hidden1", n_lstm_hidden1, 1), ("n_lstm_hidden2", n_lstm_hidden2, 1),
                                 ("sample_rate", sample_rate, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"ftjnf.{name} must be an int >= {low}, got {value!r}")
        if hop_length > n_fft:
            raise ConfigError(f"ftjnf.hop_length={hop_length} must be <= n_fft={n_fft} (iSTFT needs overlap)")
        if window not in _WINDOWS:
            raise ConfigError(f"ftjnf.window must be one of {', '.join(_WINDOWS)}, got {window!r}")
        if mask_compression not in _COMPRESSIONS:
            raise ConfigError(f"ftjnf.mask_compression must be one of {', '.join(_COMPRESSIONS)}, "
                              f"got {mask_compression!r}")
        for name, value in (("freq_first", freq_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise ConfigError(f"ftjnf.{name} must be a bool, got {value!r}")
        if isinstance(reference_channel, bool) or not isinstance(reference_channel, int) \
                or not 0 <= reference_channel < n_channels:
            raise ConfigError(f"ftjnf.reference_channel must be an int in [0, {n_channels}), got {reference_channel!r}")

        self.sample_rate = sample_rate
        self.n_channels = n_channels
        self.reference_channel = reference_channel
        self.freq_first = freq_first
        self.mask_compression = mask_compression
        self.stft = STFT(n_fft, hop_length)
        if window == "sqrt_hann":
            # replaces the buffer's values (still non-persistent: checkpoints stay architecture-only)
            self.stft.window = torch.sqrt(torch.hann_window(n_fft))
        dirs = 2 if bidirectional else 1
        self.lstm1 = nn.LSTM(2 * n_channels, n_lstm_hidden1, batch_first=True, bidirectional=bidirectional)
        self.lstm2 = nn.LSTM(dirs * n_lstm_hidden1, n_lstm_hidden2, batch_first=True, bidirectional=bidirectional)
        self.ff = nn.Linear(dirs * n_lstm_hidden2, 2)
        # identity taps give hooks (B, C, T, F) views of the LSTM outputs and of the linear output
        self.wideband, self.narrowband, self.decoder = nn.Identity(), nn.Identity(), nn.Identity()
        self.mask = nn.Tanh()  # a module so KD methods tap the (B, 2, T, F) compressed mask by name

    @property
    def feature_sets(self) -> dict[str, list[str]]:
        first, second = ("wideband", "narrowband") if self.freq_first else ("narrowband", "wideband")
        return {"encoder": [first], "middle": [second], "decoder": ["decoder"], "mask": ["mask"]}

    def _freq_lstm(self, lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, F)`` → LSTM along F per frame → ``(B, C', T, F)`` (a view; the wide-band tap)."""
        b, c, t, f = x.shape
        y = lstm(x.permute(0, 2, 3, 1).reshape(b * t, f, c))[0]
        return self.wideband(y.reshape(b, t, f, -1).permute(0, 3, 1, 2))

    def _time_lstm(self, lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, F)`` → LSTM along T per bin → ``(B, C', T, F)`` (a view; the narrow-band tap)."""
        b, c, t, f = x.shape
        y = lstm(x.permute(0, 3, 2, 1).reshape(b * f, t, c))[0]
        return self.narrowband(y.reshape(b, f, t, -1).permute(0, 3, 2, 1))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, M, L)`` noisy mic signals (samples) → ``(B, L)`` enhanced reference-mic signal."""
        if wav.dim() == 2 and self.n_channels == 1:
            wav = wav.unsqueeze(1)
        if wav.dim() != 3 or wav.shape[1] != self.n_channels:
            raise ValueError(f"ftjnf expects a (B, {self.n_channels}, L) waveform, got {tuple(wav.shape)}")
        length = wav.shape[-1]
        spec = self.stft(wav)  # (B, M, F, T) complex
        x = torch.cat([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2M, T, F)
        if self.freq_first:
            x = self._time_lstm(self.lstm2, self._freq_lstm(self.lstm1, x))
        else:
            x = self._freq_lstm(self.lstm2, self._time_lstm(self.lstm1, x))
        logits = self.decoder(self.ff(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # (B, 2, T, F)
        mask = self.mask(logits)  # compressed mask in [-1, 1]
        if self.mask_compression == "cirm":
            m_re, m_im = decompress_cirm(mask)
        else:
            m_re, m_im = mask[:, 0], mask[:, 1]
        m_re, m_im = m_re.transpose(1, 2), m_im.transpose(1, 2)  # (B, F, T)
        ref = spec[:, self.reference_channel]
        est = torch.complex(m_re * ref.real - m_im * ref.imag, m_re * ref.imag + m_im * ref.real)
        return self.stft.inverse(est, length)

    @classmethod
    def size_candidates(cls, args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
        """Both hidden sizes scaled by one factor s on a geometric grid (s = e^{−0.02k}: ≤ ~4 % param
        steps), each rounded and kept ≥ 1, until both reach 1; FT-JNF has no depth to reduce
        (reduction always 0)."""
        h1, h2 = int(args.get("n_lstm_hidden1", 512)), int(args.get("n_lstm_hidden2", 128))
        for k in range(1000):
            s = math.exp(-k * 0.02)
            c1, c2 = max(1, round(h1 * s)), max(1, round(h2 * s))
            yield {**args, "n_lstm_hidden1": c1, "n_lstm_hidden2": c2}, 0
            if c1 == c2 == 1:
                return
