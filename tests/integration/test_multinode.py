"""Multi-node on one machine: Train and Tune spread over three Ray nodes, storage on S3, served from S3.

A Ray cluster of three nodes (``ray.cluster_utils.Cluster``: a head and two workers, 1 CPU each, all on
127.0.0.1) runs ``kosent.ray_train.fit`` (2 workers x 1 CPU) and ``kosent.sweep.run_sweep`` (2 trials of
2 workers, one at a time) at tiny size with ``storage_path="s3://<bucket>/runs"``, on training data that is
itself in the bucket: NSMC rows as a folder of two Parquet files (``source="s3://<bucket>/data/nsmc"``). The bucket lives in
moto's S3 server on 127.0.0.1, reached through ``AWS_ENDPOINT_URL`` (pyarrow.fs, which Ray Train and Tune
use, honours it). No 1-CPU node can hold two 1-CPU workers, so each run has to span two nodes: the test
asserts that from the node ids of the Ray Train worker actors (State API), per run. Then Serve (proxy on
the head only) loads the sweep's manifest and the Train run's checkpoint straight from S3 and answers real
HTTP requests on 127.0.0.1.

The cluster runs in a child process (this file run as a script) so it never meets the session's Ray
cluster in the pytest process; it has its own ports and ``RAY_TMPDIR`` (its own session folders and
``ray_current_cluster`` file), ``RAY_ADDRESS`` naming it (State API look-ups find it, not other Ray
instances on the machine), and it is shut down with ``Cluster.shutdown()``; on a timeout the child's
process tree is killed by pid. The child also checks that every TCP socket of its process tree is on
127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from procs import decode, descendants, socket_inodes, tcp_rows  # tests/integration/procs.py

REPO = Path(__file__).resolve().parents[2]
DATA = dict(train_size=200, val_size=100, test_size=100)
TRAIN = dict(model="tiny", epochs=1, batch_size=16, eval_batch_size=64, max_length=48, lr=1e-3,
             num_workers=2, cpus_per_worker=1.0, keep_checkpoints=1)


# --------------------------------------------------------------------------------------------------
# The test (pytest process): S3 server, child process, assertions
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything it started, by pid (never by name)."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture()
def s3_server(moto_s3):
    """A fresh bucket on the session's moto S3 server (127.0.0.1); yields (endpoint, bucket)."""
    endpoint, new_bucket = moto_s3
    return endpoint, new_bucket("kosent-test")


