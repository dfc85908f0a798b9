"""Checkpoints, manifests and sweep files on S3 (``s3://`` URIs), against moto's S3 server on 127.0.0.1.

What multi-node runs rely on, without a Ray cluster: kosent.checkpoint's storage helpers (read, write,
fetch a checkpoint into the local cache once), ``Predictor.from_checkpoint`` on a URI, Serve's resolution of
a manifest or checkpoint URI, and the sweep's local mirror that leaves checkpoints in the bucket.
tests/integration/test_multinode.py runs the whole thing on a real three-node cluster.
"""

from __future__ import annotations

import json
import uuid

import pytest

from kosent.checkpoint import (
    META_FILE,
    STATE_DIR,
    CheckpointError,
    delete_file,
    exists,
    fetch_checkpoint,
    read_meta,
    read_text,
    save_checkpoint,
    upload,
    write_text,
)


@pytest.fixture(scope="module")
def s3(moto_s3):
    """(bucket URI, endpoint): a bucket of its own on the session's moto server (127.0.0.1)."""
    endpoint, new_bucket = moto_s3
    return f"s3://{new_bucket('kosent-unit')}", endpoint


@pytest.fixture()
def env(s3, monkeypatch, tmp_path):
    bucket, endpoint = s3
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "KOSENT_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    return f"{bucket}/{uuid.uuid4().hex[:8]}"  # a fresh prefix per test


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny BERT checkpoint folder with a training_state/ like the loop writes."""
    from kosent.models import load_model_and_tokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "epoch_1"
    model, tokenizer = load_model_and_tokenizer("tiny", ["negative", "positive"])
    save_checkpoint(folder, model, tokenizer, label_names=["negative", "positive"], metrics={"val_macro_f1": 0.5},
                    config={"model": "tiny", "max_length": 32}, data_fingerprint="f" * 64)
    (folder / STATE_DIR).mkdir()
    (folder / STATE_DIR / "state.json").write_text("{}")
    return folder


@pytest.mark.timeout(120)
def test_text_files_on_s3(env):
    location = f"{env}/a/b.json"
    assert not exists(location)
    write_text(location, '{"x": "한국어"}')
    assert exists(location) and exists(f"{env}/a") and json.loads(read_text(location)) == {"x": "한국어"}
    delete_file(location)
    delete_file(location)  # gone already: fine
    assert not exists(location)
    with pytest.raises(FileNotFoundError, match="b.json: not found"):
        read_text(location)


@pytest.mark.timeout(180)
def test_checkpoint_on_s3_is_read_in_place_fetched_once_and_predicts(env, tiny_checkpoint, tmp_path):
    from kosent.config import cache_home
    from kosent.predict import Predictor

    uri = f"{env}/runs/r1/epoch_1"
    upload(tiny_checkpoint, uri)
    assert read_meta(uri)["label_names"] == ["negative", "positive"]
    local = fetch_checkpoint(uri)
    assert local.parent == cache_home() / "remote" / "checkpoints" and local.name.startswith("epoch_1-")
    assert (local / META_FILE).is_file() and (local / "model.safetensors").is_file()
    assert not (local / STATE_DIR).exists(), "optimizer state is not needed to serve or score"
    stamp = (local / "model.safetensors").stat().st_mtime_ns
    assert fetch_checkpoint(uri + "/") == local and (local / "model.safetensors").stat().st_mtime_ns == stamp

    # The same URI rewritten with another kosent.json is a new folder, not the stale copy.
    meta = json.loads(read_text(f"{uri}/{META_FILE}"))
    write_text(f"{uri}/{META_FILE}", json.dumps(meta | {"created_at": "later"}))
    assert fetch_checkpoint(uri) != local

    (pred,) = Predictor.from_checkpoint(uri).predict(["배우들 연기가 정말 좋았어요"])
    assert pred.label in ("negative", "positive") and abs(sum(pred.scores.values()) - 1) < 1e-5

    with pytest.raises(CheckpointError, match="no kosent.json"):
        read_meta(f"{env}/runs/nothing-here")


@pytest.mark.timeout(180)
def test_serve_resolves_manifests_and_checkpoints_on_s3(env, tiny_checkpoint, tmp_path):
    from kosent.manifest import write_manifest
    from serve.app import ServeArgs, resolve_source, serving_config

    ckpt = f"{env}/runs/r2/epoch_1"
    upload(tiny_checkpoint, ckpt)
    manifest = write_manifest(tmp_path / "manifest.json", ckpt, val_metrics={"val_macro_f1": 0.5})
    assert json.loads(manifest.read_text())["checkpoint"] == ckpt  # named by URI, label map read from S3
    upload(manifest, f"{env}/sweep/manifest.json")

    # The builder only checks (no download); replicas fetch into their node's cache.
    checked = resolve_source(f"{env}/sweep/manifest.json", fetch=False)
    assert checked == {"source": f"{env}/sweep/manifest.json", "manifest": f"{env}/sweep/manifest.json",
                       "checkpoint": ckpt, "checkpoint_uri": ckpt}
    fetched = resolve_source(f"{env}/sweep", fetch=True)  # a prefix holding manifest.json
    assert fetched["manifest"] == f"{env}/sweep/manifest.json" and fetched["checkpoint_uri"] == ckpt
    assert fetched["checkpoint"] == str(fetch_checkpoint(ckpt))
    direct = resolve_source(ckpt)
    assert direct["manifest"] is None and direct["checkpoint"] == fetched["checkpoint"]
    local_manifest = resolve_source(str(manifest), fetch=False)  # a local manifest naming an S3 checkpoint
    assert local_manifest["manifest"] == str(manifest) and local_manifest["checkpoint_uri"] == ckpt

    config = serving_config(ServeArgs(manifest=f"{env}/sweep/manifest.json", models={"b": ckpt}))
    assert config["manifest"] == f"{env}/sweep/manifest.json" and config["models"] == {"b": ckpt}

    with pytest.raises(FileNotFoundError, match="neither a manifest.json nor a checkpoint"):
        resolve_source(f"{env}/empty")
    with pytest.raises(ValueError, match="manifest not found"):
        resolve_source(f"{env}/missing/manifest.json")


@pytest.mark.timeout(120)
def test_sweep_mirror_leaves_checkpoints_in_the_bucket(env, tmp_path):
    from kosent.sweep import SweepConfig, sweep_dir, sweep_location
    from kosent.sweep.results import mirror

    sweep = SweepConfig(name="s1", storage_path=f"{env}/sweeps/")
    assert sweep_location(sweep) == f"{env}/sweeps/s1"
    assert sweep_dir(sweep).parts[-3:] == ("remote", "sweeps", "s1")
    for name in ("experiment_state-x.json", "t1_lr=0.001/result.json", "train_runs/t1/kosent_trial.json",
                 "train_runs/t1/checkpoint_manager_snapshot.json", "train_runs/t1/epoch_1/model.safetensors",
                 "train_runs/t1/epoch_1/training_state/state.json"):
        write_text(f"{sweep_location(sweep)}/{name}", "{}")
    (tmp_path / "mirror" / "stale").mkdir(parents=True)
    mirror(sweep_location(sweep), tmp_path / "mirror")
    got = sorted(p.relative_to(tmp_path / "mirror").as_posix() for p in (tmp_path / "mirror").rglob("*") if p.is_file())
    assert got == ["experiment_state-x.json", "t1_lr=0.001/result.json",
                   "train_runs/t1/checkpoint_manager_snapshot.json", "train_runs/t1/kosent_trial.json"]
