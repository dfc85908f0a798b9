"""cluster.yaml (the Ray cluster launcher config) checked the way `ray up` checks it, without a cloud.

`ray up` runs ``prepare_config`` (merge with the provider's defaults) then ``validate_config`` (Ray's JSON
schema, ray/autoscaler/ray-schema.json, plus its own rules); both are offline for AWS. The rest pins what
this project relies on: single-GPU workers that scale from zero, the README's install (torch pinned as in
pyproject.toml, then the project, then `kosent pull`), S3 storage, loopback-only dashboard, no usage stats,
and shell commands that parse. docs/OPERATIONS.md must name the commands that start, use and end it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))


def _pin(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert match, f"{name} is not pinned with == in pyproject.toml"
    return match.group(1)


def _commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k, [])]


def test_ray_accepts_it_as_ray_up_would(raw):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(raw, schema)  # the file as written: no misspelt or unknown top-level keys
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_a_cpu_head_and_single_gpu_workers_scaling_from_zero(raw):
    assert raw["provider"]["type"] == "aws" and raw["provider"]["region"]
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 2
    gpu = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert len(gpu) == 1
    (worker,) = gpu
    assert worker["resources"]["GPU"] == 1 and worker["resources"]["CPU"] >= 1
    assert worker["min_workers"] == 0 and 1 <= worker["max_workers"] <= raw["max_workers"]
    for node_type in types.values():
        image = node_type["node_config"]["ImageId"]
        assert "nvidia" in image and "ubuntu-24.04" in image, image  # not Ray's default (Ubuntu 18.04) DLAMI
    # Workers write checkpoints to S3 themselves, so they need an instance profile too.
    assert worker["node_config"]["IamInstanceProfile"]["Name"]


def test_setup_installs_like_the_readme(raw):
    setup = "\n".join(raw["setup_commands"])
    torch = _pin("torch")
    assert f"pip install -q torch=={torch};" in setup  # GPU nodes: PyPI's CUDA build, pinned
    assert f"pip install -q torch=={torch} --index-url https://download.pytorch.org/whl/cpu" in setup
    assert setup.index(f"torch=={torch}") < setup.index("pip install -q -e ~/kosent") < setup.index("kosent pull")
    assert raw["file_mounts"] == {"~/kosent": "."}
    assert ".venv" in raw["rsync_exclude"] and ".git" in raw["rsync_exclude"]
    assert _pin("ray") == "2.60.0", "docs/OPERATIONS.md and cluster.yaml assume Ray 2.60.0"
    # The environment of every Ray process: storage on S3, data and offline models, no usage reports.
    env = raw["setup_commands"][0]
    assert re.search(r"^export KOSENT_STORAGE=s3://\S+$", env, re.M), env
    for line in ("export HF_HUB_OFFLINE=1", "export RAY_USAGE_STATS_ENABLED=0", 'export KOSENT_DATA='):
        assert line in env


def test_ray_starts_with_a_loopback_dashboard_and_no_usage_stats(raw):
    head = " ".join(raw["head_start_ray_commands"])
    workers = " ".join(raw["worker_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in workers
    for cmds in (head, workers):
        assert "--disable-usage-stats" in cmds and "source ~/kosent.env" in cmds


def test_every_shell_command_parses(raw):
    # Ray runs each as `bash --login -c -i 'true && source ~/.bashrc && ... && (COMMAND)'`.
    for command in _commands(raw):
        wrapped = f"true && ({command})"
        result = subprocess.run(["bash", "-n", "-c", wrapped], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def test_the_env_file_it_writes_is_what_ray_processes_get(raw, tmp_path):
    """Run the first setup command (it only writes files) with HOME in a temp folder, then read it back."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", f"({raw['setup_commands'][0]})"], env=env, check=True, timeout=30)
    subprocess.run(["bash", "-c", f"({raw['setup_commands'][0]})"], env=env, check=True, timeout=30)  # re-run safe
    assert (home / ".bashrc").read_text().count("source ~/kosent.env") == 1
    out = subprocess.run(["bash", "-c", "source ~/kosent.env && echo $KOSENT_DATA $PATH $HF_HUB_OFFLINE"],
                         env=env, check=True, capture_output=True, text=True, timeout=30).stdout.split()
    assert out[0] == f"{home}/kosent-data" and out[1].startswith(f"{home}/venv/bin:") and out[2] == "1"


def test_operations_guide_names_the_cluster_commands():
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    for needle in ("ray up cluster.yaml", "ray down cluster.yaml", "ray_jobs/train.py", "ray_jobs/tune.py",
                   "ray_jobs/deploy.py", "--storage-path $KOSENT_STORAGE", "ray job logs", "serve status",
                   "/tmp/ray/session_latest/logs", "127.0.0.1:8265", "max_concurrent_trials", "num_workers",
                   "cpus_per_worker", "use_gpu", "bench/bench_gpu.py"):
        assert needle in doc, needle
    for script in re.findall(r"\b(ray_jobs/\w+\.py|bench/\w+\.py|serve/\w+\.(?:py|yaml))", doc):
        assert (ROOT / script).is_file(), f"docs/OPERATIONS.md names {script}, which does not exist"
