"""Fixtures for tests on the real files under ``kosent.config.data_home()`` (../shared/data).

``nsmc_path`` and ``kmhas_valid_path`` come from ``tests/conftest.py``; this adds the K-MHaS test file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from needs import require_file  # tests/needs.py

from kosent.config import data_home


@pytest.fixture(scope="session")
def kmhas_test_path() -> Path:
    return require_file(data_home() / "kmhas" / "kmhas_test.txt")
