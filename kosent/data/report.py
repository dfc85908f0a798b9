"""What reading a source did, row by row (:class:`DataReport`), and what every reader returns (:class:`Table`).

:class:`_Builder` is where the shared skip rules live: a row without text or with a label that cannot be
understood is counted under a reason with its line number, never raised and never dropped silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kosent.text import normalize

MAX_EXAMPLES = 5


class DataError(ValueError):
    """A user-facing problem with data: the message names the file (and line or field) and the fix."""


@dataclass
class DataReport:
    """What a reader (and later :func:`make_splits`) did with a source, row by row.

    ``duplicate_texts`` counts rows whose normalized text already appeared on an earlier kept row
    (what de-duplication removes); ``conflicting_texts`` counts distinct texts that carry more than
    one label. ``examples`` maps a skip reason to the first (up to 5) 1-based line numbers; for a
    concatenation of files the keys are ``"<file name>:<reason>"``.
    """

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    duplicate_texts: int = 0
    conflicting_texts: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    split_overlap: dict[str, int] = field(default_factory=dict)
    # Filled by make_splits: rows in, duplicate / conflicting rows removed, pool size, and whether those are
    # exact (False: estimated from the smallest hash keys of a source of more than 200,000 distinct texts).
    dedup: dict[str, int | bool] = field(default_factory=dict)
    # Filled by make_splits: split name -> {label name: count}.
    split_class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per-file reports when the table is a concatenation (K-MHaS valid + test).
    parts: list[dict[str, Any]] = field(default_factory=list)
    # What the numbers in ``examples`` count: "line" (text files) or "row" (parquet, JSON array, hub).
    unit: str = "line"

    def skip(self, reason: str, where: int) -> None:
        """Count one skipped row under ``reason``, remembering the first few line numbers."""
        self.rows_read += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        lines = self.examples.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLES:
            lines.append(where)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in values.items() if k in known})

    def summary(self) -> str:
        """A human-readable, multi-line account of the source, skips, duplicates and splits."""
        out = [f"source: {self.source}"]
        out.append(f"rows read: {self.rows_read:,}; kept: {self.rows_kept:,}; skipped: {self.rows_skipped:,}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            where = self.examples.get(reason)
            if where is None:  # concatenation: examples are keyed "<file>:<reason>"
                where_txt = "; ".join(
                    f"{k.rsplit(':', 1)[0]} {self.unit}s {', '.join(map(str, v))}"
                    for k, v in self.examples.items()
                    if k.rsplit(":", 1)[-1] == reason
                )
            else:
                where_txt = f"{self.unit}s " + ", ".join(map(str, where))
            more = ", ..." if n > MAX_EXAMPLES else ""
            out.append(f"  skipped {reason}: {n:,} ({where_txt}{more})")
        if self.class_counts:
            out.append("classes: " + _format_counts(self.class_counts))
        out.append(
            f"duplicates: {self.duplicate_texts:,} rows repeat an earlier text; "
            f"{self.conflicting_texts:,} {'text carries' if self.conflicting_texts == 1 else 'texts carry'} "
            "more than one label"
        )
        for part in self.parts:
            out.append(
                f"  part {part['source']}: read {part['rows_read']:,}, kept {part['rows_kept']:,}, "
                f"skipped {sum(part['skipped'].values()):,}"
            )
        if self.dedup:
            d = self.dedup
            about = "" if d.get("exact", True) else "about "  # estimated beyond 200,000 distinct texts
            out.append(
                f"dedup: {d.get('rows_in', 0):,} rows -> pool of {about}{d.get('pool', 0):,} "
                f"(removed {d.get('duplicate_rows_removed', 0):,} repeated rows and "
                f"{d.get('conflicting_rows_removed', 0):,} rows of {d.get('conflicting_texts_removed', 0):,} "
                "text(s) with conflicting labels)"
            )
        for name, counts in self.split_class_counts.items():
            out.append(f"split {name}: {sum(counts.values()):,} rows; " + _format_counts(counts))
        if self.split_overlap:
            out.append(
                "split overlap (shared texts): "
                + ", ".join(f"{k} {v}" for k, v in self.split_overlap.items())
            )
        return "\n".join(out)


def _format_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {v:,} ({100 * v / total:.1f}%)" for k, v in counts.items())


@dataclass
class Table:
    """What every reader returns: normalized texts, integer labels and everything else it read."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    report: DataReport
    raw_sha256: str
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


class RowSink(Protocol):
    """Where kept rows go instead of into a :class:`Table` (:class:`kosent.data.selection.KeyWindow`)."""

    def start(self, label_names: list[str]) -> None: ...

    def add(self, text: str, label: int) -> None: ...


