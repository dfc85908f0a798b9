"""kosent.tracking without a server or a cluster: where runs go, what params and metrics are called, and that
a failing block marks its run FAILED (a real local MLflow store (SQLite) in tmp_path)."""

from __future__ import annotations

import pytest
from needs import missing  # tests/needs.py

from kosent import tracking
from kosent.config import DataConfig, TrainConfig


@pytest.fixture
def client_for():
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        missing(f"mlflow not installed ({e}): pip install -e '.[dev]'")
    return lambda uri: MlflowClient(tracking_uri=uri)


def test_where_runs_go(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri("off", str(tmp_path)) is None
    assert tracking.tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert tracking.tracking_uri("http://127.0.0.1:5999", str(tmp_path)) == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5998")
    assert tracking.tracking_uri(None, str(tmp_path)) == "http://127.0.0.1:5998"
    assert tracking.tracking_uri("OFF", str(tmp_path)) is None  # the flag beats the environment
    assert tracking.explicitly_requested(None)


def test_params_are_config_field_names_and_metrics_history_keys():
    params = tracking.config_params(TrainConfig(lr=1e-4, data=DataConfig(train_size=200, scale=2)))
    assert params["lr"] == "0.0001" and params["train_size"] == "200" and params["scale"] == "2"
    assert "data" not in params and "name" not in params  # no name yet: logged once the run has one
    assert params["max_steps"] == "null" and params["tracking"] == "null"
    row = {"epoch": 2, "val_macro_f1": 0.5, "train_loss": 0.7, "time_total_s": 3.0, "training_iteration": 2,
           "config/lr": 1e-4, "checkpoint_path": "/x", "done": False}
    assert tracking.history_metrics(row) == {"epoch": 2.0, "val_macro_f1": 0.5, "train_loss": 0.7}


def test_a_run_in_the_local_file_store_is_finished_or_failed(tmp_path, client_for, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrainConfig(model="tiny", data=DataConfig(train_size=200))
    run = tracking.start_run(None, str(tmp_path), kind="train", name="ok", params=tracking.config_params(cfg),
                             fingerprint="abc")
    with tracking.tracked(run):
        run.log_history([{"epoch": 1, "val_macro_f1": 0.4}, {"epoch": 2, "val_macro_f1": 0.6}])
        (tmp_path / "curves.png").write_bytes(b"png")
        run.log_artifact(tmp_path / "curves.png")
    with pytest.raises(FloatingPointError):
        failing = tracking.start_run(None, str(tmp_path), kind="train", name="diverged")
        with tracking.tracked(failing):
            raise FloatingPointError("loss is nan")
    client = client_for(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    done = client.get_run(run.run_id)
    assert done.info.status == "FINISHED" and done.data.params["model"] == "tiny"
    assert done.data.tags["kosent.data_fingerprint"] == "abc" and done.data.tags["kosent.kind"] == "train"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_macro_f1")] == [(1, 0.4), (2, 0.6)]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["curves.png"]
    assert (tmp_path / "mlruns" / "artifacts").is_dir()  # beside the database, not in the working directory
    failed = client.get_run(failing.run_id)
    assert failed.info.status == "FAILED" and "FloatingPointError: loss is nan" in failed.data.tags["kosent.error"]
    assert tracking.start_run("off", str(tmp_path), kind="train") is None


def test_registry_uris_and_a_manifest_without_lineage(tmp_path):
    assert tracking.is_registry_uri("models:/kosent/3") and not tracking.is_registry_uri("runs/x/manifest.json")
    with pytest.raises(tracking.TrackingError, match="not a registered model URI"):
        tracking.model_version("models:/", tracking="sqlite:///" + str(tmp_path / "x.db"))
    assert tracking.manifest_lineage({"checkpoint": "x"}) is None
    assert tracking.manifest_lineage({"mlflow": {"run_id": "r1", "tracking_uri": "u"}})["run_id"] == "r1"
