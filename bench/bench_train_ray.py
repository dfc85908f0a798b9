"""Ray Train vs the plain in-process loop: same model, same data, same number of steps, side by side.

    python bench/bench_train_ray.py                      # e5-small-ko, 60 steps of 16 x <=64 tokens
    python bench/bench_train_ray.py --model tiny --max-steps 60

Rows, in this order: ``fit_local`` in this process before any Ray cluster exists (2 threads); Ray Train with
1 worker x 2 CPUs (2 threads: the cost of Ray itself); ``fit_local`` again while the Ray cluster sits idle
(what Ray's daemons alone take from a loop on the same cores); Ray Train with 2 workers x 1 CPU (DDP over
gloo: data parallelism on the same 2 cores).
``--single-thread``: every process gets one thread (local x 1, Ray 1 worker x 1 CPU, Ray 2 workers x 1 CPU):
multi-threaded torch collapses when the machine is oversubscribed, one thread per process much less.
Throughput is the loop's own ``samples_per_second`` (training steps only: no start-up, evaluation or
checkpointing); ``med s/step`` is the loop's ``median_step_seconds`` (steady state: the first two steps are
left out); ``wall s`` is the whole call, start-up included. Ray's overhead % compares the median step of
the 1-worker Ray row with the first local row at equal threads; all runs see the same batches in the same order.
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
import dataclasses
import json
import shutil
import tempfile
import time


def main() -> int:
    from kosent.config import DataConfig, TrainConfig
    from kosent.data import make_splits
    from kosent.ray_train import connect, fit
    from kosent.train import fit_local

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="e5-small-ko")
    p.add_argument("--max-steps", type=int, default=60, help="training steps per run (per worker)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--single-thread", action="store_true", help="one thread per process in every row")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    cpus = os.cpu_count() or 2
    threads = 1 if args.single_thread else cpus  # threads of the local row and of the 1-worker Ray row
    storage = tempfile.mkdtemp(prefix="kosent-bench-")
    data = DataConfig(train_size=args.train_size, val_size=args.val_size, test_size=200)
    base = TrainConfig(
        model=args.model, epochs=1, max_steps=args.max_steps, batch_size=args.batch_size,
        max_length=args.max_length, lr=5e-5, storage_path=storage, keep_checkpoints=1, data=data,
    )
    splits = make_splits(data)
    load_start = os.getloadavg()[0]
    rows = []

    def record(label: str, workers: int, threads: int, history: list[dict], wall: float) -> None:
        h = history[-1]
        steps = int(h["step"])
        rows.append({
            "config": label, "workers": workers, "threads_per_worker": threads,
            "samples_per_second": h["samples_per_second"], "step_seconds": h["median_step_seconds"],
            "steps": steps, "samples": round(h["samples_per_second"] * h["epoch_seconds"]), "wall_seconds": wall,
        })
        print(f"[bench] {label}: {h['samples_per_second']:.1f} samples/s, wall {wall:.0f}s", flush=True)

    def run_local(label: str) -> None:
        t0 = time.perf_counter()
        local = fit_local(dataclasses.replace(base, threads=threads, name="local"), splits,
                          out_dir=os.path.join(storage, "local"))
        record(label, 1, threads, local.history, time.perf_counter() - t0)
        shutil.rmtree(os.path.join(storage, "local"), ignore_errors=True)

    def run_ray(label: str, workers: int, per_worker: int) -> None:
        t0 = time.perf_counter()
        result = fit(dataclasses.replace(base, num_workers=workers, cpus_per_worker=float(per_worker),
                                         name=f"ray-{workers}w"), splits)
        record(label, workers, per_worker, result.history, time.perf_counter() - t0)

    run_local("local, no Ray running")
    connect()
    run_ray(f"ray 1 worker x {threads} CPU", 1, threads)
    run_local("local, Ray cluster idle")
    run_ray(f"ray {cpus} workers x 1 CPU", cpus, 1)

    local_step, ray1_step, idle_step = (rows[i]["step_seconds"] for i in range(3))
    overhead = 100.0 * (ray1_step / local_step - 1.0)
    daemons = 100.0 * (idle_step / local_step - 1.0)
    scaling = rows[3]["samples_per_second"] / rows[1]["samples_per_second"]
    load = max(load_start, os.getloadavg()[0])

    print()
    print(f"model {args.model}, batch {args.batch_size} x <={args.max_length} tokens, {args.max_steps} steps per "
          f"worker, {cpus} CPUs, load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    header = f"{'config':<28} {'workers':>7} {'thr/wkr':>7} {'samples/s':>10} {'med s/step':>10} {'samples':>8} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:<28} {r['workers']:>7} {r['threads_per_worker']:>7} {r['samples_per_second']:>10.1f} "
              f"{r['step_seconds']:>10.3f} {r['samples']:>8} {r['wall_seconds']:>7.0f}")
    print()
    print(f"Ray overhead, 1 worker vs local at {threads} thread(s): {overhead:+.1f}% median time per step "
          "(negative: Ray was faster, i.e. noise)")
    print(f"  of which an idle Ray cluster's daemons alone cost the local loop {daemons:+.1f}%")
    print(f"{cpus} workers x 1 CPU vs 1 worker x {threads} CPU: {scaling:.2f}x samples/s")
    if load > cpus:
        print(f"warning: load average {load:.1f} on {cpus} CPUs: other processes compete, the figures are noisy")
    shutil.rmtree(storage, ignore_errors=True)  # the runs' checkpoints (hundreds of MB for e5)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "ray_overhead_percent": overhead, "idle_cluster_percent": daemons, "two_vs_one_worker": scaling,
                       "load_average": load, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
