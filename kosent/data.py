"""Readers that turn data files into a :class:`Table`, and :func:`make_splits` that turns a table into
train / validation / test ``datasets.Dataset`` objects.

Every reader follows the same rules:

* Bytes are read once, hashed (``Table.raw_sha256``) and decoded line by line as UTF-8, so one bad
  byte costs one row, not the file.
* A bad row is skipped and *counted* under a reason (``empty_text``, ``unknown_label``,
  ``wrong_field_count``, ``undecodable_bytes``, ...) with the first few 1-based line numbers (row
  numbers for parquet / Hugging Face data) in :class:`DataReport`; nothing is dropped silently and no
  row raises a traceback. ``rows_read == rows_kept + sum(skipped.values())`` always holds.
* A problem with the file as a whole (missing, empty, no usable rows, a header without the needed
  columns) raises :class:`DataError` naming the file and the problem.
* Texts go through :func:`kosent.text.normalize`, the same function serving uses.
* Columns the user gave that are not text or label are kept in ``Table.extra``.

Longer than 600 lines because every stage of reading data still lives here (report and table, bytes and
labels, readers, splits: the banner comments below): the data-at-scale work (streaming ingest with Ray Data)
turns it into a ``kosent.data`` package along those banners, keeping the names callers import.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fnmatch
import hashlib
import json
import os
import random
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kosent.config import DataConfig, cache_home, data_home
from kosent.text import normalize

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DataError",
    "DataReport",
    "Table",
    "Splits",
    "read_nsmc",
    "read_kmhas",
    "read_table",
    "read_hf",
    "read_url",
    "read_path",
    "fetch_url",
    "concat_tables",
    "load_table",
    "make_splits",
    "NSMC_LABEL_NAMES",
    "KMHAS_LABEL_NAMES",
]

NSMC_LABEL_NAMES = ["negative", "positive"]
KMHAS_LABEL_NAMES = ["hate", "not_hate"]
DEFAULT_LABEL_NAMES = NSMC_LABEL_NAMES
KMHAS_NOT_HATE = "8"
KMHAS_CLASS_IDS = frozenset(str(i) for i in range(9))

NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt"
KMHAS_URL = "https://raw.githubusercontent.com/adlnlp/K-MHaS/main/data/kmhas_{split}.txt"
KMHAS_DEFAULT_FILES = ("kmhas_valid.txt", "kmhas_test.txt")

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet")
# Column names that hold the text in well-known corpora; used for suggestions and for read_hf's
# automatic choice when no text column is named.
_TEXT_COLUMN_GUESSES = ("text", "document", "sentence", "content", "review", "comment", "comments")
_LABEL_COLUMN_GUESSES = ("label", "labels", "sentiment", "target")
MAX_EXAMPLES = 5
# Bumped whenever make_splits would choose different rows for the same inputs.
SPLIT_ALGORITHM_VERSION = 1


class DataError(ValueError):
    """A user-facing problem with data: the message names the file (and line or field) and the fix."""


# --------------------------------------------------------------------------------------------------
# Report and table
# --------------------------------------------------------------------------------------------------


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
    # Filled by make_splits: rows in, duplicate / conflicting rows removed, pool size.
    dedup: dict[str, int] = field(default_factory=dict)
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
            out.append(
                f"dedup: {d.get('rows_in', 0):,} rows -> pool of {d.get('pool', 0):,} "
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


class _Builder:
    """Accumulates rows of one source, applying the shared skip rules."""

    def __init__(self, source: str, parse_label: Callable[[Any], int | None], extra_names: Iterable[str]):
        self.report = DataReport(source=source)
        self.parse_label = parse_label
        self.texts: list[str] = []
        self.labels: list[int] = []
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
        self.texts.append(norm)
        self.labels.append(label)
        for name, values in self.extra.items():
            values.append(None if extras is None else extras.get(name))

    def _label_hint(self, label_names: list[str]) -> str:
        if not self.unknown_labels:
            return ""
        return (
            f". Label values not understood: {', '.join(self.unknown_labels)}; the labels expected are "
            f"0..{len(label_names) - 1} ({', '.join(label_names)}), or give label_map "
            '(e.g. {"neg": 0, "pos": 1}) to map the raw values'
        )

    def finish(self, path: Any, label_names: list[str], raw_sha256: str) -> Table:
        rep = self.report
        rep.rows_kept = len(self.texts)
        if not self.texts:
            raise DataError(
                f"{path}: no usable rows: {_skips_text(rep)}{_encoding_hint(rep)}{self._label_hint(label_names)}"
            )
        rep.class_counts, rep.duplicate_texts, rep.conflicting_texts = _text_stats(
            self.texts, self.labels, label_names
        )
        return Table(
            texts=self.texts,
            labels=self.labels,
            label_names=list(label_names),
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


def _text_stats(texts: list[str], labels: list[int], label_names: list[str]) -> tuple[dict, int, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names))
    class_counts = {name: int(counts[i]) for i, name in enumerate(label_names)}
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    for text, label in zip(texts, labels, strict=True):
        seen = first.setdefault(text, label)
        if seen != label:
            conflicting.add(text)
    return class_counts, len(texts) - len(first), len(conflicting)


# --------------------------------------------------------------------------------------------------
# Bytes, lines, labels
# --------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    return raw


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _lines(raw: bytes) -> list[bytes]:
    """Physical lines split on LF only (a CR before it is dropped), without a trailing empty line."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _decode_header(path: Path, line: bytes) -> str:
    try:
        return line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: line 1 (the header) is not valid UTF-8 ({e.reason} at byte {e.start}); "
            "convert the file to UTF-8, e.g. `iconv -f cp949 -t utf-8 in.txt > out.txt`"
        ) from e


