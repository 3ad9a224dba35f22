"""Sweep data sources: what a sweep trains, validates and tests on, one registered class per kind.

* ``paired_mix`` (:class:`PairedMixSource`): mono ``speech/`` + ``noise/`` mixtures made on the fly;
  valid/test on paired corpora (``data.valid`` + ``data.test``).
* ``array`` (:class:`ArraySource`): a simulated microphone array (``data.array``); valid/test simulated
  once and cached under ``<output>/arrays/``.
* ``l3das23`` (:class:`L3DAS23Source`): the L3DAS23 Task 1 Ambisonics corpus (``data.l3das23``).

``data_source(data, root, output)`` picks the source of a ``data`` section. This package reads the
schema (:mod:`kdlib.config.data`); :mod:`kdlib.data` itself does not import it.
"""

from kdlib.data.sources.array import ARRAY_CACHE_DIR, ArrayPlan, ArraySource, mixer_kwargs
from kdlib.data.sources.base import (
    DATA_SOURCES,
    DataSource,
    SweepData,
    data_source,
    register_data_source,
    source_class,
)
from kdlib.data.sources.l3das23 import L3DAS23_CACHE_DIR, L3DAS23Source
from kdlib.data.sources.paired_mix import PairedMixSource

__all__ = [
    "ARRAY_CACHE_DIR",
    "DATA_SOURCES",
    "L3DAS23_CACHE_DIR",
    "ArrayPlan",
    "ArraySource",
    "DataSource",
    "L3DAS23Source",
    "PairedMixSource",
    "SweepData",
    "data_source",
    "mixer_kwargs",
    "register_data_source",
    "source_class",
]
