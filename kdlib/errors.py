"""Error types kdlib raises for bad input: each carries one line a user can act on."""


class KdlibError(Exception):
    """Base class of every error kdlib raises on purpose (bad config, data, checkpoint)."""


class ConfigError(KdlibError):
    """A sweep/model config is invalid: unknown key, wrong type or impossible value."""


class DataError(KdlibError):
    """The data root or a corpus is missing, unpaired, of unequal length or of the wrong sample rate."""


class CheckpointError(KdlibError):
    """A checkpoint file is missing, truncated or not a kdlib checkpoint."""


class RegistryError(KdlibError, KeyError):
    """A name is not registered (unknown model, KD method) or is registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one readable line
        return str(self.args[0]) if self.args else ""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), cut at ``limit`` characters:
    how a foreign library's error (MLflow, Ray, user code) reads inside a one-line kdlib error."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
