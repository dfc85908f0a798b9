"""kosent.tracking without a server or a cluster: where runs go, what params and metrics are called, and that
a failing block marks its run FAILED (a real local MLflow store (SQLite) in tmp_path)."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_a_job_without_mlflow_runs_untracked_unless_a_store_was_named(tmp_path, monkeypatch):
    """The paper job resolves one store for all its runs; on a machine without MLflow (kosent's runtime
    packages only, as on the GPU machine) that must mean untracked, not a refusal, unless a store was named."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not importable, as where it is not installed
    assert tracking.tracking_uri(None, str(tmp_path)) is None
    assert tracking.start_run(None, str(tmp_path), kind="paper") is None
    assert tracking.tracking_uri("http://127.0.0.1:5999", str(tmp_path)) == "http://127.0.0.1:5999"
    with pytest.raises(tracking.TrackingError, match="MLflow is not installed"):
        tracking.start_run("http://127.0.0.1:5999", str(tmp_path), kind="paper")


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


def test_serve_resolves_a_registered_version_with_its_run_and_names_what_is_missing(
        tmp_path, client_for, monkeypatch):
    """``models:/`` as a Serve source, against a real local registry (SQLite): the builder only looks the
    version up; a replica downloads it and reports the run behind it; unknown names and a missing registry
    are errors naming what is wrong."""
    from kosent.checkpoint import save_checkpoint
    from kosent.manifest import write_manifest
    from kosent.models import load_model_and_tokenizer
    from kosent.serve import ServeArgs, resolve_models, serving_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("KOSENT_HOME", str(tmp_path / "home"))
    labels = ["negative", "positive"]
    ckpt = tmp_path / "run" / "epoch_1"
    model, tokenizer = load_model_and_tokenizer("tiny", labels)
    save_checkpoint(ckpt, model, tokenizer, label_names=labels, metrics={"val_macro_f1": 0.5},
                    config={"model": "tiny", "max_length": 32}, data_fingerprint="f" * 64)
    run = tracking.start_run(None, str(tmp_path), kind="train", name="tiny")
    with tracking.tracked(run):
        pass
    manifest = write_manifest(tmp_path / "run" / "manifest.json", ckpt, val_metrics={"val_macro_f1": 0.5},
                              extra={tracking.MANIFEST_KEY: run.lineage()})
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    registered = tracking.register(manifest, "kosent-unit", alias="champion")
    assert registered["tracking_uri"] == store and registered["run_id"] == run.run_id

    args = ServeArgs(checkpoint="models:/kosent-unit@champion", tracking=store)
    config = serving_config(args)  # looks the version up, downloads nothing
    assert config["checkpoint"] == "models:/kosent-unit@champion" and config["tracking"] == store
    assert not (tmp_path / "home" / "registry").exists()
    from kosent.serve import ServingConfig

    specs, default = resolve_models(ServingConfig(**config))  # what a replica does
    spec = specs[default]
    assert spec["registered"] == {"model_uri": "models:/kosent-unit@champion", "name": "kosent-unit",
                                  "version": "1", "run_id": run.run_id, "tracking_uri": store}
    assert Path(spec["checkpoint"]).parent == tmp_path / "home" / "registry" / "kosent-unit"
    from kosent.serve.models import load_model

    served = load_model(default, spec, batch_size=8).describe()
    assert served["mlflow"]["run_id"] == run.run_id and served["mlflow"]["version"] == "1"
    by_manifest = load_model("m", resolve_models(ServeArgs(manifest=str(manifest)))[0]["default"], 8).describe()
    assert by_manifest["mlflow"]["run_id"] == run.run_id and by_manifest["mlflow"]["tracking_uri"] == store

    with pytest.raises(tracking.TrackingError, match="models:/kosent-unit/7: not found in the registry"):
        serving_config(ServeArgs(checkpoint="models:/kosent-unit/7", tracking=store))
    monkeypatch.chdir(tmp_path / "run")  # no runs/mlruns here, no MLFLOW_TRACKING_URI
    with pytest.raises(tracking.TrackingError, match="needs a registry"):
        serving_config(ServeArgs(models={"b": "models:/kosent-unit/1"}))