def _decoded_body(lines: list[bytes], builder: _Builder) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for every line after the header; count undecodable ones."""
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            yield lineno, line.decode("utf-8")
        except UnicodeDecodeError:
            builder.skip("undecodable_bytes", lineno)


def _column_error(path: Any, wanted: str, columns: list[str], role: str) -> DataError:
    msg = f"{path}: no column '{wanted}'; columns are: {', '.join(map(str, columns)) or '(none)'}"
    guesses = _TEXT_COLUMN_GUESSES if role == "text" else _LABEL_COLUMN_GUESSES
    hint = next((c for c in guesses if c in columns and c != wanted), None)
    if hint:
        msg += f" (use {role}_column='{hint}', flag --{role}-column {hint})"
    return DataError(msg)


def _require_columns(path: Any, columns: list[str], wanted: dict[str, str]) -> dict[str, int]:
    """Positions of the wanted columns in ``columns``; ``wanted`` maps role (text/label/...) -> name."""
    positions = {}
    for role, name in wanted.items():
        if name not in columns:
            raise _column_error(path, name, columns, role)
        positions[role] = columns.index(name)
    return positions


_BINARY_STRINGS = {"0": 0, "1": 1}


def _binary_label(value: Any) -> int | None:
    """0/1 as ints (not bools), integral floats, or the strings "0"/"1"."""
    if type(value) is str:  # the common case first: every text format yields strings
        return _BINARY_STRINGS.get(value.strip())
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, (float, np.floating)):
        return int(value) if value in (0.0, 1.0) else None
    if isinstance(value, str):
        s = value.strip()
        return int(s) if s in ("0", "1") else None
    return None


def _label_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def _label_parser(label_map: dict[str, int] | None) -> tuple[Callable[[Any], int | None], list[str]]:
    """The function turning a raw label into an int, and the label names it implies."""
    if label_map is None:
        return _binary_label, list(DEFAULT_LABEL_NAMES)
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"label_map must be a non-empty mapping of raw label -> int, got {label_map!r}")
    mapping: dict[str, int] = {}
    for key, value in label_map.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"label_map[{key!r}] must be an integer class id, got {value!r}")
        mapping[_label_key(key)] = int(value)
    ids = sorted(set(mapping.values()))
    if ids != list(range(len(ids))) or len(ids) < 2:
        raise DataError(
            f"label_map values must be the class ids 0..n-1 with n >= 2, got {sorted(set(mapping.values()))}"
        )
    names = [next(k for k, v in mapping.items() if v == i) for i in ids]

    def parse(value: Any) -> int | None:
        key = _label_key(value)
        return None if key is None else mapping.get(key)

    return parse, names


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def read_nsmc(path: str | os.PathLike) -> Table:
    """NSMC ``id<TAB>document<TAB>label`` with a header, read with quoting OFF (``csv.QUOTE_NONE``).

    Quoting must stay off: 623 documents contain ``"`` and were CSV-quoted twice upstream; reading
    them with CSV quoting would silently change or merge them. Labels: 0 negative, 1 positive.
    ``extra["id"]`` holds the review ids of the kept rows.
    """
    path = Path(path)
    raw = _read_bytes(path)
    lines = _lines(raw)
    columns = [c.strip() for c in _decode_header(path, lines[0]).split("\t")]
    pos = _require_columns(path, columns, {"id": "id", "text": "document", "label": "label"})
    builder = _Builder(str(path), _binary_label, ["id"])
    n_fields = len(columns)
    i_id, i_text, i_label = pos["id"], pos["text"], pos["label"]
    for lineno, line in _decoded_body(lines, builder):
        fields = line.split("\t")
        if len(fields) != n_fields:
            builder.skip("blank_line" if not line.strip() else "wrong_field_count", lineno)
            continue
        builder.add(lineno, fields[i_text], fields[i_label], {"id": fields[i_id]})
    return builder.finish(path, NSMC_LABEL_NAMES, _sha256(raw))


def _kmhas_label(value: Any) -> int | None:
    ids = [p.strip() for p in str(value).split(",")]
    if not ids or any(i not in KMHAS_CLASS_IDS for i in ids):
        return None
    if KMHAS_NOT_HATE in ids:
        # "8" (not hate) never co-occurs with a hate class upstream; if it does, the row is ambiguous.
        return 1 if len(set(ids)) == 1 else None
    return 0


def _split_tsv_line(line: str, quoting: int) -> list[str] | None:
    """One physical line as fields with standard CSV quoting; None if the quoting is broken."""
    if quoting == csv.QUOTE_NONE:
        return line.split("\t")
    if "\r" in line:  # a stray CR inside a field: csv refuses it, normalize() would fold it anyway
        line = line.replace("\r", " ")
    try:
        return next(csv.reader((line,), delimiter="\t"), [])
    except csv.Error:
        return None


def read_kmhas(path: str | os.PathLike) -> Table:
    """K-MHaS ``document<TAB>label`` with a header and standard CSV quoting.

    ``label`` is a comma-separated list of class ids (0 origin ... 7 religion, 8 not hate). Binary
    target: ``8`` -> 1 (``not_hate``), any other ids -> 0 (``hate``). The original label string is
    kept in ``extra["kmhas_labels"]``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    lines = _lines(raw)
    columns = _split_tsv_line(_decode_header(path, lines[0]), csv.QUOTE_MINIMAL) or []
    columns = [c.strip() for c in columns]
    pos = _require_columns(path, columns, {"text": "document", "label": "label"})
    builder = _Builder(str(path), _kmhas_label, ["kmhas_labels"])
    _read_delimited_lines(path, lines, columns, pos, builder, label_extra="kmhas_labels")
    return builder.finish(path, KMHAS_LABEL_NAMES, _sha256(raw))