def _s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_tune_serve_across_nodes_with_s3_storage(s3_server, nsmc_path, tmp_path):
    endpoint, bucket = s3_server
    from kosent.config import cache_home

    # KOSENT_HOME of its own (fetched checkpoints, the sweep's mirror), sharing the built offline models.
    home = tmp_path / "kosent-home"
    home.mkdir()
    (cache_home() / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache_home() / "models", target_is_directory=True)
    ray_tmp = tempfile.mkdtemp(prefix="kmn-", dir="/tmp")  # short: Ray's socket paths must fit
    gcs_port, dashboard_port, agent_port, serve_port = (_free_port() for _ in range(4))
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node ip 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
        "RAY_ADDRESS": f"127.0.0.1:{gcs_port}",  # anything that looks a cluster up finds this one
        "AWS_ENDPOINT_URL": endpoint,  # pyarrow.fs (Ray Train / Tune, kosent) and boto3 both read it
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials or a region
        "KOSENT_HOME": str(home),
        "KOSENT_DATA": str(nsmc_path.parent.parent),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),  # `serve.app` importable in the child and its Ray workers
        "PYTHONUNBUFFERED": "1",
    })
    cmd = [sys.executable, __file__, "--bucket", bucket, "--report", str(report), "--gcs-port", str(gcs_port),
           "--dashboard-port", str(dashboard_port), "--agent-port", str(agent_port), "--serve-port", str(serve_port)]
    log_path = tmp_path / "child.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = child.wait(timeout=840)
        except subprocess.TimeoutExpired:
            _kill_tree(child)
            rc = None
    output = log_path.read_text(errors="replace")
    print(output[-6000:])
    assert rc == 0, (f"child exited with {rc} after {time.monotonic() - t0:.0f}s (Ray's logs: {ray_tmp}); "
                     f"its log ends:\n{output[-4000:]}")
    shutil.rmtree(ray_tmp, ignore_errors=True)
    r = json.loads(report.read_text())
    print(json.dumps({k: r[k] for k in ("timings", "nodes")}, indent=2))

    # Three live nodes, all on loopback; every socket of the cluster's processes on 127.0.0.0/8.
    assert len(r["nodes"]) == 3 and all(n["ip"] == "127.0.0.1" for n in r["nodes"]), r["nodes"]
    assert r["sockets"]["checked"] > 10 and not r["sockets"]["not_loopback"], r["sockets"]

    # Data: the run's training rows came from Parquet part files in the bucket, streamed through the splits.
    assert r["data"]["source"] == f"s3://{bucket}/data/nsmc"
    assert (r["data"]["rows_read"], r["data"]["parts"]) == (4_000, 2), r["data"]
    assert {f"data/nsmc/part-000{i}.parquet" for i in (0, 1)} <= set(_s3_keys(endpoint, bucket))

    # Train: 2 workers on 2 different nodes; checkpoints and Ray's snapshot in the bucket.
    fit = r["fit"]
    assert fit["data_fingerprint"] == r["data"]["fingerprint"], "the checkpoint was trained on the bucket's data"
    assert fit["data_source"] == r["data"]["source"]
    assert fit["run_dir"] == f"s3://{bucket}/runs/{fit['name']}"
    assert fit["checkpoint_uri"] == f"{fit['run_dir']}/epoch_1"
    assert [len(set(g)) for g in r["train_worker_nodes"]] == [2], r["train_worker_nodes"]
    keys = set(_s3_keys(endpoint, bucket))
    run_key = f"runs/{fit['name']}"
    for name in ("epoch_1/model.safetensors", "epoch_1/kosent.json", "epoch_1/training_state/state.json",
                 "checkpoint_manager_snapshot.json"):
        assert f"{run_key}/{name}" in keys, (name, sorted(k for k in keys if k.startswith(run_key)))

    # Tune: 2 trials, each one's 2 workers on 2 different nodes; trials, table and manifest in the bucket.
    sweep = r["sweep"]
    sweep_key = f"runs/sweeps/{sweep['name']}"
    assert sweep["location"] == f"s3://{bucket}/{sweep_key}"
    assert sweep["manifest"] == f"{sweep['location']}/manifest.json"
    assert [len(set(g)) for g in r["tune_worker_nodes"]] == [2, 2], r["tune_worker_nodes"]
    assert sweep["outcomes"] == ["completed", "completed"], sweep
    for name in ("manifest.json", "trials.csv", "trials.md", "asha.json", "sweep.json",
                 "plots/val_macro_f1_vs_scale.png"):
        assert f"{sweep_key}/{name}" in keys, name
    assert any(k.startswith(f"{sweep_key}/experiment_state") for k in keys), "Tune's experiment state"
    trial_ckpts = [k for k in keys if k.startswith(sweep_key) and "/train_runs/" in k and k.endswith("/epoch_1/model.safetensors")]
    assert len(trial_ckpts) == 2, trial_ckpts
    manifest = sweep["manifest_doc"]
    assert manifest["checkpoint"].startswith(f"s3://{bucket}/{sweep_key}/") and manifest["source"] == "tune"
    assert "/train_runs/" in manifest["checkpoint"] and manifest["checkpoint"].endswith("/epoch_1") and "test_macro_f1" in manifest["test_metrics"]

    # Serve: both models loaded from S3 (fetched into the node's cache), real HTTP answers on 127.0.0.1.
    serve = r["serve"]
    assert serve["url"].startswith("http://127.0.0.1:")
    default, train = serve["predict_default"], serve["predict_train"]
    assert default["status"] == 200 and default["body"]["model"] == "default", default
    assert train["status"] == 200 and train["body"]["model"] == "train", train
    for answer in (default, train):
        (pred,) = answer["body"]["predictions"]
        assert pred["label"] in ("negative", "positive") and 0.0 <= pred["probability"] <= 1.0
        assert abs(sum(pred["scores"].values()) - 1.0) < 1e-4
    described = serve["model_default"]["body"]
    assert described["manifest"] == sweep["manifest"] and described["checkpoint_uri"] == manifest["checkpoint"]
    assert described["checkpoint"].startswith(str(home / "remote" / "checkpoints")), described["checkpoint"]
    assert serve["model_train"]["body"]["checkpoint_uri"] == fit["checkpoint_uri"]

    # bench/bench_gpu.py joined to the cluster (CPU smoke run): storage on S3, run folder removed after.
    bench = r["bench"]
    assert bench["returncode"] == 0, bench["output"]
    assert bench["figures"]["where"] == "Ray Train, 1 worker x 1 CPU" and bench["figures"]["steps"] == 3
    assert not [k for k in keys if k.startswith("runs/bench/") and k != "runs/bench/"], "run folder deleted"


