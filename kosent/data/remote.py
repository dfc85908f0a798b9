"""Sources that are not a local file: a Hugging Face hub dataset (:func:`read_hf`) and a URL downloaded once
into the cache and checked against its sha256 (:func:`fetch_url`, :func:`read_url`).

Both fail fast with one :class:`DataError` that says why (no network, offline mode, wrong id, changed
file) and how to use a local copy instead.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from kosent.config import cache_home, data_home
from kosent.data.lines import (
    _LABEL_COLUMN_GUESSES,
    _TEXT_COLUMN_GUESSES,
    _label_parser,
    _require_columns,
    file_sha256,
)
from kosent.data.readers import NSMC_URL, read_path
from kosent.data.report import DataError, Table, _Builder


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
    builder = _Builder(source, parse_label, label_names, others)
    builder.report.unit = "row"
    digest = hashlib.sha256(f"hf\0{dataset_id}\0{split}\0".encode())
    texts, labels = data[text_column], data[label_column]
    for i in range(len(texts)):
        digest.update(f"{texts[i]}\t{labels[i]}\n".encode("utf-8", "surrogatepass"))
        builder.add(i + 1, texts[i], labels[i], {c: data[c][i] for c in others})
    return builder.finish(source, digest.hexdigest())


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or "download"


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
        if expected is None or file_sha256(dest) == expected:
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


