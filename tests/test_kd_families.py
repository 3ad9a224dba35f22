"""Every registered KD method runs one training step on every model family (taps by name).

The one place this is checked; the per-family expectations that differ are data below.
"""

from __future__ import annotations

import functools

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import KD_METHODS, build_kd_method
from kdlib.models import build_model, size_student
from tests.kd_helpers import kd_inputs

#: family → (small teacher args, student overrides before sizing)
FAMILIES = {
    "convtasnet": ({"n_filters": 32, "bn_chan": 16, "hid_chan": 32, "skip_chan": 16, "n_blocks": 2,
                    "n_repeats": 1}, {}),
    "dccrn": ({"channels": [6, 8], "rnn_units": 8}, {}),
    "dpcrn_lite": ({"channels": [6, 8], "rnn_hidden": 8, "n_dilated": 1, "n_dualpath": 1}, {}),
    "dptnet": ({"n_filters": 16, "ff_hid": 16, "n_repeats": 1, "chunk_size": 20, "hop_size": 10}, {}),
    "ftjnf": ({"n_channels": 3, "n_lstm_hidden1": 12, "n_lstm_hidden2": 8}, {}),
    "subband": ({"n_bands": 4, "hidden": 12, "shared": False}, {"shared": True}),
}
#: method → families it refuses with a ConfigError: sub-band KD needs the sub-band family; the
#: time-domain families expose no "mask" (theirs lives on a learned basis that changes with size)
REFUSED = {
    "subband_kd": set(FAMILIES) - {"subband"},
    "mask_matching": {"convtasnet", "dptnet"},
}
#: (method, family) pairs whose loss is constant: Conv-TasNet taps are (B, C, T, 1), so each frame's
#: frequency self-similarity is the 1×1 matrix [1] for student and teacher alike
CONSTANT = {("ss_wideband", "convtasnet")}


@functools.cache
def _student_args(family: str) -> tuple[tuple[str, object], ...]:
    teacher_args, overrides = FAMILIES[family]
    sized = size_student(family, teacher_args, 0.5, 0.5, base_args={**teacher_args, **overrides})
    return tuple(sized.model_args.items())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", [m for m in KD_METHODS.names() if m != "exploding"])
def test_method_trains_one_step_on_family(family, method):
    torch.manual_seed(0)
    teacher = build_model(family, FAMILIES[family][0]).eval().requires_grad_(False)
    student = build_model(family, dict(_student_args(family)))
    if family in REFUSED.get(method, set()):
        with pytest.raises(ConfigError):
            build_kd_method(method, student, teacher)
        return
    kd = build_kd_method(method, student, teacher if KD_METHODS.get(method).needs_teacher else None)
    m = getattr(teacher, "n_channels", 1)
    x = torch.randn(2, 4000) if m == 1 else torch.randn(2, m, 4000)
    inputs = kd_inputs(kd, student, teacher, x)
    loss = kd(inputs)
    assert torch.isfinite(loss)
    if method == "none":
        return
    if (method, family) in CONSTANT:
        assert loss.abs() < 1e-6
        return
    opt = torch.optim.Adam([*student.parameters(), *kd.parameters()], lr=1e-3)
    before = [p.detach().clone() for p in student.parameters()]
    (loss + 0.0 * inputs.student_out.sum()).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))
