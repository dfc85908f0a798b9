"""Experiment tracking against a real ``mlflow server`` (127.0.0.1, free port, SQLite backend and a local
artifact root in tmp): a tiny Ray Train job and a two-trial sweep log to it, and everything is read back
through the MLflow client: params, metrics per epoch, artifacts, the sweep's parent/child runs, the
manifest's run id, and a registered model version that resolves back to a loadable checkpoint and that Serve
deploys and describes (real HTTP) with the run behind it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from needs import missing  # tests/needs.py

from kosent.config import DataConfig, TrainConfig

SIZES = ["--train-size", "200", "--val-size", "100", "--test-size", "100"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, free_port):
    """``mlflow server`` on 127.0.0.1 with its telemetry off; yields its URI, stopped at the end."""
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file() and shutil.which("mlflow") is None:
        missing("the mlflow server is not installed: pip install -e '.[dev]'")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port(0)
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(exe if exe.is_file() else shutil.which("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_train_job_logs_params_epochs_artifacts_and_lineage(ray_cluster, tiny_ready, mlflow_server, client, tmp_path,
                                                             train_job):
    job = train_job
    code = job.main(["--model", "tiny", *SIZES, "--epochs", "2", "--batch-size", "16", "--max-length", "48",
                     "--lr", "1e-3", "--storage-path", str(tmp_path), "--name", "tracked", "--tracking", mlflow_server])
    assert code == 0
    manifest = json.loads((tmp_path / "tracked" / "manifest.json").read_text(encoding="utf-8"))
    lineage = manifest["mlflow"]
    assert lineage["tracking_uri"] == mlflow_server
    run = client.get_run(lineage["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    params = run.data.params
    assert params["model"] == "tiny" and params["lr"] == "0.001" and params["train_size"] == "200"
    assert params["name"] == "tracked" and params["epochs"] == "2"
    tags = run.data.tags
    assert tags["kosent.data_fingerprint"] == manifest["data_fingerprint"]
    assert tags["kosent.version"] and tags["kosent.kind"] == "train"
    history = json.loads((tmp_path / "tracked" / "summary.json").read_text(encoding="utf-8"))["history"]
    logged = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in logged] == [1, 2]
    assert [m.value for m in logged] == pytest.approx([h["val_macro_f1"] for h in history])
    assert set(history[0]) <= set(run.data.metrics) | {"epoch"}  # the history's keys, every one
    assert run.data.metrics["test_macro_f1"] == pytest.approx(manifest["test_metrics"]["test_macro_f1"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "curves.png", "manifest.json"} <= artifacts
    # No local store was made: everything went to the server.
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.ray
@pytest.mark.timeout(780)
def test_sweep_trials_nest_under_the_sweep_and_the_best_is_registered_and_served(
        ray_cluster, tiny_ready, mlflow_server, client, tmp_path, free_port):
    from kosent import tracking
    from kosent.predict import Predictor
    from kosent.sweep import SweepConfig, run_sweep

    base = TrainConfig(model="tiny", epochs=1, batch_size=16, eval_batch_size=64, max_length=48, keep_checkpoints=1,
                       storage_path=str(tmp_path), tracking=mlflow_server,
                       data=DataConfig(train_size=200, val_size=100, test_size=100))
    sweep = SweepConfig(name="tracked-sweep", storage_path=str(tmp_path), lrs=[1e-3, 3e-3], scales=[1], asha=False,
                        max_concurrent_trials=2)
    result = run_sweep(sweep, base)
    assert result.manifest is not None
    manifest = json.loads(Path(result.manifest).read_text(encoding="utf-8"))

    parents = client.search_runs([manifest["mlflow"]["experiment_id"]],
                                 filter_string="tags.`kosent.kind` = 'sweep' and attributes.run_name = 'tracked-sweep'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["lrs"]) == [1e-3, 3e-3] and parent.data.params["train_size"] == "200"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(float(c.data.params["lr"]) for c in children) == [1e-3, 3e-3]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["kosent.outcome"] == "completed"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_macro_f1")] == [1]
        assert child.data.tags["kosent.data_fingerprint"] == manifest["data_fingerprint"]
        # recorded when the sweep ended, timed when the trial ran (Tune's time_total_s, more than a second)
        assert parent.info.start_time <= child.info.start_time < child.info.end_time - 1000
    best = next(c for c in children if c.data.tags["kosent.trial_id"] == result.best.trial_id)
    assert manifest["mlflow"]["run_id"] == best.info.run_id
    assert manifest["mlflow"]["parent_run_id"] == parent.info.run_id
    assert "test_macro_f1" in best.data.metrics and best.data.tags["kosent.best"] == "true"
    assert {"trials.csv", "manifest.json", "plots"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    # Lineage to the served model: register the best checkpoint, then resolve the alias back to a folder.
    registered = tracking.register(result.manifest, "kosent-test", alias="champion", tracking=mlflow_server)
    assert registered["run_id"] == best.info.run_id and registered["version"] == "1"
    resolved = tracking.resolve_registered_model("models:/kosent-test@champion", tracking=mlflow_server,
                                                 dest=tmp_path / "registry" / "champion")
    assert resolved["run_id"] == best.info.run_id and resolved["version"] == "1"
    assert not (Path(resolved["checkpoint"]) / "training_state").exists()
    predictor = Predictor.from_checkpoint(resolved["checkpoint"])
    assert len(predictor.predict(["정말 재미있어요"])) == 1
    by_version = tracking.resolve_registered_model("models:/kosent-test/1", tracking=mlflow_server,
                                                   dest=tmp_path / "registry" / "v1")
    assert by_version["checkpoint"] != resolved["checkpoint"] and by_version["run_id"] == best.info.run_id

    # Serve deploys the registered version beside the sweep's manifest; GET /model names the run behind each.
    import requests
    from ray import serve

    from kosent.serve import app_builder

    port = free_port(0)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    try:
        serve.run(app_builder({"manifest": str(result.manifest), "models": {"champion": "models:/kosent-test@champion"},
                               "tracking": mlflow_server, "num_cpus": 0.5, "max_replicas": 1}),
                  name="tracked", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        default = requests.get(f"{url}/model", timeout=60).json()
        assert default["mlflow"]["run_id"] == best.info.run_id
        assert default["mlflow"]["parent_run_id"] == parent.info.run_id
        champion = requests.get(f"{url}/model", params={"name": "champion"}, timeout=120).json()
        assert champion["mlflow"] == {"model_uri": "models:/kosent-test@champion", "name": "kosent-test",
                                      "version": "1", "run_id": best.info.run_id, "tracking_uri": mlflow_server}
        assert {m["name"]: m["model_uri"] for m in champion["models"]} == {
            "default": None, "champion": "models:/kosent-test@champion"}
        answer = requests.post(f"{url}/predict", json={"texts": ["정말 재미있어요"], "model": "champion"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == "champion"
    finally:
        serve.shutdown()
