"""Readers of data files: NSMC, K-MHaS, a user's CSV / TSV / JSON lines / Parquet table, and
:func:`read_path` that picks one by the file's name; :func:`concat_tables` joins several.

A file may be local or on object storage (``s3://bucket/data/ratings_train.txt``, through
:mod:`kosent.storage`). Text files are read line by line in chunks and Parquet row group by row group,
so a reader holds the rows it keeps, never the file's bytes (a JSON array is parsed element by element).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kosent import storage
from kosent.data.lines import (
    KMHAS_LABEL_NAMES,
    NSMC_LABEL_NAMES,
    JsonArrayReader,
    LineReader,
    _binary_label,
    _decode_header,
    _decoded_body,
    _label_parser,
    _require_columns,
    check_file,
    file_sha256,
    first_byte,
)
from kosent.data.report import DataError, DataReport, Table, _Builder, _duplicate_stats

KMHAS_NOT_HATE = "8"
KMHAS_CLASS_IDS = frozenset(str(i) for i in range(9))

NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt"
KMHAS_URL = "https://raw.githubusercontent.com/adlnlp/K-MHaS/main/data/kmhas_{split}.txt"

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 8_192  # rows decoded into Python at a time: a smaller working set than a row group


def _location(path: str | os.PathLike) -> str | Path:
    """A URI as given (``Path`` would fold its ``//``, though not its name); a local path as a ``Path``."""
    return str(path) if storage.is_uri(path) else Path(path)


def read_nsmc(path: str | os.PathLike) -> Table:
    """NSMC ``id<TAB>document<TAB>label`` with a header, read with quoting OFF (``csv.QUOTE_NONE``).

    Quoting must stay off: 623 documents contain ``"`` and were CSV-quoted twice upstream; reading
    them with CSV quoting would silently change or merge them. Labels: 0 negative, 1 positive.
    ``extra["id"]`` holds the review ids of the kept rows.
    """
    path = _location(path)
    lines = LineReader(path)
    body = iter(lines)
    columns = [c.strip() for c in _decode_header(path, next(body)).split("\t")]
    pos = _require_columns(path, columns, {"id": "id", "text": "document", "label": "label"})
    builder = _Builder(str(path), _binary_label, NSMC_LABEL_NAMES, ["id"])
    n_fields = len(columns)
    i_id, i_text, i_label = pos["id"], pos["text"], pos["label"]
    for lineno, line in _decoded_body(body, builder):
        fields = line.split("\t")
        if len(fields) != n_fields:
            builder.skip("blank_line" if not line.strip() else "wrong_field_count", lineno)
            continue
        builder.add(lineno, fields[i_text], fields[i_label], {"id": fields[i_id]})
    return builder.finish(path, lines.sha256)


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
    path = _location(path)
    lines = LineReader(path)
    body = iter(lines)
    columns = _split_tsv_line(_decode_header(path, next(body)), csv.QUOTE_MINIMAL) or []
    columns = [c.strip() for c in columns]
    pos = _require_columns(path, columns, {"text": "document", "label": "label"})
    builder = _Builder(str(path), _kmhas_label, KMHAS_LABEL_NAMES, ["kmhas_labels"])
    _read_delimited_lines(body, columns, pos, builder, label_extra="kmhas_labels")
    return builder.finish(path, lines.sha256)


def _read_delimited_lines(
    body: Iterator[bytes],
    columns: list[str],
    pos: dict[str, int],
    builder: _Builder,
    label_extra: str | None = None,
) -> None:
    """Tab-separated, one record per physical line after the header (a stray quote damages one row, not the
    rest)."""
    n_fields = len(columns)
    i_text, i_label = pos["text"], pos["label"]
    other = [(i, c) for i, c in enumerate(columns) if i not in (i_text, i_label)]
    for lineno, line in _decoded_body(body, builder):
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
    path: str | Path, lines: LineReader, builder: _Builder, text_column: str, label_column: str
) -> None:
    """Comma-separated with standard quoting; a quoted field may span lines, as CSV allows."""
    numbered: list[int] = []  # the line number of every line fed to csv (a record may span several)
    body = iter(lines)

    def feed() -> Iterator[str]:
        numbered.append(1)
        yield _decode_header(path, next(body)) + "\n"
        for lineno, text in _decoded_body(body, builder):
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


def _json_records(path: str | Path, builder: _Builder) -> tuple[Iterator[tuple[int, Any]], Callable[[], str]]:
    """JSON lines, or one JSON array of objects, as ``(line or element number, value)`` pairs streamed from
    the file, and how to get the file's sha256 once they are read."""
    if first_byte(path) == b"[":
        builder.report.unit = "row"
        array = JsonArrayReader(path)
        return iter(array), lambda: array.sha256
    lines = LineReader(path)

    def records() -> Iterator[tuple[int, Any]]:
        for lineno, line in enumerate(lines, start=1):
            try:
                text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                builder.skip("undecodable_bytes", lineno)
                continue
            if not text.strip():
                continue  # blank lines are not records in JSON lines
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError:
                builder.skip("invalid_json", lineno)

    return records(), lambda: lines.sha256


