"""The one place a :class:`kosent.config.DataConfig`'s ``source`` becomes a :class:`Table`: ``nsmc``,
``kmhas``, ``hf:<id>``, a URL, a storage URI or a file path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kosent import storage
from kosent.config import DataConfig, data_home
from kosent.data.lines import file_sha256
from kosent.data.readers import (
    KMHAS_URL,
    NSMC_URL,
    TABLE_SUFFIXES,
    concat_tables,
    read_kmhas,
    read_nsmc,
    read_path,
    read_table,
)
from kosent.data.remote import read_hf, read_url
from kosent.data.report import DataError, Table

log = logging.getLogger(__name__)

KMHAS_DEFAULT_FILES = ("kmhas_valid.txt", "kmhas_test.txt")
# What a folder source reads (``.txt`` is left out: a folder of notes is not a dataset).
FOLDER_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


def _missing(path: str | Path, what: str, url: str) -> DataError:
    return DataError(
        f"{what} file not found: {path}. Put it there (download {url}), or point KOSENT_DATA at the "
        f"folder that holds it (now {data_home()}), or give its location with path / --path. "
        "See shared/data/README.md for the files and their sha256."
    )


def _is_file(location: str | Path) -> bool:
    return storage.kind(location) == "file"


def load_table(cfg: DataConfig) -> Table:
    """The table named by ``cfg.source``: ``nsmc``, ``kmhas``, ``hf:<id>`` (or ``hf:<id>:<split>``),
    an ``http(s)://`` / ``file://`` URL (checked against ``cfg.sha256``), or a file or a folder of table files
    (Parquet, JSON lines, CSV, TSV), local or a storage URI (``s3://...``). ``cfg.path`` (a path or a
    storage URI) overrides where ``nsmc`` / ``kmhas`` are read."""
    source = (cfg.source or "").strip()
    if not source:
        raise DataError("data source is empty; use nsmc, kmhas, hf:<id>, a URL or a file path")
    if source == "nsmc":
        path = cfg.path or str(data_home() / "nsmc" / "ratings_train.txt")
        if not _is_file(path):
            raise _missing(path, "NSMC", NSMC_URL)
        return read_nsmc(path)
    if source == "kmhas":
        if cfg.path and _is_file(cfg.path):
            return read_kmhas(cfg.path)
        folder = cfg.path or str(data_home() / "kmhas")
        paths = [storage.join(folder, name) for name in KMHAS_DEFAULT_FILES]
        for p, name in zip(paths, KMHAS_DEFAULT_FILES, strict=True):
            if not _is_file(p):
                raise _missing(p, "K-MHaS", KMHAS_URL.format(split=Path(name).stem.split("_", 1)[1]))
        tables = [read_kmhas(p) for p in paths]
        return concat_tables(tables, "kmhas:" + "+".join(paths))
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
    path = source if storage.is_uri(source) else str(Path(source).expanduser())
    found = storage.kind(path)
    if found is None:
        raise DataError(
            f"data file not found: {path} (source {source!r}); the source must be nsmc, kmhas, hf:<id>, "
            f"an http(s):// URL, a storage URI (s3://...), or the path of a {'/'.join(TABLE_SUFFIXES)} file "
            "or of a folder of them"
        )
    if found == "folder":
        return _read_folder(path, cfg)
    if cfg.sha256:
        actual = file_sha256(path)
        if actual != cfg.sha256.strip().lower():
            raise DataError(
                f"{path}: sha256 mismatch: expected {cfg.sha256.strip().lower()}, file has {actual}"
            )
    return read_path(path, **columns)


def _read_folder(folder: str, cfg: DataConfig) -> Table:
    """Every table file directly in ``folder`` (``part-0000.parquet`` ...), in name order, as one table; the
    report keeps one part per file. Files of other types are left out, and said so."""
    if cfg.sha256:
        raise DataError(f"{folder}: sha256 checks one file; a folder source has one per file (drop --sha256)")
    files = storage.list_files(folder)
    tables_files = [f for f in files if Path(f).suffix.lower() in FOLDER_SUFFIXES]
    if not tables_files:
        raise DataError(f"{folder}: a folder with no {'/'.join(FOLDER_SUFFIXES)} file in it")
    if len(tables_files) < len(files):
        log.info("%s: reading %d table file(s), leaving out %d other file(s)", folder, len(tables_files),
                 len(files) - len(tables_files))
    columns = dict(text_column=cfg.text_column, label_column=cfg.label_column, label_map=cfg.label_map)
    return concat_tables([read_table(f, **columns) for f in tables_files], folder)
