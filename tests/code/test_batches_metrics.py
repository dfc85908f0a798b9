"""Batching and metrics: pure functions, checked against their definitions and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from kosent import batches, distill
from kosent.metrics import classification_metrics, epochs_since_best, is_better


def test_length_buckets_cover_every_index_once_and_pad_less_than_fixed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000).tolist()
    got = batches.batch_indices(lengths, batch_size=32, shuffle=True, seed=1)
    flat = sorted(i for b in got for i in b)
    assert flat == list(range(1000))
    dynamic = sum(len(b) * max(lengths[i] for i in b) for b in got)
    assert dynamic < 0.75 * 1000 * 128, "length buckets should pad far less than fixed 128-token batches"


def test_shards_have_equal_batch_counts_and_do_not_overlap():
    lengths = list(range(5, 105))
    shards = [batches.batch_indices(lengths, 8, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == batches.num_batches(100, 8, 2)
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))


def test_eval_shards_cover_everything():
    lengths = list(range(1, 50))
    shards = [batches.batch_indices(lengths, 8, shuffle=False, rank=r, world_size=2) for r in range(2)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(49))


def test_collate_pads_to_longest_and_masks():
    enc = batches.Encoded(input_ids=[[5, 6, 7], [8]], labels=[1, 0])
    out = batches.collate(enc, [0, 1], pad_id=1)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [1, 0]


def test_the_best_epoch_is_strictly_better_earliest_among_ties_and_measured_over_nan():
    assert is_better(0.8, 0.7) and not is_better(0.7, 0.7) and not is_better(0.6, 0.7)
    assert is_better(3.0, 3.5, "min") and not is_better(3.5, 3.5, "min")
    assert is_better(None, 0.7) and is_better(0.1, None)  # no metric reported / nothing held yet
    assert is_better(9.0, float("nan"), "min") and not is_better(float("nan"), 9.0, "min")
    # Early stop: the best so far and the measured epochs after it (NaN epochs neither count nor reset).
    assert epochs_since_best([4.0, 3.5, 3.6, 3.7], "min") == (3.5, 2)
    assert epochs_since_best([4.0, 3.5, float("nan"), 3.6], "min") == (3.5, 1)
    assert epochs_since_best([0.80, 0.85, 0.85], "max") == (0.85, 1)
    assert epochs_since_best([]) == (None, 0)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    p1 = np.clip(y * 0.6 + rng.random(300) * 0.5, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["negative", "positive"], prefix="val_", loss=0.5)
    pred = probs.argmax(1)
    assert m["val_macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["val_f1_positive"] == pytest.approx(f1_score(y, pred, pos_label=1))
    assert m["val_roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["val_accuracy"] == pytest.approx((pred == y).mean())
    assert m["val_loss"] == 0.5


def _texts(n: int) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(5)
    texts = [f"리뷰 {i} " + "좋다" * int(rng.integers(1, 40)) for i in range(n)]
    return texts, [i % 2 for i in range(n)]


def _encode(texts: list[str], labels: list[int]) -> batches.Encoded:
    return batches.Encoded(input_ids=[[ord(c) for c in t] for t in texts], labels=list(labels))


class _CharTokenizer:
    """One id per character: enough for batching, which sees only ids and lengths."""

    def __call__(self, texts, truncation, max_length, padding):
        return {"input_ids": [[ord(c) for c in t][:max_length] for t in texts]}


def _buffered(texts, labels, buffer_rows, seen_chunks=None, rows=None) -> batches.BufferedRows:
    def chunks():
        for s in range(0, len(texts), buffer_rows):
            if seen_chunks is not None:
                seen_chunks.append(len(texts[s:s + buffer_rows]))
            yield batches.Chunk(texts[s:s + buffer_rows], labels[s:s + buffer_rows])
    sizes = batches.chunk_sizes(len(texts) if rows is None else rows, buffer_rows)
    return batches.BufferedRows(sizes=sizes, chunks=chunks, encode=lambda c: _encode(c.texts, c.labels))


def _mixed(texts, labels, scored, probs, buffer_rows, seen_chunks) -> batches.BufferedRows:
    """Labelled and scored rows read together as a Ray Train worker reads its two shards."""
    plan = batches.MixedPlan.of(len(texts), len(scored), buffer_rows)

    def chunks():
        a, b = plan.labelled_rows, plan.scored_rows
        for k in range(len(plan.sizes)):
            chunk = batches.Chunk(texts[k * a:(k + 1) * a], labels[k * a:(k + 1) * a],
                                  scored[k * b:(k + 1) * b], probs[k * b:(k + 1) * b])
            seen_chunks.append(len(chunk))
            yield chunk
    return batches.BufferedRows(sizes=plan.sizes, chunks=chunks,
                                encode=lambda c: distill.encode_rows(_CharTokenizer(), c, max_length=512))


def _rows(batch) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Each row of a batch as (its unpadded ids, its target distribution)."""
    return [(tuple(int(t) for t in ids[mask.bool()]), tuple(target.tolist())) for ids, mask, target in
            zip(batch["input_ids"], batch["attention_mask"], batch["targets"], strict=True)]


