"""Scoring on the cluster (``kosent.scoring``): Ray Data ``map_batches`` over a pool of actors, on the session's
real local Ray cluster, against the same checkpoints scored in this process."""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest

from kosent.checkpoint import CheckpointError
from kosent.config import DataConfig, TrainConfig
from kosent.data import make_splits
from kosent.distill import teacher_probs, with_unlabelled
from kosent.predict import Predictor
from kosent.scoring import ScorePool, ScoringError, cluster_scorer
from kosent.train import fit_local

DATA = DataConfig(train_size=300, val_size=100, test_size=700)


@pytest.fixture(scope="module")
def data(nsmc_path) -> DataConfig:
    return dataclasses.replace(DATA, path=str(nsmc_path))


@pytest.fixture(scope="module")
def splits(data):
    return make_splits(data)


@pytest.fixture(scope="module")
def checkpoints(data, splits, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scoring")
    tfidf = fit_local(TrainConfig(model="tfidf", data=data), splits, out_dir=root / "tfidf").checkpoint
    tiny = fit_local(TrainConfig(model="tiny", epochs=1, max_steps=6, batch_size=32, max_length=48, data=data),
                     splits, out_dir=root / "tiny").checkpoint
    return {"tfidf": str(tfidf), "tiny": str(tiny)}


@pytest.mark.ray
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["tfidf", "tiny"])
def test_the_pool_scores_every_text_once_in_order_as_one_process_does(ray_cluster, splits, checkpoints, kind):
    texts = list(splits.test["text"])
    # Batches of 64 over 2 actors: 11 batches spread over both, answers gathered back in input order.
    scored = cluster_scorer(checkpoints[kind], ScorePool(actors=2, batch_size=64), what="test split")(texts)
    local = Predictor.from_checkpoint(checkpoints[kind]).predict_proba(texts)
    assert scored.shape == (len(texts), 2) == np.shape(local)
    np.testing.assert_allclose(scored, local, atol=1e-5)
    assert scored.argmax(1).tolist() != [0] * len(texts)  # a real model's answers, not a constant


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_teacher_scored_on_the_cluster_gives_the_distillation_targets_of_one_process(
    ray_cluster, data, splits, checkpoints
):
    cfg = TrainConfig(model="tiny", teacher=checkpoints["tiny"], unlabelled_size=300, data=data)
    on_cluster = with_unlabelled(cfg, splits, cluster_scorer(cfg.teacher, ScorePool(actors=2, batch_size=100)))
    assert len(on_cluster.unlabelled) == 300 and on_cluster.unlabelled_probs.shape == (300, 2)
    held = set(splits.train["text"]) | set(splits.validation["text"]) | set(splits.test["text"])
    assert not held.intersection(on_cluster.unlabelled)
    local = teacher_probs(cfg.teacher, on_cluster.unlabelled, device="cpu")
    np.testing.assert_allclose(on_cluster.unlabelled_probs, local, atol=1e-5)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_a_ray_run_scores_on_the_cluster_when_it_has_gpus_or_nodes_or_is_told(ray_cluster, checkpoints):
    from kosent.ray_train import run_scorer

    # The session's cluster is one CPU node: the driver shares the actors' CPUs and skips their start-up.
    assert run_scorer(TrainConfig(), checkpoints["tiny"], "test split") is None
    assert run_scorer(TrainConfig(score_on="driver", use_gpu=True), checkpoints["tiny"], "test split") is None
    assert callable(run_scorer(TrainConfig(use_gpu=True), checkpoints["tiny"], "test split"))
    assert callable(run_scorer(TrainConfig(score_on="cluster"), checkpoints["tiny"], "test split"))
    with pytest.raises(ValueError, match="score_on"):
        TrainConfig(score_on="gpu")


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_checkpoint_the_actors_cannot_load_is_an_error_naming_it(ray_cluster, checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="not a kosent checkpoint"):
        cluster_scorer(tmp_path, ScorePool())  # refused on the driver, before any actor starts
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["tiny"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ScoringError, match=r"scoring the test split with .*broken on the cluster failed after 0 of 3"):
        cluster_scorer(broken, ScorePool(actors=1), what="test split")(["좋다", "별로", "그저 그래"])


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_pool_the_cluster_cannot_place_fails_in_its_start_timeout_naming_what_it_asked(ray_cluster, checkpoints):
    """An actor reserving more CPUs than the cluster has never starts: scoring says so when its start timeout
    passes, instead of waiting for ever."""
    t0 = time.monotonic()
    with pytest.raises(ScoringError, match=r"no actor of the pool started within 5 s \(each reserves 64 CPU"):
        cluster_scorer(checkpoints["tiny"], ScorePool(actors=1, cpus=64, start_timeout_s=5))(["좋다", "별로"])
    assert time.monotonic() - t0 < 60
