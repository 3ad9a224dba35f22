"""Model references that the CLI accepts: a checkpoint path, or an MLflow run (``runs:/<run id>`` or
``runs:/<run id>/<artifact>``) whose logged model is downloaded first. Every trial run of a sweep logs
its best-validation student (``student.pt``), every teacher run its teacher checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdlib.errors import CheckpointError, first_line

RUNS_PREFIX = "runs:/"
#: file suffixes of model checkpoints among a run's artifacts
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt")


@contextmanager
def model_file(ref: str | os.PathLike[str], tracking_uri: str | None = None) -> Iterator[Path]:
    """The local checkpoint file ``ref`` names, for the duration of the ``with`` block.

    Args:
        ref: a checkpoint path, ``runs:/<run id>`` (the run's one ``.pt``/``.pth``/``.ckpt`` artifact at its
            root) or
            ``runs:/<run id>/<artifact path>``.
        tracking_uri: the MLflow store holding the run (default: ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///<output>/mlflow.db``).

    Raises:
        KdlibError: the tracking store does not exist or cannot be reached. CheckpointError: no such run,
            the run holds
            no model artifact (a failed trial, or a run logged before kdlib logged models) or several.
    """
    text = str(ref)
    if not text.startswith(RUNS_PREFIX):
        yield Path(text)
        return
    from mlflow.exceptions import MlflowException

    from kdlib.sweep.plan import resolve_tracking_uri
    from kdlib.sweep.tracking import client_for

    run_id, _, artifact = text.removeprefix(RUNS_PREFIX).strip("/").partition("/")
    if not run_id:
        raise CheckpointError(f"'{text}': expected runs:/<run id> or runs:/<run id>/<artifact path>")
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri, create=False)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise CheckpointError(f"'{text}': no MLflow run '{run_id}' in {uri} (give --tracking-uri for another "
                                  "store)") from None
        raise CheckpointError(f"'{text}': MLflow cannot read run '{run_id}' in {uri}: {first_line(exc)}") from None
    if not artifact:
        try:
            listed = client.list_artifacts(run_id)
        except Exception as exc:  # noqa: BLE001 - the artifact store may fail in its own ways
            raise CheckpointError(f"'{text}': cannot list the run's artifacts: {first_line(exc)}") from None
        models = [a.path for a in listed if not a.is_dir and a.path.endswith(MODEL_SUFFIXES)]
        if len(models) != 1:
            what = ("no model artifact (a failed trial, a trial stopped early by the scheduler, or a run logged "
                    "before kdlib logged models)") if not models \
                else f"several model artifacts ({', '.join(models)}): name one as runs:/{run_id}/<artifact>"
            raise CheckpointError(f"'{text}': run '{run.info.run_name}' holds {what}")
        artifact = models[0]
    folder = tempfile.mkdtemp(prefix="kdlib-model-")
    try:
        try:
            local = client.download_artifacts(run_id, artifact, folder)
        except Exception as exc:  # noqa: BLE001 - MLflow, the artifact store or the disk
            first = first_line(exc)
            raise CheckpointError(f"'{text}': cannot download artifact '{artifact}': {first}") from None
        yield Path(local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def is_run_ref(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` names an MLflow run (``runs:/...``) rather than a file."""
    return str(ref).startswith(RUNS_PREFIX)

