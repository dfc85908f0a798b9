"""Readers that turn data files into a :class:`Table`, and :func:`make_splits` that turns a table into
train / validation / test ``datasets.Dataset`` objects.

Every reader follows the same rules:

* A file, local or on object storage (``s3://...``), is read once, in chunks (Parquet by row groups),
  hashed on the way (``Table.raw_sha256``) and decoded line by line as UTF-8, so one bad byte costs one
  row, not the file, and the reader holds only the rows it keeps.
* A bad row is skipped and *counted* under a reason (``empty_text``, ``unknown_label``,
  ``wrong_field_count``, ``undecodable_bytes``, ...) with the first few 1-based line numbers (row
  numbers for parquet / Hugging Face data) in :class:`DataReport`; nothing is dropped silently and no
  row raises a traceback. ``rows_read == rows_kept + sum(skipped.values())`` always holds.
* A problem with the file as a whole (missing, empty, no usable rows, a header without the needed
  columns) raises :class:`DataError` naming the file and the problem.
* Texts go through :func:`kosent.text.normalize`, the same function serving uses.
* Columns the user gave that are not text or label are kept in ``Table.extra``.

The package, one stage a module (callers import from ``kosent.data`` alone):

    report.py    DataError, DataReport, Table and the row builder that applies the skip rules
    lines.py     LineReader (chunked, hashed), columns and labels: the steps every reader shares
    readers.py   files: read_nsmc, read_kmhas, read_table (CSV/TSV/JSON lines/Parquet), read_path
    remote.py    read_hf (Hugging Face hub), fetch_url / read_url (downloaded once, sha256-checked)
    sources.py   load_table: a DataConfig's source (nsmc, kmhas, hf:<id>, URL, path) -> Table
    selection.py KeyWindow: the one streaming pass that picks split rows by the hash of their text;
                 UnseenWindow: the unlabelled pool, the same way
    splits.py    make_splits: de-duplicated, stratified, nested train / validation / test, fingerprinted;
                 unlabelled_pool: the pool of distillation and pretraining, streamed
    streaming.py splits as Ray Datasets, a Train worker's shard (imported by kosent.ray_train, not here:
                 ``import kosent.data`` does not import Ray)
"""

from kosent.data.lines import KMHAS_LABEL_NAMES, NSMC_LABEL_NAMES
from kosent.data.readers import TABLE_SUFFIXES, concat_tables, read_kmhas, read_nsmc, read_path, read_table
from kosent.data.remote import fetch_url, read_hf, read_url
from kosent.data.report import DataError, DataReport, Table
from kosent.data.sources import load_table
from kosent.data.splits import SPLIT_NAMES, Splits, make_splits, split_fingerprint, unlabelled_pool

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
    "split_fingerprint",
    "unlabelled_pool",
    "NSMC_LABEL_NAMES",
    "KMHAS_LABEL_NAMES",
    "SPLIT_NAMES",
    "TABLE_SUFFIXES",
]
