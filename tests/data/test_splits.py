"""make_splits on the real NSMC file: sizes, nesting, stability across scales, overlap, balance."""

from __future__ import annotations

import dataclasses
import time

import pytest

from kosent import data
from kosent.config import DataConfig


def col(ds, name: str) -> list:
    """One column of a datasets.Dataset as a list (to_dict is Arrow-fast; iterating a Column is not)."""
    return ds.to_dict()[name]


TRAIN_SIZE = 2_000


@pytest.fixture(scope="module")
def nsmc(nsmc_path):
    return data.read_nsmc(nsmc_path)


@pytest.fixture(scope="module")
def cfg(nsmc_path):
    return DataConfig(
        source="nsmc", path=str(nsmc_path), train_size=TRAIN_SIZE, val_size=1_000, test_size=5_000
    )


@pytest.fixture(scope="module")
def by_scale(nsmc, cfg):
    return {s: data.make_splits(dataclasses.replace(cfg, scale=s), nsmc) for s in (1, 2, 3)}


def test_load_and_split_is_fast(cfg):
    start = time.perf_counter()
    splits = data.make_splits(cfg)  # reads the file itself
    elapsed = time.perf_counter() - start
    print(f"NSMC load + split: {elapsed:.2f}s")
    assert splits.sizes() == {"train": TRAIN_SIZE, "validation": 1_000, "test": 5_000}
    assert elapsed < 20  # about 2 s on 2 cores; generous for a loaded CI machine


def test_sizes_per_scale(by_scale):
    for scale, splits in by_scale.items():
        assert splits.sizes() == {"train": TRAIN_SIZE * scale, "validation": 1_000, "test": 5_000}
        assert splits.label_names == ["negative", "positive"]
        for ds in (splits.train, splits.validation, splits.test):
            assert ds.column_names == ["text", "label"]
            assert (ds.features["text"].dtype, ds.features["label"].dtype) == ("string", "int64")


def test_larger_scales_contain_smaller(by_scale):
    trains = {s: col(by_scale[s].train, "text") for s in by_scale}
    assert set(trains[1]) < set(trains[2]) < set(trains[3])
    assert trains[3][: len(trains[1])] == trains[1]  # the same order, not just the same set


def test_validation_and_test_do_not_change_with_scale(by_scale):
    base = by_scale[1]
    for splits in by_scale.values():
        assert col(splits.validation, "text") == col(base.validation, "text")
        assert col(splits.test, "text") == col(base.test, "text")
        assert col(splits.test, "label") == col(base.test, "label")


def test_no_text_in_two_splits(by_scale):
    for splits in by_scale.values():
        assert splits.report.split_overlap == {"train&validation": 0, "train&test": 0, "validation&test": 0}
        tr, va, te = (
            set(col(splits.train, "text")),
            set(col(splits.validation, "text")),
            set(col(splits.test, "text")),
        )
        assert not (tr & va or tr & te or va & te)
        assert len(tr) == len(splits.train)  # de-duplicated within the split too


def test_conflicting_texts_are_dropped(by_scale, nsmc):
    splits = by_scale[3]
    dedup = splits.report.dedup
    assert dedup["conflicting_texts_removed"] == 158
    assert dedup["rows_in"] == 149_995
    assert dedup["pool"] + dedup["duplicate_rows_removed"] + dedup["conflicting_rows_removed"] == 149_995
    everything = (
        set(col(splits.train, "text")) | set(col(splits.validation, "text")) | set(col(splits.test, "text"))
    )
    assert "굿" not in everything  # carries both labels in NSMC


def test_class_balance_matches_pool(by_scale):
    for splits in by_scale.values():
        pool = splits.report.split_class_counts["pool"]
        pool_pos = pool["positive"] / sum(pool.values())
        for ds in (splits.train, splits.validation, splits.test):
            pos = sum(col(ds, "label")) / len(ds)
            assert abs(pos - pool_pos) < 0.01, (len(ds), pos, pool_pos)


def test_same_seed_same_splits_other_seed_different(nsmc, cfg, by_scale):
    again = data.make_splits(cfg, nsmc)
    assert again.fingerprint == by_scale[1].fingerprint
    assert col(again.train, "text") == col(by_scale[1].train, "text")
    assert col(again.test, "text") == col(by_scale[1].test, "text")
    other = data.make_splits(dataclasses.replace(cfg, split_seed=cfg.split_seed + 1), nsmc)
    assert other.fingerprint != by_scale[1].fingerprint
    assert col(other.test, "text") != col(by_scale[1].test, "text")
    assert len({s.fingerprint for s in by_scale.values()}) == 3


