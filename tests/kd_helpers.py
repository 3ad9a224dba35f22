"""Shared test helper: run a teacher/student pair through a KD method's taps."""

from __future__ import annotations

import torch

from kdlib.kd import FeatureTaps, KDInputs


def kd_inputs(method, student, teacher, x: torch.Tensor, teacher_grad: bool = False) -> KDInputs:
    """Hook the method's taps, run the teacher (no grad unless ``teacher_grad``) and the student on
    ``x`` ``(B, L)``, and return the :class:`KDInputs` the trainer would pass (clean = ``x``)."""
    st, tt = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    with torch.set_grad_enabled(teacher_grad):
        t_out = teacher(x)
    s_out = student(x)
    inputs = KDInputs(x, x, s_out, t_out, dict(st.features), dict(tt.features))
    st.remove()
    tt.remove()
    return inputs
