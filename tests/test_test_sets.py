"""Several named test sets per sweep (``data.test`` as a list), the per-set report sections, the summary tables,
the MLflow ``key/`` metrics and the self-contained HTML report with its listening examples."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from pydantic import ValidationError

from kdlib.config.data import DataConfig
from kdlib.metrics import MetricSummary
from kdlib.report.build import build_report
from kdlib.report.listening import Clip, Example, chosen_runs, input_snr_db, pick_utterances
from kdlib.report.runs import named_test_sets, set_view
from kdlib.report.sets import set_result
from kdlib.sweep.contract import key_metrics, scores_file, set_prefix
from kdlib.sweep.testsets import score_test_sets
from tests.test_report_stats import _runs_and_scores

VALID = {"corpus": "vb_demand", "speakers": ["p257"]}
TWO = [{"name": "vb_demand", "corpus": "vb_demand", "speakers": ["p232"], "pesq_mode": "wb"},
       {"name": "noizeus", "corpus": "noizeus", "speakers": ["noizeus_spk3"], "pesq_mode": "nb"}]


# ---- config ------------------------------------------------------------------------------------------------------
def test_a_list_of_named_test_sets_loads_and_dumps_as_given():
    d = DataConfig.model_validate({"valid": VALID, "test": TWO})
    assert d.test.name == "vb_demand" and [t.name for t in d.extra_tests] == ["noizeus"]
    assert [t.name for t in d.test_sets] == ["vb_demand", "noizeus"]
    dump = d.model_dump(mode="json")
    assert "extra_tests" not in dump and [t["name"] for t in dump["test"]] == ["vb_demand", "noizeus"]
    assert DataConfig.model_validate(dump) == d


def test_a_single_unnamed_test_set_dumps_as_before_names_existed():
    """Teacher checkpoints are found by a hash of the data section: it must not change for old configs."""
    d = DataConfig.model_validate({"valid": VALID, "test": {"corpus": "vb_demand", "speakers": ["p232"]}})
    assert d.model_dump(mode="json")["test"] == {"corpus": "vb_demand", "speakers": ["p232"], "max_utterances": None,
                                                 "pesq_mode": "auto"}
    assert d.extra_tests == [] and d.test_sets == [d.test]


@pytest.mark.parametrize(("test", "needle"), [
    ([], "an empty list"),
    ([{"corpus": "noizeus"}], "every set of a list needs a name"),
    ([{"name": "a", "corpus": "noizeus"}, {"name": "a", "corpus": "vb_demand", "speakers": ["p232"]}],
     "two sets are named 'a'"),
    ([TWO[0], {"name": "leak", "corpus": "vb_demand", "speakers": ["p257"]}],
     "data.valid and data.test 'leak' share speaker(s) ['p257']"),
    ([TWO[0], {"name": "all", "corpus": "vb_demand"}], "data.test 'all' takes all of its speakers"),
    ([{"name": "Bad Name", "corpus": "noizeus"}], "should match pattern"),
])
def test_bad_test_set_lists_are_refused(test, needle):
    with pytest.raises(ValidationError) as info:
        DataConfig.model_validate({"valid": VALID, "test": test})
    assert needle in str(info.value)


def test_extra_tests_is_not_a_yaml_key_and_arrays_take_no_list():
    with pytest.raises(ValidationError, match="give several test sets as a list under data.test"):
        DataConfig.model_validate({"valid": VALID, "test": TWO[0], "extra_tests": [TWO[1]]})
    array = {"valid": {"speakers": ["vctk_p225"], "items": 2}, "test": {"speakers": ["vctk_p227"], "items": 2}}
    with pytest.raises(ValidationError, match="give either data.array or paired data.test, not both"):
        DataConfig.model_validate({"array": array, "test": TWO})


def test_the_sweeps_extra_sets_are_scanned_and_built_and_held_out_of_training(data_root, tmp_path):
    from kdlib.data.sources import PairedMixSource

    source = PairedMixSource(DataConfig.model_validate({"valid": VALID, "test": TWO}), data_root, tmp_path)
    data = source.build(seed=0)
    assert [name for name, _ in data.test_sets()] == [None, "noizeus"]
    assert len(data.extra_tests["noizeus"]) == 160 and data.extra_tests["noizeus"].pesq_mode_hint == "nb"
    assert not {"noizeus_spk3"} & set(data.train_speakers)
    report = source.scan("headers")
    assert report.files >= 27 * 2 + 160 * 2  # the noizeus pairs are read too


# ---- scoring and naming ------------------------------------------------------------------------------------------
def _summary(value, n):
    return MetricSummary({"pesq": value}, {"pesq": 0}, [{"pesq": value}] * n, n)


class _Corpus:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)


def test_every_set_is_scored_under_its_name_and_the_primary_also_plainly():
    corpora = {name: _Corpus([f"{name}{i}" for i in range(n)]) for name, n in (("vb", 2), ("nz", 3))}
    cfg = DataConfig.model_validate({"valid": VALID, "test": [
        {"name": "vb", "corpus": "vb_demand", "speakers": ["p232"], "pesq_mode": "wb"},
        {"name": "nz", "corpus": "noizeus", "pesq_mode": "nb"}]})
    data = SimpleNamespace(test_sets=lambda: [(None, corpora["vb"]), ("nz", corpora["nz"])])
    seen = []

    def score(corpus, mode):
        seen.append((len(corpus), mode))
        return _summary(2.0 if len(corpus) == 2 else 1.5, len(corpus))

    out = score_test_sets(score, data, cfg)
    assert seen == [(2, "wb"), (3, "nb")]
    assert out.metrics["test_pesq"] == out.metrics["test_vb_pesq"] == 2.0 and out.metrics["test_nz_pesq"] == 1.5
    assert set(out.files) == {"test_scores.csv", "test_scores_vb.csv", "test_scores_nz.csv"}
    assert [r["utterance"] for r in out.files["test_scores_nz.csv"]] == ["nz0", "nz1", "nz2"]
    assert out.pesq_modes == {None: "wb", "vb": "wb", "nz": "nb"}
    assert set_prefix() == "test_" and scores_file("nz", noisy=True) == "noisy_scores_nz.csv"


def test_key_metrics_copy_the_headline_figures_of_a_final_result_only():
    final = {"test_pesq": 2.0, "test_stoi": 0.9, "test_pesq_missing": 0, "test_nz_pesq": 1.5, "test_nz_stoi_missing": 0,
             "params": 10.0, "macs": 5.0, "valid_pesq": 1.9, "train_loss": 0.3}
    assert key_metrics(final) == {"key/test_pesq": 2.0, "key/test_stoi": 0.9, "key/test_nz_pesq": 1.5,
                                  "key/params": 10.0, "key/macs": 5.0, "key/valid_pesq": 1.9}
    assert key_metrics({"params": 10.0, "train_loss": 0.3}) == {}  # an epoch before the last


# ---- the report --------------------------------------------------------------------------------------------------
HEX = {}


def _hex(run_id: str) -> str:
    return HEX.setdefault(run_id, f"{len(HEX) + 1:032x}")


def _two_set_sweep():
    """Runs where ``output`` gains on the primary set and loses on ``noizeus`` (each by 0.2 PESQ)."""
    df, scores = _runs_and_scores()
    df["run_id"] = df["run_id"].map(_hex)
    scores = {_hex(k): v for k, v in scores.items()}
    df["valid_pesq"] = df["pesq"]
    nz = {}
    for _, r in df.iterrows():
        table = scores.get(r["run_id"])
        if table is None:
            continue
        flip = table.copy()
        if r["method"] == "output":
            flip["pesq"] = flip["pesq"] - 0.4  # +0.2 on the primary set, -0.2 here
        nz[r["run_id"]] = flip
    df["metric.test_noizeus_pesq"] = [nz[r].pesq.mean() if r in nz else 2.5 for r in df["run_id"]]
    df["metric.test_noizeus_stoi"] = 0.8
    df["metric.noisy_noizeus_pesq"] = np.where(df["role"] == "teacher", 1.4, np.nan)
    df.attrs = {"experiment_id": "7", "provenance": {
        "test_sets": "vb_demand,noizeus", "test_set": "vb_demand:p232", "test_set.vb_demand": "vb_demand:p232",
        "test_set.noizeus": "noizeus:noizeus_spk3", "pesq_mode": "wb", "pesq_mode.noizeus": "nb",
        "version.torch": "2.13.0"}}
    return df, scores, nz


def test_set_view_puts_a_named_sets_scores_in_the_plain_columns():
    df, _, nz = _two_set_sweep()
    view = set_view(df, "noizeus")
    out = view[view["method"] == "output"]
    assert (out["pesq"] == out["metric.test_noizeus_pesq"]).all() and (out["stoi"] == 0.8).all()
    assert view.loc[view["role"] == "teacher", "noisy_pesq"].item() == 1.4
    assert view["estoi"].isna().all()  # not logged on that set
    assert view.attrs["provenance"]["pesq_mode"] == "nb" and df.attrs["provenance"]["pesq_mode"] == "wb"
    assert named_test_sets(df.attrs["provenance"]) == ["vb_demand", "noizeus"] and named_test_sets({}) == []
    result = set_result(df, df.attrs["provenance"], nz, "noizeus")
    assert result.label == "Test set `noizeus` (noizeus:noizeus_spk3, PESQ nb)"


def test_each_test_set_gets_its_own_section_statistics_and_tables(tmp_path):
    df, scores, nz = _two_set_sweep()
    paths = build_report(df, tmp_path, "t", scores=scores, set_scores={"noizeus": nz}, html=False)
    text = paths["report"].read_text()
    primary, other = text.split("## Test set `noizeus` (noizeus:noizeus_spk3, PESQ nb)")
    assert "on the primary test set `vb_demand`" in primary
    sig = primary.split("## Significance against `none`")[1]
    assert "significant gain" in sig.split("\n## ")[0]
    sig_nz = other.split("### Significance against `none` (Holm within this test set)")[1].split("\n## ")[0]
    row = next(line for line in sig_nz.splitlines() if line.startswith("| output | 0.1 |"))
    assert "| -0.200 ± 0.000 |" in row and "significant loss" in row
    summary = pd.read_csv(paths["summary"])
    assert set(summary["test_set"]) == {"vb_demand", "noizeus"}
    out_nz = summary[(summary["test_set"] == "noizeus") & (summary["method"] == "output")]
    assert out_nz["pesq_mean"].item() == pytest.approx(df.loc[df["method"] == "output", "pesq"].mean() - 0.4)
    sig_csv = pd.read_csv(paths["significance"])
    assert sorted(sig_csv.loc[sig_csv["metric"] == "pesq", "verdict"]) == [
        "not significant", "not significant", "significant gain", "significant loss"]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _example(n: int = 1600) -> Example:
    t = np.arange(n) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    from kdlib.report.listening import _wav_b64, spectrogram_png

    png = base64.b64encode(spectrogram_png(tone, 16000)).decode()
    return Example("p232_001", 5.0, [Clip("noisy input", _wav_b64(tone, 16000), png),
                                     Clip(f"output 0.1 seed 0 {_hex('output-0')}", _wav_b64(tone, 16000), png,
                                          "PESQ 2.00")])


def _html(tmp_path, examples=None):
    df, scores, nz = _two_set_sweep()
    make = (lambda result: (examples, None)) if examples else None
    paths = build_report(df, tmp_path, "t", scores=scores, set_scores={"noizeus": nz}, mlflow_ui="http://ui:5000",
                         examples=make)
    return paths["html"], df


def test_the_html_report_is_self_contained_with_plots_sortable_tables_and_run_links(tmp_path):
    path, df = _html(tmp_path, [_example()])
    text = path.read_text()
    parser = _Tags()
    parser.feed(text)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert scripts and not any(a.get("src") for a in scripts)  # plotly.js inline: opens offline
    assert "Plotly.newPlot" in text and text.count("class=\"plotly-graph-div\"") == 4  # 3 primary + 1 noizeus
    assert sum(1 for t, a in parser.tags if t == "table" and a.get("class") == "sortable") >= 8
    links = {a["href"] for t, a in parser.tags if t == "a" and "href" in a}
    for run_id in df.loc[df["role"] == "trial", "run_id"]:
        assert f"http://ui:5000/#/experiments/7/runs/{run_id}" in links
    assert any("compareRunsMode=CHART" in link for link in links)
    assert "version torch" in text and "2.13.0" in text and "version numpy (at report time)" in text
    assert "Test set `noizeus`" not in text and "<code>noizeus</code>" in text  # markdown turned into HTML
    audio = [a for t, a in parser.tags if t == "audio"]
    images = [a for t, a in parser.tags if t == "img"]
    assert len(audio) == 2 and len(images) == 2
    wav = base64.b64decode(audio[0]["src"].split(",", 1)[1])
    samples, rate = sf.read(io.BytesIO(wav))
    assert rate == 16000 and len(samples) == 1600 and np.max(np.abs(samples)) == pytest.approx(0.5, abs=1e-3)
    assert base64.b64decode(images[0]["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_test_audio_the_html_report_says_how_to_add_examples(tmp_path):
    path, _ = _html(tmp_path)
    assert "<audio" not in path.read_text() and "--config &lt;sweep.yaml&gt;" in path.read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_the_html_report_renders_in_headless_chromium(tmp_path):
    path, _ = _html(tmp_path, [_example()])
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                          "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert len(re.findall(r'class="main-svg"', dom)) >= 4  # plotly drew every figure
    assert dom.count("<audio") == 2 and "sortable" in dom


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_a_click_on_a_header_sorts_that_tables_rows_by_that_column(tmp_path):
    """The last table of the page (every finished trial) sorted by a click on its ``PESQ (test)`` header, then on
    its ``run`` header (full run ids, not the 8 digits shown)."""
    path, df = _html(tmp_path)
    probe = """<script>
      var tables = document.querySelectorAll('table.sortable'), t = tables[tables.length - 1];
      var heads = Array.from(t.tHead.rows[0].cells), col = function(name) {
        return heads.findIndex(function(h) { return h.innerText === name; }); };
      var read = function(i) { return Array.from(t.tBodies[0].rows).map(function(r) {
        return r.cells[i].dataset.sort || r.cells[i].innerText; }).join('|'); };
      heads[col('PESQ (test)')].click(); document.body.dataset.pesq = read(col('PESQ (test)'));
      heads[col('run')].click(); document.body.dataset.run = read(col('run'));
    </script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(path.read_text().replace("</body>", probe))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    pesq = [float(v) for v in re.search(r'data-pesq="([^"]*)"', dom).group(1).split("|")]
    runs = re.search(r'data-run="([^"]*)"', dom).group(1).split("|")
    assert len(pesq) == 9 and pesq == sorted(pesq) and pesq[0] < pesq[-1]
    assert runs == sorted(df.loc[df["role"] == "trial", "run_id"])


