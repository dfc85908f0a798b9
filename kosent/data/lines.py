"""Bytes, lines, columns and labels: the small steps every reader shares.

Bytes are read once, in chunks, and hashed on the way (:class:`LineReader`); lines are split on LF and
decoded one by one, so one bad byte costs one row, not the file, and a file larger than memory can be read;
a missing column is an error naming the columns there and the flag that picks one.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kosent import storage
from kosent.data.report import DataError, _Builder

NSMC_LABEL_NAMES = ["negative", "positive"]
KMHAS_LABEL_NAMES = ["hate", "not_hate"]
DEFAULT_LABEL_NAMES = NSMC_LABEL_NAMES
# Column names that hold the text in well-known corpora; used for suggestions and for read_hf's
# automatic choice when no text column is named.
_TEXT_COLUMN_GUESSES = ("text", "document", "sentence", "content", "review", "comment", "comments")
_LABEL_COLUMN_GUESSES = ("label", "labels", "sentiment", "target")


CHUNK_BYTES = 1 << 20


def check_file(location: str | os.PathLike) -> None:
    """A DataError naming ``location`` unless it is a file (local or on object storage)."""
    found = storage.kind(location)
    if found is None:
        raise DataError(f"{location}: file not found")
    if found == "folder":
        raise DataError(f"{location}: is a folder, expected a data file")


def file_sha256(location: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks (local or on object storage)."""
    digest = hashlib.sha256()
    with storage.open_input(location) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class LineReader:
    """The physical lines of a file, local or on object storage, read in 1 MiB chunks and hashed on the way.

    Lines are split on LF only (a CR before it is dropped), without a trailing empty line; iterating yields
    them from line 1, once. Memory is one chunk, not the file: a reader keeps only the rows it accepts.
    Opening raises :class:`DataError` for a missing file, a folder, or a file with nothing but whitespace.
    ``sha256`` is the hash of the whole file (the rest is read if iteration stopped early).
    """

    def __init__(self, location: str | os.PathLike):
        check_file(location)
        self.location = location
        self._digest = hashlib.sha256()
        self._lines = self._read()
        self._ahead: list[bytes] = []  # the leading blank lines and the first non-blank one, read to check
        for line in self._lines:
            self._ahead.append(line)
            if line.strip():
                break
        else:
            raise DataError(f"{location}: file is empty")

    def _read(self) -> Iterator[bytes]:
        with storage.open_input(self.location) as f:
            # The pieces of the line being read, joined once its LF arrives: a line longer than a chunk costs
            # its length, not (length / chunk) copies of itself.
            pieces: list[bytes] = []
            while chunk := f.read(CHUNK_BYTES):
                self._digest.update(chunk)
                *lines, rest = chunk.split(b"\n")
                if lines:
                    lines[0] = b"".join([*pieces, lines[0]])
                    pieces = []
                    for line in lines:
                        yield line[:-1] if line.endswith(b"\r") else line
                pieces.append(rest)
            if carry := b"".join(pieces):
                yield carry[:-1] if carry.endswith(b"\r") else carry

    def __iter__(self) -> Iterator[bytes]:
        ahead, self._ahead = self._ahead, []
        yield from ahead
        yield from self._lines

    @property
    def sha256(self) -> str:
        for _ in self._lines:
            pass
        return self._digest.hexdigest()


def first_byte(location: str | os.PathLike) -> bytes:
    """The first byte of the file that is not whitespace or a UTF-8 byte order mark (``b""`` if none): ``[``
    tells a JSON array from JSON lines before either reader starts (an array may be one line of gigabytes)."""
    with storage.open_input(location) as f:
        chunk = f.read(max(CHUNK_BYTES, len(codecs.BOM_UTF8))).removeprefix(codecs.BOM_UTF8)
        while not (stripped := chunk.lstrip()):
            chunk = f.read(CHUNK_BYTES)
            if not chunk:
                return b""
        return stripped[:1]


_SPACE = re.compile(r"[ \t\n\r]*")


class JsonArrayReader:
    """The elements of a file that holds one JSON array, local or on object storage, read in 1 MiB chunks
    and hashed on the way: memory is a chunk and the element being parsed, not the file (whose array may well
    be a single line). Iterating yields ``(element number from 1, value)`` once; anything that is not one
    well-formed array raises :class:`DataError` naming the element and the line where it went wrong."""

    def __init__(self, location: str | os.PathLike):
        check_file(location)
        self.location = location
        self._digest = hashlib.sha256()
        self._done = False

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        decoder, text = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8-sig")()
        self._digest, self._done = hashlib.sha256(), False
        with storage.open_input(self.location) as f:
            buf, pos, lines_before, eof = "", 0, 0, False

            def read_more() -> bool:
                nonlocal buf, pos, lines_before, eof
                chunk = f.read(CHUNK_BYTES)
                self._digest.update(chunk)
                lines_before += buf.count("\n", 0, pos)
                try:
                    buf = buf[pos:] + text.decode(chunk, final=not chunk)
                except UnicodeDecodeError as e:
                    raise DataError(f"{self.location}: not UTF-8 near line {lines_before + 1}: {e.reason}") from e
                pos, eof = 0, not chunk
                return not eof

            def fail(problem: str, at: int) -> DataError:
                return DataError(f"{self.location}: not a valid JSON array: {problem} (line "
                                 f"{lines_before + buf.count(chr(10), 0, at) + 1})")

            def next_char() -> str:  # the next character that is not whitespace ("" at the end of the file)
                nonlocal pos
                while True:
                    pos = _SPACE.match(buf, pos).end()
                    if pos < len(buf) or not read_more():
                        return buf[pos:pos + 1]

            if next_char() != "[":
                raise fail("it does not start with [", pos)
            pos += 1
            n = 0
            while True:
                c = next_char()
                if c == "]" and n == 0:
                    pos += 1
                    break
                while True:  # one element; a value that reaches the end of the buffer may go on in the next chunk
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                        if end < len(buf) or eof:
                            break
                    except json.JSONDecodeError as e:
                        if eof:
                            raise fail(f"element {n + 1}: {e.msg}", e.pos) from None
                    read_more()
                n, pos = n + 1, end
                yield n, value
                c = next_char()
                if c == "]":
                    pos += 1
                    break
                if c != ",":
                    raise fail(f"after element {n}, expected , or ] but found {c or 'the end of the file'!r}", pos)
                pos += 1
            if next_char():
                raise fail("more data after its closing ]", pos)
        self._done = True

    @property
    def sha256(self) -> str:
        if not self._done:
            for _ in self:
                pass
        return self._digest.hexdigest()


def _decode_header(path: str | Path, line: bytes) -> str:
    try:
        return line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: line 1 (the header) is not valid UTF-8 ({e.reason} at byte {e.start}); "
            "convert the file to UTF-8, e.g. `iconv -f cp949 -t utf-8 in.txt > out.txt`"
        ) from e


def _decoded_body(body: Iterable[bytes], builder: _Builder) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for every line after the header; count undecodable ones."""
    for lineno, line in enumerate(body, start=2):
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

