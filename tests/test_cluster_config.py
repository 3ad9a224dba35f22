"""cluster.yaml / cluster-onprem.yaml: Ray's own cluster-config validation, and what kdlib needs from them.

Validation is what ``ray up`` does before touching a cloud (``commands._bootstrap_config``):
``prepare_config`` (merge with the provider's defaults.yaml, per-type worker bounds; for ``local``,
the on-prem checks) then ``validate_config`` (ray-schema.json + cross-field checks). The provider
bootstrap that follows (boto3 calls, SSH) is left out, so everything here is offline.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
AWS, ONPREM = REPO / "cluster.yaml", REPO / "cluster-onprem.yaml"
CONFIGS = pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
COMMAND_LISTS = ("head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands")
#: AWS instance families with NVIDIA GPUs
GPU_FAMILY = re.compile(r"^(g4dn|g5|g6|g6e|gr6|p3|p4d|p4de|p5|p5e)\.")


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_validate(raw: dict) -> dict:
    """What ``ray up`` checks before the provider bootstrap; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _venv(prepared: dict) -> str:
    """The venv the setup commands create (``uv venv --python 3.11 <path>``)."""
    made = [m.group(1) for c in prepared["head_setup_commands"] for m in [re.search(r"uv venv .*?(\S+)$", c)] if m]
    assert len(made) == 1, prepared["head_setup_commands"]
    return made[0]


# ---- Ray's validation accepts both files ----------------------------------------------------------
@CONFIGS
def test_ray_accepts_config(path):
    prepared = ray_validate(_raw(path))
    assert prepared["cluster_name"] == "kdlib"
    assert prepared["head_node_type"] in prepared["available_node_types"]


# ---- ... and rejects broken copies --------------------------------------------------------------
def _drop_worker_node_config(c):
    del c["available_node_types"]["worker.gpu"]["node_config"]


def _unknown_head_type(c):
    c["head_node_type"] = "head.typo"


@pytest.mark.parametrize("breaks, error", [
    (lambda c: c.update(worker_start_commands=[]), jsonschema.ValidationError),   # unknown top-level key
    (lambda c: c.update(max_workers="8"), jsonschema.ValidationError),            # wrong type
    (_drop_worker_node_config, jsonschema.ValidationError),                       # required key missing
    (lambda c: c["available_node_types"]["worker.gpu"]["resources"].update(GPU=0.5),
     jsonschema.ValidationError),                                                 # node GPUs are integers
    (_unknown_head_type, ValueError),                                             # cross-field check
    (lambda c: c["available_node_types"]["worker.gpu"].update(min_workers=99), ValueError),  # > max_workers
], ids=["unknown-key", "max_workers-str", "no-node_config", "fractional-node-gpu", "bad-head-type",
        "min-over-max"])
def test_ray_rejects_broken_aws_copy(breaks, error):
    raw = _raw(AWS)
    breaks(raw)
    with pytest.raises(error):
        ray_validate(raw)


@pytest.mark.parametrize("breaks", [
    lambda c: c.update(available_node_types={"x": {"node_config": {}, "resources": {}}}),
    lambda c: c["provider"].pop("worker_ips"),
], ids=["node-types-on-prem", "no-worker_ips"])
def test_ray_rejects_broken_onprem_copy(breaks):
    raw = _raw(ONPREM)
    breaks(raw)
    with pytest.raises(click.ClickException):
        ray_validate(raw)


# ---- what kdlib needs from the cluster ------------------------------------------------------------
def test_aws_has_cpu_head_and_gpu_workers():
    prepared = ray_validate(_raw(AWS))
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["cache_stopped_nodes"] is False
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        assert GPU_FAMILY.match(spec["node_config"]["InstanceType"]), name
        assert spec["resources"]["GPU"] >= 1 and spec["min_workers"] == 0, name
        assert 0 < spec["max_workers"] <= prepared["max_workers"], name