def test_a_stream_that_fits_its_buffer_batches_exactly_as_the_rows_held_whole():
    texts, labels = _texts(203)
    whole = list(batches.InMemoryRows(_encode(texts, labels)).epoch(16, 0, seed=9))
    streamed = list(_buffered(texts, labels, buffer_rows=500).epoch(16, 0, seed=9))
    assert [idx for idx, _ in streamed] == [idx for idx, _ in whole]
    for (_, a), (_, b) in zip(streamed, whole, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_larger_than_its_buffer_holds_one_chunk_and_sees_every_row_once_per_epoch():
    texts, labels = _texts(203)
    held: list[int] = []
    rows = _buffered(texts, labels, buffer_rows=64, seen_chunks=held)
    assert rows.sizes == [64, 64, 64, 11]
    epochs = []
    for seed in (1, 1, 2):
        got = list(rows.epoch(16, 0, seed=seed))
        assert len(got) == rows.batches_per_epoch(16) == 4 + 4 + 4 + 1
        ids = [tuple(int(t) for t in ids[mask.bool()]) for _, b in got for ids, mask in
               zip(b["input_ids"], b["attention_mask"], strict=True)]
        assert sorted(ids) == sorted(tuple(ord(c) for c in t) for t in texts), "every row once per epoch"
        epochs.append(ids)
    assert max(held) == 64, "no more than a buffer of rows is tokenized at once"
    assert epochs[0] == epochs[1] and epochs[0] != epochs[2], "an epoch's order follows its seed"


def test_a_teachers_rows_are_mixed_into_every_buffer_in_the_proportion_of_the_shard():
    texts, labels = _texts(150)
    scored = [f"라벨 없는 {i} " + "별로" * (i % 30) for i in range(60)]
    probs = np.stack([np.arange(60) / 64, 1 - np.arange(60) / 64], axis=1).astype(np.float32)
    whole = distill.encode_rows(_CharTokenizer(), batches.Chunk(texts, labels, scored, probs), max_length=512)
    want = sorted((tuple(ids), tuple(t.tolist())) for ids, t in zip(whole.input_ids, whole.targets, strict=True))

    assert batches.MixedPlan.of(150, 60, 500) == batches.MixedPlan(150, 60, [210]), "one buffer: the whole shard"
    held: list[int] = []
    one = list(_mixed(texts, labels, scored, probs, buffer_rows=500, seen_chunks=held).epoch(16, 0, seed=3))
    in_memory = list(batches.InMemoryRows(whole).epoch(16, 0, seed=3))
    for (_, a), (_, b) in zip(one, in_memory, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a), "a shard that fits batches exactly as one held whole"

    plan = batches.MixedPlan.of(150, 60, 64)
    assert plan == batches.MixedPlan(38, 15, [53, 53, 53, 51])
    held.clear()
    rows = _mixed(texts, labels, scored, probs, buffer_rows=64, seen_chunks=held)
    got = list(rows.epoch(16, 0, seed=3))
    assert len(got) == rows.batches_per_epoch(16) == 4 * 4
    assert held == [53, 53, 53, 51] and max(held) <= 64
    assert sorted(r for _, b in got for r in _rows(b)) == want, "every row once, with its own target"


def test_a_shard_of_another_size_than_promised_fails_instead_of_hanging_the_other_ranks():
    texts, labels = _texts(100)
    with pytest.raises(RuntimeError, match=r"chunk 2 holds 36 rows, expected 64 \(128 rows in 2 chunks\)"):
        list(_buffered(texts, labels, buffer_rows=64, rows=128).epoch(16, 0, seed=0))
    with pytest.raises(RuntimeError, match=r"the stream ended after 1 of 2 chunks"):
        list(_buffered(texts[:64], labels[:64], buffer_rows=64, rows=100).epoch(16, 0, seed=0))
