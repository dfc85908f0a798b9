"""One streaming pass that chooses the split rows by a hash of each normalized text, in bounded memory.

Every distinct text gets a 64-bit key, ``blake2b(text, key=split_seed)``: the same text always gets the same
key, so its duplicates fall in the same place, and the keys are a seeded random order of the distinct texts
that does not depend on the order of the rows or on what else is in the file. Within each class the texts
are taken in key order; the classes are interleaved so every prefix keeps the pool's class balance (the
k-th of a class's n texts sits at ``(k + offset) / n``, one random offset per class). test, validation
and train are consecutive runs of that one order, so a larger scale contains every smaller one and test
and validation never depend on ``train_size`` or ``scale``.

:class:`KeyWindow` sees the rows one by one and keeps, in numpy arrays:

* the distinct keys up to a threshold ``T`` with a label mask and a row count each: all of them while
  there are at most ``EXACT_KEYS`` (then the de-duplication figures are exact), else the smallest, from
  which the figures are estimated (the k-th smallest of n uniform keys sits near k/n: a k-minimum-values
  sketch, relative error about ``1/sqrt(EXACT_KEYS)``);
* the texts of the smallest ``window + slack`` single-label keys of each class, which is all the splits
  can draw from.

So memory is set by the split sizes and ``EXACT_KEYS``, never by the size of the source. Texts with more
than one label are dropped, as before; a key is a text's one identity (a collision of two different texts
among 10 million has a probability of about 3 in a million).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from kosent.data.report import DataError

# Up to this many distinct texts (NSMC's training file has 145,986) every key is kept and the de-duplication
# figures are exact; beyond, they are estimated from this many keys (relative error about 0.2%) in about 5 MB.
EXACT_KEYS = 200_000
BATCH_ROWS = 65_536
MAX_LABELS = 64  # a label is one bit of a 64-bit mask
_NO_LIMIT = np.uint64(np.iinfo(np.uint64).max)
_ALL_KEYS = 2**64 - 1  # the same bound, as a Python int (the keys of UnseenWindow are Python ints)


def text_key(text: str, seed: int) -> int:
    """The 64-bit key of a normalized text under a split seed (stable across processes and machines)."""
    salt = seed.to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt).digest(), "little")


@dataclass
class Selection:
    """What :meth:`KeyWindow.finish` chose: the texts and labels of the first ``want`` rows of the stratified
    key order, and the pool's figures."""

    texts: list[str]
    labels: np.ndarray
    pool: int
    pool_counts: np.ndarray  # distinct single-label texts per class
    duplicate_rows: int  # rows that repeat an earlier text (conflicting texts' repeats excluded)
    distinct_texts: int  # distinct texts, conflicting ones included
    conflicting_texts: int
    conflicting_rows: int
    exact: bool  # False: the figures above are estimated from the smallest EXACT_KEYS keys


