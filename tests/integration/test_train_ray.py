"""Ray Train end to end on the session's real local cluster: the tiny model on real NSMC rows.

One uninterrupted 2-worker, 3-epoch run (``reference``) is the yardstick: a run interrupted by a killed
worker and resumed with ``resume=True``, and a run whose worker is killed mid-epoch and restarted by
``FailureConfig(max_failures=1)``, must both end where it ends (the loop re-seeds per epoch, so they
match it exactly up to float noise).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from needs import missing  # tests/needs.py
from safetensors.numpy import load_file

from kosent.config import DataConfig, TrainConfig
from kosent.data import DataError, make_splits
from kosent.models import ModelError
from kosent.predict import Predictor
from kosent.ray_train import TrainRunError, TrainSetupError, fit

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
@pytest.mark.timeout(420)
def test_resume_continues_an_interrupted_run_to_the_same_state(reference, base_cfg, splits, tmp_path):
    cfg = dataclasses.replace(base_cfg, name="interrupted")
    # Killed in epoch 2 (global step 7 of 15) with no retries: the run fails after checkpointing epoch 1.
    fault = {"step": 7, "rank": 1, "kind": "kill", "marker": str(tmp_path / "killed")}
    with pytest.raises(TrainRunError, match="--resume --name interrupted"):
        fit(cfg, splits, fault=fault)
    run_dir = Path(cfg.storage_path) / "interrupted"
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
def test_killed_worker_is_restarted_from_the_last_checkpoint(reference, base_cfg, splits, tmp_path):
    marker = tmp_path / "killed"
    cfg = dataclasses.replace(base_cfg, name="worker-killed", max_failures=1)
    result = fit(cfg, splits, fault={"step": 7, "rank": 1, "kind": "kill", "marker": str(marker)})
    assert marker.exists(), "the fault never fired"
    restored = json.loads(Path(f"{marker}.restored").read_text(encoding="utf-8"))
    assert restored["restored_epoch"] == 1, "the restarted workers did not start from the epoch 1 checkpoint"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
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
    _expect_fast_failure(TrainSetupError, r"gpus_per_worker must be in \(0, 1\] \(got 1.5\)",
                         dataclasses.replace(cfg, use_gpu=True, gpus_per_worker=1.5), splits)
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
@pytest.mark.timeout(420)
def test_two_workers_distil_from_a_teacher_with_mean_pooling(ray_cluster, base_cfg, splits, tmp_path):
    from kosent.train import fit_local

    teacher = fit_local(TrainConfig(model="tfidf", data=base_cfg.data), splits, out_dir=tmp_path / "teacher").checkpoint
    cfg = dataclasses.replace(base_cfg, name="distil", epochs=1, teacher=str(teacher), unlabelled_size=340,
                              pooling="mean", layer_decay=0.9)
    result = fit(cfg, splits)
    # The driver sent the unlabelled texts; each worker scored its share of (300 + 340) rows with the teacher.
    assert result.metrics["step"] == -(-(300 + 340) // 32) // 2
    meta = json.loads((Path(result.checkpoint) / "kosent.json").read_text())
    assert meta["config"]["teacher"] == str(teacher) and meta["config"]["pooling"] == "mean"
    assert json.loads((Path(result.checkpoint) / "config.json").read_text())["model_type"] == "kosent-bert-mean"
    preds = Predictor.from_checkpoint(result.checkpoint).predict(TEXTS)
    assert {p.label for p in preds} <= set(splits.label_names)
