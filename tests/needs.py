"""What a test does when something it needs (a data file, a model wheel, a dev package) is missing.

On a developer's machine it skips, saying how to get the thing. Under ``CI=true`` it fails instead: CI
installs everything and has ``../shared`` beside the clone, so a missing piece there is a broken set-up,
and a skipped test would let a green run hide it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing file, wheel or package fails the run)", pytrace=False)
    pytest.skip(reason)


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else :func:`missing` naming it and how to provide the shared data."""
    if not path.is_file():
        missing(f"real data not found at {path}: put the shared data folder beside the repo or set KOSENT_DATA")
    return path
