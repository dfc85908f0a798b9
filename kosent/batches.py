"""Tokenize once, then batch by length and pad each batch only to its own longest text.

NSMC reviews have a median of 27 characters: padding every batch to 128 tokens would spend most of
each step on padding. Length buckets put texts of similar length together (``bench/bench_batches.py``
measures the difference), and the shuffle happens between buckets so training still sees mixed order.

The rows a process trains on are held whole (:class:`InMemoryRows`) or, in a Ray Train worker, streamed from
its shard a buffer at a time (:class:`BufferedRows`): each buffer is tokenized, shuffled and bucketed on its
own, so a worker's memory follows ``buffer_rows``, not the size of the data.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from kosent.text import normalize


@dataclass
class Encoded:
    """Token ids (unpadded) and labels of one split; ``targets`` (rows x labels), when set, are the
    probabilities to train towards instead of the labels (distillation, :mod:`kosent.distill`)."""

    input_ids: list[list[int]]
    labels: list[int]
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], labels: Sequence[int], max_length: int
) -> Encoded:
    """Normalize and tokenize every text once, truncating to ``max_length`` tokens."""
    out = tokenizer(
        [normalize(t) for t in texts], truncation=True, max_length=max_length, padding=False
    )
    return Encoded(input_ids=list(out["input_ids"]), labels=[int(x) for x in labels])


def batch_indices(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    bucket_batches: int = 50,
) -> list[list[int]]:
    """Index batches grouped by length, sharded across ``world_size`` ranks.

    Shuffled: indices are shuffled, cut into buckets of ``bucket_batches`` batches, sorted by length
    inside each bucket, and the batches shuffled again. Not shuffled: sorted by length (fast eval).
    Every rank gets the same number of batches, so distributed steps stay in lockstep.
    """
    order = list(range(len(lengths)))
    if shuffle:
        rng = random.Random(seed)
        rng.shuffle(order)
        span = batch_size * bucket_batches
        order = [i for s in range(0, len(order), span) for i in sorted(order[s : s + span], key=lengths.__getitem__)]
    else:
        order.sort(key=lengths.__getitem__)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    if world_size > 1:
        per_rank = len(batches) // world_size if shuffle else -(-len(batches) // world_size)
        batches = batches[rank::world_size][:per_rank]
    return batches


def collate(enc: Encoded, idx: Sequence[int], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest sequence (or to ``pad_to``, for the fixed-padding benchmark)."""
    width = pad_to or max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = enc.input_ids[i][:width]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    labels = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if enc.targets is not None:
        batch["targets"] = torch.from_numpy(enc.targets[list(idx)])
    return batch


def iterate(
    enc: Encoded,
    batch_size: int,
    pad_id: int,
    shuffle: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield ``(indices, batch)`` pairs for one pass over ``enc``."""
    lengths = [len(x) for x in enc.input_ids]
    for idx in batch_indices(lengths, batch_size, shuffle, seed, rank, world_size):
        yield idx, collate(enc, idx, pad_id)


def num_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    """Training batches per rank per epoch (matches ``batch_indices`` with ``shuffle=True``)."""
    return (-(-n // batch_size)) // world_size


Batch = tuple[list[int], dict[str, torch.Tensor]]
CHUNK_SEED_STRIDE = 7_919  # chunk k of an epoch shuffles with seed + k x this (chunk 0: the epoch's own seed)


class TrainingRows(Protocol):
    """The rows one process trains on: how many, and one shuffled, length-bucketed pass over them per epoch."""

    def __len__(self) -> int: ...

    def batches_per_epoch(self, batch_size: int) -> int: ...

    def epoch(self, batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]: ...


@dataclass
class InMemoryRows:
    """Every row tokenized and held at once: the whole split in one process (``kosent train``)."""

    encoded: Encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def batches_per_epoch(self, batch_size: int) -> int:
        return num_batches(len(self.encoded), batch_size)

    def epoch(self, batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]:
        return iterate(self.encoded, batch_size, pad_id, shuffle=True, seed=seed)


@dataclass
class Chunk:
    """Raw training rows of one buffer: labelled texts and, with a teacher, scored texts with the teacher's
    probabilities (``probs``, rows x labels; ``None`` without a teacher). :func:`kosent.distill.encode_rows`
    tokenizes it."""

    texts: list[str]
    labels: list[int]
    scored: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts) + len(self.scored)


def chunk_sizes(rows: int, buffer_rows: int) -> list[int]:
    """``rows`` read ``buffer_rows`` at a time, as ``iter_batches(batch_size=buffer_rows)`` yields them."""
    full, rest = divmod(rows, buffer_rows)
    return [buffer_rows] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class MixedPlan:
    """How a worker reads labelled and scored rows together, about ``buffer_rows`` at a time: both streams are
    cut into the same number of chunks, so every chunk mixes the two in the proportion of the whole shard and
    one that fits in a single buffer is the whole shard, as :class:`InMemoryRows` would hold it."""

    labelled_rows: int  # per chunk (the last one the rest)
    scored_rows: int
    sizes: list[int]  # rows per chunk, both kinds together

    @classmethod
    def of(cls, labelled: int, scored: int, buffer_rows: int) -> MixedPlan:
        if not scored:  # labelled rows alone: exactly buffer_rows a chunk
            return cls(buffer_rows, 0, chunk_sizes(labelled, buffer_rows))
        chunks = max(1, -(-(labelled + scored) // buffer_rows))
        per_labelled, per_scored = max(1, -(-labelled // chunks)), max(1, -(-scored // chunks))
        sizes = [a + b for a, b in itertools.zip_longest(chunk_sizes(labelled, per_labelled),
                                                        chunk_sizes(scored, per_scored), fillvalue=0)]
        return cls(per_labelled, per_scored, sizes)


@dataclass
class BufferedRows:
    """A stream of rows read a chunk at a time: memory bounded by the chunk, not the data.

    ``chunks()`` starts a new pass and yields :class:`Chunk` objects of exactly ``sizes`` rows each, as
    ``iter_batches`` of a Ray Dataset shard does (:func:`chunk_sizes`; :class:`MixedPlan` with a teacher).
    Each chunk is tokenized when it arrives, then shuffled and length-bucketed on its own; chunk 0 uses the
    epoch's seed, so a stream that fits in one chunk gives exactly the batches of :class:`InMemoryRows` over the
    same rows. The number of batches follows from ``sizes`` alone, which keeps data-parallel ranks in
    lockstep: a chunk of another size is an error, not a silent hang in the next collective.
    """

    sizes: list[int]
    chunks: Callable[[], Iterable[Chunk]]
    encode: Callable[[Chunk], Encoded]

    def __len__(self) -> int:
        return sum(self.sizes)

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(num_batches(n, batch_size) for n in self.sizes)

    def epoch(self, batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]:
        expected = self.sizes
        k = -1
        for k, chunk in enumerate(self.chunks()):
            if k >= len(expected) or len(chunk) != expected[k]:
                raise RuntimeError(f"training rows: chunk {k + 1} holds {len(chunk):,} rows, expected "
                                   f"{expected[k] if k < len(expected) else 0:,} ({len(self):,} rows in "
                                   f"{len(expected)} chunks): the shard is not the size this worker was told")
            yield from iterate(self.encode(chunk), batch_size, pad_id, shuffle=True,
                               seed=seed + CHUNK_SEED_STRIDE * k)
        if k + 1 != len(expected):
            raise RuntimeError(f"training rows: the stream ended after {k + 1} of {len(expected)} chunks "
                               f"({len(self):,} rows)")
