"""bench/bench_gpu.py on a machine without a GPU: the refusal, and the CPU smoke runs of the same code paths.

Each run is a subprocess with a timeout. The Ray path starts its own local Ray cluster (loopback, no
dashboard) under a private RAY_TMPDIR, so it never meets another Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_gpu.py"
SMOKE = ["--allow-cpu", "--model", "tiny", "--max-steps", "5", "--train-size", "128", "--val-size", "64",
         "--test-size", "64"]


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def _run(args: list[str], timeout: float, code: str | None = None) -> subprocess.CompletedProcess:
    ray_tmp = tempfile.mkdtemp(prefix="kbg-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, str(BENCH), *args]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _figures(proc: subprocess.CompletedProcess, json_file: Path) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(json_file.read_text())
    printed = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"bench": "gpu"')][-1])
    assert printed == figures
    assert figures["device"] == "cpu" and figures["peak_gpu_memory_mib"] is None
    assert figures["steps"] == 5 and figures["train_rows"] == 128 and figures["val_rows"] == 64
    assert figures["samples_per_second"] > 0 and 0.0 <= figures["val_accuracy"] <= 1.0
    assert 0.0 <= figures["val_macro_f1"] <= 1.0 and figures["within_budget"]
    for label in ("samples/s, training steps", "peak GPU memory (allocated)", "val accuracy / macro F1"):
        assert label in proc.stdout
    return figures


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _no_cuda(), reason="this machine has a CUDA GPU")
def test_refuses_to_run_without_a_gpu_and_says_why(tmp_path):
    proc = _run([], timeout=100)
    assert proc.returncode == 2
    assert "no CUDA GPU is available here" in proc.stderr and "--allow-cpu" in proc.stderr
    assert proc.stdout.strip() == ""


@pytest.mark.timeout(240)
@pytest.mark.skipif(not _no_cuda(), reason="this machine has a CUDA GPU")
def test_cpu_smoke_run_without_ray_installed(nsmc_path, tmp_path):
    """`import ray` fails (as on a machine without Ray): the bench trains with kosent.train.fit_local, which
    must therefore not import Ray either."""
    out = tmp_path / "figures.json"
    code = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['bench/bench_gpu.py', *sys.argv[1:]]; "
            "runpy.run_path('bench/bench_gpu.py', run_name='__main__')")
    proc = _run([*SMOKE, "--json", str(out)], timeout=220, code=code)
    assert "ray is not installed" in proc.stdout
    assert _figures(proc, out)["where"] == "this process (kosent.train.fit_local)"


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.skipif(not _no_cuda(), reason="this machine has a CUDA GPU")
def test_cpu_smoke_run_through_ray_train(nsmc_path, tmp_path):
    out = tmp_path / "figures.json"
    proc = _run([*SMOKE, "--cpus-per-worker", "1", "--json", str(out)], timeout=280)
    assert _figures(proc, out)["where"] == "Ray Train, 1 worker x 1 CPU"
