"""kosent.storage on a local folder and on S3 (``s3://`` URIs, moto's S3 server on 127.0.0.1), and the
checkpoints, manifests and sweep files that live there.

What multi-node runs rely on, without a Ray cluster: kosent.storage (read, write, copy, the same checks on
both sides), kosent.checkpoint's fetch of a checkpoint into the local cache
once, ``Predictor.from_checkpoint`` on a URI, Serve's resolution of a manifest or checkpoint URI, and the
sweep's local mirror that leaves checkpoints in the bucket.
tests/integration/test_multinode.py runs the whole thing on a real three-node cluster.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from kosent.checkpoint import (
    META_FILE,
    STATE_DIR,
    CheckpointError,
    fetch_checkpoint,
    read_meta,
    save_checkpoint,
)
from kosent.storage import (
    absolute,
    check_writable,
    copy_files,
    delete_file,
    exists,
    is_empty,
    is_uri,
    join,
    kind,
    read_text,
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


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """A fresh folder: local, or a prefix in the moto bucket (the same assertions hold on both)."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("env")


@pytest.mark.timeout(120)
def test_locations_are_named_and_inspected_alike(base):
    assert is_uri(base) == base.startswith("s3://")
    assert join(base, "runs", "r1") == (f"{base}/runs/r1" if is_uri(base) else str(Path(base) / "runs" / "r1"))
    assert absolute(base) == base and absolute("x") == str(Path.cwd() / "x")
    assert kind(base) is None and is_empty(base) and not exists(base)
    write_text(join(base, "a", "b.txt"), "가")
    assert kind(join(base, "a")) == "folder" and kind(join(base, "a", "b.txt")) == "file"
    assert not is_empty(join(base, "a")) and read_text(join(base, "a", "b.txt")) == "가"
    check_writable(join(base, "runs"))  # leaves no probe behind
    assert is_empty(join(base, "runs"))


@pytest.mark.timeout(120)
def test_copy_files_any_direction_skips_and_overwrites(base, tiny_checkpoint, tmp_path):
    def skip_state(rel: str) -> bool:
        return rel.split("/", 1)[0] == STATE_DIR

    want = sorted(p.relative_to(tiny_checkpoint).as_posix() for p in tiny_checkpoint.rglob("*")
                  if p.is_file() and STATE_DIR not in p.parts)
    up = join(base, "up")
    written = copy_files(tiny_checkpoint, up, skip=skip_state)
    assert sorted(written) == sorted(join(up, rel) for rel in want)
    there = join(base, "there")
    copy_files(up, there)  # within one side
    down = tmp_path / "down"
    copy_files(there, down)
    got = sorted(p.relative_to(down).as_posix() for p in down.rglob("*") if p.is_file())
    assert got == want
    assert (down / META_FILE).read_bytes() == (tiny_checkpoint / META_FILE).read_bytes()
    copy_files(tiny_checkpoint / "config.json", join(base, "one", "config.json"))  # a single file
    assert read_text(join(base, "one", "config.json")) == (tiny_checkpoint / "config.json").read_text()
    write_text(join(base, "one", "config.json"), "{}")
    copy_files(tiny_checkpoint / "config.json", join(base, "one", "config.json"))
    assert read_text(join(base, "one", "config.json")) != "{}"
    with pytest.raises(FileNotFoundError, match="nothing there to copy"):
        copy_files(join(base, "missing"), tmp_path / "x")


