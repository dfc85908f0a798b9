"""Train / validation / test from a source: de-duplicated, stratified, nested scales, fingerprinted.

Rows are assigned by a seeded hash of their normalized text (:mod:`kosent.data.selection`) in one
streaming pass over the source, so a source of any size is never a table in memory, duplicates land in
the same split and no text crosses splits. The test and validation rows depend only on the source and the
seed, never on ``train_size`` or ``scale``, so every run of a sweep is scored on the same rows and a larger
scale contains every smaller one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from kosent.config import DataConfig
from kosent.data.report import DataError, DataReport, Table, rows_to
from kosent.data.selection import KeyWindow, UnseenWindow
from kosent.data.sources import load_table

if TYPE_CHECKING:
    import datasets


# Bumped whenever make_splits would choose different rows for the same inputs (2: rows chosen by the hash
# of their text in one streaming pass; 1 shuffled the whole de-duplicated table).
SPLIT_ALGORITHM_VERSION = 2

SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Splits:
    """Train / validation / test as ``datasets.Dataset`` (columns ``text: string``, ``label: int64``)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str]
    fingerprint: str
    report: DataReport
    # Texts of the source outside all three splits and the teacher's probabilities for them (rows x labels),
    # for distillation (kosent.distill fills both when a run has a teacher); not part of the fingerprint and
    # not saved by ``save``.
    unlabelled: list[str] = field(default_factory=list)
    unlabelled_probs: np.ndarray | None = None

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``<folder>/{train,validation,test}/`` (Arrow, ``save_to_disk``) and ``splits.json``."""
        from datasets.utils import logging as ds_logging

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        quiet = ds_logging.is_progress_bar_enabled()
        if quiet:
            ds_logging.disable_progress_bar()  # three small writes; no progress bars in logs
        try:
            for name in SPLIT_NAMES:
                getattr(self, name).save_to_disk(str(folder / name))
        finally:
            if quiet:
                ds_logging.enable_progress_bar()
        meta = {
            "label_names": self.label_names,
            "fingerprint": self.fingerprint,
            "sizes": self.sizes(),
            "report": self.report.to_dict(),
        }
        (folder / "splits.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Splits:
        import datasets

        folder = Path(folder)
        meta_path = folder / "splits.json"
        if not meta_path.is_file():
            raise DataError(f"{folder}: not a saved Splits folder (no splits.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: not valid JSON: {e}") from e
        parts = {}
        for name in SPLIT_NAMES:
            if not (folder / name).is_dir():
                raise DataError(f"{folder}: split folder '{name}' is missing")
            parts[name] = datasets.load_from_disk(str(folder / name))
        return cls(
            **parts,
            label_names=list(meta["label_names"]),
            fingerprint=meta["fingerprint"],
            report=DataReport.from_dict(meta["report"]),
        )


def unlabelled_pool(cfg: DataConfig, excluded: set[str], seed: int, limit: int | None = None) -> UnseenWindow:
    """The unlabelled pool of pretraining and distillation, streamed from ``cfg``'s source (labels unread):
    every distinct text not in ``excluded``, in a seeded hash order, at most ``limit``; ``.finish()`` gives
    the texts, ``.available`` how many there were to choose from.

    ``excluded`` holds the texts a run must never train on without their labels (validation and test, and
    for distillation the training texts too)."""
    window = UnseenWindow(excluded, seed, limit)
    with rows_to(window):
        load_table(cfg)
    return window


def as_dataset(texts: Sequence[str] | pa.Array, labels: Sequence[int] | pa.Array) -> datasets.Dataset:
    """A split as ``datasets.Dataset`` (``text: string``, ``label: int64``) from lists or Arrow arrays."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    # Arrow arrays skip the per-example encoding from_dict does on Python lists (10x faster).
    columns = {"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.int64())}
    return datasets.Dataset.from_dict(columns, features=features)


def _check_sizes(cfg: DataConfig) -> None:
    for name in ("train_size", "val_size", "test_size", "scale", "split_seed"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{name} must be an integer, got {value!r}")
    if cfg.train_size < 1 or cfg.scale < 1:
        raise DataError(f"train_size and scale must be >= 1, got {cfg.train_size} and {cfg.scale}")
    if cfg.val_size < 0 or cfg.test_size < 0:
        raise DataError(f"val_size and test_size must be >= 0, got {cfg.val_size} and {cfg.test_size}")


def split_fingerprint(raw_sha256: str, cfg: DataConfig, label_names: list[str]) -> str:
    """sha256 over the source bytes' hash, the source and every split setting."""
    key = {
        "algorithm": SPLIT_ALGORITHM_VERSION,
        "raw_sha256": raw_sha256,
        "source": cfg.source,
        "train_size": cfg.train_size,
        "val_size": cfg.val_size,
        "test_size": cfg.test_size,
        "scale": cfg.scale,
        "split_seed": cfg.split_seed,
        "label_names": list(label_names),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def make_splits(cfg: DataConfig, table: Table | None = None) -> Splits:
    """De-duplicate, then carve stratified test and validation splits and a nested training set.

    1. One row per normalized text; texts that carry more than one label are dropped entirely.
    2. The distinct texts are put in one order: each class by the seeded hash of its texts, the classes
       interleaved so every prefix keeps the pool's class balance (:mod:`kosent.data.selection`).
    3. test = the first ``test_size`` rows, validation = the next ``val_size``; both depend only on
       the source and the seed, never on ``train_size`` or ``scale``.
    4. train = the next ``train_size * scale`` rows, so a larger scale contains every smaller one.

    Without ``table`` the source is streamed through the readers and only the rows the splits can draw
    from are held; with ``table`` (a resampled or already read table) its rows are fed the same way.
    """
    _check_sizes(cfg)
    n_train = cfg.train_size * cfg.scale
    window = KeyWindow(cfg.test_size + cfg.val_size + n_train, cfg.split_seed)
    if table is None:
        with rows_to(window):
            table = load_table(cfg)
    else:
        window.start(table.label_names)
        for text, label in zip(table.texts, table.labels, strict=True):
            window.add(text, label)
    source = table.report.source
    chosen = window.finish(source)
    if not table.texts:  # streamed: the window counted the duplicates over the whole source
        table.report.duplicate_texts = window.rows - chosen.distinct_texts
        table.report.conflicting_texts = chosen.conflicting_texts
    about = "" if chosen.exact else "about "
    n_pool = chosen.pool
    if cfg.test_size + cfg.val_size >= n_pool:
        raise DataError(
            f"{source}: test_size {cfg.test_size:,} + val_size {cfg.val_size:,} leave no training rows: "
            f"only {about}{n_pool:,} distinct texts are available after de-duplication"
        )
    available = n_pool - cfg.test_size - cfg.val_size
    if n_train > available or len(chosen.texts) < cfg.test_size + cfg.val_size + n_train:
        raise DataError(
            f"{source}: train_size {cfg.train_size:,} x scale {cfg.scale} = {n_train:,} training rows "
            f"requested but only {about}{available:,} are available ({about}{n_pool:,} distinct texts after "
            f"de-duplication minus test_size {cfg.test_size:,} and val_size {cfg.val_size:,}); "
            f"the largest scale for this train_size is {available // cfg.train_size}"
        )
    cuts = {
        "test": slice(0, cfg.test_size),
        "validation": slice(cfg.test_size, cfg.test_size + cfg.val_size),
        "train": slice(cfg.test_size + cfg.val_size, cfg.test_size + cfg.val_size + n_train),
    }
    label_names = list(table.label_names)
    parts, split_texts, split_counts = {}, {}, {}
    for name in SPLIT_NAMES:
        s_texts = chosen.texts[cuts[name]]
        s_labels = chosen.labels[cuts[name]]
        parts[name] = as_dataset(s_texts, s_labels)
        split_texts[name] = set(s_texts)
        counts = np.bincount(s_labels, minlength=len(label_names))
        split_counts[name] = {n: int(counts[k]) for k, n in enumerate(label_names)}

    report = DataReport.from_dict(table.report.to_dict())
    report.dedup = {
        "rows_in": window.rows,
        "duplicate_rows_removed": chosen.duplicate_rows,
        "conflicting_texts_removed": chosen.conflicting_texts,
        "conflicting_rows_removed": chosen.conflicting_rows,
        "pool": n_pool,
        "exact": chosen.exact,
    }
    report.split_class_counts = {"pool": {n: int(chosen.pool_counts[k]) for k, n in enumerate(label_names)}}
    report.split_class_counts.update(split_counts)
    report.split_overlap = {
        f"{a}&{b}": len(split_texts[a] & split_texts[b])
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))
    }
    return Splits(
        **parts,
        label_names=label_names,
        fingerprint=split_fingerprint(table.raw_sha256, cfg, label_names),
        report=report,
    )