def _read_delimited_lines(
    path: Path,
    lines: list[bytes],
    columns: list[str],
    pos: dict[str, int],
    builder: _Builder,
    label_extra: str | None = None,
) -> None:
    """Tab-separated, one record per physical line (a stray quote damages one row, not the rest)."""
    n_fields = len(columns)
    i_text, i_label = pos["text"], pos["label"]
    other = [(i, c) for i, c in enumerate(columns) if i not in (i_text, i_label)]
    for lineno, line in _decoded_body(lines, builder):
        if not line.strip():
            builder.skip("blank_line", lineno)
            continue
        fields = _split_tsv_line(line, csv.QUOTE_MINIMAL)
        if fields is None:
            builder.skip("unparsable_line", lineno)
            continue
        if len(fields) < n_fields and '"' in line:
            builder.skip("unbalanced_quote", lineno)
            continue
        if len(fields) != n_fields:
            builder.skip("wrong_field_count", lineno)
            continue
        extras = {c: fields[i] for i, c in other}
        if label_extra:
            extras[label_extra] = fields[i_label]
        builder.add(lineno, fields[i_text], fields[i_label], extras)


def _read_csv_stream(
    path: Path, lines: list[bytes], builder: _Builder, text_column: str, label_column: str
) -> None:
    """Comma-separated with standard quoting; a quoted field may span lines, as CSV allows."""
    numbered: list[int] = []

    def feed() -> Iterator[str]:
        numbered.append(1)
        yield _decode_header(path, lines[0]) + "\n"
        for lineno, text in _decoded_body(lines, builder):
            numbered.append(lineno)
            yield text + "\n"

    reader = csv.reader(feed())
    try:
        header = [c.strip() for c in next(reader)]
    except csv.Error as e:
        raise DataError(f"{path}: line 1 (the header) is not valid CSV: {e}") from e
    pos = _require_columns(path, header, {"text": text_column, "label": label_column})
    other = [(i, c) for i, c in enumerate(header) if i not in (pos["text"], pos["label"])]
    builder.extra = {c: [] for _, c in other}
    consumed = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            builder.skip("unparsable_line", numbered[min(consumed, len(numbered) - 1)])
            consumed = reader.line_num
            continue
        lineno = numbered[consumed]  # the line the record starts on
        consumed = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            builder.skip("blank_line", lineno)
            continue
        if len(fields) != len(header):
            builder.skip("wrong_field_count", lineno)
            continue
        builder.add(lineno, fields[pos["text"]], fields[pos["label"]], {c: fields[i] for i, c in other})


