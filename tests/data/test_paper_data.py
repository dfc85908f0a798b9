"""The paper's news-comment set from the real K-MHaS files: resampled to mostly hate, split like any other."""

from __future__ import annotations

import pytest

from kosent.config import DataConfig
from kosent.data import DataError, load_table, make_splits
from kosent.paper import PaperConfig, kmhas_splits, resample_table


@pytest.fixture(scope="module")
def kmhas_table(kmhas_valid_path, kmhas_test_path):
    return load_table(DataConfig(source="kmhas"))


def test_resampled_table_has_the_asked_share_of_distinct_texts(kmhas_table):
    table = resample_table(kmhas_table, 0.9, 3000, seed=7)
    assert len(table) == 3000 == len(set(table.texts))
    assert table.labels.count(0) == 2700 and table.label_names == ["hate", "not_hate"]
    assert table.extra["kmhas_labels"][0] is not None and len(table.extra["kmhas_labels"]) == 3000
    # Every row is a real row of K-MHaS with its own label.
    original = dict(zip(kmhas_table.texts, kmhas_table.labels, strict=True))
    assert all(original[t] == y for t, y in zip(table.texts, table.labels, strict=True))
    assert resample_table(kmhas_table, 0.9, 3000, seed=7).texts == table.texts
    assert resample_table(kmhas_table, 0.9, 3000, seed=8).texts != table.texts
    assert table.raw_sha256 != kmhas_table.raw_sha256


def test_resampled_splits_keep_the_share_in_every_split_and_differ_from_as_is(kmhas_valid_path, kmhas_test_path):
    cfg = PaperConfig(train_size=1500, val_size=300, test_size=1000, kmhas_negative_fraction=0.85)
    resampled = kmhas_splits(cfg, resampled=True)
    as_is = kmhas_splits(cfg, resampled=False)
    assert resampled.sizes() == as_is.sizes() == {"train": 1500, "validation": 300, "test": 1000}
    for split in ("train", "validation", "test"):
        counts = resampled.report.split_class_counts[split]
        assert counts["hate"] / sum(counts.values()) == pytest.approx(0.85, abs=0.01), split
    assert as_is.report.split_class_counts["test"]["hate"] / 1000 == pytest.approx(0.455, abs=0.02)
    assert resampled.fingerprint != as_is.fingerprint
    assert not set(resampled.test["text"]) & set(resampled.train["text"])


def test_too_large_a_share_names_the_largest_possible(kmhas_table):
    with pytest.raises(DataError, match=r"needs 14,400 distinct 'hate' texts.*largest negative fraction is 0\.87"):
        resample_table(kmhas_table, 0.9, 16_000)
    # The paper's sizes fit with the default share.
    make_splits(DataConfig(source="kmhas"), table=resample_table(kmhas_table, PaperConfig().kmhas_negative_fraction,
                                                                  16_000))
