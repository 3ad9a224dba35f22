"""Pre-flight: everything a sweep can get wrong that is found without training, checked once before
Ray starts (``kdlib sweep run``, ``train-teacher``, ``sweep validate``), each fault one line.

Order, cheap checks first: the output folder can be written → the Ray address answers (or the
local instance has the CPUs a trial asks for) → an SQLite tracking store can be written → the data
sources' files are scanned (readable, sample rate, channels, finite, non-silent, enough material;
``data.scan``) → the tracking store is opened (created) and the experiment is not a deleted one →
the valid/test sets are built (simulated or extracted ones are written to their cache). Plugins were
imported (guarded) when the config was loaded. Every refusal up to the scan leaves no output folder,
no MLflow store and no Ray.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlib.errors import ConfigError, DataError, KdlibError
from kdlib.evaluation import resolve_pesq_mode
from kdlib.sweep.plan import SweepPlan


@dataclass
class Preflight:
    """What the pre-flight found: the test set's PESQ mode (``wb``/``nb``), the data scan's figures
    (``None`` with ``data.scan: off``) and the MLflow client (the mode and the client are ``None`` when
    ``tracking`` was off)."""

    pesq_mode: str | None
    scan: Any
    client: Any = None
    #: PESQ mode of every named test set (``data.test`` as a list), by name
    pesq_modes: dict[str, str] = dataclasses.field(default_factory=dict)


def check_writable(path: Path, key: str = "output_dir") -> None:
    """Refuse an output folder that cannot be created or written, creating nothing: the nearest existing
    ancestor must be a folder that takes a (removed again) temporary file.

    Raises:
        ConfigError: one line naming ``key``, the path and the OS's reason.
    """
    probe = path
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise ConfigError(f"{key}: '{path}' cannot be created: '{probe}' is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kdlib-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: '{path}' cannot be written ({exc.strerror or exc} in '{probe}'): choose a "
                          "writable folder with output_dir or $KDLIB_OUTPUT") from None


def ray_address(plan: SweepPlan, address: str | None = None) -> tuple[str | None, str]:
    """The Ray cluster a sweep connects to and where that came from: ``address`` (``--address``), else
    ``ray.address``, else ``$RAY_ADDRESS``; ``(None, ...)`` or ``"local"`` start a fresh local instance."""
    if address:
        return address, "--address"
    if plan.cfg.ray.address:
        return plan.cfg.ray.address, "ray.address"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def probe_ray_address(address: str, timeout_s: float, source: str = "ray.address") -> None:
    """Open (and close) a TCP connection to a ``host:port`` / ``ray://host:port`` Ray address within
    ``timeout_s`` seconds; other forms (``auto``) are left to Ray.

    Raises:
        KdlibError: nothing accepts the connection in time.
    """
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise KdlibError(f"{source}: no Ray cluster answers at '{address[:200]}' within {timeout_s:g} s ({reason}): "
                         "start it (ray start --head), fix the address, or raise ray.connect_timeout_s") from None


def check_local_cpus(plan: SweepPlan) -> None:
    """For a fresh local Ray instance the CPUs are known before it starts (``ray.num_cpus``, else this
    machine's): refuse ``resources.cpu`` above them now, before the tracking store is created. A remote
    cluster is checked after connecting (:func:`kdlib.sweep.session.check_resources`).

    Raises:
        ConfigError: ``resources.cpu`` > the local instance's CPUs (unless ``ray.check_resources: false``).
    """
    ray_cfg, ask = plan.cfg.ray, plan.cfg.resources.cpu
    cpus = ray_cfg.num_cpus or os.cpu_count() or 1
    if ray_cfg.check_resources and ask > cpus:
        key = "ray.num_cpus" if ray_cfg.num_cpus else "this machine's CPU count"
        raise ConfigError(f"resources.cpu: {ask:g} CPU per trial asked, but the local Ray instance has {cpus} "
                          f"({key}): no trial could ever start; lower resources.cpu")


def check_disjoint(valid: Any, test: Any, key: str = "data.test") -> None:
    """Refuse valid/test sets that share a file or a speaker, whatever the corpus folders are called (a
    symlinked copy, the same talker as ``p232`` and ``vctk_p232``): model selection must not see test material.

    Raises:
        DataError: one line naming a shared file or speaker.
    """
    from kdlib.data import PairedCorpus
    from kdlib.data.speech import speaker_matches

    if isinstance(valid, PairedCorpus) and isinstance(test, PairedCorpus):
        def files(corpus: PairedCorpus) -> set[Path]:
            return {f.resolve() for pair in corpus for f in (pair.noisy, pair.clean)}

        shared = sorted(files(valid) & files(test))
        if shared:
            raise DataError(f"data.valid and {key} share {len(shared)} file(s), e.g. '{shared[0]}': validation "
                            "(model selection) must not see test material")
    both = [(v, t) for v in valid.speakers() for t in test.speakers() if speaker_matches(v, t)]
    if both:
        raise DataError(f"data.valid speaker '{both[0][0]}' and {key} speaker '{both[0][1]}' are the same talker: "
                        "validation (model selection) must not see the test speakers")


def check_teacher_cache(plan: SweepPlan, log: Callable[[str], Any] = print) -> dict[str, int]:
    """Estimate the teacher-output cache of every teacher that a KD method of the sweep reads (output + taps
    for ``training.epochs`` epochs of ``data.train``), print it, and refuse a sweep whose cache would pass
    ``teacher_cache.max_gb``, before any teacher or trial runs. Shapes are probed on untrained teachers.

    Returns:
        bytes by teacher key (``""`` for the single teacher); empty with ``teacher_cache: off`` or no KD method
        that reads a teacher.

    Raises:
        ConfigError: the estimate is over ``teacher_cache.max_gb`` (one line naming the key and the teacher).
    """
    from kdlib.kd import KD_METHODS
    from kdlib.models import build_model
    from kdlib.train.teacher_cache import CacheLimitError, check_limit, estimate_bytes

    cfg = plan.cfg
    if not cfg.teacher_cache.enabled or not any(KD_METHODS.get(m).needs_teacher for m in cfg.search.method):
        return {}
    samples = round(cfg.data.train.segment_seconds * cfg.data.sample_rate)
    sizes = {}
    for name, teacher in plan.teachers.items():
        node = teacher.config.model
        size = estimate_bytes(build_model(node.name, node.kwargs), plan.cache_taps(name),
                              cfg.data.train.segments_per_epoch, samples, cfg.training.epochs)
        log(f"[teacher cache] {teacher.where}: about {size / 1e9:.2f} GB for {cfg.training.epochs} epoch(s) of "
            f"{cfg.data.train.segments_per_epoch} items under {plan.teacher_cache_dir} "
            f"(limit teacher_cache.max_gb = {cfg.teacher_cache.max_gb:g})")
        try:
            check_limit(size, cfg.teacher_cache.max_gb, f"of {teacher.where}")
        except CacheLimitError as exc:
            raise ConfigError(str(exc)) from None
        sizes[teacher.key] = size
    return sizes


def preflight(plan: SweepPlan, *, tracking: bool = True, address: str | None = None,
              log: Callable[[str], Any] = print) -> Preflight:
    """Run the pre-flight checks of ``plan`` (see the module docstring); nothing is trained.

    Args:
        tracking: also build the valid/test sets, probe the Ray address (see :func:`ray_address`) and
            open the MLflow tracking store (creating an SQLite store); ``sweep validate`` and
            ``train-teacher`` pass False: the scan creates nothing.
        address: the ``--address`` of ``kdlib sweep resume``.

    Raises:
        ConfigError: output folder not writable. DataError: a data file or folder, named. KdlibError: no
            Ray cluster answers at the address; the tracking store cannot be reached, created or written.
    """
    # cheap checks first, then the scan, then what creates files (the tracking store, simulated valid/test sets)
    check_writable(plan.output, "output_dir" if not os.environ.get("KDLIB_OUTPUT") else "$KDLIB_OUTPUT")
    if tracking:
        from kdlib.sweep.tracking import check_experiment, check_sqlite_store, client_for, sqlite_path

        target, origin = ray_address(plan, address)
        if target and target != "local":
            probe_ray_address(target, plan.cfg.ray.connect_timeout_s, origin)
        else:
            check_local_cpus(plan)
        store = sqlite_path(plan.tracking_uri)
        if store is not None:
            check_sqlite_store(plan.tracking_uri, store)
    source = plan.data_source()
    depth = plan.cfg.data.scan
    scan = None
    if depth != "off":
        try:
            scan = source.scan(depth)
        except OSError as exc:  # e.g. a folder the user may not list
            raise DataError(f"data: cannot read '{exc.filename}': {exc.strerror or exc}") from None
        log(f"[preflight] data: {scan.files} audio files, {scan.seconds / 60:.1f} min, {depth} scan in "
            f"{scan.elapsed_s:.1f} s" + "".join(f"; {n}" for n in scan.notes))
    check_teacher_cache(plan, log)
    pesq_mode, client, modes = None, None, {}
    if tracking:
        client = client_for(plan.tracking_uri)
        check_experiment(client, plan.tracking_uri, plan.experiment)
        # builds the valid/test sets (simulated or extracted ones are written to their cache once)
        valid, test = source.eval_sets()
        data = plan.cfg.data
        check_disjoint(valid, test, f"data.test '{data.test.name}'" if data.test.name else "data.test")
        pesq_mode = resolve_pesq_mode(data.test.pesq_mode, test)
        if data.test.name:
            modes[data.test.name] = pesq_mode
        extra = source.extra_test_sets() if data.extra_tests else {}
        for part in data.extra_tests:
            check_disjoint(valid, extra[str(part.name)], f"data.test '{part.name}'")
            modes[str(part.name)] = resolve_pesq_mode(part.pesq_mode, extra[str(part.name)])
    return Preflight(pesq_mode, scan, client, modes)