def _read_json_rows(path: Path, raw: bytes, builder: _Builder) -> list[tuple[int, dict]]:
    """JSON lines (or one JSON array of objects): (1-based line or row number, object)."""
    rows: list[tuple[int, dict]] = []
    head = raw.lstrip()[:1]
    if head == b"[":
        builder.report.unit = "row"
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a valid JSON array: {e}") from e
        for n, obj in enumerate(data, start=1):
            if isinstance(obj, dict):
                rows.append((n, obj))
            else:
                builder.skip("invalid_json", n)
        return rows
    for lineno, line in enumerate(_lines(raw), start=1):
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            builder.skip("undecodable_bytes", lineno)
            continue
        if not text.strip():
            continue  # blank lines are not records in JSON lines
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            builder.skip("invalid_json", lineno)
            continue
        if not isinstance(obj, dict):
            builder.skip("invalid_json", lineno)
            continue
        rows.append((lineno, obj))
    return rows


def _fill_from_records(
    path: Path, builder: _Builder, rows: list[tuple[int, dict]], text_column: str, label_column: str
) -> None:
    columns: dict[str, None] = {}
    for _, obj in rows:
        for key in obj:
            columns.setdefault(key, None)
    names = list(columns)
    _require_columns(path, names, {"text": text_column, "label": label_column})
    builder.extra = {c: [] for c in names if c not in (text_column, label_column)}
    for where, obj in rows:
        if text_column not in obj or label_column not in obj:
            builder.skip("missing_field", where)
            continue
        builder.add(where, obj[text_column], obj[label_column], obj)


