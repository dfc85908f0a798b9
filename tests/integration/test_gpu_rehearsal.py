"""bench/gpu_ray.sh rehearsed end to end on the CPU at tiny sizes (``--allow-cpu``), as the GPU machine runs it.

A bundle is built for this machine's Python (deflate inside the wheels: quicker to build; the packed
e5-small-ko model, whose tokenizer the random ``tiny`` BERT of the rehearsal uses), then the script really installs it offline into a folder of its
own, starts a one-node Ray cluster on 127.0.0.1 with free ports and an empty HOME, and runs the four stages:
a Ray Train job submitted through the Jobs SDK and the same loop in-process, bench_serve.py, the paper job and
a Tune sweep with ASHA. The test reads only files the run writes (figures.json, RESULTS.md) and exit statuses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_bundle  # noqa: E402  (bench/gpu_bundle.py)
import gpu_ray  # noqa: E402  (bench/gpu_ray.py)

RUN_TIMEOUT_S = 1500


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_gpu_script_rehearsal_on_cpu(tmp_path):
    from kosent.models.e5_offline import resolve

    bundle = tmp_path / "bundle"
    try:
        gpu_bundle.build(bundle, python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                         compression="deflate", model=resolve("e5-small-ko"))
    except gpu_bundle.BundleError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the GPU bundle could not be built in CI: {e}")
        pytest.skip(f"the GPU bundle cannot be built here: {e}")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.Popen(
        ["bash", "bench/gpu_ray.sh", "--allow-cpu", "--bundle", str(bundle), "--out", str(out), "--num-cpus", "2",
         "--budget-s", str(RUN_TIMEOUT_S - 60), "--work-root", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"bench/gpu_ray.sh ran past {RUN_TIMEOUT_S} s:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-8000:]

    figures = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    stages = figures["stages"]
    assert list(stages) == ["train", "serve", "paper", "tune"]
    assert all(s["ok"] for s in stages.values()), json.dumps(stages, indent=1)[-4000:]
    assert figures["install"]["wheels"] == len(list((bundle / "wheels").glob("*.whl")))
    assert figures["cluster"]["address"].startswith("127.0.0.1:")

    train = stages["train"]
    assert train["ray_job"]["status"] == "SUCCEEDED"
    assert 0.0 <= train["ray"]["test_accuracy"] <= 1.0
    assert train["ray"]["samples_per_second"] > 0 and train["in_process"]["samples_per_second"] > 0
    assert set(train["ray_overhead_percent"]) >= set(gpu_ray.OVERHEAD_KEYS)
    assert len(train["ray"]["epoch_seconds"]) == len(train["in_process"]["epoch_seconds"]) == figures["sizes"]["epochs"]
    assert figures["packages"]["torch"]  # the machine's own versions, recorded for the next bundle

    assert stages["serve"]["ran"] and any("Serve HTTP, c=32" in line for line in stages["serve"]["tables"])
    serve_figures = stages["serve"]["figures"]  # bench_serve.py --json, as written
    assert set(serve_figures["serve"]) == {"1", "8", "32"} and serve_figures["serve"]["32"]["errors"] == 0
    assert json.loads((out / "serve.json").read_text(encoding="utf-8"))["goals"] == serve_figures["goals"]
    assert (out / "serve.md").is_file()

    paper = stages["paper"]
    assert {(r["experiment"], r["model"]) for r in paper["results"]} >= {("baselines", "tiny"), ("scale", "tfidf"),
                                                                         ("kmhas", "tfidf")}
    assert not any(r["error"] for r in paper["results"])
    assert "<!--" in (out / "RESULTS.md").read_text(encoding="utf-8")
    with tarfile.open(out / "paper.tar.gz") as tar:
        assert any(n.endswith("results.json") for n in tar.getnames())

    tune = stages["tune"]
    assert tune["exit_status"] == 0 and len(tune["trials"]) >= 4  # header, rule, one row per trial
    assert "trials" in json.dumps(tune["asha"])
    # Everything comes back in the few files the GPU machine returns (at most 8, no deeper than 2 folders).
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in returned), returned


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_stage_trains_its_own_checkpoint_when_the_train_stage_did_not_run(tmp_path):
    """``--stages serve tune`` (the second GPU command, for what the first skipped) has no Train checkpoint:
    the serve stage trains a small one in this process with ``kosent train`` and serves that."""
    args = gpu_ray.build_parser().parse_args(["--allow-cpu", "--out", str(tmp_path / "out"), "--work-root", str(tmp_path)])
    (tmp_path / "out").mkdir()
    run = gpu_ray.Run(args, dict(gpu_ray.CPU_SIZES), cuda=False)
    from kosent.config import cache_home, data_home

    run.data.symlink_to(data_home())  # what unpack() puts there from the bundle: here, the originals
    run.kosent_home.symlink_to(cache_home())
    figures = gpu_ray.Figures(tmp_path / "out" / "figures.json", {})
    checkpoint = gpu_ray.serving_checkpoint(run, figures)
    assert checkpoint is not None, (run.logs / "serve_checkpoint.log").read_text(encoding="utf-8")[-3000:]
    meta = json.loads((Path(checkpoint) / "kosent.json").read_text(encoding="utf-8"))
    assert meta["config"]["model"] == gpu_ray.CPU_SIZES["model"]
    trained = json.loads((tmp_path / "out" / "figures.json").read_text(encoding="utf-8"))["stages"]["serve"]
    assert trained["checkpoint_trained"]["exit_status"] == 0