# --------------------------------------------------------------------------------------------------
# The child process: cluster, Train, Tune, Serve, report
# --------------------------------------------------------------------------------------------------


PARQUET_ROWS = 4_000  # NSMC reviews written to the bucket, as two Parquet part files


def _parquet_parts(folder: str) -> str:
    """The first ``PARQUET_ROWS`` rows of the real NSMC file as ``part-0000.parquet`` and ``part-0001.parquet``
    under ``folder`` (an s3:// prefix): the training data the Train run reads straight from the bucket."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kosent import storage
    from kosent.config import data_home
    from kosent.data import read_nsmc

    table = read_nsmc(data_home() / "nsmc" / "ratings_train.txt")
    rows = pa.table({"text": table.texts[:PARQUET_ROWS], "label": table.labels[:PARQUET_ROWS]})
    half = PARQUET_ROWS // 2
    for i, part in enumerate((rows.slice(0, half), rows.slice(half))):
        fs, path = storage.filesystem(storage.join(folder, f"part-{i:04d}.parquet"))
        pq.write_table(part, path, filesystem=fs, row_group_size=500)
    return folder


def _socket_report(root: int) -> dict:
    """Every TCP socket held by ``root`` and its descendants: local and remote ends must be loopback
    (listening sockets have no remote end: only their local address counts)."""
    checked, bad = 0, []
    for fields in tcp_rows(root, socket_inodes([root, *descendants(root)])):
        checked += 1
        local, remote, listening = decode(fields[1]), decode(fields[2]), fields[3] == "0A"
        ends = [local] if listening else [local, remote]
        if not all(ipaddress.ip_address(ip).is_loopback for ip, _ in ends):
            bad.append({"local": local, "remote": remote, "listening": listening})
    return {"checked": checked, "not_loopback": bad}


def _train_worker_groups(known: set[str]) -> dict[str, list[str]]:
    """placement group id -> node ids of its Ray Train workers, for groups not in ``known``."""
    from ray.util.state import list_actors

    groups: dict[str, list[str]] = {}
    for actor in list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=10_000,
                             raise_on_missing_output=False, timeout=30):
        if actor.placement_group_id and actor.placement_group_id not in known:
            groups.setdefault(actor.placement_group_id, []).append(actor.node_id)
    return groups


def _http(method: str, url: str, body: dict | None = None) -> dict:
    import requests

    resp = requests.request(method, url, json=body, timeout=60)
    return {"status": resp.status_code, "body": resp.json()}


def _wait_healthy(url: str, timeout_s: float) -> None:
    import requests

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            resp = requests.get(f"{url}/healthz", timeout=10)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(1.0)
    raise TimeoutError(f"{url}/healthz not healthy after {timeout_s:.0f}s ({last})")


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--bucket", "--report"):
        parser.add_argument(flag, required=True)
    for flag in ("--gcs-port", "--dashboard-port", "--agent-port", "--serve-port"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import ray
    from ray.cluster_utils import Cluster

    from kosent.config import DataConfig, TrainConfig
    from kosent.data import make_splits
    from kosent.ray_train import fit
    from kosent.sweep import SweepConfig, run_sweep

    timings: dict[str, float] = {}
    t = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, node_ip_address="127.0.0.1", gcs_server_port=args.gcs_port, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=args.dashboard_port,
        dashboard_agent_listen_port=args.agent_port,
    ))
    report: dict = {}
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        timings["cluster_start_s"] = time.monotonic() - t
        report["nodes"] = [{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU")}
                           for n in ray.nodes() if n["Alive"]]

        storage = f"s3://{args.bucket}/runs"
        data = DataConfig(**DATA, source=_parquet_parts(f"s3://{args.bucket}/data/nsmc"))
        splits = make_splits(data)  # what the run will read: the same streamed pass, here for the report
        report["data"] = {"source": data.source, "fingerprint": splits.fingerprint,
                          "rows_read": splits.report.rows_read, "parts": len(splits.report.parts)}
        t = time.monotonic()
        result = fit(TrainConfig(**TRAIN, storage_path=storage, name=f"mn-train-{uuid.uuid4().hex[:6]}", data=data))
        timings["train_s"] = time.monotonic() - t
        meta = json.loads((Path(result.checkpoint) / "kosent.json").read_text(encoding="utf-8"))
        report["fit"] = {"name": result.name, "run_dir": result.run_dir, "checkpoint_uri": result.checkpoint_uri,
                         "local_checkpoint": str(result.checkpoint), "val_macro_f1": result.metrics.get("val_macro_f1"),
                         "data_fingerprint": meta["data_fingerprint"], "data_source": meta["config"]["data"]["source"]}
        train_groups = _train_worker_groups(set())
        report["train_worker_nodes"] = list(train_groups.values())

        t = time.monotonic()
        sweep = run_sweep(
            SweepConfig(lrs=[1e-3, 3e-3], scales=[1], asha=False, max_concurrent_trials=1,
                        name=f"mn-sweep-{uuid.uuid4().hex[:6]}", storage_path=f"{storage}/sweeps"),
            TrainConfig(**TRAIN, data=data),
        )
        timings["tune_s"] = time.monotonic() - t
        from serve.app import _read_manifest

        report["sweep"] = {"name": Path(sweep.location).name, "location": sweep.location,
                           "manifest": str(sweep.manifest) if sweep.manifest else None,
                           "outcomes": [row.outcome for row in sweep.trials],
                           "manifest_doc": _read_manifest(str(sweep.manifest)) if sweep.manifest else None}
        report["tune_worker_nodes"] = list(_train_worker_groups(set(train_groups)).values())

        # The GPU benchmark's cluster path, as `ray job submit` runs it (a CPU smoke run: no GPU here).
        t = time.monotonic()
        figures = Path(args.report).with_name("bench.json")
        bench = subprocess.run(
            [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--address", cluster.address, "--allow-cpu",
             "--model", "tiny", "--max-steps", "3", "--train-size", "64", "--val-size", "64", "--test-size", "64",
             "--storage-path", f"{storage}/bench", "--json", str(figures)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        timings["bench_s"] = time.monotonic() - t
        report["bench"] = {"returncode": bench.returncode, "output": (bench.stdout + bench.stderr)[-3000:],
                           "figures": json.loads(figures.read_text()) if figures.is_file() else None}

        from ray import serve

        from serve.app import ServeArgs, build

        t = time.monotonic()
        serve.start(proxy_location="HeadOnly",  # one proxy: every node here shares 127.0.0.1
                    http_options={"host": "127.0.0.1", "port": args.serve_port})
        app = build(ServeArgs(manifest=str(sweep.manifest), models={"train": result.checkpoint_uri},
                              num_cpus=0.5, min_replicas=1, max_replicas=1))
        serve.run(app, name="kosent-multinode", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{args.serve_port}"
        _wait_healthy(url, 180)
        timings["serve_start_s"] = time.monotonic() - t
        text = "배우들 연기가 정말 좋았어요"
        report["serve"] = {
            "url": url,
            "predict_default": _http("POST", f"{url}/predict", {"text": text}),
            "predict_train": _http("POST", f"{url}/predict", {"text": text, "model": "train"}),
            "model_default": _http("GET", f"{url}/model"),
            "model_train": _http("GET", f"{url}/model?name=train"),
        }
        report["sockets"] = _socket_report(os.getpid())
        report["timings"] = {k: round(v, 1) for k, v in timings.items()}
        Path(args.report).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(json.dumps(report["timings"]), flush=True)
        serve.shutdown()
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(child_main())