def read_table(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, int] | None = None,
) -> Table:
    """A user's file: ``.csv``, ``.tsv`` / ``.txt`` (tab-separated), ``.jsonl`` / ``.json`` (JSON lines
    or an array of objects), ``.parquet``; CSV/TSV files need a header row.

    ``label_map`` maps raw label strings to class ids (``{"neg": 0, "pos": 1}``; the keys become the
    label names). Without it, labels must be 0/1 (ints or the strings ``"0"``/``"1"``) and the names
    are ``negative`` / ``positive``. Every other column is kept in ``Table.extra``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(TABLE_SUFFIXES)}"
        )
    parse_label, label_names = _label_parser(label_map)
    raw = _read_bytes(path)
    builder = _Builder(str(path), parse_label, [])
    if suffix == ".parquet":
        _fill_from_parquet(path, builder, text_column, label_column)
    elif suffix in (".jsonl", ".json"):
        rows = _read_json_rows(path, raw, builder)
        if not rows and not builder.report.rows_read:
            raise DataError(f"{path}: no JSON records")
        if rows:
            _fill_from_records(path, builder, rows, text_column, label_column)
    elif suffix == ".csv":
        _read_csv_stream(path, _lines(raw), builder, text_column, label_column)
    else:
        lines = _lines(raw)
        header = _split_tsv_line(_decode_header(path, lines[0]), csv.QUOTE_MINIMAL) or []
        header = [c.strip() for c in header]
        pos = _require_columns(path, header, {"text": text_column, "label": label_column})
        builder.extra = {c: [] for i, c in enumerate(header) if i not in (pos["text"], pos["label"])}
        _read_delimited_lines(path, lines, header, pos, builder)
    return builder.finish(path, label_names, _sha256(raw))


def _fill_from_parquet(path: Path, builder: _Builder, text_column: str, label_column: str) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as parquet: {type(e).__name__}: {e}") from e
    names = list(table.column_names)
    _require_columns(path, names, {"text": text_column, "label": label_column})
    if table.num_rows == 0:
        raise DataError(f"{path}: parquet file has no rows")
    columns = {name: table.column(name).to_pylist() for name in names}
    others = [c for c in names if c not in (text_column, label_column)]
    builder.extra = {c: [] for c in others}
    builder.report.unit = "row"
    texts, labels = columns[text_column], columns[label_column]
    for i in range(table.num_rows):
        builder.add(i + 1, texts[i], labels[i], {c: columns[c][i] for c in others})


def _hub_message(dataset_id: str, split: str, err: BaseException) -> str:
    chain, e = [], err
    while e is not None and len(chain) < 6:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = " | ".join(chain)
    offline_env = _offline_env()
    network_words = ("offline", "connect", "resolve", "unreachable", "timed out", "timeout", "network")
    unreachable = offline_env or any(w in text.lower() for w in network_words)
    if offline_env:
        why = (
            "the Hugging Face hub is unreachable (offline mode is on: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
            "and the dataset is not in the local Hugging Face cache"
        )
    elif unreachable:
        why = "the Hugging Face hub is unreachable from this machine"
    else:
        why = "the Hugging Face hub could not provide it (wrong id or split, or no network)"
    short = chain[0] if len(chain[0]) < 400 else chain[0][:400] + "..."
    return (
        f"hf:{dataset_id} (split '{split}'): cannot load the dataset: {why}. Underlying error: {short}. "
        "To use a local file instead, download it on a machine with access and pass its path as the "
        "source (a .csv/.tsv/.txt/.jsonl/.parquet file, e.g. source: /path/to/ratings_train.txt), "
        f"or use source 'nsmc' / 'kmhas' for the files under {data_home()} "
        f"(NSMC: {NSMC_URL})."
    )


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_probe_error(timeout: float = 3.0) -> OSError | None:
    """Why the hub's host cannot be reached (a TCP connect), or None when it can or we cannot tell.

    Without this, ``load_dataset`` on a machine without network retries for about half a minute
    before failing. Skipped in offline mode (the cache is used) and behind a proxy (the proxy may
    reach what DNS here cannot).
    """
    if _offline_env() or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY")
    ):
        return None
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname
    if not host:
        return None
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return e
    return None


def read_hf(
    dataset_id: str,
    split: str = "train",
    text_column: str | None = None,
    label_column: str | None = None,
    label_map: dict[str, int] | None = None,
) -> Table:
    """A Hugging Face hub dataset through ``datasets.load_dataset``.

    ``text_column`` / ``label_column`` of ``None`` pick the first present of the usual names
    (``text``, ``document``, ``sentence``, ...; ``label``, ``labels``, ...). A ``ClassLabel`` label
    column supplies the label names. Without network access this raises :class:`DataError` saying
    the hub is unreachable and how to use a local file instead.
    """
    probe = _hub_probe_error()
    if probe is not None:
        err = ConnectionError(f"cannot connect to the hub's host: {type(probe).__name__}: {probe}")
        msg = _hub_message(dataset_id, split, err)
        msg += " A copy already in the Hugging Face cache is used with HF_HUB_OFFLINE=1."
        raise DataError(msg) from probe
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # every failure (network, missing id, bad split) becomes one clear message
        raise DataError(_hub_message(dataset_id, split, e)) from e
    source = f"hf:{dataset_id}[{split}]"
    names = list(ds.column_names)
    text_column = text_column or next((c for c in _TEXT_COLUMN_GUESSES if c in names), "text")
    label_column = label_column or next((c for c in _LABEL_COLUMN_GUESSES if c in names), "label")
    _require_columns(source, names, {"text": text_column, "label": label_column})
    feature = ds.features.get(label_column)
    class_names = getattr(feature, "names", None)
    if label_map is None and class_names:
        label_names = [str(n) for n in class_names]

        def parse_label(v: Any) -> int | None:
            ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < len(label_names)
            return int(v) if ok else None
    else:
        parse_label, label_names = _label_parser(label_map)
    data = ds.to_dict()
    others = [c for c in names if c not in (text_column, label_column)]
    builder = _Builder(source, parse_label, others)
    builder.report.unit = "row"
    digest = hashlib.sha256(f"hf\0{dataset_id}\0{split}\0".encode())
    texts, labels = data[text_column], data[label_column]
    for i in range(len(texts)):
        digest.update(f"{texts[i]}\t{labels[i]}\n".encode("utf-8", "surrogatepass"))
        builder.add(i + 1, texts[i], labels[i], {c: data[c][i] for c in others})
    return builder.finish(source, label_names, digest.hexdigest())


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or "download"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_url(url: str, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download ``url`` once to ``<cache>/<sha256 or url-hash>/<filename>`` and return the path.

    ``cache`` is ``cache_dir`` or ``$KOSENT_HOME/data``. A cached file is used without downloading
    (and re-checked against ``sha256`` when one is given). A download whose sha256 differs from the
    expected one is deleted and raises :class:`DataError` showing both hashes.
    """
    expected = sha256.strip().lower() if sha256 else None
    if expected is not None and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise DataError(f"{url}: sha256 must be 64 hex digits, got {sha256!r}")
    base = Path(cache_dir) if cache_dir is not None else cache_home() / "data"
    key = expected or "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = base / key / _url_filename(url)
    if dest.is_file():
        if expected is None or _file_sha256(dest) == expected:
            return dest
        dest.unlink()  # a damaged cache entry: fetch again
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{url}: download failed ({type(e).__name__}: {e}); download the file yourself and pass "
            "its local path as the source"
        ) from e
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{url}: sha256 mismatch: expected {expected}, downloaded {size:,} bytes with sha256 {actual}. "
            "The file changed upstream or the download is damaged; check the URL or update sha256."
        )
    os.replace(tmp, dest)
    return dest


