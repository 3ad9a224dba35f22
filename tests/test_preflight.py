"""Issue 13, faults found before work: the Ray address, per-trial resources, the output folder, the MLflow
tracking store (and two sweeps creating it at once), plugins that raise or exit, and bad data named by the
pre-flight scan. Every refusal: exit code 2, one ``kdlib: error:`` line naming the key or file, no
traceback, nothing created (no output folder, no MLflow store, no Ray) when refused before work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from kdlib.errors import ConfigError, KdlibError
from kdlib.sweep.plan import load_plan
from tests.test_config import _write
from tests.test_validation_limits import _refused

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "out"
    monkeypatch.setenv("KDLIB_OUTPUT", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*sets: str) -> list[str]:
    argv = ["sweep", "run", str(QUICKSTART), "--smoke-test"]
    for item in sets:
        argv += ["--set", item]
    return argv


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything calls ``ray.init`` (a refusal before work must not start Ray)."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)


def _read_only_dir() -> Path | None:
    """A folder even root cannot write (a read-only mount such as /sys), or None."""
    for candidate in (Path("/sys"), Path("/proc/sys")):
        try:
            with open(candidate / ".kdlib-probe", "w"):
                pass
        except OSError:
            return candidate
        os.unlink(candidate / ".kdlib-probe")
    return None


# ---- Ray: unreachable address, resources the cluster cannot give ---------------------------------------
def test_unreachable_ray_address_is_one_line_before_anything_is_created(capsys, out, no_ray):
    port = _free_port()
    err = _refused(capsys, out, _run(f"ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=2"),
                   f"ray.address: no Ray cluster answers at '127.0.0.1:{port}' within 2 s", "ray.connect_timeout_s")
    assert "start it (ray start --head)" in err


def test_unreachable_ray_address_env_is_named(capsys, out, monkeypatch, no_ray):
    port = _free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    _refused(capsys, out, _run("ray.connect_timeout_s=1"),
             f"$RAY_ADDRESS: no Ray cluster answers at 'ray://127.0.0.1:{port}' within 1 s")


def test_resume_address_is_probed_and_named(out, no_ray):
    from kdlib.sweep.session import init_ray

    plan = load_plan(QUICKSTART, smoke=True, overrides=["ray.connect_timeout_s=1"])
    port = _free_port()
    with pytest.raises(KdlibError, match=rf"^--address: no Ray cluster answers at '127.0.0.1:{port}' within 1 s"):
        init_ray(plan, f"127.0.0.1:{port}")


@pytest.mark.parametrize("value,needle", [
    ("0", "ray.connect_timeout_s: Input should be greater than 0"),
    (".inf", "ray.connect_timeout_s: Input should be a finite number"),
])
def test_connect_timeout_is_validated(capsys, out, value, needle):
    argv = ["sweep", "validate", str(QUICKSTART), "--no-data", "--set", f"ray.connect_timeout_s={value}"]
    _refused(capsys, out, argv, needle)


def test_more_cpus_per_trial_than_the_local_instance_is_refused_before_anything(capsys, out, no_ray):
    _refused(capsys, out, _run("resources.cpu=3", "ray.num_cpus=2"),
             "resources.cpu: 3 CPU per trial asked, but the local Ray instance has 2 (ray.num_cpus)")


def test_ray_faults_come_before_simulated_data_is_written(capsys, out, no_ray, data_root):
    """The array source simulates and caches its valid/test sets: a wrong Ray address must be reported
    before that (and before the tracking store is created), so nothing is left behind."""
    port = _free_port()
    argv = ["sweep", "run", str(REPO / "sweeps" / "ftjnf_multichannel.yaml"), "--smoke-test", "--set",
            f"ray.address=127.0.0.1:{port}", "--set", "ray.connect_timeout_s=1"]
    _refused(capsys, out, argv, f"ray.address: no Ray cluster answers at '127.0.0.1:{port}'")


def _nodes(*resources: dict) -> list[dict]:
    return [{"Alive": True, "Resources": r} for r in resources] + [{"Alive": False, "Resources": {"CPU": 64.0}}]


@pytest.mark.parametrize("sets,nodes,expected", [
    pytest.param(["resources.cpu=8"], _nodes({"CPU": 4.0}, {"CPU": 6.0}),
                 "resources.cpu: 8 CPU per trial asked, but no node of the Ray cluster has that many (largest node: 6, "
                 "cluster total: 10 on 2 node(s))", id="cpu-above-every-node"),
    pytest.param(["resources.gpu=0.25"], _nodes({"CPU": 4.0}),
                 "resources.gpu: 0.25 GPU per trial asked, but the Ray cluster has no GPU", id="gpu-none"),
    pytest.param(["resources.gpu=1"], _nodes({"CPU": 4.0, "GPU": 0.5}, {"CPU": 4.0, "GPU": 0.5}),
                 "resources.gpu: 1 GPU per trial asked, but no node of the Ray cluster has that many (largest node: "
                 "0.5, cluster total: 1 on 2 node(s))", id="gpu-split-over-nodes"),
    pytest.param(["resources.cpu=8", "resources.gpu=1"], _nodes({"CPU": 8.0}, {"CPU": 2.0, "GPU": 1.0}),
                 "resources: 8 CPU + 1 GPU per trial asked, but no node of the Ray cluster has both (nodes: "
                 "2 CPU + 1 GPU, 8 CPU + 0 GPU)", id="cpu-and-gpu-on-different-nodes"),
])
def test_resources_are_checked_against_the_connected_cluster(monkeypatch, sets, nodes, expected):
    import ray

    from kdlib.sweep.session import check_resources

    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    plan = load_plan(QUICKSTART, overrides=sets)
    with pytest.raises(ConfigError) as err:
        check_resources(plan)
    assert str(err.value).startswith(expected), str(err.value)
    # an autoscaling cluster adds nodes for queued trials: the user can switch the check off
    check_resources(load_plan(QUICKSTART, overrides=[*sets, "ray.check_resources=false"]))


def test_resources_that_fit_one_node_pass(monkeypatch):
    import ray

    from kdlib.sweep.session import check_resources

    monkeypatch.setattr(ray, "nodes", lambda: _nodes({"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}))
    check_resources(load_plan(QUICKSTART, overrides=["resources.cpu=8", "resources.gpu=1"]))


# ---- output folder and tracking store ---------------------------------------------------------------------
def test_tracking_uri_that_is_a_directory_is_one_line(capsys, out, tmp_path, no_ray):
    folder = tmp_path / "store.db"
    folder.mkdir()
    _refused(capsys, out, _run(f"mlflow.tracking_uri=sqlite:///{folder}"),
             f"MLflow tracking store 'sqlite:///{folder}': '{folder}' is a directory, not an SQLite file; "
             f"name a file in it, e.g. sqlite:///{folder / 'mlflow.db'}")
    assert list(folder.iterdir()) == []


def test_unwritable_tracking_store_is_one_line(capsys, out, no_ray):
    read_only = _read_only_dir()
    if read_only is None:
        pytest.skip("no read-only folder on this machine")
    db = read_only / "kdlib" / "mlflow.db"
    _refused(capsys, out, _run(f"mlflow.tracking_uri=sqlite:///{db}"),
             f"MLflow tracking store 'sqlite:///{db}' cannot be written:", "choose a writable place")


def test_unwritable_output_folder_is_one_line_and_creates_nothing(capsys, out, monkeypatch, no_ray):
    read_only = _read_only_dir()
    if read_only is None:
        pytest.skip("no read-only folder on this machine")
    target = read_only / "kdlib-out"
    monkeypatch.setenv("KDLIB_OUTPUT", str(target))
    for argv in (_run(), ["sweep", "validate", str(QUICKSTART)]):
        _refused(capsys, out, argv, f"$KDLIB_OUTPUT: '{target}' cannot be written (", "choose a writable folder")
    assert not target.exists()


def test_output_folder_below_a_file_is_one_line(capsys, out, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("KDLIB_OUTPUT")
    _refused(capsys, out, ["sweep", "validate", str(QUICKSTART), "--set", f"output_dir={blocker / 'runs'}"],
             f"output_dir: '{blocker / 'runs'}' cannot be created: '{blocker}' is a file, not a folder")


_RACE = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from kdlib.sweep.tracking import client_for, experiment_id
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    time.sleep(0.001)
client = client_for(uri)
plan = SimpleNamespace(tracking_uri=uri, experiment="shared", output=Path(sys.argv[4]))
exp = experiment_id(client, plan)
run = client.create_run(exp, run_name=name)
client.log_metric(run.info.run_id, "x", 1.0)
client.set_terminated(run.info.run_id)
print("ok", exp)
"""


