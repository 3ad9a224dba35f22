"""Folders written once and atomically: the one cache mechanism of kdlib's data (cached simulated array
sets, extracted corpus archives).

A folder is filled in a private temporary folder next to it and renamed into place, so readers only
ever see complete folders, an interrupted writer leaves nothing behind under the final name, and of
two concurrent first writers one wins and the other discards its copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kdlib.errors import DataError


def write_once(
    final: str | os.PathLike[str],
    fill: Callable[[Path], None],
    marker: str,
    what: str,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """``final``, created by ``fill`` first if it does not exist yet.

    Args:
        final: the folder to return.
        fill: writes the content into the (empty, existing) folder it is given; it must write
            ``marker`` (last, by convention). It runs only when ``final`` is missing.
        marker: file name whose presence in ``final`` means "complete" (e.g. ``pairs.csv``).
        what: what the folder is, for error messages (``"cached array set"``).
        check: called with ``final`` when a complete folder is found (not after a fresh write), e.g. to
            compare the settings it was written with; raises :class:`DataError` to refuse it.

    Returns:
        ``final`` as a :class:`Path`.

    Raises:
        DataError: ``final`` exists and is not empty but has no ``marker`` (written by hand or by an
            older, non-atomic writer): "``<what> '<final>' is incomplete (no <marker>): delete the
            folder``"; or ``check`` refused a complete folder.
        RuntimeError: ``fill`` did not write ``marker`` (a bug of the caller).
    """
    final = Path(final)
    if (final / marker).is_file():
        if check is not None:
            check(final)
        return final
    if final.is_dir() and any(final.iterdir()):
        raise DataError(f"{what} '{final}' is incomplete (no {marker}): delete the folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        # fill a sub-folder, not the mkdtemp folder itself: that one is private (mode 0700) and the
        # renamed cache must keep the permissions a plain mkdir gives
        work = tmp / final.name
        work.mkdir()
        fill(work)
        if not (work / marker).is_file():
            raise RuntimeError(f"write_once: fill() did not write '{marker}' for {what} '{final}'")
        try:
            os.rename(work, final)  # atomic; fails if another writer has put a complete folder there
        except OSError:
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