def read_path(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, int] | None = None,
) -> Table:
    """Read a local file, choosing the reader by its name: ``ratings*.txt`` is NSMC (quoting off),
    ``kmhas_*`` is K-MHaS, anything else goes to :func:`read_table`."""
    path = Path(path)
    name = path.name.lower()
    if fnmatch.fnmatch(name, "ratings*.txt"):
        return read_nsmc(path)
    if name.startswith("kmhas_"):
        return read_kmhas(path)
    return read_table(path, text_column=text_column, label_column=label_column, label_map=label_map)


def read_url(
    url: str,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, int] | None = None,
) -> Table:
    """Download (once, see :func:`fetch_url`), verify and read a URL (``http(s)://``, ``file://``),
    dispatching on the file name like :func:`read_path`. The report's source is the URL."""
    local = fetch_url(url, sha256=sha256, cache_dir=cache_dir)
    table = read_path(local, text_column=text_column, label_column=label_column, label_map=label_map)
    table.report.source = url
    return table


def concat_tables(tables: list[Table], source: str) -> Table:
    """Rows of several tables in order (same label names); the report keeps one part per table."""
    if not tables:
        raise DataError(f"{source}: nothing to concatenate")
    names = tables[0].label_names
    for t in tables[1:]:
        if t.label_names != names:
            raise DataError(
                f"{source}: cannot concatenate {t.report.source} (labels {t.label_names}) "
                f"with {tables[0].report.source} (labels {names})"
            )
    texts = [x for t in tables for x in t.texts]
    labels = [x for t in tables for x in t.labels]
    keys = list(dict.fromkeys(k for t in tables for k in t.extra))
    extra = {k: [x for t in tables for x in t.extra.get(k, [None] * len(t))] for k in keys}
    rep = DataReport(source=source)
    for t in tables:
        r = t.report
        rep.rows_read += r.rows_read
        for reason, n in r.skipped.items():
            rep.skipped[reason] = rep.skipped.get(reason, 0) + n
        for reason, lines in r.examples.items():
            rep.examples[f"{Path(r.source).name}:{reason}"] = list(lines)
        rep.parts.append(r.to_dict())
    rep.rows_kept = len(texts)
    rep.class_counts, rep.duplicate_texts, rep.conflicting_texts = _text_stats(texts, labels, names)
    raw = _sha256("\n".join(t.raw_sha256 for t in tables).encode())
    return Table(texts=texts, labels=labels, label_names=list(names), report=rep, raw_sha256=raw, extra=extra)