def test_two_processes_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    """Without the store lock this fails almost every time (``table experiments already exists``, or an
    Alembic ``Online migration expected to match one row``)."""
    from mlflow.tracking import MlflowClient

    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'store{attempt}' / 'mlflow.db'}"
        start = time.time() + 6  # both interpreters import MLflow first, then start together
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-c", _RACE, uri, str(start), f"p{i}", str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [p.communicate(timeout=300) for p in procs]
        for p, (stdout, stderr) in zip(procs, results, strict=True):
            assert p.returncode == 0 and stdout.startswith("ok"), stderr[-2000:]
        assert len({stdout.split()[1] for stdout, _ in results}) == 1  # one experiment
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["p0", "p1"]


def test_store_lock_times_out_with_one_line(tmp_path):
    from filelock import FileLock

    from kdlib.sweep.tracking import store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with FileLock(f"{tmp_path / 'mlflow.db'}.lock"):
        with pytest.raises(KdlibError, match=r"another process has held '.*mlflow\.db\.lock' for more than 0\.2 s"):
            with store_lock(uri, timeout_s=0.2):
                pass


# ---- plugins ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin,expected", [
    ("tests.plugins.raising", "plugins: importing 'tests.plugins.raising' raised ValueError: plugin misconfigured: "
                              "MY_MODEL_DIR is not set"),
    ("tests.plugins.exiting", "plugins: 'tests.plugins.exiting' called sys.exit(0) while being imported; a plugin "
                              "must only define and register"),
    ("tests.plugins.no_such_module", "plugins: cannot import 'tests.plugins.no_such_module': No module named"),
])
def test_a_plugin_that_raises_or_exits_is_one_line(capsys, out, no_ray, plugin, expected):
    for argv in (["sweep", "validate", str(QUICKSTART)], _run()):
        _refused(capsys, out, [*argv, "--set", f"plugins=[{plugin}]"], expected)
    assert plugin not in sys.modules


