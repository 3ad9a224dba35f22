"""The HTML report's listening examples from a finished sweep: the teacher and the validation-chosen front
students (:func:`kdlib.report.listening.chosen_runs`) loaded from their MLflow runs and run on the primary test
set (:func:`kdlib.report.listening.build_examples` renders them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kdlib.errors import first_line
from kdlib.report.listening import Example, Player, build_examples, chosen_runs
from kdlib.report.sets import SetResult

#: what :func:`examples_maker` returns: the primary set's result → (examples, None) or (None, why not)
Maker = Callable[[SetResult], tuple[list[Example] | None, str | None]]


def load_players(result: SetResult, tracking_uri: str, device: str = "cpu") -> list[Player]:
    """The models of :func:`~kdlib.report.listening.chosen_runs` as ``(label, run id, enhance)``; a run whose
    checkpoint cannot be read is left out with one warning line."""
    import torch

    from kdlib.evaluation import enhance
    from kdlib.models import load_model
    from kdlib.sweep.artifacts import model_file

    players: list[Player] = []
    for label, run_id in chosen_runs(result):
        try:
            with model_file(f"runs:/{run_id}", tracking_uri) as path:
                model, _ = load_model(path, device)
        except Exception as exc:  # noqa: BLE001 - a missing artifact drops that model from the examples
            print(f"[report] listening examples: skipping run {run_id} ({type(exc).__name__}: {first_line(exc)})",
                  flush=True)
            continue

        def play(noisy: np.ndarray, model: Any = model) -> np.ndarray:
            with torch.inference_mode():
                return enhance(model, noisy, device)

        players.append((label, run_id, play))
    return players


def examples_maker(corpus: Any, tracking_uri: str, device: str = "cpu", test_set: str | None = None) -> Maker | None:
    """The ``examples`` argument of :func:`kdlib.report.write_report` for ``corpus`` (the primary test set); None
    when there is no corpus. A failure becomes the HTML report's one-line reason, never a failed report.

    Args:
        test_set: the corpus' label (:func:`kdlib.sweep.contract.set_label`); when the sweep logged another
            ``test_set``, the examples are refused (their scores would not match the clips).
    """
    if corpus is None:
        return None

    def make(result: SetResult) -> tuple[list[Example] | None, str | None]:
        logged = result.prov.get("test_set")
        if test_set is not None and logged is not None and str(logged) != test_set:
            return None, (f"No listening examples: the YAML's test set is {test_set}, the sweep's is {logged}; give "
                          "`kdlib report --config` the sweep's own YAML.")
        try:
            from kdlib.evaluation import utterance_ids

            found = build_examples(result, corpus, load_players(result, tracking_uri, device),
                                   ids=utterance_ids(corpus))
        except Exception as exc:  # noqa: BLE001 - the rest of the report stands without the audio
            return None, f"No listening examples: {type(exc).__name__}: {first_line(exc)}"
        return (found, None) if found else (None, "No listening examples: the test set is empty.")

    return make
