"""Scoring a split on the Ray cluster (``kosent.scoring``: Ray Data ``map_batches`` over an actor pool) against
scoring it in the driver process, as a Ray run did before.

Each variant runs in a fresh driver process, side by side in one invocation, on the same texts (NSMC
reviews) and the same e5-small-ko checkpoint (built here with one training step: speed does not depend on
the weights):

* ``in the driver``: ``Predictor.from_checkpoint`` + ``predict_proba`` in the driver, torch on every CPU;
* ``pool A x C``: ``cluster_scorer`` with A actors of C CPUs each on a local Ray cluster started by the
  parent (the driver connects to it and loads no model).

Figures: seconds from the call to the last probability, seconds to the first scored batch (the pool's
start-up: a worker process importing torch and loading the model), texts/s, and how much the driver's
resident memory grew (the model, when the driver scores).

    .venv/bin/python bench/bench_scoring.py [--sizes 5000 20000] [--pools 1x2 2x1] [--json F]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local cluster stays on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Current resident memory of this process, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, checkpoint: str, rows: int, address: str) -> None:
    """One variant in this fresh process; prints one JSON line."""
    import torch

    from kosent.config import DataConfig
    from kosent.data import unlabelled_pool
    from kosent.logs import setup

    setup()
    texts = unlabelled_pool(DataConfig(), set(), 0, rows).finish()  # NSMC reviews, streamed, a seeded sample
    before = rss_mb()
    t0 = time.perf_counter()
    if mode == "driver":
        from kosent.predict import Predictor

        torch.set_num_threads(os.cpu_count() or 1)
        predictor = Predictor.from_checkpoint(checkpoint)
        first = predictor.predict_proba(texts[:512])
        t_first = time.perf_counter() - t0
        scored = len(first) + len(predictor.predict_proba(texts[512:]))
    else:
        import ray

        from kosent.scoring import ScorePool, iter_scores

        actors, cpus = (int(x) for x in mode.split("x"))
        ray.init(address=address, log_to_driver=False)
        pool = ScorePool(actors=actors, cpus=float(cpus), env={"TOKENIZERS_PARALLELISM": "false"})
        scored, t_first = 0, None
        for index, _ in iter_scores(texts, checkpoint, pool):
            t_first = t_first or time.perf_counter() - t0
            scored += len(index)
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "rows": scored, "seconds": seconds, "first_batch_s": t_first,
                      "texts_per_s": scored / seconds, "driver_rss_growth_mb": rss_mb() - before}))


def run_child(mode: str, checkpoint: str, rows: int, address: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, checkpoint, str(rows), address]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_checkpoint(folder: Path) -> str:
    """An e5-small-ko checkpoint after one training step (enough to time scoring)."""
    from kosent.config import DataConfig, TrainConfig
    from kosent.train import fit_local

    data = DataConfig(train_size=64, val_size=32, test_size=32)
    cfg = TrainConfig(model="e5-small-ko", epochs=1, max_steps=1, batch_size=32, data=data)
    return str(fit_local(cfg, out_dir=folder).checkpoint)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000], help="texts scored")
    p.add_argument("--pools", nargs="+", default=["1x2", "2x1"], help="ACTORSxCPUS per pool variant")
    p.add_argument("--checkpoint", help="score with this checkpoint (default: e5-small-ko after one step)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, checkpoint, rows, address = args.child
        child(mode, checkpoint, int(rows), address)
        return 0

    import ray

    from kosent.logs import setup

    setup()
    work = Path(tempfile.mkdtemp(prefix="kosent-bench-scoring-"))
    checkpoint = args.checkpoint or build_checkpoint(work / "model")
    info = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
    address = info.address_info["gcs_address"]
    rows = []
    for size in args.sizes:
        for mode in ["driver", *args.pools]:
            row = run_child(mode, checkpoint, size, address)
            rows.append(row)
            print(f"[bench] {size:,} texts, {mode}: {row['seconds']:.1f} s", flush=True)
    ray.shutdown()

    print()
    print(f"Scoring NSMC reviews with an e5-small-ko checkpoint on {os.cpu_count()} CPUs, each variant in a fresh "
          "driver process")
    print("| texts | scored in | seconds | first batch after s | texts/s | vs the driver | driver RSS growth MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["rows"] == r["rows"] and x["mode"] == "driver")
        where = "the driver" if r["mode"] == "driver" else f"pool {r['mode'].replace('x', ' actor(s) x ')} CPU"
        print(f"| {r['rows']:,} | {where} | {r['seconds']:.1f} | {r['first_batch_s']:.1f} | {r['texts_per_s']:.0f} | "
              f"{ref['seconds'] / r['seconds']:.2f}x | {r['driver_rss_growth_mb']:+.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
