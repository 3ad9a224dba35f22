"""Seeded inputs for the KD loss-value regression pins (tests/fixtures/kd_losses.json).

The pinned values were produced by the code they test: they catch unintended changes, not wrong
maths (tests/test_kd.py checks the values against naive re-derivations).

Regenerate the JSON only when a method's maths changes on purpose:
    python tests/kd_fixture_inputs.py > tests/fixtures/kd_losses.json
"""

from __future__ import annotations

import json

import torch

from kdlib.kd import KDInputs, build_kd_method
from kdlib.models import build_model

TINY = {"channels": [4, 4], "rnn_hidden": 4, "n_dilated": 1, "n_dualpath": 1}
CASES = {
    "none": {},
    "output": {},
    "output_no_wav": {"wav_weight": 0.0},
    "self_similarity": {},
    "self_similarity_kl": {"distance": "kl", "temperature": 0.5},
    "self_similarity_time_only": {"streams": ["time"], "rescale": True},
}


def fixture_inputs(method) -> KDInputs:
    """Seeded waveforms ``(2, 4000)`` and per-tap features ``(2, C, 5, F)`` (student C=3, teacher C=5)."""
    g = torch.Generator().manual_seed(1234)
    noisy = torch.randn(2, 4000, generator=g)
    clean = torch.randn(2, 4000, generator=g)
    s_out = torch.randn(2, 4000, generator=g)
    t_out = torch.randn(2, 4000, generator=g)
    s_feats = {n: torch.randn(2, 3, 5, 9, generator=g) for n in method.student_taps()}
    t_feats = {n: torch.randn(2, 5, 5, 9, generator=g) for n in method.teacher_taps()}
    return KDInputs(noisy, clean, s_out, t_out, s_feats, t_feats)


def method_for(case: str):
    name = case.split("_no_")[0] if case.startswith("output") else (
        "self_similarity" if case.startswith("self_similarity") else case)
    model = build_model("dpcrn_lite", TINY)
    return build_kd_method(name, model, model, CASES[case])


def compute_all() -> dict[str, float]:
    out = {}
    for case in CASES:
        method = method_for(case)
        out[case] = float(method(fixture_inputs(method)))
    return out


if __name__ == "__main__":
    print(json.dumps(compute_all(), indent=2, sort_keys=True))
