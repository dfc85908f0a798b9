"""Ray Data ingest on the session's real local cluster: what each Ray Train worker gets to train on.

The workers read their shards with ``kosent.data.streaming`` and ``kosent.ray_train``, as the training loop's
workers do, and write what they got to files; the test reads them back. Real NSMC rows, 2 workers x 1 CPU on the
2-CPU cluster (Train holds every CPU: ingest must need none).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from kosent.config import DataConfig
from kosent.data import make_splits

DATA = DataConfig(train_size=301, val_size=60, test_size=60)


def _run_workers(loop, splits, out: Path, workers: int = 2, **config) -> list[dict]:
    """Run ``loop`` in ``workers`` Ray Train workers fed ``splits`` as training feeds them; each writes
    ``<out>/rank_<r>.json``, returned in rank order."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kosent.data import streaming
    from kosent.ray_train import _splits_payload

    datasets = streaming.to_ray_datasets(splits)
    out.mkdir(parents=True)
    TorchTrainer(
        loop,
        train_loop_config={"splits": _splits_payload(splits, list(datasets)), "out": str(out)} | config,
        datasets=datasets,
        dataset_config=streaming.data_config(list(datasets)),
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=out.name, storage_path=str(out.parent / "runs")),
    ).fit()
    return [json.loads((out / f"rank_{r}.json").read_text(encoding="utf-8")) for r in range(workers)]


def _shards(splits, out: Path) -> list[dict]:

    def _report_shards(config: dict) -> None:
        """A Ray Train worker: read this worker's shards whole, and its splits as training does; write them to
        ``<out>/rank_<r>.json``. Nested, so it travels by value: workers cannot import this test module."""
        import ray.train

        from kosent.data import streaming
        from kosent.ray_train import _worker_splits

        splits = _worker_splits(config["splits"])
        train = streaming.read_shard("train")
        unlabelled = streaming.read_shard("unlabelled", columns=("text", streaming.PROBS))
        rank = ray.train.get_context().get_world_rank()
        got = {"train": train.column("text").to_pylist(), "train_labels": train.column("label").to_pylist(),
               "validation": list(splits.validation["text"]), "unlabelled": unlabelled.column("text").to_pylist(),
               "unlabelled_probs": streaming.probs_of(unlabelled, 2).tolist(),
               "left_in_splits": len(splits.train) + len(splits.unlabelled) + len(splits.test),
               "fingerprint": splits.fingerprint}
        Path(config["out"], f"rank_{rank}.json").write_text(json.dumps(got, ensure_ascii=False), encoding="utf-8")

    return _run_workers(_report_shards, splits, out)


