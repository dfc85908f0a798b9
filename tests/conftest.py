"""Shared fixtures. Every Ray test runs on a real local cluster bound to 127.0.0.1 with usage stats off."""

from __future__ import annotations

import os

# Before Ray is imported anywhere: keep every socket on loopback and send nothing outward.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from needs import missing, require_file  # tests/needs.py

from kosent.config import data_home

NSMC = data_home() / "nsmc" / "ratings_train.txt"
KMHAS_VALID = data_home() / "kmhas" / "kmhas_valid.txt"


@pytest.fixture(scope="session")
def nsmc_path() -> Path:
    return require_file(NSMC)


@pytest.fixture(scope="session")
def kmhas_valid_path() -> Path:
    return require_file(KMHAS_VALID)


def _job_module(name: str) -> ModuleType:
    """``ray_jobs/<name>.py`` loaded as a module (the jobs are scripts, not part of the package)."""
    path = Path(__file__).resolve().parent.parent / "ray_jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kosent_{name}_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def job_module():
    """``job_module("deploy")``: a ``ray_jobs`` script loaded as a module."""
    return _job_module


@pytest.fixture(scope="session")
def tune_job() -> ModuleType:
    return _job_module("tune")


@pytest.fixture(scope="session")
def train_job() -> ModuleType:
    return _job_module("train")


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on a free 127.0.0.1 port for the session: yields ``(endpoint, new_bucket)``, where
    ``new_bucket(prefix)`` creates an empty bucket and returns its name (each test module takes its own)."""
    import logging
    import socket
    import uuid

    try:
        import boto3
        from moto import server as server_mod
    except ImportError as e:
        missing(f"moto[server] (the dev extra) is not installed: {e}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")

    def new_bucket(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=name)
        return name

    try:
        yield endpoint, new_bucket
    finally:
        server.stop()
