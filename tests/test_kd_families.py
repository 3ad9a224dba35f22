"""Every registered KD method runs one training step on every model family (taps by name), and its loss
carries information there: it changes with the input. A pair that cannot (a silent no-op) is refused
when the method is built (:mod:`kdlib.kd.compat`), naming the method and the family, and so at sweep load.

The one place this is checked; the per-family expectations that differ are data below.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml

from kdlib.errors import ConfigError
from kdlib.kd import KD_METHODS, build_kd_method
from kdlib.models import build_model, size_student
from kdlib.sweep.plan import load_plan
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
TIME_DOMAIN = {"convtasnet", "dptnet"}
#: method → families it refuses with a ConfigError at build. Its own checks: sub-band KD needs the sub-band
#: family; the time-domain families expose no "mask" (theirs lives on a learned basis that changes with
#: size). The compatibility check: a comparison across frequency on a family whose taps have no frequency
#: axis (F = 1 on Conv-TasNet: each frame's 1×1 self-similarity is the constant [1], the loss was exactly
#: 0; on DPTNet F is 1 or the chunk index) — ss_wideband, and self_similarity's default frequency stream
REFUSED = {
    "subband_kd": set(FAMILIES) - {"subband"},
    "mask_matching": TIME_DOMAIN,
    "ss_wideband": TIME_DOMAIN,
    "self_similarity": TIME_DOMAIN,
}
#: refusals of the compatibility check, whose message names the method and the family
COMPAT_REFUSED = {"ss_wideband", "self_similarity"}


@functools.cache
def _student_args(family: str) -> tuple[tuple[str, object], ...]:
    teacher_args, overrides = FAMILIES[family]
    sized = size_student(family, teacher_args, 0.5, 0.5, base_args={**teacher_args, **overrides})
    return tuple(sized.model_args.items())


def _pair(family: str):
    torch.manual_seed(0)
    teacher = build_model(family, FAMILIES[family][0]).eval().requires_grad_(False)
    student = build_model(family, dict(_student_args(family)))
    return teacher, student


def _input(teacher, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = getattr(teacher, "n_channels", 1)
    return torch.randn(2, 4000, generator=g) if m == 1 else torch.randn(2, m, 4000, generator=g)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", [m for m in KD_METHODS.names() if m != "exploding"])
def test_method_trains_one_step_on_family(family, method):
    teacher, student = _pair(family)
    if family in REFUSED.get(method, set()):
        with pytest.raises(ConfigError) as err:
            build_kd_method(method, student, teacher)
        if method in COMPAT_REFUSED:
            assert method in str(err.value) and family in str(err.value) and "\n" not in str(err.value)
        return
    kd = build_kd_method(method, student, teacher if KD_METHODS.get(method).needs_teacher else None)
    inputs = kd_inputs(kd, student, teacher, _input(teacher, 0))
    loss = kd(inputs)
    assert torch.isfinite(loss)
    if method == "none":
        return
    # the loss carries information: another input gives another value (a no-op pair would not)
    with torch.no_grad():
        other = float(kd(kd_inputs(kd, student, teacher, _input(teacher, 1))))
    assert abs(float(loss.detach()) - other) > 1e-6 * max(1.0, abs(other)), f"{method} is constant on {family}"
    opt = torch.optim.Adam([*student.parameters(), *kd.parameters()], lr=1e-3)
    before = [p.detach().clone() for p in student.parameters()]
    (loss + 0.0 * inputs.student_out.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))


@pytest.mark.parametrize("family", sorted(TIME_DOMAIN))
@pytest.mark.parametrize("method,refused,accepted", [
    ("self_similarity", {"streams": ["time", "frequency"]}, {"streams": ["time"]}),
    ("i2rf_tfckd", {"variant": "reconstruction", "frequency_stream": "bins"},
     {"variant": "reconstruction", "frequency_stream": "batch"}),
    ("i2rf_tfckd", {"variant": "reconstruction", "calibration": "frequency"},
     {"variant": "reconstruction", "calibration": "time"}),
])
def test_a_frequency_part_is_refused_on_time_domain_families_and_its_fix_runs(family, method, refused, accepted):
    teacher, student = _pair(family)
    with pytest.raises(ConfigError) as err:
        build_kd_method(method, student, teacher, refused)
    message = str(err.value)
    assert method in message and family in message and "\n" not in message
    kd = build_kd_method(method, student, teacher, accepted)
    first = float(kd(kd_inputs(kd, student, teacher, _input(teacher, 0))))
    assert first != float(kd(kd_inputs(kd, student, teacher, _input(teacher, 1))))


def test_a_single_band_model_has_no_frequency_axis_to_compare():
    """The full-band sub-band baseline (n_bands=1) has band-axis taps of F = 1: ss_wideband is constant there."""
    fullband = build_model("subband", {"n_bands": 1, "hidden": 8})
    with pytest.raises(ConfigError, match=r"ss_wideband cannot carry information on subband .*F axis has a single"):
        build_kd_method("ss_wideband", fullband, build_model("subband", {"n_bands": 4, "hidden": 8}))


def test_a_sweep_with_a_refused_pair_fails_at_load_naming_both(tmp_path):
    base = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
    data = yaml.safe_load(base.read_text())
    data["teacher"]["model"] = {"name": "convtasnet", "kwargs": FAMILIES["convtasnet"][0]}
    data["search"]["method"] = ["none", "ss_wideband"]
    data["methods"] = {}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    message = str(err.value)
    assert "\n" not in message and "ss_wideband" in message and "convtasnet" in message