_SINK: contextvars.ContextVar[RowSink | None] = contextvars.ContextVar("kosent_row_sink", default=None)


@contextlib.contextmanager
def rows_to(sink: RowSink) -> Iterator[None]:
    """Inside the block, every reader hands its kept rows to ``sink`` and returns a :class:`Table` without
    rows (report, label names and hash only), so a source of any size passes through in bounded memory.

    One switch for every reader (they all build through :class:`_Builder`), rather than a parameter
    threaded through each reader, ``load_table`` and the folder and concatenation paths."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


class _Builder:
    """Accumulates rows of one source, applying the shared skip rules (or hands them to the active sink)."""

    def __init__(
        self,
        source: str,
        parse_label: Callable[[Any], int | None],
        label_names: list[str],
        extra_names: Iterable[str],
    ):
        self.report = DataReport(source=source)
        self.parse_label = parse_label
        self.label_names = list(label_names)
        self.sink = _SINK.get()
        if self.sink is not None:
            self.sink.start(self.label_names)
        self.texts: list[str] = []
        self.labels: list[int] = []
        self.class_counts = [0] * len(self.label_names)
        self.extra: dict[str, list] = {name: [] for name in extra_names}
        self.unknown_labels: list[str] = []  # first few distinct raw values, for error messages

    def skip(self, reason: str, where: int) -> None:
        self.report.skip(reason, where)

    def add(self, where: int, text: Any, raw_label: Any, extras: dict[str, Any] | None = None) -> None:
        if text is None:
            self.report.skip("empty_text", where)
            return
        norm = normalize(text if isinstance(text, str) else str(text))
        if not norm:
            self.report.skip("empty_text", where)
            return
        label = self.parse_label(raw_label)
        if label is None:
            self.report.skip("unknown_label", where)
            if len(self.unknown_labels) < MAX_EXAMPLES and repr(raw_label) not in self.unknown_labels:
                self.unknown_labels.append(repr(raw_label))
            return
        self.report.rows_read += 1
        self.report.rows_kept += 1
        self.class_counts[label] += 1
        if self.sink is not None:
            self.sink.add(norm, label)
            return
        self.texts.append(norm)
        self.labels.append(label)
        for name, values in self.extra.items():
            values.append(None if extras is None else extras.get(name))

    def _label_hint(self) -> str:
        if not self.unknown_labels:
            return ""
        return (
            f". Label values not understood: {', '.join(self.unknown_labels)}; the labels expected are "
            f"0..{len(self.label_names) - 1} ({', '.join(self.label_names)}), or give label_map "
            '(e.g. {"neg": 0, "pos": 1}) to map the raw values'
        )

    def finish(self, path: Any, raw_sha256: str) -> Table:
        rep = self.report
        if not rep.rows_kept:
            raise DataError(f"{path}: no usable rows: {_skips_text(rep)}{_encoding_hint(rep)}{self._label_hint()}")
        rep.class_counts = dict(zip(self.label_names, self.class_counts, strict=True))
        if self.sink is None:  # with a sink, the sink counts duplicates over the whole source
            rep.duplicate_texts, rep.conflicting_texts = _duplicate_stats(self.texts, self.labels)
        else:
            self.extra = {}
        return Table(
            texts=self.texts,
            labels=self.labels,
            label_names=self.label_names,
            report=rep,
            raw_sha256=raw_sha256,
            extra=self.extra,
        )


def _skips_text(rep: DataReport) -> str:
    if not rep.rows_read:
        return "the file has a header but no data rows"
    parts = [
        f"{reason} {n} ({rep.unit}s {', '.join(map(str, rep.examples.get(reason, [])))})"
        for reason, n in rep.skipped.items()
    ]
    return f"{rep.rows_read} rows read, all skipped: " + "; ".join(parts)


def _encoding_hint(rep: DataReport) -> str:
    bad = rep.skipped.get("undecodable_bytes", 0)
    if bad and bad * 2 >= rep.rows_read:
        return (
            ". The file does not look like UTF-8 (Korean files are often CP949/EUC-KR): convert it, "
            "e.g. `iconv -f cp949 -t utf-8 in.txt > out.txt`"
        )
    return ""


def _duplicate_stats(texts: list[str], labels: list[int]) -> tuple[int, int]:
    """Rows that repeat an earlier text, and distinct texts that carry more than one label."""
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    for text, label in zip(texts, labels, strict=True):
        seen = first.setdefault(text, label)
        if seen != label:
            conflicting.add(text)
    return len(texts) - len(first), len(conflicting)
