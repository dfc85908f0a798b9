"""Batching and metrics: pure functions, checked against their definitions and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from kosent import batches
from kosent.metrics import classification_metrics


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
