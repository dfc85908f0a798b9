"""Splits as Ray Datasets for Ray Train: each worker reads only its shard of the training rows.

    to_ray_datasets(splits)     driver: train / validation (/ unlabelled) as ``ray.data.Dataset`` objects
    texts_dataset(texts)        driver: unlabelled texts alone (pretraining's corpus and holdout)
    data_config(names)          driver: which of them are split across workers, deterministically
    read_shard(name)            worker: its rows of one dataset, as an Arrow table
    shard_chunks(name, rows)    worker: one pass over them, ``rows`` at a time (the training rows' buffer)
    shard_as_dataset(name)      worker: the same as the ``datasets.Dataset`` the training loop takes

``train`` (and, for distillation, ``unlabelled``: the texts with the teacher's probabilities, scored once
before training by ``kosent.scoring``) is split into equal, disjoint shards, one per worker
(``streaming_split(equal=True)``): a worker tokenizes and batches only its shard, so the work per worker
shrinks as workers are added, and it reads its training rows one buffer at a time every epoch
(``TrainConfig.buffer_rows``; with a teacher, labelled and scored rows in the same proportion per buffer), so
its memory does not grow with the data. ``validation``
is not split: every worker reads it whole (it is ``val_size`` rows) and scores its share by index, as the
loop does in one process. Order is preserved, so the same splits give every worker the same rows in every
attempt: a resumed or restarted run replays the uninterrupted one.

The datasets are made from the splits' Arrow tables (``ray.data.from_arrow``, no Python rows); they need no
Ray Data tasks, so Train workers holding every CPU of a 2-CPU node cannot starve them (the deadlock
recorded for ``map_batches`` stages). Imported by ``kosent.ray_train`` only: ``kosent.data`` itself does not
import Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray.data
import ray.train

from kosent.data.splits import Splits, as_dataset

if TYPE_CHECKING:
    import datasets

SPLIT_ACROSS_WORKERS = ("train", "unlabelled")
PROBS = "probs"  # the column of scored rows: one fixed-size list of label probabilities per text
BLOCK_ROWS = 4096  # rows per block: enough blocks for shards to be balanced without splitting many


def _blocks(table: pa.Table) -> list[pa.Table]:
    if table.num_rows == 0:
        return [table]
    return [table.slice(start, BLOCK_ROWS) for start in range(0, table.num_rows, BLOCK_ROWS)]


def _table(ds: datasets.Dataset) -> pa.Table:
    """A split's rows as one Arrow table (``text``, ``label``), following any index mapping it carries."""
    return ds.with_format("arrow")[:].select(["text", "label"])


def probs_column(probs: np.ndarray) -> pa.Array:
    """``(n, labels)`` probabilities as an Arrow column (one fixed-size list of float32 per row)."""
    probs = np.asarray(probs, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float32()), probs.shape[1])


def probs_of(table: pa.Table, labels: int) -> np.ndarray:
    """The ``probs`` column of scored rows as an ``(n, labels)`` array."""
    if table.num_rows == 0:
        return np.zeros((0, labels), np.float32)
    column = table.column(PROBS).combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(-1, column.type.list_size)


def to_ray_datasets(splits: Splits) -> dict[str, ray.data.Dataset]:
    """``train`` and ``validation`` (and ``unlabelled`` when a teacher filled it) for ``TorchTrainer(datasets=)``.

    The test split is not among them: it is scored once after training (``kosent.scoring``)."""
    out = {
        "train": ray.data.from_arrow(_blocks(_table(splits.train))),
        "validation": ray.data.from_arrow(_blocks(_table(splits.validation))),
    }
    if splits.unlabelled:
        if splits.unlabelled_probs is None:
            raise ValueError("unlabelled texts without the teacher's probabilities: fill both with "
                             "kosent.distill.with_unlabelled")
        scored = pa.table({"text": pa.array(splits.unlabelled, pa.string()),
                           PROBS: probs_column(splits.unlabelled_probs)})
        out["unlabelled"] = ray.data.from_arrow(_blocks(scored))
    return out


def texts_dataset(texts: list[str]) -> ray.data.Dataset:
    """Unlabelled texts (a pretraining corpus or its holdout) as a Ray Dataset of one ``text`` column."""
    return ray.data.from_arrow(_blocks(pa.table({"text": pa.array(texts, pa.string())})))


def data_config(names: list[str]) -> ray.train.DataConfig:
    """Split ``train`` and ``unlabelled`` into equal shards; keep block order so shards are reproducible."""
    from ray.data import ExecutionOptions

    options = ExecutionOptions(preserve_order=True)
    return ray.train.DataConfig(
        datasets_to_split=[n for n in names if n in SPLIT_ACROSS_WORKERS],
        execution_options={n: options for n in names},
        enable_shard_locality=False,
    )


def read_shard(name: str, columns: tuple[str, ...] = ("text", "label")) -> pa.Table:
    """This worker's rows of dataset ``name`` (inside a Ray Train worker), as one Arrow table."""
    shard = ray.train.get_dataset_shard(name)
    tables = [t.select(list(columns)) for t in shard.iter_batches(batch_size=None, batch_format="pyarrow")]
    if not tables:  # a split smaller than the number of workers
        types = {"text": pa.string(), "label": pa.int64(), PROBS: pa.list_(pa.float32(), 1)}
        return pa.table({c: pa.array([], types[c]) for c in columns})
    return pa.concat_tables(tables)


def shard_chunks(name: str, rows: int, columns: tuple[str, ...] = ("text", "label")) -> Iterator[pa.Table]:
    """One pass over this worker's shard of ``name`` as Arrow tables of ``rows`` rows each (the last one the
    rest): only a chunk or two are held at a time. Each call is a new epoch of the shard (Ray Data runs it for
    all workers together), in the same order every time."""
    shard = ray.train.get_dataset_shard(name)
    for chunk in shard.iter_batches(batch_size=rows, batch_format="pyarrow", prefetch_batches=1):
        yield chunk.select(list(columns))


def shard_as_dataset(name: str) -> datasets.Dataset:
    """:func:`read_shard` as the ``datasets.Dataset`` (``text``, ``label``) the training loop takes."""
    table = read_shard(name)
    return as_dataset(table.column("text").combine_chunks(), table.column("label").combine_chunks())


__all__ = ["PROBS", "data_config", "probs_column", "probs_of", "read_shard", "shard_as_dataset", "shard_chunks",
           "texts_dataset", "to_ray_datasets"]