def _fill_from_records(
    path: str | Path, builder: _Builder, records: Iterator[tuple[int, Any]], text_column: str, label_column: str
) -> None:
    """Objects into rows as they arrive; a field first seen in a later object becomes a column (None before).
    The text and label columns are checked at the end, over every object, as for a table's header."""
    columns: dict[str, None] = {}
    for where, obj in records:
        if not isinstance(obj, dict):
            builder.skip("invalid_json", where)
            continue
        for key in obj:
            if key not in columns:
                columns[key] = None
                if key not in (text_column, label_column):
                    builder.extra[key] = [None] * len(builder.texts)
        if text_column not in obj or label_column not in obj:
            builder.skip("missing_field", where)
            continue
        builder.add(where, obj[text_column], obj[label_column], obj)
    if not columns and not builder.report.rows_read:
        raise DataError(f"{path}: no JSON records")
    if columns:
        _require_columns(path, list(columns), {"text": text_column, "label": label_column})


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
    path = _location(path)
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(TABLE_SUFFIXES)}"
        )
    parse_label, label_names = _label_parser(label_map)
    builder = _Builder(str(path), parse_label, label_names, [])
    if suffix == ".parquet":
        _fill_from_parquet(path, builder, text_column, label_column)
        return builder.finish(path, file_sha256(path))
    if suffix in (".jsonl", ".json"):
        records, sha256 = _json_records(path, builder)
        _fill_from_records(path, builder, records, text_column, label_column)
        return builder.finish(path, sha256())
    lines = LineReader(path)
    if suffix == ".csv":
        _read_csv_stream(path, lines, builder, text_column, label_column)
    else:
        body = iter(lines)
        header = _split_tsv_line(_decode_header(path, next(body)), csv.QUOTE_MINIMAL) or []
        header = [c.strip() for c in header]
        pos = _require_columns(path, header, {"text": text_column, "label": label_column})
        builder.extra = {c: [] for i, c in enumerate(header) if i not in (pos["text"], pos["label"])}
        _read_delimited_lines(body, header, pos, builder)
    return builder.finish(path, lines.sha256)


def _fill_from_parquet(path: str | Path, builder: _Builder, text_column: str, label_column: str) -> None:
    """Row group by row group (``PARQUET_BATCH_ROWS`` rows at a time), so the file is never in memory whole."""
    import pyarrow.parquet as pq

    check_file(path)
    with storage.open_input(path) as f:
        if not f.read(1):
            raise DataError(f"{path}: file is empty")
        f.seek(0)
        try:
            # pre_buffer (pyarrow's default) reads every row group's bytes ahead: the whole file in memory
            # (a 622 MB file: 764 MB peak); without it one 1 MiB-buffered row group at a time (201 MB).
            parquet = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot read as parquet: {type(e).__name__}: {e}") from e
        names = list(parquet.schema_arrow.names)
        _require_columns(path, names, {"text": text_column, "label": label_column})
        if parquet.metadata.num_rows == 0:
            raise DataError(f"{path}: parquet file has no rows")
        others = [c for c in names if c not in (text_column, label_column)]
        builder.extra = {c: [] for c in others}
        builder.report.unit = "row"
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                columns = batch.to_pydict()
                texts, labels = columns[text_column], columns[label_column]
                for i in range(batch.num_rows):
                    row += 1
                    builder.add(row, texts[i], labels[i], {c: columns[c][i] for c in others})
        except Exception as e:  # a damaged page deep in the file
            raise DataError(f"{path}: cannot read as parquet after row {row:,}: {type(e).__name__}: {e}") from e


def read_path(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, int] | None = None,
) -> Table:
    """Read a file (local or a storage URI), choosing the reader by its name: ``ratings*.txt`` is NSMC
    (quoting off), ``kmhas_*`` is K-MHaS, anything else goes to :func:`read_table`."""
    path = _location(path)
    name = Path(path).name.lower()
    if fnmatch.fnmatch(name, "ratings*.txt"):
        return read_nsmc(path)
    if name.startswith("kmhas_"):
        return read_kmhas(path)
    return read_table(path, text_column=text_column, label_column=label_column, label_map=label_map)


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
        part = r.to_dict()
        if not t.texts:  # read into a row sink: its duplicates are counted over the whole source, not per file
            del part["duplicate_texts"], part["conflicting_texts"]
        rep.parts.append(part)
    rep.rows_kept = sum(t.report.rows_kept for t in tables)
    rep.class_counts = {n: sum(t.report.class_counts.get(n, 0) for t in tables) for n in names}
    if texts:  # tables read into a row sink hold no rows: the sink counts duplicates over all of them
        rep.duplicate_texts, rep.conflicting_texts = _duplicate_stats(texts, labels)
    raw = hashlib.sha256("\n".join(t.raw_sha256 for t in tables).encode()).hexdigest()
    return Table(texts=texts, labels=labels, label_names=list(names), report=rep, raw_sha256=raw, extra=extra)


