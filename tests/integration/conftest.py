"""One real local Ray cluster per test session (dashboard on: Tune needs the State API it serves)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from needs import missing  # tests/needs.py


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        # A new cluster of the tests' own, even while another runs (say the one `make demo` leaves up):
        # without this, ray.init joins the machine's latest cluster and refuses num_cpus.
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        # Any free port, not Ray's 8265: that one belongs to the cluster `make demo` leaves up for a user.
        dashboard_port=_free_port(0),
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        log_to_driver=True,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_checkpoints(tmp_path_factory):
    """Two tiny checkpoints trained in-process for a few dozen steps, each with a manifest: what the Serve
    tests serve (``a`` is the default model, ``b`` the second one for multiplexing and hot swaps)."""
    from kosent.config import DataConfig, TrainConfig
    from kosent.data import make_splits
    from kosent.manifest import write_manifest
    from kosent.train import fit_local

    root = tmp_path_factory.mktemp("serve-checkpoints")
    data = DataConfig(train_size=1000, val_size=200, test_size=200)
    splits = make_splits(data)
    out = {}
    for name, steps, seed in (("a", 20, 42), ("b", 8, 7)):
        cfg = TrainConfig(model="tiny", epochs=1, max_steps=steps, batch_size=32, lr=3e-3, max_length=64,
                          seed=seed, data=data)
        result = fit_local(cfg, splits=splits, out_dir=root / name)
        out[name] = write_manifest(root / name / "manifest.json", result.checkpoint,
                                   val_metrics={k: v for k, v in result.metrics.items() if k.startswith("val_")})
    return out


def _free_port(preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else (or for 0) any free port there."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return s.getsockname()[1]
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[int], int]:
    return _free_port


@pytest.fixture(scope="module")
def tiny_ready(nsmc_path):
    """The tiny model borrows the offline e5 tokenizer: build it once (skip where it cannot be built)."""
    from kosent.models import e5_offline

    try:
        e5_offline.pull()
    except e5_offline.BuildError as e:
        missing(f"offline e5 tokenizer unavailable: {e}")
    return nsmc_path