def test_onprem_lists_its_machines():
    raw = _raw(ONPREM)
    prepared = ray_validate(raw)
    assert prepared["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    assert raw["auth"]["ssh_user"] and raw["auth"]["ssh_private_key"]
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


@CONFIGS
def test_file_mounts_sync_repo_root_without_local_state(path):
    raw = _raw(path)
    (remote, local), = raw["file_mounts"].items()
    # `ray up` resolves the local side against its working directory: the repo root, next to this file
    root = (path.parent / local).resolve()
    assert root == REPO and yaml.safe_load((root / "sweeps" / "quickstart.yaml").read_text())
    assert (root / "experiments" / "sweep.py").is_file()
    assert remote == "~/kdlib"
    assert {".venv", "runs", "mlruns", "*.db", "*.pt"} <= set(raw["rsync_exclude"])


@CONFIGS
@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
def test_rsync_with_rays_filter_args_ships_code_not_state(path, tmp_path):
    """The exclude/filter arguments exactly as Ray's command runner builds them, on this repo (dry run)."""
    raw = _raw(path)
    args = [a for x in raw["rsync_exclude"] for a in ("--exclude", x)]
    args += [a for f in raw["rsync_filter"] for a in ("--filter", f"dir-merge,- {f}")]
    out = subprocess.run(["rsync", "-a", "-n", "--out-format=%n", *args, f"{REPO}/", f"{tmp_path}/"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert {"pyproject.toml", "kdlib/__init__.py", "experiments/sweep.py", "sweeps/methods.yaml"} <= set(out)
    assert not [f for f in out if f.startswith((".venv/", "runs/", ".git/")) or f.endswith((".db", ".pt"))]


@CONFIGS
def test_setup_installs_kdlib_into_the_venv_ray_runs_from(path):
    raw = _raw(path)
    prepared = ray_validate(raw)
    venv = _venv(prepared)
    assert venv.startswith(("/", "$HOME/")), venv   # absolute once the shell expands it, never PATH-relative
    mount = next(iter(raw["file_mounts"]))
    for kind in ("head", "worker"):
        setup = prepared[f"{kind}_setup_commands"]
        pattern = rf"pip install --python {re.escape(venv)}/bin/python\b.* -e {re.escape(mount)}( |$)"
        installs = [c for c in setup if re.search(pattern, c)]
        assert len(installs) == 1, setup
        assert '"ray[default]==2.60.0"' in installs[0]   # the dashboard/job server `ray job submit` needs
        # Ray's own start commands, same absolute ray as the one installed above
        start = prepared[f"{kind}_start_ray_commands"]
        rays = [m.group(1) for c in start for m in re.finditer(r"(\S*/bin/ray|(?<![\w/$-])ray) (start|stop)", c)]
        assert rays and set(rays) == {f"{venv}/bin/ray"}, start
    assert "--head" in prepared["head_start_ray_commands"][-1]
    assert "--address=$RAY_HEAD_IP:6379" in prepared["worker_start_ray_commands"][-1]
    # no bare `pip`/`ray`/`python` left over from Ray's provider defaults (stack.md §6)
    for key in COMMAND_LISTS:
        for cmd in prepared[key]:
            assert not re.match(r"(ulimit[^;]*;\s*)?(pip|ray|python)\b", cmd), (key, cmd)


@CONFIGS
def test_commands_are_valid_bash(path):
    prepared = ray_validate(_raw(path))
    for key in COMMAND_LISTS:
        script = "\n".join(prepared[key])
        res = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, (key, res.stderr)


@CONFIGS
def test_login_env_reaches_kdlib(path, tmp_path, monkeypatch):
    """Run the setup steps that write the login environment in a scratch $HOME (twice: `ray up` re-runs
    them), then read it the way the launcher's `bash --login -i` does, and hand it to kdlib."""
    prepared = ray_validate(_raw(path))
    venv = _venv(prepared)
    envs = {}
    for kind in ("head", "worker"):
        home = tmp_path / kind
        home.mkdir()
        (home / ".bashrc").write_text("# the image's own bashrc\n")
        steps = [c for c in prepared[f"{kind}_setup_commands"] if ".kdlib_env" in c]
        env = {"HOME": str(home), "PATH": os.environ["PATH"]}
        for _ in range(2):
            for step in steps:
                subprocess.run(["bash", "-c", step], env=env, check=True, timeout=10)
        assert (home / ".bashrc").read_text().count(".kdlib_env") == 1
        dump = subprocess.run(["bash", "-c", "source ~/.bashrc; env -0"], env=env, check=True, timeout=10,
                              capture_output=True, text=True).stdout
        envs[kind] = dict(kv.split("=", 1) for kv in dump.split("\0") if "=" in kv)
        assert envs[kind]["PATH"].split(":")[0] == venv.replace("$HOME", str(home)) + "/bin"
        assert (home / ".kdlib_env").read_text().count("RAY_ADDRESS") == (kind == "head")
    # the driver runs on the head and must join the cluster; on workers RAY_ADDRESS would override
    # `ray start --address`
    assert envs["head"]["RAY_ADDRESS"] == "auto" and "RAY_ADDRESS" not in envs["worker"]
    for kind in ("head", "worker"):
        assert envs[kind]["KDLIB_OUTPUT"] == envs["head"]["KDLIB_OUTPUT"]
        assert envs[kind]["KDLIB_DATA"] == envs["head"]["KDLIB_DATA"]
        assert envs[kind]["MLFLOW_TRACKING_URI"] == envs["head"]["MLFLOW_TRACKING_URI"]
    head = envs["head"]
    assert head["KDLIB_OUTPUT"].startswith("/mnt/shared/") and head["KDLIB_DATA"].startswith("/mnt/shared/")

    from kdlib.sweep.plan import load_plan

    for var in ("KDLIB_OUTPUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(var, head[var])
    plan = load_plan(REPO / "sweeps" / "quickstart.yaml")
    assert plan.output == Path(head["KDLIB_OUTPUT"])
    assert plan.tracking_uri == head["MLFLOW_TRACKING_URI"]


# ---- experiments/sweep.py under `ray submit` ------------------------------------------------------
def test_sweep_script_finds_relative_sweep_when_copied_to_home(tmp_path, monkeypatch, capsys):
    """`ray submit` copies the script to ~ and runs it there: `sweeps/x.yaml` must still resolve (to the
    checkout kdlib is installed from: ~/kdlib on the cluster, this repo here)."""
    script = tmp_path / "sweep.py"
    shutil.copy(REPO / "experiments" / "sweep.py", script)
    spec = importlib.util.spec_from_file_location("submitted_sweep", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    assert mod.resolve_sweep_path("sweeps/methods.yaml") == REPO / "sweeps" / "methods.yaml"
    local = tmp_path / "sweeps" / "methods.yaml"   # a file under the working directory wins
    local.parent.mkdir()
    local.write_text("name: x\n")
    assert mod.resolve_sweep_path("sweeps/methods.yaml") == Path("sweeps/methods.yaml")
    # a path found nowhere is reported as typed, before Ray is imported
    assert mod.main(["sweeps/nope.yaml"]) == 2
    assert "sweeps/nope.yaml" in capsys.readouterr().err
