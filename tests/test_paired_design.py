"""Issue 10, a comparison a reviewer accepts: every trial of a sweep trains on the mixtures of
``data.seed`` (its own seed decides initialisation and batch order), and paired valid/test sets that
share speakers of one corpus are refused at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import kdlib.sweep.trial as trial_module
from kdlib.errors import ConfigError
from kdlib.models import build_model, save_checkpoint
from kdlib.sweep.plan import load_plan
from kdlib.train.trainer import EpochPermutation
from tests.test_config import _with, _write

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


# ---- valid/test overlap -----------------------------------------------------------------------------------
@pytest.mark.parametrize("valid,test,needle", [
    ({"corpus": "vb_demand", "speakers": ["p232", "p257"]}, {"corpus": "vb_demand", "speakers": ["p232"]},
     "data.valid and data.test share speaker(s) ['p232'] of corpus 'vb_demand': validation (model selection) "
     "must not see the test speakers"),
    ({"corpus": "vb_demand"}, {"corpus": "vb_demand", "speakers": ["p232"]},
     "data.valid and data.test both read corpus 'vb_demand' and data.valid takes all of its speakers"),
    ({"corpus": "vb_demand/", "speakers": ["p232"]}, {"corpus": "vb_demand"},
     "data.valid and data.test both read corpus 'vb_demand' and data.test takes all of its speakers"),
])
def test_valid_and_test_sharing_speakers_of_one_corpus_are_refused(tmp_path, valid, test, needle):
    data = _with("data.valid", valid)
    data["data"]["test"] = test
    with pytest.raises(ConfigError, match="data") as err:
        load_plan(_write(tmp_path, data))
    assert needle in str(err.value)


def test_disjoint_speakers_or_different_corpora_pass(tmp_path):
    data = _with("data.valid", {"corpus": "noizeus"})
    data["data"]["test"] = {"corpus": "vb_demand", "speakers": ["p232"]}
    load_plan(_write(tmp_path, data))
    load_plan(QUICKSTART)  # valid p257, test p232 of vb_demand


# ---- batch order ----------------------------------------------------------------------------------------------
def test_epoch_permutation_depends_on_seed_and_epoch_only():
    a, b = EpochPermutation(16, 0), EpochPermutation(16, 1)
    first = list(a)
    assert sorted(first) == list(range(16)) and first != list(range(16))
    assert list(b) != first  # another trial seed, another order
    a.set_epoch(1)
    assert list(a) != first
    fresh = EpochPermutation(16, 0)
    fresh.set_epoch(1)
    assert list(fresh) == list(a)  # a resumed run trains epoch 1 in the order an uninterrupted one would
    assert list(EpochPermutation(5, None)) == [0, 1, 2, 3, 4]


# ---- what a trial trains on ------------------------------------------------------------------------------------
class _Seen(Exception):
    """Stops the trial once the Trainer has been built."""


def _trial_inputs(monkeypatch, tmp_path, plan, seed: int) -> tuple[list[np.ndarray], int | None]:
    """The first epoch's training items of a trial with ``seed``, and its batch-order seed (the trial is
    stopped as soon as its Trainer is built)."""
    seen: dict = {}

    def fake_trainer(student, teacher, kd, task_loss, data, settings, device, log=print, teacher_cache=None):
        data.train.set_epoch(0)
        seen["items"] = [data.train.draw(i)["noisy"] for i in range(len(data.train))]
        seen["shuffle_seed"] = settings.shuffle_seed
        raise _Seen

    monkeypatch.setattr(trial_module, "Trainer", fake_trainer)
    teacher = tmp_path / "teacher.pt"
    if not teacher.exists():
        save_checkpoint(build_model(plan.cfg.teacher.model.name, plan.cfg.teacher.model.kwargs), teacher)
    config = {"method": "none", "student_ratio": 0.25, "seed": seed}
    with pytest.raises(_Seen):
        trial_module.kd_trial(config, plan, {"": str(teacher)})
    return seen["items"], seen["shuffle_seed"]


def test_trials_with_different_seeds_train_on_the_same_mixtures(monkeypatch, tmp_path, data_root):
    torch.set_num_threads(1)
    plan = load_plan(QUICKSTART, smoke=True)
    items0, order0 = _trial_inputs(monkeypatch, tmp_path, plan, seed=0)
    items1, order1 = _trial_inputs(monkeypatch, tmp_path, plan, seed=1)
    assert len(items0) == len(items1) > 1
    assert all(np.array_equal(a, b) for a, b in zip(items0, items1, strict=True))
    assert (order0, order1) == (0, 1)  # the trial seed decides the batch order
    other = load_plan(QUICKSTART, smoke=True, overrides=["data.seed=5"])
    items5, _ = _trial_inputs(monkeypatch, tmp_path, other, seed=0)
    assert not any(np.array_equal(a, b) for a, b in zip(items0, items5, strict=True))


def test_every_trial_seed_trains_on_the_same_items_when_batches_do_not_divide_the_epoch():
    """10 items in batches of 4: the last 2 are dropped for every seed, so all seeds see the same 8 items."""
    seen = []
    for seed in (0, 1, 2):
        order = list(EpochPermutation(10, seed, batch_size=4))
        assert order[-2:] == [8, 9]
        seen.append(sorted(order[:8]))
    assert seen[0] == seen[1] == seen[2] == list(range(8))


def test_valid_and_test_sets_sharing_a_file_or_a_talker_are_refused(tmp_path, data_root):
    from kdlib.data import PairedCorpus
    from kdlib.errors import DataError
    from kdlib.sweep.preflight import check_disjoint

    corpus = PairedCorpus(data_root / "vb_demand", sample_rate=16000)
    (tmp_path / "copy").symlink_to(data_root / "vb_demand")  # the same files under another corpus name
    copy = PairedCorpus(tmp_path / "copy", sample_rate=16000)
    with pytest.raises(DataError, match=r"data.valid and data.test share \d+ file\(s\), e.g. '"):
        check_disjoint(corpus.subset(["p232"]), copy.subset(["p232"]))
    check_disjoint(corpus.subset(["p257"]), copy.subset(["p232"]))


def test_a_negative_trial_seed_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="search.seed"):
        load_plan(QUICKSTART, overrides=["search.seed=[0, -1]"])


def test_validation_si_sdr_skips_an_unscorable_utterance_but_not_a_nan_output():
    from kdlib.evaluation import mean_si_sdr

    class Corpus:
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def load(self, i):
            return self.items[i]

    class Echo(torch.nn.Module):  # the enhanced output is the noisy input
        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    clean = rng.standard_normal(8000).astype(np.float32)
    good = (clean + 0.1 * rng.standard_normal(8000).astype(np.float32), clean)
    silent = (np.zeros(8000, np.float32), clean)  # a silent output: SI-SDR cannot score it
    model = Echo()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    alone = mean_si_sdr(model, Corpus([good]))
    assert np.isfinite(alone) and mean_si_sdr(model, Corpus([good, silent])) == pytest.approx(alone)
    nan = (np.full(8000, np.nan, np.float32), clean)
    assert np.isnan(mean_si_sdr(model, Corpus([good, nan])))
