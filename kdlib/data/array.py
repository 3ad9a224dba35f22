"""Multi-channel (compact microphone array) noisy/clean data simulated in shoebox rooms.

Room impulse responses (RIRs) come from pyroomacoustics (Scheibler et al., ICASSP 2018): ``pra.ShoeBox`` rooms,
the image-source method (Allen & Berkley 1979) with wall absorption from Sabine's formula
(``pra.inverse_sabine``). The recipe follows the FT-JNF data generator (sp-uhh/deep-non-linear-filter,
``src/data/data_gen_fixed_pos.py``: shoebox rooms, circular array of radius 5 cm, RT60 0.2-0.8 s, dry
direct-path target at the reference microphone); the KD paper (Metzger et al., arXiv 2507.19208) used a compact
5-microphone array whose exact geometry and noise are unknown, so the defaults here are a documented template.

Conventions: positions in metres (m), times in seconds (s), rates in Hz, levels in dB, lengths in samples.
Microphone 0 is the reference microphone. The speed of sound is pyroomacoustics' ``constants.get("c")``
(343 m/s). pyroomacoustics renders every image source with an 81-tap fractional-delay sinc centred on its
arrival time, so an arrival after ``d`` metres peaks at sample ``d / c * fs + 40`` of the RIR.

Threads: pyroomacoustics' C++ RIR builder uses ``PRA_NUM_THREADS`` (default: all cores) threads per call;
set ``PRA_NUM_THREADS=1`` when several DataLoader workers share few cores.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyroomacoustics as pra
import torch
from scipy import fft as sp_fft

from kdlib.data.audio import write_audio
from kdlib.data.cache import write_once
from kdlib.data.mixing import EpochDataset, SourcePool
from kdlib.errors import DataError

LAYOUTS = ("circular", "linear")
TARGETS = ("direct", "early")
SNR_REFERENCES = ("reverberant", "target")

_PEAK = 0.99  # keep mixtures below full scale (16-bit export, no clipping)
_PLACE_TRIES = 200  # rejection-sampling tries per source position
_LAYOUT_TRIES = 20  # re-draws of the array position when a source cannot be placed


def speed_of_sound() -> float:
    """Speed of sound used by pyroomacoustics, in m/s (343.0 unless changed via ``pra.constants``)."""
    return float(pra.constants.get("c"))


def direct_path_offset() -> int:
    """Samples by which pyroomacoustics delays every arrival (half its fractional-delay filter, 40)."""
    return int(pra.constants.get("frac_delay_length")) // 2


# -- geometry ------------------------------------------------------------------------------------


def compact_array(
    n_mics: int = 5,
    radius_m: float = 0.05,
    layout: str = "circular",
    spacing_m: float | None = None,
    center_mic: bool = False,
) -> np.ndarray:
    """Microphone offsets of a compact array around its centre, in a horizontal plane.

    Default geometry (the FT-JNF template with the KD paper's five microphones): a uniform circular array of
    5 microphones on a circle of radius 5 cm, mic ``k`` at azimuth ``2*pi*k/5`` (mic 0 on the +x axis),
    so neighbouring mics are 5.88 cm apart and the aperture is 10 cm.

    Args:
        n_mics: number of microphones M (>= 2).
        radius_m: circle radius in m (circular), or half the aperture when ``spacing_m`` is None (linear).
        layout: ``"circular"`` or ``"linear"`` (along x, centred on the origin).
        spacing_m: linear inter-mic spacing in m; default ``2 * radius_m / (M - 1)`` (aperture = diameter).
            Not allowed for the circular layout.
        center_mic: put the reference mic 0 at the array centre. Circular: mic 0 at the origin and the other
            M - 1 mics evenly on the circle (mic 1 on +x). Linear: M must be odd; the middle element
            becomes mic 0, the others follow from left to right.

    Returns:
        ``(3, M)`` float64 offsets in m (rows x, y, z; z = 0), mean near the origin.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    if n_mics < 2:
        raise ValueError(f"compact_array: n_mics must be >= 2, got {n_mics}")
    if layout not in LAYOUTS:
        raise ValueError(f"compact_array: layout must be one of {LAYOUTS}, got {layout!r}")
    if not radius_m > 0:
        raise ValueError(f"compact_array: radius_m must be > 0 m, got {radius_m}")
    pos = np.zeros((3, n_mics))
    if layout == "circular":
        if spacing_m is not None:
            raise ValueError("compact_array: spacing_m is only for layout='linear' (the circle uses radius_m)")
        n_ring = n_mics - 1 if center_mic else n_mics
        ang = 2.0 * np.pi * np.arange(n_ring) / n_ring
        ring = np.stack([radius_m * np.cos(ang), radius_m * np.sin(ang), np.zeros(n_ring)])
        pos[:, n_mics - n_ring :] = ring
        return pos
    if spacing_m is None:
        spacing_m = 2.0 * radius_m / (n_mics - 1)
    if not spacing_m > 0:
        raise ValueError(f"compact_array: spacing_m must be > 0 m, got {spacing_m}")
    x = (np.arange(n_mics) - (n_mics - 1) / 2.0) * spacing_m
    if center_mic:
        if n_mics % 2 == 0:
            raise ValueError(f"compact_array: a linear array with center_mic needs an odd n_mics, got {n_mics}")
        mid = n_mics // 2
        x = np.concatenate([x[mid : mid + 1], x[:mid], x[mid + 1 :]])
    pos[0] = x
    return pos


def simulate_rirs(
    room_dim_m: Sequence[float],
    mic_pos_m: np.ndarray,
    source_pos_m: np.ndarray,
    sample_rate: int = 16000,
    rt60_s: float = 0.5,
    max_order: int | None = 17,
    max_rir_samples: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Image-source RIRs of a shoebox room from every source to every microphone (pyroomacoustics).

    Wall energy absorption (the same for all six walls) and the image order needed for ``rt60_s`` come from
    ``pra.inverse_sabine(rt60_s, room_dim_m)``; the order actually used is ``min(needed, max_order)``.
    A capped order truncates the late tail (fewer, earlier reflections), so the realized decay can be much
    shorter than ``rt60_s`` in small rooms with long RT60 (see ``ArrayMixer``). ``rt60_s == 0`` means
    anechoic: only the direct path (order 0). No air absorption; pyroomacoustics' default 10 Hz zero-phase
    high-pass is applied to every RIR.

    Args:
        room_dim_m: ``(3,)`` room size (length, width, height) in m.
        mic_pos_m: ``(3, M)`` absolute microphone positions in m (inside the room).
        source_pos_m: ``(3,)`` or ``(3, S)`` absolute source positions in m (inside the room).
        sample_rate: in Hz.
        rt60_s: Sabine reverberation time in s (>= 0).
        max_order: cap on the image-source order (>= 0); ``None`` uses the full order from
            ``inverse_sabine`` (exact Sabine decay, but seconds to minutes per room).
        max_rir_samples: truncate the RIRs to at most this many samples (None: no bound beyond the order).

    Returns:
        ``(rirs, info)``: ``rirs`` is ``(S, M, K)`` float64, zero-padded to the longest RIR (K samples);
        ``info = {"absorption": energy absorption coefficient, "max_order": order used}``.

    Raises:
        ValueError: ``rt60_s`` is not reachable in this room (Sabine absorption > 1) or an argument is
            out of range.
    """
    room_dim = [float(x) for x in room_dim_m]
    mics = np.asarray(mic_pos_m, dtype=np.float64)
    srcs = np.asarray(source_pos_m, dtype=np.float64)
    if srcs.ndim == 1:
        srcs = srcs[:, None]
    if len(room_dim) != 3 or mics.ndim != 2 or mics.shape[0] != 3 or srcs.shape[0] != 3:
        raise ValueError(
            f"simulate_rirs: need room_dim (3,), mic_pos (3, M), source_pos (3, S); got "
            f"{len(room_dim)}, {mics.shape}, {srcs.shape}"
        )
    if rt60_s < 0 or (max_order is not None and max_order < 0):
        raise ValueError(f"simulate_rirs: rt60_s and max_order must be >= 0, got {rt60_s}, {max_order}")
    if rt60_s == 0:
        absorption, order = 1.0, 0
    else:
        absorption, needed = pra.inverse_sabine(float(rt60_s), room_dim)
        order = int(needed) if max_order is None else min(int(needed), int(max_order))
    room = pra.ShoeBox(room_dim, fs=int(sample_rate), materials=pra.Material(float(absorption)), max_order=order)
    for s in range(srcs.shape[1]):
        room.add_source(srcs[:, s])
    room.add_microphone_array(mics)
    room.compute_rir()
    K = max(len(room.rir[m][s]) for m in range(mics.shape[1]) for s in range(srcs.shape[1]))
    if max_rir_samples is not None:
        K = min(K, int(max_rir_samples))
    out = np.zeros((srcs.shape[1], mics.shape[1], K))
    for m in range(mics.shape[1]):
        for s in range(srcs.shape[1]):
            h = np.asarray(room.rir[m][s], dtype=np.float64)[:K]
            out[s, m, : h.size] = h
    return out, {"absorption": float(absorption), "max_order": order}


def _energy(x: np.ndarray) -> float:
    """Sum of squares in float64 (no BLAS call: OpenBLAS would spin extra threads for long vectors)."""
    return float(np.sum(np.square(x, dtype=np.float64)))


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pair(value: Any, name: str, integer: bool = False) -> tuple[Any, Any]:
    if isinstance(value, int | float | np.integer | np.floating):
        value = (value, value)
    if len(value) != 2:
        raise ValueError(f"ArrayMixer: {name} must be one number or a (low, high) pair, got {value}")
    lo, hi = (int(v) for v in value) if integer else (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"ArrayMixer: {name} must be a finite (low, high) range with low <= high, got {value}")
    return lo, hi


# -- dataset -------------------------------------------------------------------------------------


class ArrayMixer(EpochDataset):
    """Random multi-channel noisy / mono clean segments simulated on the fly in shoebox rooms.

    Every file is read once at construction (float32, mono, at ``sample_rate``). Item ``i`` depends only on
    ``(seed, epoch, i)`` through ``np.random.default_rng([seed, epoch, i])``:

    1. room size uniform per axis in ``room_dim_m``; RT60 uniform in ``rt60_s``; number of noise sources
       uniform in ``noise_sources``; SNR uniform in ``snr_db``;
    2. array centre uniform in the room with every microphone >= ``wall_margin_m`` from every wall (array
       rotated by a uniform azimuth when ``rotate_array``); speech source and each noise source uniform with
       >= ``wall_margin_m`` to the walls and >= ``min_source_dist_m`` to the array centre (rejection
       sampling, 200 tries per source, the array re-drawn up to 20 times);
    3. RIRs from all sources to all mics with :func:`simulate_rirs` (order capped at ``max_order``,
       K samples long);
    4. a speech segment of ``L + K - 1`` samples (re-drawn while near-silent, as in ``SpeechNoiseMixer``) and
       one noise segment per noise source (short files looped), each noise normalised to unit power at its
       source; ``"valid"`` convolutions (FFT) give L samples per mic in reverberant steady state (no onset ramp);
    5. target at mic 0: ``"direct"`` convolves the speech with the direct path only (the RIR of the same
       geometry with ``max_order=0``, which is exactly the order-0 image of the reverberant RIR, including
       the fractional-delay sinc); ``"early"`` with mic 0's reverberant RIR cut ``early_ms`` after the
       direct-path arrival. Target and noisy are sample-aligned (both carry the propagation delay);
    6. speech images and target are scaled so the target has the dry segment's RMS; the summed noise images
       are scaled so that the SNR at the reference mic 0 equals the draw:

       * ``snr_reference="reverberant"`` (default, as pyroomacoustics' ``room.simulate(snr=...)``):
         ``10*log10(sum(speech_image[0]**2) / sum(noise_image[0]**2))``, the physical SNR at mic 0;
       * ``snr_reference="target"``: ``10*log10(sum(clean**2) / sum(noise_image[0]**2))``;

    7. if ``max|noisy| > 0.99`` everything is scaled by the same factor (SNR unchanged).

    Realized reverberation: with the order capped (default 17) the RIR tail stops after the order's
    reflection distance, so the measured decay is shorter than the drawn Sabine RT60, most in small rooms.
    Measured T20 (pyroomacoustics ``measure_rt60``, decay_db=20) at order 17, drawn 0.2 / 0.4 / 0.6 / 0.8 s:
    3 x 3 x 2.5 m: 0.17 / 0.29 / 0.28 / 0.27 s; 5.5 x 4.5 x 3 m: 0.16 / 0.34 / 0.38 / 0.38 s;
    8 x 6 x 3.5 m: 0.15 / 0.39 / 0.50 / 0.53 s. ``"rt60_s"`` reports the drawn value. ``max_order=None``
    gives the Sabine decay (checked to within 20 % at 0.3 s) but costs seconds to a minute per item, so use
    it only for small cached sets.

    Cost (2 s items, 5 mics, defaults, one core, ``PRA_NUM_THREADS=1``): about 40 ms of CPU per item
    (~25 items/s); order 12: ~27 ms; anechoic: ~20 ms.

    ``set_epoch`` changes the draw. With DataLoader workers call it before creating the iterator.

    Args:
        speech_files: clean speech files (wav/flac, mono); the speaker label is the parent folder name.
        noise_files: noise files (wav/flac, mono).
        sample_rate: in Hz; every file must have this rate.
        segment_seconds: segment length in s; L = round(segment_seconds * sample_rate) samples.
        n_mics: number of microphones M (must match ``array`` when given).
        array: ``(3, M)`` mic offsets in m around the array centre; default ``compact_array(n_mics)``
            (circular, radius 5 cm). Mic 0 is the reference.
        rt60_s: ``(low, high)`` Sabine RT60 range in s, or one number; ``0`` means anechoic (both ends 0).
        room_dim_m: ``((lx, ly, lz), (hx, hy, hz))`` range of the room size in m.
        snr_db: ``(low, high)`` SNR range at the reference mic in dB, or one number.
        noise_sources: ``(low, high)`` number of point noise sources (inclusive, >= 1), or one number.
        target: ``"direct"`` or ``"early"``.
        early_ms: early part kept after the direct arrival for ``target="early"``, in ms.
        snr_reference: ``"reverberant"`` or ``"target"`` (see step 6).
        max_order: image-source order cap (>= 0) or None for the full Sabine order (slow).
        max_rir_seconds: RIRs are truncated to this many seconds (> 0).
        wall_margin_m: minimum distance of sources and mics to the walls, in m.
        min_source_dist_m: minimum distance of every source to the array centre, in m.
        rotate_array: rotate the array by a random azimuth per item.
        num_items: items per epoch (``len``).
        seed: non-negative int.

    Raises:
        ValueError: an argument is out of range (the message names it), including rooms too small for the
            margins or too large/absorbent for the lowest RT60.
        DataError: a file list is empty, or a file is missing/unreadable/not mono/at another rate/all zeros.
    """

    def __init__(
        self,
        speech_files: Sequence[Path],
        noise_files: Sequence[Path],
        sample_rate: int = 16000,
        segment_seconds: float = 2.0,
        n_mics: int = 5,
        array: np.ndarray | None = None,
        rt60_s: tuple[float, float] | float = (0.2, 0.8),
        room_dim_m: tuple[Sequence[float], Sequence[float]] = ((3.0, 3.0, 2.5), (8.0, 6.0, 3.5)),
        snr_db: tuple[float, float] | float = (-5.0, 15.0),
        noise_sources: tuple[int, int] | int = (1, 3),
        target: str = "direct",
        early_ms: float = 50.0,
        snr_reference: str = "reverberant",
        max_order: int | None = 17,
        max_rir_seconds: float = 1.0,
        wall_margin_m: float = 0.5,
        min_source_dist_m: float = 1.0,
        rotate_array: bool = True,
        num_items: int = 256,
        seed: int = 0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"ArrayMixer: sample_rate must be > 0 Hz, got {sample_rate}")
        if not segment_seconds > 0 or round(segment_seconds * sample_rate) < 1:
            raise ValueError(f"ArrayMixer: segment_seconds must give >= 1 sample, got {segment_seconds}")
        if array is None:
            array = compact_array(n_mics)
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != 3 or array.shape[1] != n_mics:
            raise ValueError(f"ArrayMixer: array must be (3, n_mics={n_mics}) offsets in m, got {array.shape}")
        if target not in TARGETS:
            raise ValueError(f"ArrayMixer: target must be one of {TARGETS}, got {target!r}")
        if snr_reference not in SNR_REFERENCES:
            raise ValueError(f"ArrayMixer: snr_reference must be one of {SNR_REFERENCES}, got {snr_reference!r}")
        if not early_ms > 0:
            raise ValueError(f"ArrayMixer: early_ms must be > 0 ms, got {early_ms}")
        if max_order is not None and max_order < 0:
            raise ValueError(f"ArrayMixer: max_order must be >= 0 or None, got {max_order}")
        if not max_rir_seconds > 0:
            raise ValueError(f"ArrayMixer: max_rir_seconds must be > 0 s, got {max_rir_seconds}")
        if wall_margin_m < 0 or min_source_dist_m < 0:
            raise ValueError("ArrayMixer: wall_margin_m and min_source_dist_m must be >= 0 m")
        if num_items < 1:
            raise ValueError(f"ArrayMixer: num_items must be >= 1, got {num_items}")
        if seed < 0:
            raise ValueError(f"ArrayMixer: seed must be >= 0, got {seed}")
        rt60 = _pair(rt60_s, "rt60_s")
        if rt60[0] < 0 or (rt60[0] == 0 < rt60[1]):
            raise ValueError(f"ArrayMixer: rt60_s must be 0 (anechoic) or a range of positive seconds, got {rt60}")
        snr = _pair(snr_db, "snr_db")
        n_noise = _pair(noise_sources, "noise_sources", integer=True)
        if n_noise[0] < 1:
            raise ValueError(f"ArrayMixer: noise_sources must be >= 1, got {noise_sources}")
        dims = np.asarray(room_dim_m, dtype=np.float64)
        if dims.shape != (2, 3) or not np.all(np.isfinite(dims)) or np.any(dims[0] > dims[1]):
            raise ValueError(
                f"ArrayMixer: room_dim_m must be ((lx, ly, lz), (hx, hy, hz)) with low <= high, got {room_dim_m}"
            )
        extent = float(np.max(np.linalg.norm(array, axis=0)))  # array radius: worst case over rotations
        usable = dims[0] - 2.0 * wall_margin_m
        if np.any(usable - 2.0 * extent <= 0) or 0.5 * float(np.linalg.norm(usable)) <= 1.05 * min_source_dist_m:
            raise ValueError(
                f"ArrayMixer: the smallest room {tuple(dims[0])} m is too small for wall_margin_m={wall_margin_m}, "
                f"min_source_dist_m={min_source_dist_m} and an array of radius {extent:.3f} m: enlarge room_dim_m"
            )
        if rt60[0] > 0:
            try:  # Sabine absorption is largest in the smallest room at the lowest RT60
                pra.inverse_sabine(rt60[0], list(dims[0]))
            except ValueError:
                raise ValueError(
                    f"ArrayMixer: rt60_s low end {rt60[0]} s is unreachable in a {tuple(dims[0])} m room "
                    "(Sabine absorption > 1): raise rt60_s or shrink room_dim_m"
                ) from None
        self.sample_rate = int(sample_rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_length = round(self.segment_seconds * self.sample_rate)
        self.n_mics = int(n_mics)
        self.array = array
        self.array_extent_m = extent
        self.rt60_s = rt60
        self.room_dim_m = (tuple(float(x) for x in dims[0]), tuple(float(x) for x in dims[1]))
        self.snr_db = snr
        self.noise_sources = n_noise
        self.target = target
        self.early_ms = float(early_ms)
        self.snr_reference = snr_reference
        self.max_order = None if max_order is None else int(max_order)
        self.max_rir_seconds = float(max_rir_seconds)
        self.wall_margin_m = float(wall_margin_m)
        self.min_source_dist_m = float(min_source_dist_m)
        self.rotate_array = bool(rotate_array)
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0
        self.pool = SourcePool(speech_files, noise_files, self.sample_rate, "ArrayMixer")
        self.speech_files, self.noise_files = self.pool.speech_files, self.pool.noise_files

    def config(self) -> dict[str, Any]:
        """The parameters that determine the draws (JSON-serialisable; files as ``<folder>/<name>``, so a
        moved data root still matches)."""
        return {
            "sample_rate": self.sample_rate,
            "segment_seconds": self.segment_seconds,
            "n_mics": self.n_mics,
            "array": self.array.round(9).tolist(),
            "rt60_s": list(self.rt60_s),
            "room_dim_m": [list(self.room_dim_m[0]), list(self.room_dim_m[1])],
            "snr_db": list(self.snr_db),
            "noise_sources": list(self.noise_sources),
            "target": self.target,
            "early_ms": self.early_ms,
            "snr_reference": self.snr_reference,
            "max_order": self.max_order,
            "max_rir_seconds": self.max_rir_seconds,
            "wall_margin_m": self.wall_margin_m,
            "min_source_dist_m": self.min_source_dist_m,
            "rotate_array": self.rotate_array,
            "seed": self.seed,
            "epoch": self.epoch,
            "speech_files": [f"{p.parent.name}/{p.name}" for p in self.speech_files],
            "noise_files": [f"{p.parent.name}/{p.name}" for p in self.noise_files],
        }

    def __len__(self) -> int:
        return self.num_items

    # -- draw helpers ----------------------------------------------------------------------------

    def _place(self, rng: np.random.Generator, room: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray]:
        """Array centre (3,) and source positions (3, n_src), all in m."""
        lo_a = self.wall_margin_m + self.array_extent_m
        lo_s = self.wall_margin_m
        for _ in range(_LAYOUT_TRIES):
            centre = rng.uniform(lo_a, room - lo_a)
            srcs = []
            for _ in range(n_src):
                for _ in range(_PLACE_TRIES):
                    p = rng.uniform(lo_s, room - lo_s)
                    if np.linalg.norm(p - centre) >= self.min_source_dist_m:
                        srcs.append(p)
                        break
                else:
                    break
            if len(srcs) == n_src:
                return centre, np.stack(srcs, axis=1)
        raise DataError(
            f"ArrayMixer: could not place {n_src} sources >= {self.min_source_dist_m} m from the array in a "
            f"{tuple(room.round(2))} m room: lower min_source_dist_m or enlarge room_dim_m"
        )

    def _noise_segment(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
        """``n`` samples of noise at unit mean power (float64 ``(n,)``) and the file index."""
        seg, k = self.pool.noise_segment(rng, n)
        seg = seg.astype(np.float64)
        return seg / math.sqrt(float(np.mean(np.square(seg)))), k

    def draw(self, i: int) -> dict[str, Any]:
        """Draw item ``i`` of the current epoch.

        Returns:
            A dict with

            * ``"noisy"``: ``(M, L)`` float32, ``speech_image + noise_image``;
            * ``"clean"``: ``(L,)`` float32 target at the reference mic 0 (direct path or early part);
            * ``"speech_image"``, ``"noise_image"``: ``(M, L)`` float32 reverberant speech and summed noise;
            * ``"snr_db"``: drawn SNR at mic 0 in dB (definition per ``snr_reference``);
            * ``"rt60_s"``: drawn Sabine RT60 in s; ``"absorption"``: wall energy absorption;
              ``"max_order"``: image order used; ``"rir_length"``: K in samples;
            * ``"room_dim"``: ``(3,)`` in m; ``"mic_pos"``: ``(3, M)`` absolute in m; ``"array_center"``:
              ``(3,)``; ``"source_pos"``: ``(3,)``; ``"noise_pos"``: ``(3, N)``; ``"array_rotation_rad"``;
            * ``"direct_delay_samples"``: arrival of the direct path at mic 0 (propagation + 40-sample filter
              offset), float samples;
            * ``"speech_file"``, ``"speaker"``, ``"noise_files"`` (one per noise source).

        Raises:
            IndexError: ``i`` outside ``[-len, len)``.
        """
        if not -self.num_items <= i < self.num_items:
            raise IndexError(f"ArrayMixer index {i} out of range for {self.num_items} items")
        i = int(i) % self.num_items
        rng = np.random.default_rng([self.seed, self.epoch, i])
        fs, L = self.sample_rate, self.segment_length
        lo, hi = np.asarray(self.room_dim_m[0]), np.asarray(self.room_dim_m[1])
        room = rng.uniform(lo, hi)
        rt60 = float(rng.uniform(*self.rt60_s))
        n_noise = int(rng.integers(self.noise_sources[0], self.noise_sources[1] + 1))
        snr = float(rng.uniform(*self.snr_db))
        rot = float(rng.uniform(0.0, 2.0 * np.pi)) if self.rotate_array else 0.0
        centre, srcs = self._place(rng, room, 1 + n_noise)
        mic_pos = centre[:, None] + _rotation_z(rot) @ self.array

        rirs, info = simulate_rirs(
            room, mic_pos, srcs, fs, rt60, self.max_order, max_rir_samples=round(self.max_rir_seconds * fs)
        )
        K = rirs.shape[-1]
        d0 = float(np.linalg.norm(srcs[:, 0] - mic_pos[:, 0]))
        t_direct = d0 / speed_of_sound() * fs + direct_path_offset()
        if self.target == "direct":
            h_t, _ = simulate_rirs(room, mic_pos[:, :1], srcs[:, 0], fs, 0.0, 0, max_rir_samples=K)
            h_target = np.zeros(K)
            h_target[: h_t.shape[-1]] = h_t[0, 0]
        else:
            cut = min(K, int(math.floor(t_direct + self.early_ms * 1e-3 * fs)) + 1)
            h_target = np.zeros(K)
            h_target[:cut] = rirs[0, 0, :cut]

        # "valid" convolutions by circular convolution of length nfft >= n: outputs K-1 .. n-1 are exact
        n = L + K - 1
        nfft = sp_fft.next_fast_len(n, real=True)
        # the silence check looks at the last L samples: the part aligned with the output
        speech, k_speech = self.pool.speech_segment(rng, n, L)
        speech = speech.astype(np.float64)
        spec_s = sp_fft.rfft(speech, nfft)
        spec_h = sp_fft.rfft(rirs, nfft, axis=-1)  # (S, M, F)
        speech_img = sp_fft.irfft(spec_s * spec_h[0], nfft, axis=-1)[:, K - 1 : n]  # (M, L)
        clean = sp_fft.irfft(spec_s * sp_fft.rfft(h_target, nfft), nfft)[K - 1 : n]  # (L,)
        spec_n = np.zeros_like(spec_h[0])
        noise_k = []
        for j in range(n_noise):
            seg, k = self._noise_segment(rng, n)
            spec_n += sp_fft.rfft(seg, nfft) * spec_h[1 + j]
            noise_k.append(k)
        noise_img = sp_fft.irfft(spec_n, nfft, axis=-1)[:, K - 1 : n]

        e_clean, e_dry = _energy(clean), _energy(speech[K - 1 :])
        if e_clean == 0.0 or not np.any(noise_img[0]):
            raise DataError(  # needs a source whose direct path misses mic 0 entirely: not a shoebox outcome
                f"ArrayMixer item {i}: silent target or noise at mic 0 (speech '{self.speech_files[k_speech]}')"
            )
        g_s = math.sqrt(e_dry / e_clean)
        clean *= g_s
        speech_img *= g_s
        ref = speech_img[0] if self.snr_reference == "reverberant" else clean
        e_ref, e_noise = _energy(ref), _energy(noise_img[0])
        noise_img *= math.sqrt(e_ref / (e_noise * 10.0 ** (snr / 10.0)))
        noisy = speech_img + noise_img
        peak = float(np.max(np.abs(noisy)))
        if peak > _PEAK:
            g = _PEAK / peak
            noisy, clean, speech_img, noise_img = noisy * g, clean * g, speech_img * g, noise_img * g
        f32 = np.float32
        return {
            "noisy": noisy.astype(f32),
            "clean": clean.astype(f32),
            "speech_image": speech_img.astype(f32),
            "noise_image": noise_img.astype(f32),
            "snr_db": snr,
            "rt60_s": rt60,
            "absorption": info["absorption"],
            "max_order": info["max_order"],
            "rir_length": K,
            "room_dim": room,
            "mic_pos": mic_pos,
            "array_center": centre,
            "array_rotation_rad": rot,
            "source_pos": srcs[:, 0].copy(),
            "noise_pos": srcs[:, 1:].copy(),
            "direct_delay_samples": t_direct,
            "speech_file": self.speech_files[k_speech],
            "speaker": self.speech_files[k_speech].parent.name,
            "noise_files": [self.noise_files[k] for k in noise_k],
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)``: float32 tensors of shape ``(M, L)`` and ``(L,)`` for item ``i`` of the epoch."""
        d = self.draw(i)
        return torch.from_numpy(d["noisy"]), torch.from_numpy(d["clean"])


# -- fixed evaluation sets on disk ---------------------------------------------------------------

_CSV_COLUMNS = ("noisy", "clean", "speaker", "snr_db", "rt60_s", "n_noise", "room_dim_m", "speech_file")
#: written last: its presence marks a complete set (see :func:`kdlib.data.cache.write_once`)
_PAIRS = "pairs.csv"


def _check_meta(split_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse a complete set whose ``meta.json`` differs from the mixer's settings."""
    try:
        old = json.loads((split_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        old = None
    if old != meta:
        raise DataError(
            f"cached set '{split_dir}' was written with other settings (meta.json differs: seed, epoch, "
            "files or simulation parameters): delete the folder or choose another split_name"
        )


def _write_set(mixer: ArrayMixer, split_dir: Path, n_items: int, split_name: str, meta: dict[str, Any]) -> None:
    """Draw items ``0 .. n_items-1`` into the empty folder ``split_dir``; ``pairs.csv`` last."""
    (split_dir / "noisy").mkdir(parents=True, exist_ok=True)
    (split_dir / "clean").mkdir(parents=True, exist_ok=True)
    (split_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    rows = []
    for i in range(n_items):
        d = mixer.draw(i)
        name = f"{split_name}_{i:05d}.wav"
        write_audio(split_dir / "noisy" / name, d["noisy"], mixer.sample_rate)
        write_audio(split_dir / "clean" / name, d["clean"], mixer.sample_rate)
        rows.append(
            {
                "noisy": f"noisy/{name}",
                "clean": f"clean/{name}",
                "speaker": d["speaker"],
                "snr_db": f"{d['snr_db']:.4f}",
                "rt60_s": f"{d['rt60_s']:.4f}",
                "n_noise": d["noise_pos"].shape[1],
                "room_dim_m": " ".join(f"{x:.3f}" for x in d["room_dim"]),
                "speech_file": f"{d['speech_file'].parent.name}/{d['speech_file'].name}",
            }
        )
    with (split_dir / _PAIRS).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _n_items(mixer: ArrayMixer, n_items: int | None) -> int:
    n = len(mixer) if n_items is None else int(n_items)
    if not 1 <= n <= len(mixer):
        raise ValueError(f"cache_array_set: n_items must be in [1, {len(mixer)}] (len(mixer)), got {n_items}")
    return n


def cache_array_set(
    mixer: ArrayMixer | Callable[[], ArrayMixer],
    out_dir: str | os.PathLike[str],
    n_items: int | None = None,
    split_name: str = "test",
) -> Path:
    """Write items ``0 .. n_items-1`` of ``mixer`` (current seed and epoch) to disk once, as a fixed paired set.

    Layout of ``out_dir/split_name/``:

    * ``noisy/<split_name>_<i:05d>.wav``: M-channel 16-bit PCM wav (channel m = mic m, mic 0 = reference);
    * ``clean/<same name>.wav``: mono 16-bit PCM target at mic 0, same length;
    * ``pairs.csv``: columns ``noisy, clean`` (relative paths), ``speaker``, ``snr_db`` (drawn, dB),
      ``rt60_s`` (drawn, s), ``n_noise``, ``room_dim_m`` ("x y z"), ``speech_file``;
    * ``meta.json``: ``mixer.config()`` plus ``n_items``, so a later call can tell whether the set matches.

    The set is written with :func:`kdlib.data.cache.write_once`: into a private temporary folder next to
    it, then renamed into place, so readers see complete sets only and of two concurrent first writers
    one wins. Deterministic: the same mixer settings (seed, epoch, files, parameters) give the same files.
    A complete set (``pairs.csv`` present) is only read: nothing is drawn or rewritten. The folder reads
    back with ``PairedCorpus(path, layout="csv", channels=M)``.

    Args:
        mixer: the simulator (its epoch is recorded), or a function without arguments that builds it.
            Building a mixer reads every audio file, so a caller whose ``out_dir`` already identifies the
            settings (e.g. by a hash, as the sweep's array data source does) passes a function: it is
            called only when the set must be written, and a complete set is then trusted without a
            ``meta.json`` comparison.
        out_dir: parent folder.
        n_items: number of items, 1 <= n_items <= len(mixer); default len(mixer).
        split_name: sub-folder and file-name prefix (letters, digits, ``-`` and ``_``).

    Returns:
        The split folder ``out_dir/split_name``.

    Raises:
        ValueError: ``n_items`` or ``split_name`` is invalid.
        DataError: the folder holds a set written with other settings (``meta.json`` differs; only checked
            when ``mixer`` is a mixer), or an incomplete one (no ``pairs.csv``: delete the folder).
    """
    if not split_name or not all(c.isalnum() or c in "-_" for c in split_name):
        raise ValueError(f"cache_array_set: split_name must be letters, digits, '-' or '_', got {split_name!r}")
    split_dir = Path(out_dir) / split_name
    check: Callable[[Path], None] | None = None
    if isinstance(mixer, ArrayMixer):  # arguments are refused before anything is read or written
        check = functools.partial(_check_meta, meta={**mixer.config(), "n_items": _n_items(mixer, n_items)})

    def fill(folder: Path) -> None:
        m = mixer if isinstance(mixer, ArrayMixer) else mixer()
        n = _n_items(m, n_items)
        _write_set(m, folder, n, split_name, {**m.config(), "n_items": n})

    return write_once(split_dir, fill, _PAIRS, "cached array set", check)
