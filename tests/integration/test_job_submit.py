"""`ray start --head` + `ray job submit` of ray_jobs/train.py, for real, on its own cluster, started as on a
brand-new machine: an empty HOME (no ~/.ray/auth_token yet), token authentication on, the token made the
way `bin/demo` makes it. Then `bin/submit_job.py` (what the demo submits with) on the same cluster: its exit
code and JSON follow the job's final status.

The cluster gets its own ports and --temp-dir, so it can run beside the session's fixture cluster (and
other Ray instances on the machine). It is stopped by signalling the `ray start --block` process this
test started, never with `ray stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from procs import descendants  # tests/integration/procs.py

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORT, DASHBOARD_PORT, CLIENT_PORT, AGENT_PORT = 6390, 8275, 6391, 52390


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_cluster(head: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` process (it shuts its node down), then SIGKILL any leftover
    process of that tree, by id."""
    tree = descendants(head.pid)
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.5)
    for pid in tree:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_dashboard(head: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {head.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # 401 without a token: the server is up
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"dashboard on 127.0.0.1:{DASHBOARD_PORT} not up after {timeout}s")


def _job_status(submission_id: str, env: dict[str, str]) -> str:
    """The job's status through the Jobs SDK, in a process with the test's environment (its token)."""
    code = ("import sys; from ray.job_submission import JobSubmissionClient; "
            "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]))")
    out = subprocess.run([sys.executable, "-c", code, f"http://127.0.0.1:{DASHBOARD_PORT}", submission_id],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_ray_job_submit_trains_and_writes_outputs(nsmc_path, tmp_path):
    from kosent.config import cache_home

    ray_cli = str(VENV_BIN / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update({
        "HOME": str(home),  # a brand-new user: no ~/.ray/auth_token
        "KOSENT_HOME": str(cache_home()),  # the offline tokenizer the tiny model borrows (built by `make model`)
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the entrypoint = this venv
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # the CLI sends the cluster's token only with this set
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once on SIGTERM
        "RAY_ADDRESS": f"127.0.0.1:{PORT}",  # State API calls inside actors find this cluster, not others
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    temp_dir = tempfile.mkdtemp(prefix="kosent-ray-", dir="/tmp")  # short: Ray's socket paths must fit
    storage = tmp_path / "runs"
    head_log = (tmp_path / "ray-start.log").open("w")
    # bin/demo's first step: without it `ray start` in token mode refuses to start on a new machine.
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    assert (home / ".ray" / "auth_token").is_file()
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={PORT}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}", f"--ray-client-server-port={CLIENT_PORT}",
         f"--dashboard-agent-listen-port={AGENT_PORT}", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for_dashboard(head, timeout=120)
        submit = [
            ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
            "--submission-id", "kosent-train", "--working-dir", ".", "--runtime-env", "ray_jobs/runtime_env.yaml", "--",
            "python", "ray_jobs/train.py", "--model", "tiny", "--path", str(nsmc_path),
            "--train-size", "300", "--val-size", "100", "--test-size", "100", "--epochs", "2", "--lr", "0.001",
            "--num-workers", "2", "--storage-path", str(storage), "--name", "submitted",
        ]
        job = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log[-6000:]
        assert "Uploading package" in log
        assert _job_status("kosent-train", env) == "SUCCEEDED"
        # Signal, not noise: no Hugging Face load-report tables or weight-loading bars in the job's log.
        assert "LOAD REPORT" not in log and "Loading weights" not in log, log[-6000:]

        run_dir = storage / "submitted"
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        assert [h["epoch"] for h in summary["history"]] == [1, 2]
        assert {"test_accuracy", "test_macro_f1"} <= set(summary["test_metrics"])
        assert summary["test_metrics"]["test_size"] == 100
        assert "val_macro_f1" in summary["val_metrics"]
        assert summary["config"]["num_workers"] == 2
        assert (run_dir / "curves.png").stat().st_size > 10_000

        from kosent.manifest import read_manifest
        from kosent.predict import Predictor

        manifest = read_manifest(run_dir / "manifest.json")
        assert manifest["source"] == "train"
        assert manifest["checkpoint"] == summary["checkpoint"]
        assert Path(manifest["checkpoint"]).parent == run_dir
        assert len(Predictor.from_checkpoint(manifest["checkpoint"]).predict(["재밌다"])) == 1

        # bin/submit_job.py: exit 0 and SUCCEEDED for a job that succeeds, 1 and FAILED for one that fails.
        for code, want_rc, want_status in ((0, 0, "SUCCEEDED"), (3, 1, "FAILED")):
            result = tmp_path / f"job-{code}.json"
            proc = subprocess.run(
                [sys.executable, "bin/submit_job.py", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
                 "--result", str(result), "--", "python", "-c", f"print('exiting with {code}'); raise SystemExit({code})"],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
            )
            assert proc.returncode == want_rc, proc.stdout + proc.stderr
            assert f"exiting with {code}" in proc.stdout  # the job's log was followed
            doc = json.loads(result.read_text(encoding="utf-8"))
            assert doc["status"] == want_status and doc["submission_id"].startswith("raysubmit_")
    finally:
        _stop_cluster(head)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
