"""Library versions for a sweep's provenance (the parent run's ``version.<name>`` params, the HTML report)."""

from __future__ import annotations

#: the libraries whose versions a sweep's numbers depend on
VERSIONED = ("kdlib", "torch", "numpy", "scipy", "pesq", "pystoi", "soundfile", "ray", "optuna", "mlflow")


def library_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str]:
    """``{"python": ..., <library>: <installed version>}`` (libraries not installed are left out); reads package
    metadata only, imports none of them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