class KeyWindow:
    """Consumes ``(text, label)`` rows; :meth:`finish` returns the first ``want`` rows of the stratified key
    order (``want`` = test + validation + train rows), holding the texts of at most ``hold`` keys per class.

    The readers feed it through :func:`kosent.data.report.rows_to` (``start`` with the label names, then
    ``add`` per kept row), so a source is never a table in memory; :func:`kosent.data.make_splits` feeds it a
    table's rows when it is given one."""

    def __init__(self, want: int, seed: int, exact_keys: int = EXACT_KEYS):
        self.want, self.seed, self.exact_keys = want, seed, max(exact_keys, 1)
        # Texts kept per class beyond ``want``: room for texts that turn out to carry a second label later.
        self.hold = want + want // 4 + 1_000
        self.label_names: list[str] | None = None
        self.keys = np.empty(0, np.uint64)
        self.masks = np.empty(0, np.uint64)
        self.counts = np.empty(0, np.int64)
        self.limit = _NO_LIMIT  # every distinct key <= limit is in self.keys
        self.text_limits: np.ndarray = np.empty(0, np.uint64)  # per class: every key <= it has its text kept
        self.texts: list[dict[int, str]] = []
        self.rows = 0
        self._batch_texts: list[str] = []
        self._batch_labels: list[int] = []

    def start(self, label_names: list[str]) -> None:
        """The classes, before the first row (a class first seen late must not find its keys let go)."""
        if self.label_names is None:
            if len(label_names) > MAX_LABELS:
                raise DataError(f"{len(label_names)} classes: at most {MAX_LABELS} are supported")
            self.label_names = list(label_names)
            self.text_limits = np.full(len(label_names), _NO_LIMIT, np.uint64)
            self.texts = [{} for _ in label_names]
        elif list(label_names) != self.label_names:
            raise DataError(f"the files of one source have different labels: {label_names} vs {self.label_names}")

    def add(self, text: str, label: int) -> None:
        self._batch_texts.append(text)
        self._batch_labels.append(label)
        if len(self._batch_texts) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        texts, labels = self._batch_texts, np.asarray(self._batch_labels, np.int64)
        if not texts:
            return
        if self.label_names is None:
            raise RuntimeError("KeyWindow.start(label_names) must come before the rows")
        self._batch_texts, self._batch_labels = [], []
        self.rows += len(texts)
        keys = np.fromiter((text_key(t, self.seed) for t in texts), np.uint64, len(texts))
        for i in np.flatnonzero(keys <= self.text_limits[labels]).tolist():
            self.texts[labels[i]].setdefault(int(keys[i]), texts[i])
        inside = np.flatnonzero(keys <= self.limit)
        masks = np.left_shift(np.uint64(1), labels[inside].astype(np.uint64))
        all_keys = np.concatenate([self.keys, keys[inside]])
        order = np.argsort(all_keys, kind="stable")
        self.keys, starts = np.unique(all_keys[order], return_index=True)
        if len(starts):
            self.masks = np.bitwise_or.reduceat(np.concatenate([self.masks, masks])[order], starts)
            ones = np.ones(len(inside), np.int64)
            self.counts = np.add.reduceat(np.concatenate([self.counts, ones])[order], starts)
        self._shrink()

    def _shrink(self) -> None:
        """Lower the thresholds to what the splits and the exact figures still need. They never rise: a key
        let go once must stay out, or the figures would count it wrongly."""
        for label in range(len(self.text_limits)):
            class_keys = self.keys[self.masks == _bit(label)]
            if len(class_keys) >= self.hold:
                self.text_limits[label] = min(self.text_limits[label], class_keys[self.hold - 1])
            texts = self.texts[label]
            if len(texts) > 2 * self.hold:
                cut = int(self.text_limits[label])
                self.texts[label] = {k: t for k, t in texts.items() if k <= cut}
        exact_limit = self.keys[self.exact_keys - 1] if len(self.keys) > self.exact_keys else _NO_LIMIT
        self.limit = min(self.limit, max(self.text_limits.max(), exact_limit))
        if self.limit < _NO_LIMIT:
            keep = self.keys <= self.limit
            self.keys, self.masks, self.counts = self.keys[keep], self.masks[keep], self.counts[keep]

    def finish(self, source: str) -> Selection:
        """The first ``want`` rows of the stratified key order (fewer if the pool is smaller) and the figures.

        Raises DataError when more texts than the slack allows turned out to carry two labels after their
        neighbours' texts were let go: never a split with a hole in it."""
        self._flush()
        n_labels = len(self.label_names or [])
        exact = bool(self.limit == _NO_LIMIT and len(self.keys) <= self.exact_keys)
        # Estimated from the exact_keys smallest keys only, never from the longer text windows: the figures
        # (and the class sizes the interleaving uses) must not depend on train_size, or test would move.
        k = len(self.keys) if exact else self.exact_keys
        scale = 1.0 if exact else (k - 1) / k * 2.0**64 / (float(self.keys[k - 1]) + 1.0)
        masks, counts = self.masks[:k], self.counts[:k]
        single = _single(masks)
        pool_counts = np.array([round(np.count_nonzero(masks == _bit(c)) * scale) for c in range(n_labels)], np.int64)
        conflicting_texts = round(np.count_nonzero(~single) * scale)
        conflicting_rows = round(int(counts[~single].sum()) * scale)
        distinct = round(k * scale)
        pool = int(pool_counts.sum())

        # Each class's held keys in key order, placed at (rank + offset) / class size, then merged.
        offsets = np.random.default_rng(self.seed).random(n_labels)  # one per class: stable for a seed
        held = [self.keys[(self.masks == _bit(c)) & (self.keys <= self.text_limits[c])] for c in range(n_labels)]
        sizes = np.maximum(pool_counts, 1)
        pos = np.concatenate([(np.arange(len(h)) + offsets[c]) / sizes[c] for c, h in enumerate(held)])
        keys = np.concatenate(held)
        labels = np.concatenate([np.full(len(h), c, np.int64) for c, h in enumerate(held)])
        order = np.lexsort((keys, pos))[: min(self.want, pool)]
        if len(order):
            last = pos[order[-1]]
            for label, h in enumerate(held):
                complete = self.text_limits[label] == _NO_LIMIT
                if not complete and (len(h) + offsets[label]) / sizes[label] <= last:
                    raise DataError(
                        f"{source}: too many texts carry two labels for the split's slack "
                        f"({self.hold - self.want:,} texts a class): drop the conflicting rows first"
                    )
        return Selection(
            texts=[self.texts[int(labels[i])][int(keys[i])] for i in order],
            labels=labels[order],
            pool=pool,
            pool_counts=pool_counts,
            duplicate_rows=self.rows - distinct - (conflicting_rows - conflicting_texts),
            distinct_texts=distinct,
            conflicting_texts=conflicting_texts,
            conflicting_rows=conflicting_rows,
            exact=exact,
        )


