"""The manifest: one JSON file naming the checkpoint to serve, written by a sweep (or a train job) and read
by Serve. Serving never digs through result folders; it reads this.

    {"checkpoint": "/abs/path/or/s3://...", "label_names": [...], "data_fingerprint": "...",
     "config": {...}, "val_metrics": {...}, "test_metrics": {...}, "created_at": "...", "source": "tune"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kosent.checkpoint import read_checked_json, read_meta
from kosent.config import utc_now
from kosent.storage import absolute

MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the field."""


def write_manifest(
    path: str | Path,
    checkpoint: str | Path,
    *,
    val_metrics: dict[str, float],
    test_metrics: dict[str, float] | None = None,
    source: str = "train",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the manifest for ``checkpoint`` (label map, fingerprint and config come from its kosent.json)."""
    meta = read_meta(checkpoint)
    doc = {
        "checkpoint": absolute(checkpoint),
        "label_names": meta["label_names"],
        "data_fingerprint": meta["data_fingerprint"],
        "config": meta.get("config", {}),
        "val_metrics": val_metrics,
        "test_metrics": test_metrics or {},
        "created_at": utc_now(),
        "source": source,
    } | (extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a manifest; a folder is taken to hold ``manifest.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (a sweep writes one; `ray_jobs/tune.py` prints its path)")
    return read_checked_json(path, ("checkpoint", "label_names", "data_fingerprint"), ManifestError)
