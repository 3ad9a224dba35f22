"""Every registered KD method runs one training step on every model family (taps by name)."""

from __future__ import annotations

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import KD_METHODS, FeatureTaps, KDInputs, build_kd_method
from kdlib.models import build_model, size_student

FAMILIES = {
    "dccrn": ({"channels": [6, 8], "rnn_units": 8}, {}),
    "dpdcrn": ({"channels": [6, 8], "rnn_hidden": 8, "n_dilated": 1, "n_dualpath": 1}, {}),
    "ftjnf": ({"n_channels": 3, "n_lstm_hidden1": 12, "n_lstm_hidden2": 8}, {}),
    "subband": ({"n_bands": 4, "hidden": 12, "shared": False}, {"shared": True}),
}
# methods that only make sense for one family
ONLY = {"subband_kd": {"subband"}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", [m for m in KD_METHODS.names() if m != "exploding"])
def test_method_trains_one_step_on_family(family, method):
    teacher_args, student_overrides = FAMILIES[family]
    torch.manual_seed(0)
    teacher = build_model(family, teacher_args).eval().requires_grad_(False)
    base = {**teacher_args, **student_overrides}
    student = build_model(family, size_student(family, teacher_args, 0.5, 0.5, base_args=base).model_args)
    if family not in ONLY.get(method, {family}):
        with pytest.raises(ConfigError):
            build_kd_method(method, student, teacher)
        return
    kd = build_kd_method(method, student, teacher if KD_METHODS.get(method).needs_teacher else None)
    s_taps = FeatureTaps(student, kd.student_taps())
    t_taps = FeatureTaps(teacher, kd.teacher_taps())
    m = getattr(teacher, "n_channels", 1)
    x = torch.randn(2, 4000) if m == 1 else torch.randn(2, m, 4000)
    with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    loss = kd(KDInputs(x, x, s_out, t_out, dict(s_taps.features), dict(t_taps.features)))
    assert torch.isfinite(loss)
    if method == "none":
        return
    opt = torch.optim.Adam([*student.parameters(), *kd.parameters()], lr=1e-3)
    before = [p.detach().clone() for p in student.parameters()]
    (loss + 0.0 * s_out.sum()).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))
