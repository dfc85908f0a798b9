"""The one place a :class:`kosent.config.DataConfig`'s ``source`` becomes a :class:`Table`: ``nsmc``,
``kmhas``, ``hf:<id>``, a URL or a file path.
"""

from __future__ import annotations

from pathlib import Path

from kosent.config import DataConfig, data_home
from kosent.data.readers import (
    KMHAS_URL,
    NSMC_URL,
    TABLE_SUFFIXES,
    concat_tables,
    read_kmhas,
    read_nsmc,
    read_path,
)
from kosent.data.remote import _file_sha256, read_hf, read_url
from kosent.data.report import DataError, Table

KMHAS_DEFAULT_FILES = ("kmhas_valid.txt", "kmhas_test.txt")


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