@pytest.mark.timeout(120)
def test_data_files_are_read_from_storage_as_from_a_local_folder(base, tmp_path):
    """nsmc with path=<URI>, kmhas from a folder URI, and a Parquet / CSV source URI give the tables (rows,
    report, hash) that the same files give locally."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kosent.config import DataConfig
    from kosent.data import DataError, load_table, read_nsmc

    local = tmp_path / "files"
    local.mkdir()
    (local / "ratings_small.txt").write_bytes("id\tdocument\tlabel\n1\t최고의 영화\t1\n2\t\t0\n3\t지루했다\t0\n".encode())
    (local / "kmhas_valid.txt").write_text("document\tlabel\n나쁜 말\t0,1\n좋은 말\t8\n", encoding="utf-8")
    (local / "kmhas_test.txt").write_text("document\tlabel\n그냥 말\t8\n", encoding="utf-8")
    (local / "reviews.csv").write_text('text,label\n"좋아요, 정말",1\n별로,0\n', encoding="utf-8")
    pq.write_table(pa.table({"text": ["좋다", "싫다"], "label": [1, 0]}), local / "reviews.parquet")
    (local / "parts").mkdir()
    pq.write_table(pa.table({"text": ["첫 부분", ""], "label": [1, 0]}), local / "parts" / "part-0.parquet")
    pq.write_table(pa.table({"text": ["둘째 부분"], "label": [0]}), local / "parts" / "part-1.parquet")
    (local / "parts" / "README.md").write_text("not data", encoding="utf-8")
    remote = join(base, "data")
    copy_files(local, remote)
    pairs = [
        (DataConfig(source="nsmc", path=join(remote, "ratings_small.txt")),
         DataConfig(source="nsmc", path=str(local / "ratings_small.txt"))),
        (DataConfig(source="kmhas", path=remote), DataConfig(source="kmhas", path=str(local))),
        (DataConfig(source=join(remote, "reviews.csv")), DataConfig(source=str(local / "reviews.csv"))),
        (DataConfig(source=join(remote, "reviews.parquet")), DataConfig(source=str(local / "reviews.parquet"))),
        (DataConfig(source=join(remote, "parts")), DataConfig(source=str(local / "parts"))),
    ]
    for there_cfg, here_cfg in pairs:
        there, here = load_table(there_cfg), load_table(here_cfg)
        assert (there.texts, there.labels, there.raw_sha256) == (here.texts, here.labels, here.raw_sha256)
        assert there.report.skipped == here.report.skipped and there.report.examples == here.report.examples
    assert load_table(pairs[0][0]).report.examples == {"empty_text": [3]}
    parts = load_table(pairs[-1][0])  # a folder: its table files in name order, one report part each
    assert parts.texts == ["첫 부분", "둘째 부분"] and [p["rows_read"] for p in parts.report.parts] == [2, 1]
    assert parts.report.examples == {"part-0.parquet:empty_text": [2]}
    assert load_table(pairs[0][0]).report.source == join(remote, "ratings_small.txt")
    with pytest.raises(DataError, match="NSMC file not found: .*nothing.txt"):
        load_table(DataConfig(source="nsmc", path=join(remote, "nothing.txt")))
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        load_table(DataConfig(source=join(remote, "nope.csv")))
    with pytest.raises(DataError, match="is a folder, expected a data file"):
        read_nsmc(remote)


@pytest.mark.timeout(60)
def test_an_unwritable_storage_path_is_refused_before_a_run(tmp_path):
    from kosent.ray_train import TrainSetupError, check_storage

    (tmp_path / "a-file").write_text("not a folder")  # unwritable below it for every user, root included
    with pytest.raises(TrainSetupError, match=r"storage_path '.*a-file/runs' is not writable: .*--storage-path"):
        check_storage(str(tmp_path / "a-file" / "runs"))


@pytest.mark.timeout(180)
def test_checkpoint_on_s3_is_read_in_place_fetched_once_and_predicts(env, tiny_checkpoint, tmp_path):
    from kosent.config import cache_home
    from kosent.predict import Predictor

    uri = f"{env}/runs/r1/epoch_1"
    copy_files(tiny_checkpoint, uri)
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
    copy_files(tiny_checkpoint, ckpt)
    manifest = write_manifest(tmp_path / "manifest.json", ckpt, val_metrics={"val_macro_f1": 0.5})
    assert json.loads(manifest.read_text())["checkpoint"] == ckpt  # named by URI, label map read from S3
    copy_files(manifest, f"{env}/sweep/manifest.json")

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