# ---- listening examples ------------------------------------------------------------------------------------------
def test_input_snr_and_the_lowest_median_highest_pick():
    clean = np.full(100, 0.1)
    assert input_snr_db(clean + 0.01, clean) == pytest.approx(20.0)
    assert input_snr_db(np.stack([clean + 0.1, clean]), clean) == pytest.approx(0.0)  # reference channel 0
    assert pick_utterances([5.0, -1.0, 3.0, 10.0, 0.0]) == [1, 2, 3]
    assert pick_utterances([1.0, 0.0]) == [1, 0]


def test_the_examples_play_the_seed_chosen_on_validation_not_on_test():
    df, _, _ = _two_set_sweep()
    df = df[df["method"].isin(["none", "teacher"])].copy()
    none = df["method"] == "none"
    df.loc[none, "pesq"] = [2.9, 2.0, 2.1]        # seed 0 is best on test ...
    df.loc[none, "valid_pesq"] = [2.0, 2.5, 2.1]  # ... seed 1 on validation
    result = set_result(df, {}, None)
    chosen = chosen_runs(result)
    assert chosen[0][1] == df.loc[df["role"] == "teacher", "run_id"].item()
    assert [run for _, run in chosen[1:]] == [df.loc[none, "run_id"].iloc[1]]


def test_the_examples_add_the_none_student_of_each_front_ratio():
    df, _, _ = _two_set_sweep()
    df["valid_pesq"] = np.where(df["method"] == "output", 2.8, 1.5)  # output's cell is the whole front
    chosen = chosen_runs(set_result(df, {}, None))
    assert [label.split()[0] for label, _ in chosen] == ["teacher", "output", "none"]