class UnseenWindow:
    """The unlabelled pool of distillation and pretraining in one streaming pass: the distinct texts not in
    ``excluded``, in the order of a seeded hash of each (labels never read), at most ``limit`` of them.

    Holds at most about ``2 * limit`` texts (all of them without a limit). The order is a hash order, as for
    the splits, but under its own salt, so the pool is not the continuation of the training split's order.
    ``available`` counts the candidate texts: exact while nothing was let go, else estimated from the
    ``limit``-th smallest key (``available_exact`` says which)."""

    SALT = 0x5EED_0F_0001  # mixed into the seed: a pool order unrelated to the split order of the same seed

    def __init__(self, excluded: set[str], seed: int, limit: int | None = None):
        self.excluded, self.seed, self.limit = excluded, seed ^ self.SALT, limit
        self.held: dict[int, str] = {}
        self.threshold = _ALL_KEYS  # keys above it were let go (only ever lowered)
        self.rows = 0

    def start(self, label_names: list[str]) -> None:
        """Labels play no part in the pool (every reader announces them)."""

    def add(self, text: str, label: int) -> None:
        self.rows += 1
        if text in self.excluded:
            return
        key = text_key(text, self.seed)
        if key > self.threshold:
            return
        self.held.setdefault(key, text)
        if self.limit is not None and len(self.held) >= 2 * self.limit + 1_024:
            self._shrink()

    def _shrink(self) -> None:
        keep = sorted(self.held)[: self.limit]
        if keep:
            self.threshold = keep[-1]
            self.held = {k: self.held[k] for k in keep}

    @property
    def available_exact(self) -> bool:
        return self.threshold == _ALL_KEYS

    @property
    def available(self) -> int:
        """Distinct texts outside ``excluded`` in the source (estimated once texts were let go: every held
        key is at most ``threshold``, and k of n uniform keys fall below it when it is near k/n)."""
        if self.available_exact:
            return len(self.held)
        return round((len(self.held) - 1) * 2.0**64 / (self.threshold + 1.0))

    def finish(self) -> list[str]:
        """The pool in key order, at most ``limit`` texts."""
        if self.limit is not None and len(self.held) > self.limit:
            self._shrink()
        return [self.held[k] for k in sorted(self.held)]


def _bit(label: int) -> np.uint64:
    """The mask of a text that carries ``label`` and no other."""
    return np.uint64(1 << label)


def _single(masks: np.ndarray) -> np.ndarray:
    """True where a mask has exactly one bit set (the text carries one label)."""
    return (masks != 0) & ((masks & (masks - np.uint64(1))) == 0)