def _missing(path: Path, what: str, url: str) -> DataError:
    return DataError(
        f"{what} file not found: {path}. Put it there (download {url}), or point KOSENT_DATA at the "
        f"folder that holds it (now {data_home()}), or give its location with path / --path. "
        "See shared/data/README.md for the files and their sha256."
    )


def load_table(cfg: DataConfig) -> Table:
    """The table named by ``cfg.source``: ``nsmc``, ``kmhas``, ``hf:<id>`` (or ``hf:<id>:<split>``),
    an ``http(s)://`` / ``file://`` URL (checked against ``cfg.sha256``), or a local file path."""
    source = (cfg.source or "").strip()
    if not source:
        raise DataError("data source is empty; use nsmc, kmhas, hf:<id>, a URL or a file path")
    if source == "nsmc":
        path = Path(cfg.path) if cfg.path else data_home() / "nsmc" / "ratings_train.txt"
        if not path.is_file():
            raise _missing(path, "NSMC", NSMC_URL)
        return read_nsmc(path)
    if source == "kmhas":
        if cfg.path and Path(cfg.path).is_file():
            return read_kmhas(cfg.path)
        folder = Path(cfg.path) if cfg.path else data_home() / "kmhas"
        paths = [folder / name for name in KMHAS_DEFAULT_FILES]
        for p in paths:
            if not p.is_file():
                split = p.stem.split("_", 1)[1]
                raise _missing(p, "K-MHaS", KMHAS_URL.format(split=split))
        tables = [read_kmhas(p) for p in paths]
        return concat_tables(tables, "kmhas:" + "+".join(str(p) for p in paths))
    if source.startswith("hf:"):
        dataset_id, _, split = source[3:].partition(":")
        return read_hf(
            dataset_id,
            split=split or "train",
            # The config's default name "text" lets read_hf pick the dataset's own text column.
            text_column=None if cfg.text_column == "text" else cfg.text_column,
            label_column=None if cfg.label_column == "label" else cfg.label_column,
            label_map=cfg.label_map,
        )
    columns = dict(text_column=cfg.text_column, label_column=cfg.label_column, label_map=cfg.label_map)
    if source.split("://", 1)[0].lower() in ("http", "https", "file"):
        return read_url(source, sha256=cfg.sha256, **columns)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data file not found: {path} (source {source!r}); the source must be nsmc, kmhas, hf:<id>, "
            f"an http(s):// URL, or the path of a {'/'.join(TABLE_SUFFIXES)} file"
        )
    if cfg.sha256:
        actual = _file_sha256(path)
        if actual != cfg.sha256.strip().lower():
            raise DataError(
                f"{path}: sha256 mismatch: expected {cfg.sha256.strip().lower()}, file has {actual}"
            )
    return read_path(path, **columns)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------

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
    # Texts of the source outside all three splits, for distillation (kosent.distill fills it when a run has
    # a teacher); not part of the fingerprint and not saved by ``save``.
    unlabelled: list[str] = field(default_factory=list)

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