def _with_teacher(splits, n: int = 41):
    """``splits`` with ``n`` unlabelled texts and a teacher's probabilities for them (the i-th: i / 64)."""
    unlabelled = [f"라벨 없는 문장 {i}" for i in range(n)]
    probs = np.stack([np.arange(n) / 64, 1 - np.arange(n) / 64], axis=1).astype(np.float32)
    return dataclasses.replace(splits, unlabelled=unlabelled, unlabelled_probs=probs)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_each_worker_gets_an_equal_disjoint_shard_that_repeats_run_after_run(ray_cluster, nsmc_path, tmp_path):
    splits = _with_teacher(make_splits(dataclasses.replace(DATA, path=str(nsmc_path))))
    unlabelled, probs = splits.unlabelled, splits.unlabelled_probs
    first = _shards(splits, tmp_path / "first")

    train = list(splits.train["text"])
    a, b = (set(s["train"]) for s in first)
    assert len(first[0]["train"]) == len(first[1]["train"]) == 150, "equal shards: 301 rows -> 150 + 150"
    assert not a & b and (a | b) <= set(train) and len(a | b) == 300
    by_text = dict(zip(train, splits.train["label"], strict=True))
    for shard in first:
        assert shard["train_labels"] == [by_text[t] for t in shard["train"]], "labels travel with their texts"
        assert shard["validation"] == list(splits.validation["text"]), "validation is read whole, in order"
        assert shard["left_in_splits"] == 0, "no training or test rows besides the shards"
        assert shard["fingerprint"] == splits.fingerprint
    u0, u1 = (set(s["unlabelled"]) for s in first)
    assert len(u0) == len(u1) == 20 and not u0 & u1 and (u0 | u1) <= set(unlabelled)
    for shard in first:  # the teacher's probabilities travel with their texts
        want = [probs[unlabelled.index(t)].tolist() for t in shard["unlabelled"]]
        assert shard["unlabelled_probs"] == want

    again = _shards(splits, tmp_path / "again")
    assert [s["train"] for s in again] == [s["train"] for s in first], "the same rows, in the same order"
    assert [s["unlabelled"] for s in again] == [s["unlabelled"] for s in first]


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("teacher", [False, True], ids=["labelled", "with-teacher"])
def test_workers_stream_their_shard_a_buffer_at_a_time_the_same_rows_every_epoch(
        ray_cluster, nsmc_path, tmp_path, teacher):
    """A worker never holds its shard whole: ``RaySession.training_rows`` reads it in chunks of about
    ``buffer_rows`` every epoch. Two epochs of two workers, buffer 64, 301 labelled rows: 150 each as
    64 + 64 + 22; with a teacher's 41 scored texts (20 each) mixed in: 50 + 7, 50 + 7, 50 + 6."""

    def _report_chunks(config: dict) -> None:
        import ray.train

        from kosent import distill
        from kosent.config import TrainConfig
        from kosent.models import load_tokenizer
        from kosent.ray_train import RaySession, _worker_splits

        cfg = TrainConfig(model="tiny", buffer_rows=config["buffer_rows"], teacher=config["teacher"])
        splits = _worker_splits(config["splits"])
        held: list = []

        def encode(chunk):
            held.append(chunk)
            return distill.encode_rows(load_tokenizer("tiny"), chunk, cfg.max_length)

        session = RaySession(train_rows=config["splits"]["train_rows"],
                             unlabelled_rows=config["splits"]["unlabelled_rows"])
        rows = session.training_rows(cfg, splits, None)
        rows.encode = encode  # the real chunks of the real shards; record what each epoch tokenized
        epochs = []
        for epoch in range(2):
            held.clear()
            n = sum(1 for _ in rows.epoch(cfg.batch_size, 0, seed=epoch))
            epochs.append({"chunks": [[len(c.texts), len(c.scored)] for c in held], "batches": n,
                           "texts": [t for c in held for t in c.texts], "scored": [t for c in held for t in c.scored],
                           "probs": [p for c in held if c.probs is not None for p in c.probs.tolist()],
                           "batches_per_epoch": rows.batches_per_epoch(cfg.batch_size)})
        rank = ray.train.get_context().get_world_rank()
        got = {"left_in_splits": len(splits.train) + len(splits.unlabelled), "epochs": epochs}
        Path(config["out"], f"rank_{rank}.json").write_text(json.dumps(got, ensure_ascii=False), encoding="utf-8")

    splits = make_splits(dataclasses.replace(DATA, path=str(nsmc_path)))
    if teacher:
        splits = _with_teacher(splits)
    ranks = _run_workers(_report_chunks, splits, tmp_path / "chunks", buffer_rows=64,
                         teacher="a-teacher" if teacher else None)
    chunks = [[50, 7], [50, 7], [50, 6]] if teacher else [[64, 0], [64, 0], [22, 0]]
    for rank in ranks:
        assert rank["left_in_splits"] == 0, "the shards are not read whole as well"
        first, second = rank["epochs"]
        assert first["chunks"] == second["chunks"] == chunks
        assert first["batches"] == first["batches_per_epoch"] == (2 + 2 + 2 if teacher else 2 + 2 + 1)
        assert first["texts"] == second["texts"] and first["scored"] == second["scored"], \
            "the same rows in the same order every epoch"
    a, b = (set(r["epochs"][0]["texts"]) for r in ranks)
    assert len(a) == len(b) == 150 and not a & b and (a | b) <= set(splits.train["text"])
    if teacher:
        u0, u1 = (set(r["epochs"][0]["scored"]) for r in ranks)
        assert len(u0) == len(u1) == 20 and not u0 & u1 and (u0 | u1) <= set(splits.unlabelled)
        for rank in ranks:  # each scored text comes with its own probabilities
            epoch = rank["epochs"][0]
            want = [splits.unlabelled_probs[splits.unlabelled.index(t)].tolist() for t in epoch["scored"]]
            assert epoch["probs"] == want  # i / 64: exact in float32
