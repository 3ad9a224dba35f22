"""Variants are validated only against the methods they are crossed with: a sweep may hold one method's
variants next to another method's (``exclude`` removes the other pairs), and a bad pair still fails."""

from __future__ import annotations

import pytest

from kdlib.errors import ConfigError
from kdlib.sweep.plan import load_plan
from kdlib.sweep.space import grid_points
from tests.test_config import _with, _write


def _mixed() -> dict:
    data = _with("search.method", ["none", "self_similarity", "output"])
    data["search"]["variants"] = {"default": {}, "kl": {"distance": "kl"}, "wav20": {"wav_weight": 20.0}}
    data["search"]["exclude"] = [{"method": "none", "variant": "kl"}, {"method": "none", "variant": "wav20"},
                                 {"method": "self_similarity", "variant": "wav20"},
                                 {"method": "output", "variant": "kl"}]
    return data


def test_variant_is_checked_only_where_it_is_crossed(tmp_path):
    cfg = load_plan(_write(tmp_path, _mixed())).cfg
    cells = {(p["method"], p["variant"]) for p in grid_points(cfg.search)}
    assert cells == {("none", "default"), ("self_similarity", "default"), ("self_similarity", "kl"),
                     ("output", "default"), ("output", "wav20")}


def test_a_variant_still_crossed_with_a_method_that_refuses_it_fails(tmp_path):
    data = _mixed()
    data["search"]["exclude"].pop()  # output × kl is crossed again: output has no `distance` knob
    with pytest.raises(ConfigError, match="search.variants.kl"):
        load_plan(_write(tmp_path, data))


def test_each_variant_is_compared_with_the_none_student_of_its_ratio():
    """``none`` runs carry their own variant name (``default``): KD variants are still compared with them."""
    import numpy as np
    import pandas as pd

    from kdlib.report.significance import significance_table

    utts = [f"u{i}" for i in range(12)]
    base = np.random.default_rng(0).uniform(1.5, 3.0, len(utts))
    rows, scores = [], {}
    for method, variant, shift in (("none", "default", 0.0), ("dfkd", "frame", 0.3), ("dfkd", "utterance", 0.1)):
        for seed in (0, 1, 2):
            run_id = f"{method}-{variant}-{seed}"
            pesq = base + shift + 0.001 * np.arange(len(utts)) * (method != "none")
            rows.append({"run_id": run_id, "method": method, "student_ratio": 0.25, "seed": seed,
                         "param.variant": variant, "pesq": float(pesq.mean())})
            scores[run_id] = pd.DataFrame({"utterance": utts, "pesq": pesq})
    table = significance_table(pd.DataFrame(rows), scores, extras=["param.variant"], metrics=("pesq",), n_boot=200)
    got = {r["knobs"]: r["delta"] for _, r in table.iterrows()}
    assert got == pytest.approx({"variant=frame": 0.3 + 0.0055, "variant=utterance": 0.1 + 0.0055})


def test_a_batch_of_one_is_refused_at_load_for_the_batch_stream(tmp_path):
    """i2rf_tfckd's default frequency stream compares the items of a batch: batch size 1 fails at load,
    naming the key, not at the first step of every trial; the F×F stream takes it."""
    data = _with("search.method", ["none", "i2rf_tfckd"])
    data["training"]["batch_size"] = 1
    with pytest.raises(ConfigError, match=r"training\.batch_size: 1 .*i2rf_tfckd.*>= 2"):
        load_plan(_write(tmp_path, data))
    data["methods"] = {"i2rf_tfckd": {"frequency_stream": "bins", "weights": "softmax"}}
    assert load_plan(_write(tmp_path, data)).cfg.training.batch_size == 1