def unseen_texts(table: Table, excluded: set[str], seed: int) -> list[str]:
    """Every distinct text of ``table`` not in ``excluded``, in a seeded random order (labels unread).

    The unlabelled pools of pretraining and distillation: ``excluded`` holds the texts a run must never
    train on without their labels (validation and test, and for distillation the training texts too)."""
    pool = [t for t in dict.fromkeys(table.texts) if t not in excluded]
    random.Random(seed).shuffle(pool)
    return pool


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of all rows in which every prefix has (almost) the classes' overall ratio.

    Each class is shuffled, and its k-th row (of n) gets the key ``(k + offset) / n`` (a random
    offset per class); sorting by key interleaves the classes evenly, so any prefix or window of m
    rows holds ``m * n_c / N`` rows of class c, give or take one.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    tie = rng.random(len(labels))
    return np.lexsort((tie, keys))


def _dataset(texts: list[str], labels: list[int]) -> datasets.Dataset:
    import datasets
    import pyarrow as pa

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
    2. The pool is put in one seeded, stratified interleaved order (:func:`_stratified_order`).
    3. test = the first ``test_size`` rows, validation = the next ``val_size``; both depend only on
       the pool and the seed, never on ``train_size`` or ``scale``.
    4. train = the first ``train_size * scale`` of the remaining rows, so a larger scale contains
       every smaller one and every prefix keeps the pool's class balance.
    """
    _check_sizes(cfg)
    if table is None:
        table = load_table(cfg)
    texts, labels = table.texts, table.labels
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        j = first.setdefault(text, i)
        if j != i and labels[j] != label:
            conflicting.add(text)
    keep = [i for text, i in first.items() if text not in conflicting]
    conflicting_rows = sum(1 for t in texts if t in conflicting) if conflicting else 0
    pool_texts = [texts[i] for i in keep]
    pool_labels = np.asarray([labels[i] for i in keep], dtype=np.int64)

    n_pool, n_train = len(keep), cfg.train_size * cfg.scale
    source = table.report.source
    if cfg.test_size + cfg.val_size >= n_pool:
        raise DataError(
            f"{source}: test_size {cfg.test_size:,} + val_size {cfg.val_size:,} leave no training rows: "
            f"only {n_pool:,} distinct texts are available after de-duplication"
        )
    available = n_pool - cfg.test_size - cfg.val_size
    if n_train > available:
        raise DataError(
            f"{source}: train_size {cfg.train_size:,} x scale {cfg.scale} = {n_train:,} training rows "
            f"requested but only {available:,} are available ({n_pool:,} distinct texts after "
            f"de-duplication minus test_size {cfg.test_size:,} and val_size {cfg.val_size:,}); "
            f"the largest scale for this train_size is {available // cfg.train_size}"
        )
    order = _stratified_order(pool_labels, cfg.split_seed)
    cuts = {
        "test": order[: cfg.test_size],
        "validation": order[cfg.test_size : cfg.test_size + cfg.val_size],
        "train": order[cfg.test_size + cfg.val_size : cfg.test_size + cfg.val_size + n_train],
    }
    parts, split_texts, split_counts = {}, {}, {}
    for name in SPLIT_NAMES:
        idx = cuts[name]
        s_texts = [pool_texts[i] for i in idx]
        s_labels = pool_labels[idx]
        parts[name] = _dataset(s_texts, s_labels.tolist())
        split_texts[name] = set(s_texts)
        counts = np.bincount(s_labels, minlength=len(table.label_names))
        split_counts[name] = {n: int(counts[k]) for k, n in enumerate(table.label_names)}

    report = DataReport.from_dict(table.report.to_dict())
    report.dedup = {
        "rows_in": len(texts),
        "duplicate_rows_removed": len(texts) - len(first) - (conflicting_rows - len(conflicting)),
        "conflicting_texts_removed": len(conflicting),
        "conflicting_rows_removed": conflicting_rows,
        "pool": n_pool,
    }
    pool_counts = np.bincount(pool_labels, minlength=len(table.label_names))
    report.split_class_counts = {"pool": {n: int(pool_counts[k]) for k, n in enumerate(table.label_names)}}
    report.split_class_counts.update(split_counts)
    report.split_overlap = {
        f"{a}&{b}": len(split_texts[a] & split_texts[b])
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))
    }
    return Splits(
        **parts,
        label_names=list(table.label_names),
        fingerprint=split_fingerprint(table.raw_sha256, cfg, table.label_names),
        report=report,
    )
