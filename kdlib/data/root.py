"""Where the audio lives: explicit argument > ``$KDLIB_DATA`` > ``../shared/data`` (relative to cwd)."""

from __future__ import annotations

import os
from pathlib import Path

from kdlib.errors import DataError

#: Environment variable that points at the data root when no explicit root is given.
ENV_VAR = "KDLIB_DATA"
#: Fallback root, relative to the current working directory (the repo sits next to ``shared/``).
DEFAULT_ROOT = Path("..") / "shared" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute data root directory.

    Precedence: ``root`` (if not None/empty) > ``$KDLIB_DATA`` (if set and non-empty) >
    ``../shared/data`` relative to the current working directory. ``~`` is expanded and relative
    paths are taken relative to the current working directory.

    Raises:
        DataError: the chosen path does not exist or is not a directory; the message names the
            path, where it came from, and how to set it.
    """
    if root is not None and str(root) != "":
        path, source = Path(root), "data.root"
    elif os.environ.get(ENV_VAR):
        path, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        path, source = DEFAULT_ROOT, "default, relative to the working directory"
    path = path.expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    path = path.resolve()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(
            f"data root '{path}' ({source}) {what}: set {ENV_VAR}=/path/to/data "
            "or data.root in the sweep YAML"
        )
    return path
