"""Issue #17's GPU run in one command: Ray Train, Serve, the paper's table and a Tune sweep on one GPU machine.

    bash bench/gpu_ray.sh                          # on the GPU machine; figures into $OUT (else runs/gpu-ray)
    bash bench/gpu_ray.sh --allow-cpu --bundle /tmp/b --out /tmp/o     # the CPU rehearsal, tiny sizes

The GPU machine has no Ray and reaches no registry, so this script first installs the carry bundle that
``bench/gpu_bundle.py`` built (``pip install --no-index --no-deps --target``: the image's own torch,
transformers, pyarrow... serve the rest), unpacks the data (``KOSENT_DATA``) and the model (``KOSENT_HOME``),
gives Ray an empty HOME with a fresh token, and starts a one-node cluster on 127.0.0.1 with free ports (no
usage reports). Then the stages, in priority order, so a run cut short keeps the most important figures:

1. ``train``: ``ray_jobs/train.py --use-gpu`` submitted as a Ray job (the Jobs SDK, so success is its final
   status, not printed text): e5-small-ko, 10,000 NSMC reviews, 3 epochs, bf16 autocast; wall time, samples/s,
   test accuracy. Then the same loop in this machine's process (``bench/bench_gpu.py --no-ray``) with the same
   sizes: Ray's overhead on a GPU as a ratio measured side by side.
2. ``serve``: ``bench/bench_serve.py`` on the Train job's checkpoint at c=1/8/32 against the raw forward.
3. ``paper``: ``ray_jobs/paper.py`` at the paper's sizes (every model, scales 1-5 x 10,000, K-MHaS as it is and
   resampled) with the epochs cut to fit (``--paper-epochs``; the paper trains 2 and 5), RESULTS.md regenerated.
4. ``tune``: ``ray_jobs/tune.py``, learning rate x scale with ASHA: the trial table and what ASHA saved.

Every figure is written to ``OUT/figures.json`` the moment it exists; ``OUT`` also gets ``gpu_ray.log``, the
stages' logs (``logs.tar.gz``), ``serve.md``, ``RESULTS.md`` and ``paper.tar.gz`` (its figures). A stage that
would not finish before ``--budget-s`` is skipped and says so. Exit status 0 when every stage that ran
succeeded, 1 when one failed, 2 when the run could not start (no GPU without ``--allow-cpu``, no bundle).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import lzma
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAGES = ("train", "serve", "paper", "tune")  # priority order
log = logging.getLogger("gpu_ray")

# Sizes on the GPU (the issue's) and for the CPU rehearsal (tiny: the path, not the figures).
GPU_SIZES: dict[str, Any] = {
    "model": "e5-small-ko", "train_size": 10_000, "epochs": 3, "val_size": 1_000, "test_size": 5_000,
    "batch_size": 32, "max_length": 128,
    "serve_requests": 600, "serve_duration_s": 8.0, "serve_cpus": 4.0,
    "paper_epochs": 1, "paper_kmhas_epochs": 1, "paper_scales": [1, 2, 3, 4, 5],
    "paper_models": None, "paper_scale_models": None, "paper_kmhas_models": None,  # None: the paper's
    "paper_train_size": 10_000, "paper_val_size": 1_000, "paper_test_size": 5_000,
    "tune_train_size": 5_000, "tune_lrs": [2e-5, 5e-5, 1e-4], "tune_scales": [1, 2], "tune_epochs": 2,
    # the paper's jobs and Tune's trials share the GPU four at a time (e5-small-ko uses ~1.3 GiB of it)
    "gpus_per_worker": 0.25,
}
CPU_SIZES: dict[str, Any] = {
    "model": "tiny", "train_size": 200, "epochs": 2, "val_size": 64, "test_size": 100,  # 2: a warm epoch to judge
    "batch_size": 16, "max_length": 64,
    "serve_requests": 24, "serve_duration_s": 4.0, "serve_cpus": 1.0,
    "paper_epochs": 1, "paper_kmhas_epochs": 1, "paper_scales": [1, 2],
    "paper_models": ["tfidf", "tiny"], "paper_scale_models": ["tfidf"], "paper_kmhas_models": ["tfidf"],
    "paper_train_size": 200, "paper_val_size": 64, "paper_test_size": 100,
    "tune_train_size": 200, "tune_lrs": [1e-3, 3e-3], "tune_scales": [1], "tune_epochs": 2,
    "gpus_per_worker": 0.25,
}
# Least seconds a stage needs to be worth starting (on the GPU machine, from the figures measured so far).
MIN_SECONDS = {"train": 90.0, "serve": 45.0, "paper": 120.0, "tune": 60.0}
CLEANUP_S = 20.0  # kept back from the budget for stopping the cluster and packing the outputs


class RunError(RuntimeError):
    """The run cannot start; the message says why and what to do."""


class Figures:
    """The run's figures as one JSON file, rewritten (atomically) each time one lands, so a run cut off by its
    time limit still returns what it finished."""

    def __init__(self, path: Path, start: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = dict(start) | {"stages": {}}
        self._write()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._write()

    def stage(self, name: str, **values: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(values)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


class Run:
    """Paths, environment and the time budget of one run."""

    def __init__(self, args: argparse.Namespace, sizes: dict[str, Any], cuda: bool) -> None:
        self.args, self.sizes, self.cuda = args, sizes, cuda
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out = Path(args.out).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="kosent-gpu-", dir=args.work_root))
        self.site = self.work / "site"
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.home = self.work / "home"  # an empty HOME: Ray's token, caches
        self.home.mkdir()
        self.kosent_home = self.work / "kosent-home"
        self.data = self.work / "data"
        self.runs = self.work / "runs"
        self.address = ""
        self.dashboard = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def env(self, **extra: str | None) -> dict[str, str]:
        """The environment of every process of the run (Ray's included: they inherit it from ``ray start``);
        ``extra`` adds variables, or removes those given as None."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        path = [str(self.site), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update({
            "HOME": str(self.home), "KOSENT_HOME": str(self.kosent_home), "KOSENT_DATA": str(self.data),
            "PYTHONPATH": os.pathsep.join(path), "PATH": f"{self.site / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        })
        if self.address:
            env["RAY_ADDRESS"] = self.address
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env


# --------------------------------------------------------------------------------------------------
# Set-up: install, unpack, cluster
# --------------------------------------------------------------------------------------------------


def install(run: Run, bundle: Path) -> dict[str, Any]:
    """``pip install --no-index --no-deps --target`` every wheel of the bundle (one version of each), once every
    file of the bundle has been checked against its ``bundle.json``."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not any(w.name.startswith("ray-") for w in wheels):
        raise RunError(f"no Ray wheel in {bundle}/wheels: build the bundle first (python bench/gpu_bundle.py)")
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_bundle import BundleError, verify  # bench/gpu_bundle.py: stdlib only at import

    try:
        checked = verify(bundle)
    except BundleError as e:
        raise RunError(str(e)) from None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(run.site), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run.env())
    if proc.returncode != 0:
        raise RunError(f"pip could not install the bundle ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {"wheels": len(wheels), "bytes": sum(w.stat().st_size for w in wheels), "checked_files": checked["files"],
            "seconds": round(time.perf_counter() - t0, 1)}


def unpack(run: Run, bundle: Path) -> dict[str, Any]:
    """The data files into ``KOSENT_DATA`` and the packed model into ``KOSENT_HOME/models`` (bench/q4pack.py)."""
    t0 = time.perf_counter()
    files = sorted((bundle / "data").rglob("*.xz"))
    if not files:
        raise RunError(f"no data in {bundle}/data: build the bundle first (python bench/gpu_bundle.py)")
    for src in files:
        dst = run.data / src.relative_to(bundle / "data").with_suffix("")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    out: dict[str, Any] = {"data_files": [str(f.relative_to(bundle / "data").with_suffix("")) for f in files]}
    for packed in sorted((bundle / "model").glob("*.npz.xz")):
        name = packed.name.removesuffix(".npz.xz")
        unpack_model(packed, run.kosent_home / "models" / name)
        out.setdefault("models", []).append(name)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def unpack_model(packed: Path, folder: Path) -> None:
    """An xz'd bench/q4pack.py .npz back into a model folder (the Q4 weights bit for bit)."""
    sys.path.insert(0, str(REPO / "bench"))
    from q4pack import unpack as q4unpack  # bench/q4pack.py

    with tempfile.TemporaryDirectory(prefix="kosent-q4-") as tmp:
        npz = Path(tmp) / "model.npz"
        with lzma.open(packed, "rb") as fin, open(npz, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        with contextlib.redirect_stdout(sys.stderr):  # q4pack reports on stdout
            q4unpack(npz, folder)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (other clusters may run on this machine)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def ray_cli(run: Run) -> list[str]:
    return [sys.executable, str(run.site / "bin" / "ray")]


@contextlib.contextmanager
def cluster(run: Run, figures: Figures) -> Iterator[None]:
    """A one-node Ray cluster on 127.0.0.1 (``ray start --head --block``), stopped on exit by signalling that
    process and then killing, by id, whatever of its process tree is left (never ``ray stop``, which would
    stop other clusters on the machine too)."""
    t0 = time.perf_counter()
    subprocess.run([*ray_cli(run), "get-auth-token", "--generate"], env=run.env(), check=True,
                   capture_output=True, timeout=120)
    gcs, dash, client, agent, agent_grpc, metrics, renv, nm, om = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="kray-", dir="/tmp")  # short: Ray's socket paths must fit
    cmd = [*ray_cli(run), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}", f"--node-manager-port={nm}",
           f"--object-manager-port={om}", f"--num-cpus={run.args.num_cpus}", "--disable-usage-stats",
           f"--temp-dir={temp_dir}"]
    head_log = open(run.logs / "ray-start.log", "w")  # closed below
    head = subprocess.Popen(cmd, env=run.env(), stdout=head_log, stderr=subprocess.STDOUT)
    try:
        run.dashboard = f"http://127.0.0.1:{dash}"
        _wait_for_dashboard(head, run.dashboard, timeout=180)
        run.address = f"127.0.0.1:{gcs}"
        figures.set("cluster", {"address": run.address, "dashboard": run.dashboard,
                                "start_seconds": round(time.perf_counter() - t0, 1), "num_cpus": run.args.num_cpus})
        log.info("cluster up at %s (dashboard %s) in %.0f s", run.address, run.dashboard, time.perf_counter() - t0)
        yield
    finally:
        tree = descendants(head.pid)
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait(timeout=10)
        deadline = time.time() + 15
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
            time.sleep(0.5)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        run.address = ""
        log.info("cluster stopped")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_for_dashboard(head: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RunError(f"`ray start` exited with {head.returncode} (see logs/ray-start.log)")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # 401 without the token: the server is up
        except OSError:
            time.sleep(1)
    raise RunError(f"the dashboard at {url} was not up after {timeout:.0f} s")


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def call(run: Run, name: str, cmd: list[str], timeout: float, **env: str | None) -> tuple[int, float]:
    """Run ``cmd`` with the run's environment, its output into logs/<name>.log; (exit status, seconds).
    Past ``timeout`` its process group is killed and the status is 124 (as timeout(1))."""
    t0 = time.perf_counter()
    log.info("%s: %s", name, " ".join(shlex.quote(c) for c in cmd))
    with open(run.logs / f"{name}.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=run.env(**env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            log.warning("%s: over its %.0f s, stopped", name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    seconds = time.perf_counter() - t0
    if rc not in (0,):
        tail = (run.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        log.warning("%s: exit status %d after %.0f s; its log ends:\n%s", name, rc, seconds, tail)
    return rc, seconds


def submit_job(run: Run, name: str, entrypoint: str, timeout: float) -> dict[str, Any]:
    """``ray job submit`` through the Jobs SDK: the job's final status decides, its logs go to logs/<name>.log."""
    import yaml
    from ray.job_submission import JobStatus, JobSubmissionClient

    runtime_env = yaml.safe_load((REPO / "ray_jobs" / "runtime_env.yaml").read_text(encoding="utf-8")) or {}
    runtime_env["working_dir"] = str(REPO)
    client = JobSubmissionClient(run.dashboard)
    t0 = time.perf_counter()
    while True:  # a fresh cluster's job agent may not be up yet: refused before any job exists, so retry
        try:
            sid = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.perf_counter() - t0 > 60:
                raise
            time.sleep(2)
    log.info("%s: submitted %s: %s", name, sid, entrypoint)
    status = client.get_job_status(sid)
    while not status.is_terminal():
        if time.perf_counter() - t0 > timeout:
            log.warning("%s: over its %.0f s, stopping job %s", name, timeout, sid)
            client.stop_job(sid)
            break
        time.sleep(2)
        status = client.get_job_status(sid)
    info = client.get_job_info(sid)
    (run.logs / f"{name}.log").write_text(client.get_job_logs(sid), encoding="utf-8")
    return {"submission_id": sid, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "succeeded": info.status == JobStatus.SUCCEEDED, "message": info.message,
            "seconds": round(time.perf_counter() - t0, 1)}


def rates(history: list[dict[str, Any]], train_rows: int, batch_size: int) -> dict[str, Any]:
    """A training loop's speed from its per-epoch history, computed the same way for Ray and in-process:
    samples/s over all epochs, over the epochs after the first (the first carries CUDA's start-up and the
    compilation of kernels for each new batch shape), in the last epoch, and steady state (the last epoch's
    median step)."""
    seconds = [float(h["epoch_seconds"]) for h in history]
    median = float(history[-1].get("median_step_seconds") or 0.0)

    def per_second(epochs: list[float]) -> float | None:
        return round(train_rows * len(epochs) / sum(epochs), 1) if epochs and sum(epochs) else None

    return {"epochs": len(history), "train_seconds": round(sum(seconds), 1),
            "epoch_seconds": [round(x, 1) for x in seconds],
            "samples_per_second": per_second(seconds), "after_first_epoch_samples_per_second": per_second(seconds[1:]),
            "last_epoch_samples_per_second": per_second(seconds[-1:]),
            "steady_samples_per_second": round(batch_size / median, 1) if median else None}


# Ray's overhead is judged where both loops are warm: after the first epoch, and per step (the issue's < 5%).
OVERHEAD_KEYS = ("after_first_epoch_samples_per_second", "steady_samples_per_second")


def overhead_percent(ray_side: dict[str, Any], in_side: dict[str, Any]) -> dict[str, float]:
    """How much faster the in-process loop ran than Ray's, in percent, for every rate both sides have
    (negative: Ray's was faster)."""
    keys = ("samples_per_second", "after_first_epoch_samples_per_second", "last_epoch_samples_per_second",
            "steady_samples_per_second")
    return {k: round(100.0 * (in_side[k] / ray_side[k] - 1.0), 1) for k in keys if ray_side.get(k) and in_side.get(k)}


def stage_train(run: Run, figures: Figures) -> bool:
    s = run.sizes
    name = "gpu-train"
    flags = ["--model", s["model"], "--train-size", str(s["train_size"]), "--val-size", str(s["val_size"]),
             "--test-size", str(s["test_size"]), "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]),
             "--max-length", str(s["max_length"]), "--patience", str(s["epochs"])]
    entry = [sys.executable, "ray_jobs/train.py", *flags, "--storage-path", str(run.runs), "--name", name]
    if run.cuda:
        entry.append("--use-gpu")
    job = submit_job(run, "train_job", " ".join(shlex.quote(c) for c in entry), timeout=run.left() - CLEANUP_S - 30)
    figures.stage("train", ray_job=job, command="ray job submit -- " + " ".join(entry[1:]))
    if not job["succeeded"]:
        return False
    summary = json.loads((run.runs / name / "summary.json").read_text(encoding="utf-8"))
    ray_side = rates(summary["history"], s["train_size"], s["batch_size"]) | {
        "fit_wall_seconds": round(float(summary["wall_seconds"]), 1), "job_seconds": job["seconds"],
        "test_accuracy": summary["test_metrics"]["test_accuracy"],
        "test_macro_f1": summary["test_metrics"]["test_macro_f1"],
        "val_macro_f1": summary["val_metrics"].get("val_macro_f1"), "checkpoint": summary["local_checkpoint"]}
    figures.stage("train", ray=ray_side)
    log.info("train (Ray job): %s", json.dumps(ray_side))

    # The same loop in this process, same sizes, while the cluster sits idle.
    inproc = run.work / "inprocess.json"
    cmd = [sys.executable, "bench/bench_gpu.py", "--no-ray", "--model", s["model"], "--train-size",
           str(s["train_size"]), "--val-size", str(s["val_size"]), "--epochs", str(s["epochs"]), "--batch-size",
           str(s["batch_size"]), "--max-length", str(s["max_length"]), "--json", str(inproc)]
    if not run.cuda:
        cmd.append("--allow-cpu")
    # One torch thread, as Ray gives its 1-CPU Train worker (OMP_NUM_THREADS=1): the same loop, the same threads.
    rc, seconds = call(run, "train_inprocess", cmd, timeout=run.left() - CLEANUP_S, OMP_NUM_THREADS="1")
    if rc != 0 or not inproc.is_file():
        figures.stage("train", in_process={"exit_status": rc, "seconds": round(seconds, 1)})
        return False
    bench = json.loads(inproc.read_text(encoding="utf-8"))
    in_side = rates(bench["history"], s["train_size"], s["batch_size"]) | {
        "wall_seconds": bench["wall_seconds"], "peak_gpu_memory_mib": bench["peak_gpu_memory_mib"],
        "val_macro_f1": bench["val_macro_f1"], "device": bench["device"], "autocast": bench["autocast"]}
    overhead = overhead_percent(ray_side, in_side)
    judged = [overhead[k] for k in OVERHEAD_KEYS if k in overhead]
    figures.stage("train", in_process=in_side, ray_overhead_percent=overhead,
                  ray_overhead_goal_met=bool(judged) and max(judged) < 5.0)
    log.info("train (in-process): %s; Ray's overhead %% %s", json.dumps(in_side), overhead)
    return True


def serving_checkpoint(run: Run, figures: Figures) -> str | None:
    """The train stage's checkpoint; without one (``--stages serve ...``), one trained here in a few seconds
    (``kosent train``, 1,000 reviews, 1 epoch): Serve's speed does not depend on how well the model learned."""
    checkpoint = (figures.data["stages"].get("train", {}).get("ray") or {}).get("checkpoint")
    if checkpoint:
        return checkpoint
    s = run.sizes
    out = run.work / "serve-checkpoint"
    cmd = [sys.executable, "-m", "kosent.cli", "train", "--model", s["model"],
           "--train-size", str(min(1000, s["train_size"])), "--val-size", str(min(200, s["val_size"])),
           "--test-size", str(min(200, s["test_size"])), "--epochs", "1", "--batch-size", str(s["batch_size"]),
           "--max-length", str(s["max_length"]), "--out", str(out), "--tracking", "off"]
    if run.cuda:
        cmd.append("--use-gpu")
    rc, seconds = call(run, "serve_checkpoint", cmd, timeout=min(120.0, run.left() - CLEANUP_S))
    summary = out / "summary.json"
    figures.stage("serve", checkpoint_trained={"exit_status": rc, "seconds": round(seconds, 1),
                                               "command": " ".join(cmd[1:])})
    if rc != 0 or not summary.is_file():
        return None
    return json.loads(summary.read_text(encoding="utf-8"))["checkpoint"]


def stage_serve(run: Run, figures: Figures) -> bool:
    checkpoint = serving_checkpoint(run, figures)
    if not checkpoint:
        figures.stage("serve", skipped="no checkpoint: none from the train stage, and none could be trained")
        return False
    s = run.sizes
    (port,) = free_ports(1)
    cmd = [sys.executable, "bench/bench_serve.py", "--checkpoint", checkpoint, "--concurrency", "1", "8", "32",
           "--requests", str(s["serve_requests"]), "--duration-s", str(s["serve_duration_s"]), "--rounds", "1",
           "--num-cpus", str(s["serve_cpus"]), "--port", str(port), "--json", str(run.out / "serve.json")]
    if run.cuda:
        cmd += ["--num-gpus", "1"]  # a GPU replica, against the raw forward on the same GPU
    # bench_serve.py starts a cluster of its own in its process (ray.init with num_cpus): RAY_ADDRESS=local keeps
    # it from joining this run's cluster, or any other on the machine.
    rc, seconds = call(run, "serve", cmd, timeout=run.left() - CLEANUP_S, RAY_ADDRESS="local")
    text = (run.logs / "serve.log").read_text(encoding="utf-8", errors="replace")
    tables = "\n".join(line for line in text.splitlines() if line.startswith("|") or line.startswith("batch sizes")
                       or line.startswith("inside the replica") or line.startswith("Serve's own floor"))
    (run.out / "serve.md").write_text(tables + "\n", encoding="utf-8")
    # bench_serve.py exits 0 when its goals are met and 1 when one is missed, but also 1 on a crash: it ran
    # through when it wrote its JSON (the last thing it does).
    result_file = run.out / "serve.json"
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
    ran = rc in (0, 1) and result is not None and "32" in result["serve"]
    figures.stage("serve", exit_status=rc, ran=ran, goals_met=bool(ran and result["goals_met"]),
                  seconds=round(seconds, 1), gpu_replica=bool(result and result["replica_device"].startswith("cuda")),
                  figures=result, tables=tables.splitlines())
    return ran


def stage_paper(run: Run, figures: Figures) -> bool:
    s = run.sizes
    results_md = run.work / "paper-doc" / "RESULTS.md"
    results_md.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "docs" / "RESULTS.md", results_md)  # only the generated block is replaced
    cmd = [sys.executable, "ray_jobs/paper.py", "--address", run.address, "--epochs", str(s["paper_epochs"]),
           "--kmhas-epochs", str(s["paper_kmhas_epochs"]), "--train-size", str(s["paper_train_size"]),
           "--val-size", str(s["paper_val_size"]), "--test-size", str(s["paper_test_size"]),
           "--scales", *map(str, s["paper_scales"]), "--embeddings", "--storage-path", str(run.work / "paper"),
           "--name", "gpu-paper", "--results-md", str(results_md)]
    for key in ("paper_models", "paper_scale_models", "paper_kmhas_models"):
        if s[key]:
            cmd += ["--" + key.removeprefix("paper_").replace("_", "-"), *s[key]]
    cmd += ["--batch-size", str(s["batch_size"]), "--max-length", str(s["max_length"])]
    if run.cuda:
        cmd += ["--use-gpu", "--gpus-per-worker", str(s["gpus_per_worker"])]
    rc, seconds = call(run, "paper", cmd, timeout=run.left() - CLEANUP_S)
    values: dict[str, Any] = {"exit_status": rc, "seconds": round(seconds, 1), "command": " ".join(cmd[1:])}
    figs = results_md.parent / "paper"
    if (figs / "results.json").is_file():
        rows = json.loads((figs / "results.json").read_text(encoding="utf-8"))
        values["results"] = _paper_rows(rows)
    if rc in (0, 1) and results_md.is_file():
        shutil.copy(results_md, run.out / "RESULTS.md")
        with tarfile.open(run.out / "paper.tar.gz", "w:gz") as tar:
            tar.add(figs, arcname="paper")
    figures.stage("paper", **values)
    return rc == 0


def _paper_rows(results: Any) -> list[dict[str, Any]]:
    """The per-run lines of the paper's results.json, without the long per-epoch histories."""
    rows = results.get("records", results) if isinstance(results, dict) else results
    keep = ("experiment", "variant", "model", "scale", "train_rows", "epochs_run", "train_seconds", "error")
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict):
            metrics = r.get("metrics") or {}
            out.append({k: r.get(k) for k in keep} | {k: metrics.get(k) for k in ("test_accuracy", "test_macro_f1")})
    return out


def stage_tune(run: Run, figures: Figures) -> bool:
    s = run.sizes
    sweeps = run.work / "sweeps"
    cmd = [sys.executable, "ray_jobs/tune.py", "--address", run.address, "--model", s["model"],
           "--train-size", str(s["tune_train_size"]), "--val-size", str(s["val_size"]), "--test-size",
           str(s["test_size"]), "--epochs", str(s["tune_epochs"]), "--batch-size", str(s["batch_size"]),
           "--max-length", str(s["max_length"]), "--lrs", *map(str, s["tune_lrs"]), "--scales",
           *map(str, s["tune_scales"]), "--grace-period", "1", "--storage-path", str(sweeps), "--name", "gpu-sweep"]
    if run.cuda:
        cmd += ["--use-gpu", "--gpus-per-worker", str(s["gpus_per_worker"])]
    rc, seconds = call(run, "tune", cmd, timeout=run.left() - CLEANUP_S)
    values: dict[str, Any] = {"exit_status": rc, "seconds": round(seconds, 1), "command": " ".join(cmd[1:])}
    folder = sweeps / "gpu-sweep"
    if (folder / "trials.md").is_file():
        values["trials"] = (folder / "trials.md").read_text(encoding="utf-8").splitlines()
    if (folder / "asha.json").is_file():
        values["asha"] = json.loads((folder / "asha.json").read_text(encoding="utf-8"))
    figures.stage("tune", **values)
    return rc == 0


STAGE_FUNCS = {"train": stage_train, "serve": stage_serve, "paper": stage_paper, "tune": stage_tune}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


# What the machine's own Python has of the packages the run leans on (the bundle carries the rest): recorded so
# the next bundle can be checked against them (bench/gpu_bundle.py, GPU_IMAGE_VERSIONS).
IMAGE_PACKAGES = ("torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "numpy", "pyarrow",
                  "pandas", "scikit-learn", "grpcio", "protobuf", "aiohttp", "pydantic", "peft", "accelerate",
                  "packaging", "pyyaml", "requests", "msgpack", "psutil", "prometheus-client", "uvloop")


def image_packages() -> dict[str, str | None]:
    """Versions of :data:`IMAGE_PACKAGES` in this interpreter, before the bundle is on the path (None: absent)."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in IMAGE_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/gpu_ray.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "gpu-bundle",
                   help="the bundle of bench/gpu_bundle.py (default artifacts/gpu-bundle)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-ray"),
                   help="where the figures go (default $OUT, else runs/gpu-ray)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run, in this order")
    p.add_argument("--budget-s", type=float, default=360.0, help="the whole run's wall time (default 360 s)")
    p.add_argument("--allow-cpu", action="store_true", help="without a CUDA GPU, rehearse on the CPU at tiny sizes")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="the cluster's CPUs (default: all)")
    p.add_argument("--work-root", default=None, help="parent of the run's temporary folder (default: the system's)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder (installed Ray, runs, logs)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                   help="override a size, e.g. --set paper_epochs=2 tune_lrs='[5e-5]' (keys of GPU_SIZES)")
    return p


def _sizes(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    sizes = dict(GPU_SIZES if cuda else CPU_SIZES)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in sizes:
            raise RunError(f"--set {item!r}: expected KEY=JSON with KEY one of {', '.join(sizes)}")
        try:
            sizes[key] = json.loads(value)
        except json.JSONDecodeError:
            sizes[key] = value  # a bare string such as a model name
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="[gpu_ray %(asctime)s] %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "gpu_ray.log")])
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        log.error("no CUDA GPU here (torch %s): this run is for the GPU machine; --allow-cpu rehearses it on the "
                  "CPU at tiny sizes", torch.__version__)
        return 2
    try:
        run = Run(args, _sizes(args, cuda), cuda)
    except RunError as e:
        log.error("%s", e)
        return 2
    figures = Figures(out / "figures.json", {
        "device": torch.cuda.get_device_name() if cuda else "cpu (--allow-cpu rehearsal)", "torch": torch.__version__,
        "python": sys.version.split()[0], "packages": image_packages(), "budget_seconds": args.budget_s,
        "sizes": run.sizes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    ok = True
    try:
        try:
            figures.set("install", install(run, args.bundle.resolve()))
            figures.set("unpack", unpack(run, args.bundle.resolve()))
        except RunError as e:
            log.error("%s", e)
            figures.set("error", str(e))
            return 2
        # This process talks to the cluster too (the Jobs SDK): the bundle's Ray, the run's HOME and token.
        sys.path.insert(0, str(run.site))
        os.environ.update(run.env())
        log.info("installed in %.0f s; %.0f s of the budget left", run.elapsed(), run.left())
        with cluster(run, figures):
            for stage in args.stages:
                if run.left() - CLEANUP_S < (MIN_SECONDS[stage] if cuda else 10.0):
                    figures.stage(stage, skipped=f"out of time: {run.left():.0f} s left of {args.budget_s:.0f} s")
                    log.warning("%s: skipped, %.0f s left", stage, run.left())
                    continue
                t0 = time.perf_counter()
                try:
                    done = STAGE_FUNCS[stage](run, figures)
                except Exception as e:  # one broken stage is recorded; the next ones still run
                    log.exception("%s failed", stage)
                    figures.stage(stage, error=f"{type(e).__name__}: {e}")
                    done = False
                figures.stage(stage, ok=done, stage_seconds=round(time.perf_counter() - t0, 1))
                ok &= done
                log.info("%s: %s in %.0f s; %.0f s of the budget left", stage, "done" if done else "FAILED",
                         time.perf_counter() - t0, run.left())
    except RunError as e:
        log.error("%s", e)
        figures.set("error", str(e))
        ok = False
    finally:
        figures.set("wall_seconds", round(run.elapsed(), 1))
        with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
            tar.add(run.logs, arcname="logs")
        if "ray" in sys.modules:  # the Jobs SDK loaded the bundle's Ray: shut it down before its files go
            sys.modules["ray"].shutdown()
        if not args.keep_work:
            shutil.rmtree(run.work, ignore_errors=True)
    log.info("figures in %s (%.0f s in all)", out / "figures.json", run.elapsed())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