# ---- data faults, named by the pre-flight scan before Ray or MLflow ---------------------------------------
def _data_root(tmp_path: Path, data_root: Path) -> Path:
    """A data root whose valid/test corpora are the real ones (linked) and whose speech/noise folders are
    small copies, ready to be damaged."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "vb_demand").symlink_to(data_root / "vb_demand")
    (root / "noizeus").symlink_to(data_root / "noizeus")
    for speaker in sorted((data_root / "speech").iterdir())[:3]:
        (root / "speech" / speaker.name).mkdir(parents=True)
        for f in sorted(f for f in speaker.iterdir() if f.suffix in (".wav", ".flac"))[:4]:
            (root / "speech" / speaker.name / f.name).symlink_to(f)
    (root / "noise").mkdir()
    for f in sorted((data_root / "noise").glob("*.wav"))[:3]:
        (root / "noise" / f.name).symlink_to(f)
    return root


def _bad_speech_nan(root: Path) -> Path:
    path = next((root / "speech").iterdir()) / "nan.wav"
    x = np.full(16000, 0.1, dtype=np.float32)
    x[500] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def _bad_noise_silent(root: Path) -> Path:
    path = root / "noise" / "silent.wav"
    sf.write(path, np.zeros(32000, dtype=np.float32), 16000)
    return path


def _bad_noise_stereo(root: Path) -> Path:
    path = root / "noise" / "stereo.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, (32000, 2)), 16000)
    return path


def _bad_noise_8k(root: Path) -> Path:
    path = root / "noise" / "8k.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, 16000), 8000)
    return path


def _bad_noise_empty(root: Path) -> Path:
    path = root / "noise" / "empty.wav"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("damage,needle", [
    (_bad_speech_nan, "has NaN or infinite samples at sample 500"),
    (_bad_noise_silent, "is silent (all samples zero)"),
    (_bad_noise_stereo, "has 2 channels but mono is expected"),
    (_bad_noise_8k, "has sample rate 8000 Hz but 16000 Hz is expected"),
    (_bad_noise_empty, "cannot be read (0 bytes: the file is empty)"),
])
def test_bad_training_audio_is_named_before_ray_or_mlflow(capsys, out, tmp_path, monkeypatch, data_root, no_ray,
                                                          damage, needle):
    root = _data_root(tmp_path, data_root)
    monkeypatch.setenv("KDLIB_DATA", str(root))
    bad = damage(root)
    for argv in (["sweep", "validate", str(QUICKSTART)], _run(), ["train-teacher", str(QUICKSTART), "--smoke-test"]):
        err = _refused(capsys, out, argv, f"'{bad}' {needle}")
        assert "data.train." in err


def test_sweep_validate_reports_the_scan(capsys, out, data_root):
    from kdlib.cli import main

    assert main(["sweep", "validate", str(QUICKSTART)]) == 0
    printed = capsys.readouterr().out
    assert "[preflight] data: 740 audio files" in printed and "full scan" in printed
    assert not out.exists()


def test_scan_off_skips_the_data_but_not_the_yaml(capsys, out, tmp_path, monkeypatch, data_root):
    root = _data_root(tmp_path, data_root)
    monkeypatch.setenv("KDLIB_DATA", str(root))
    _bad_noise_silent(root)
    from kdlib.cli import main

    assert main(["sweep", "validate", str(QUICKSTART), "--set", "data.scan=off"]) == 0
    assert "[preflight]" not in capsys.readouterr().out
    _refused(capsys, out, ["sweep", "validate", str(QUICKSTART), "--set", "data.scan=deep"],
             "data.scan: Input should be")


# ---- profile reads YAML with the sweep loader's limits ----------------------------------------------------
def test_profile_refuses_an_alias_bomb_in_one_line(capsys, out, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    path = _write(tmp_path, "\n".join(lines) + "\nname: dpcrn_lite\n", "model.yaml")
    _refused(capsys, out, ["profile", str(path)], f"{path}: YAML over kdlib's limits")



def test_a_deleted_experiment_of_the_same_name_is_one_line(capsys, out, data_root, no_ray):
    from mlflow.tracking import MlflowClient

    out.mkdir()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("quickstart-smoke"))
    from kdlib.cli import main

    capsys.readouterr()
    assert main(_run()) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("kdlib: error:") == 1
    err = err.splitlines()[-1]
    assert err == (f"kdlib: error: MLflow experiment 'quickstart-smoke' is deleted in sqlite:///{out / 'mlflow.db'}: "
                   "restore it (mlflow experiments restore) or set mlflow.experiment to a new name"), err
    assert not (out / "ray").exists()


# ---- students as MLflow artifacts ----------------------------------------------------------------------------
def _student(folder: Path) -> Path:
    from kdlib.models import build_model, save_checkpoint

    return save_checkpoint(build_model("dpcrn_lite", {"channels": [4, 6], "rnn_hidden": 6, "n_dilated": 1,
                                                  "n_dualpath": 1}), folder / "student.pt", {"seed": 0})


def test_a_student_left_in_the_trial_folder_by_an_older_kdlib_is_still_logged(tmp_path):
    from mlflow.tracking import MlflowClient

    from kdlib.sweep.tracking import log_student

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp).info.run_id
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    _student(trial_dir)
    location = log_student(client, run, SimpleNamespace(checkpoint=None, local_path=str(trial_dir)))
    assert Path(location).is_file() and Path(location).is_relative_to(tmp_path / "art")
    assert client.get_run(run).data.tags["kdlib.checkpoint"] == location
    assert log_student(client, run, SimpleNamespace(checkpoint=None, local_path=str(tmp_path / "empty"))) is None


def test_a_failed_upload_warns_and_never_ends_the_sweep(tmp_path, capsys):
    from kdlib.sweep.tracking import log_student

    class Refusing:
        tags: dict = {}

        def log_artifact(self, run_id, path):
            raise OSError(28, "No space left on device")

        def set_tag(self, run_id, key, value):
            self.tags[key] = value

    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    student = _student(trial_dir)
    client = Refusing()
    assert log_student(client, "r1", SimpleNamespace(checkpoint=None, local_path=str(trial_dir))) == str(student)
    assert client.tags["kdlib.checkpoint"] == str(student)
    assert "warning: could not log student.pt of run r1 to MLflow (OSError" in capsys.readouterr().out


def test_runs_ref_to_a_missing_store_creates_nothing(capsys, out, tmp_path):
    store = tmp_path / "nowhere" / "mlflow.db"
    _refused(capsys, out, ["eval", "runs:/0123abcd", "--data", str(tmp_path), "--tracking-uri", f"sqlite:///{store}"],
             f"no MLflow store at 'sqlite:///{store}' ('{store}' does not exist)")
    assert not store.parent.exists()