def test_too_large_says_how_many_are_available(nsmc, cfg):
    with pytest.raises(data.DataError) as err:
        data.make_splits(dataclasses.replace(cfg, train_size=100_000, scale=2), nsmc)
    msg = str(err.value)
    available = by_pool_size(nsmc) - 6_000
    assert f"only {available:,} are available" in msg and "200,000" in msg


def by_pool_size(table) -> int:
    labels_of: dict[str, set[int]] = {}
    for text, label in zip(table.texts, table.labels, strict=True):
        labels_of.setdefault(text, set()).add(label)
    return sum(len(v) == 1 for v in labels_of.values())


def test_save_and_load_round_trip(by_scale, tmp_path):
    splits = by_scale[2]
    splits.save(tmp_path / "splits")
    loaded = data.Splits.load(tmp_path / "splits")
    assert loaded.sizes() == splits.sizes()
    assert loaded.fingerprint == splits.fingerprint and loaded.label_names == splits.label_names
    assert loaded.report.to_dict() == splits.report.to_dict()
    for name in ("train", "validation", "test"):
        assert col(getattr(loaded, name), "text") == col(getattr(splits, name), "text")
        assert col(getattr(loaded, name), "label") == col(getattr(splits, name), "label")


def test_report_summary(by_scale):
    text = by_scale[1].report.summary()
    print(text)
    assert "dedup:" in text and "split train: 2,000 rows" in text and "train&test 0" in text


def test_kmhas_splits(kmhas_valid_path, kmhas_test_path):
    cfg = DataConfig(source="kmhas", path=str(kmhas_valid_path.parent), train_size=2_000, scale=2)
    splits = data.make_splits(cfg)
    assert splits.sizes() == {"train": 4_000, "validation": 1_000, "test": 5_000}
    assert splits.label_names == ["hate", "not_hate"]
    assert splits.report.split_overlap == {"train&validation": 0, "train&test": 0, "validation&test": 0}
    read = data.make_splits(cfg, data.load_table(cfg))  # the same two files read whole first: the same splits
    assert read.fingerprint == splits.fingerprint and col(read.test, "text") == col(splits.test, "text")
    assert [p["rows_kept"] for p in read.report.parts] == [p["rows_kept"] for p in splits.report.parts]
    assert (splits.report.duplicate_texts, splits.report.conflicting_texts) == (
        read.report.duplicate_texts, read.report.conflicting_texts)
    assert "duplicate_texts" not in splits.report.parts[0]  # counted over both files, never per streamed file


def test_streamed_splits_and_report_equal_the_read_tables(nsmc, cfg, by_scale):
    """make_splits(cfg) streams the file through the hash window; make_splits(cfg, table) feeds the rows of a
    table read whole. Same rows, same report: 150,000 read, 5 skipped, the same classes and duplicates."""
    streamed = data.make_splits(cfg)
    read = by_scale[1]
    assert streamed.fingerprint == read.fingerprint
    for name in ("train", "validation", "test"):
        assert col(getattr(streamed, name), "text") == col(getattr(read, name), "text")
        assert col(getattr(streamed, name), "label") == col(getattr(read, name), "label")
    report = streamed.report
    assert (report.rows_read, report.rows_kept, report.skipped) == (150_000, 149_995, {"empty_text": 5})
    assert report.class_counts == nsmc.report.class_counts == {"negative": 75_170, "positive": 74_825}
    assert (report.duplicate_texts, report.conflicting_texts) == (
        nsmc.report.duplicate_texts,
        nsmc.report.conflicting_texts,
    )
    assert report.to_dict() == read.report.to_dict()
    assert report.dedup["exact"] is True


def test_a_text_lands_in_its_split_whatever_else_is_in_the_file(nsmc, cfg, by_scale):
    """The split of a text is decided by its hash: dropping rows that were not chosen moves nothing else."""
    chosen = {t for name in ("train", "validation", "test") for t in col(getattr(by_scale[1], name), "text")}
    keep = [i for i, t in enumerate(nsmc.texts) if t in chosen or i % 2 == 0]
    half = data.Table(
        [nsmc.texts[i] for i in keep], [nsmc.labels[i] for i in keep], nsmc.label_names, nsmc.report, "0" * 64
    )
    again = data.make_splits(cfg, half)
    shared = set(col(again.test, "text")) & set(col(by_scale[1].test, "text"))
    assert len(shared) > 0.9 * cfg.test_size  # the class interleaving shifts with the pool's balance, a little
    assert not set(col(again.test, "text")) & set(col(by_scale[1].train, "text"))
