"""Serve vs the raw model: requests/s and p50/p95/p99 latency at concurrency 1, 8 and 32, in one run.

1. Raw forward in this process (outside Ray): ``Predictor.predict`` on one text at a time (batch 1) and on
   batches of ``--raw-batch`` texts, torch on ``--num-cpus`` threads, the same real NSMC reviews.
2. Serve on a local cluster (127.0.0.1 only): one replica with ``--num-cpus`` CPUs, dynamic batching;
   ``--requests`` single-text POST /predict per concurrency level (at most ``--duration-s`` each), from
   threads with keep-alive connections to 127.0.0.1.
3. The floor: a no-op FastAPI endpoint on the same Serve instance (parses the JSON, answers at once) at c=1,
   so the c=1 gap splits into what Serve's HTTP path costs on this machine and what kosent adds.

The measurements alternate in ``--rounds`` rounds (raw, then Serve at each concurrency) so both sides see
the same background load on a shared machine; figures are over all rounds. Goals, printed with the
figures: at c=32 Serve's texts/s >= 80% of the raw batched forward; at c=1 Serve's p50 within 10 ms of
the raw batch-1 forward's p50. The HTTP client, Serve's proxy and the replica share this machine's cores,
while the raw forward has them to itself: the comparison is the one a single box gives.

    .venv/bin/python bench/bench_serve.py --train tiny
    .venv/bin/python bench/bench_serve.py --manifest runs/sweeps/nsmc-sweep/manifest.json
    .venv/bin/python bench/bench_serve.py --train e5-small-ko --requests 200
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import requests
from fastapi import FastAPI, Request  # module level: the no-op route's annotations resolve here


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(latencies_s: list[float], elapsed_s: float, texts: int) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {"n": len(ms), "rps": texts / elapsed_s if elapsed_s else float("nan"),
            "p50": percentile(ms, 0.50), "p95": percentile(ms, 0.95), "p99": percentile(ms, 0.99)}


def nsmc_texts(n: int) -> list[str]:
    from kosent.config import data_home

    path = data_home() / "nsmc" / "ratings_train.txt"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    out = [f[1] for f in (line.split("\t") for line in lines[-5 * n:]) if len(f) == 3 and f[1].strip()]
    return out[:n]


def train_checkpoint(model: str, out: Path) -> Path:
    """A throwaway checkpoint of ``model`` (a few steps: speed, not accuracy, is measured)."""
    from kosent.config import DataConfig, TrainConfig
    from kosent.train import fit_local

    cfg = TrainConfig(model=model, epochs=1, max_steps=8 if model == "tiny" else 4, batch_size=16,
                      max_length=128, data=DataConfig(train_size=200, val_size=64, test_size=64))
    return fit_local(cfg, out_dir=out).checkpoint


def raw_batch1(pred, texts: list[str], n: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies of ``Predictor.predict([text])``, one text at a time."""
    lat, t0 = [], time.perf_counter()
    for t in texts[:n]:
        s = time.perf_counter()
        pred.predict([t])
        lat.append(time.perf_counter() - s)
        if time.perf_counter() - t0 > seconds:
            break
    return lat, len(lat), sum(lat)


def raw_batched(pred, texts: list[str], batch: int, n: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies of ``Predictor.predict`` on batches of ``batch`` texts (``n`` texts at most)."""
    lat, done, t0 = [], 0, time.perf_counter()
    for i in range(0, n - batch + 1, batch):
        s = time.perf_counter()
        pred.predict(texts[i : i + batch])
        lat.append(time.perf_counter() - s)
        done += batch
        if time.perf_counter() - t0 > seconds:
            break
    return lat, done, sum(lat)


def http_load(url: str, texts: list[str], concurrency: int, total: int,
              seconds: float) -> tuple[list[float], int, float, int]:
    lat: list[float] = []
    errors: list[str] = []
    lock, counter = threading.Lock(), iter(range(total))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                s = time.perf_counter()
                r = session.post(url, json={"text": texts[i % len(texts)]}, timeout=60)
                took = time.perf_counter() - s
                with lock:
                    (lat.append(took) if r.status_code == 200 else errors.append(f"{r.status_code}"))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, len(lat), time.perf_counter() - t0, len(errors)


def noop_app():  # a serve.Application; ray is imported late
    """The floor: a FastAPI ingress that parses the same JSON and answers at once, no model, no batching."""
    from ray import serve

    api = FastAPI()

    class Noop:
        async def predict(self, request):
            return {"predictions": [{"text": (await request.json())["text"]}]}

        # Real classes, not the strings ``from __future__ import annotations`` leaves: FastAPI resolves
        # them again inside the replica, where this module's globals are not importable.
        predict.__annotations__ = {"request": Request, "return": dict}
        predict = api.post("/predict")(predict)

    return serve.deployment(ray_actor_options={"num_cpus": 0})(serve.ingress(api)(Noop)).bind()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest")
    src.add_argument("--checkpoint")
    src.add_argument("--train", metavar="MODEL", help="train a throwaway checkpoint of MODEL (tiny, e5-small-ko)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--json", type=Path, help="also write the figures here (machine-readable, for scripts)")
    ap.add_argument("--requests", type=int, default=600, help="requests (texts) per measurement, all rounds (upper bound)")
    ap.add_argument("--duration-s", type=float, default=30.0, help="time per measurement, all rounds (upper bound)")
    ap.add_argument("--num-cpus", type=float, default=2.0, help="the replica's CPUs = the raw forward's threads")
    ap.add_argument("--num-gpus", type=float, default=0.0,
                    help="the replica's GPU share (ServeArgs.num_gpus); the raw forward then runs on the GPU too")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    ap.add_argument("--raw-batch", type=int, default=32, help="texts per raw batched forward")
    ap.add_argument("--port", type=int, default=8125)
    ap.add_argument("--rounds", type=int, default=2, help="alternate raw and Serve measurements this many times")
    ap.add_argument("--throughput-optimized", action="store_true",
                    help="start the cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress: no proxy hop)")
    args = ap.parse_args()
    if args.throughput_optimized:  # read by Serve's constants in every process of the cluster started below
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"

    texts = nsmc_texts(1000)
    tmp = tempfile.TemporaryDirectory(prefix="kosent-bench-serve-")
    if args.train:
        checkpoint = str(train_checkpoint(args.train, Path(tmp.name)))
    elif args.manifest:
        from kosent.manifest import read_manifest

        checkpoint = read_manifest(args.manifest)["checkpoint"]
    else:
        checkpoint = args.checkpoint
    threads = max(1, int(round(args.num_cpus)))
    print(f"checkpoint {checkpoint}; {threads} torch thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)

    import ray
    import torch
    from ray import serve

    from kosent.predict import Predictor
    from kosent.serve import app_builder

    torch.set_num_threads(threads)
    device = "cuda" if args.num_gpus and torch.cuda.is_available() else "cpu"
    pred = Predictor.from_checkpoint(checkpoint, batch_size=max(64, args.raw_batch), device=device)
    pred.predict(texts[: args.raw_batch])  # warm-up
    ray.init(address="local", num_cpus=max(2, int(args.num_cpus)), include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    # name -> [latencies, texts done, seconds busy, errors], summed over rounds
    acc: dict[str, list] = {}

    def add(name: str, lat: list[float], n: int, secs: float, errors: int = 0) -> None:
        a = acc.setdefault(name, [[], 0, 0.0, 0])
        a[0].extend(lat)
        a[1] += n
        a[2] += secs
        a[3] += errors

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(app_builder({
            "checkpoint": checkpoint, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
            "min_replicas": 1, "max_replicas": 1,
            "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "max_ongoing_requests": max(64, 2 * args.max_batch_size), "max_queued_requests": -1,
        }), name="bench", route_prefix="/")
        serve.run(noop_app(), name="noop", route_prefix="/noop")
        url = f"http://127.0.0.1:{args.port}"
        http_load(url + "/predict", texts, 4, 40, 30)  # warm-up
        http_load(url + "/noop/predict", texts, 1, 20, 30)
        before = requests.get(url + "/stats", timeout=30).json()
        replica_device = requests.get(url + "/model", timeout=30).json()["device"]
        print(f"raw forward on {device}, the replica's model on {replica_device}", flush=True)
        # Rounds alternate raw and Serve so both see the same background load on a shared machine.
        per_round, secs = max(1, args.requests // args.rounds), args.duration_s / args.rounds
        for r in range(args.rounds):
            offset = (r * per_round) % max(1, len(texts) - per_round)
            chunk = texts[offset:] + texts[:offset]
            add("raw1", *raw_batch1(pred, chunk, per_round, secs))
            add("rawB", *raw_batched(pred, chunk, args.raw_batch, max(per_round, 4 * args.raw_batch), secs))
            for c in args.concurrency:
                add(f"c{c}", *http_load(url + "/predict", chunk, c, per_round, secs))
            add("noop", *http_load(url + "/noop/predict", chunk, 1, per_round, secs))
            print(f"round {r + 1}/{args.rounds} done; load average {os.getloadavg()[0]:.1f}", flush=True)
        stats = requests.get(url + "/stats", timeout=30).json()
    finally:
        serve.shutdown()
        ray.shutdown()
    b1 = summary(acc["raw1"][0], acc["raw1"][2], acc["raw1"][1])
    bb = summary(acc["rawB"][0], acc["rawB"][2], acc["rawB"][1])
    rows = {}
    for c in args.concurrency:
        lat, n, elapsed, errors = acc[f"c{c}"]
        rows[c] = summary(lat, elapsed, n) | {"errors": errors}

    new_batches = {k: v - before["batch_sizes"].get(k, 0) for k, v in stats["batch_sizes"].items()}
    new_batches = {int(k): v for k, v in new_batches.items() if v}
    print()
    print("| path | requests | texts/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print(f"| raw forward, batch 1 | {b1['n']} | {b1['rps']:.1f} | {b1['p50']:.2f} | {b1['p95']:.2f} | {b1['p99']:.2f} | - |")
    print(f"| raw forward, batch {args.raw_batch} | {bb['n']} batches | {bb['rps']:.1f} | {bb['p50']:.2f} | "
          f"{bb['p95']:.2f} | {bb['p99']:.2f} | - |")
    for c, r in rows.items():
        print(f"| Serve HTTP, c={c} | {r['n']} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} "
              f"| {r['errors']} |")
    floor = summary(acc["noop"][0], acc["noop"][2], acc["noop"][1])
    print(f"| Serve HTTP, no-op endpoint, c=1 | {floor['n']} | {floor['rps']:.1f} | {floor['p50']:.2f} | "
          f"{floor['p95']:.2f} | {floor['p99']:.2f} | {acc['noop'][3]} |")
    mean_batch = sum(k * v for k, v in new_batches.items()) / max(1, sum(new_batches.values()))
    print(f"\nbatch sizes formed by the replica during the run: mean {mean_batch:.1f}, "
          f"histogram {dict(sorted(new_batches.items()))}")
    fwd_ms = 1000 * (stats["forward_seconds"] - before["forward_seconds"]) / max(1, sum(new_batches.values()))
    print(f"inside the replica (all requests of the run): /predict handler p50 {stats['handler_ms_p50']} ms, "
          f"mean forward pass {fwd_ms:.1f} ms; the rest of a request's latency is HTTP, Serve's proxy and routing")
    print("\n| goal | target | measured | met |")
    print("|---|---|---|---|")
    ok = True
    goals: dict[str, dict] = {}
    if 32 in rows:
        ratio = rows[32]["rps"] / bb["rps"]
        met = ratio >= 0.8
        ok &= met
        goals["c32_vs_raw_batched"] = {"target": 0.8, "measured": ratio, "met": met}
        print(f"| c=32 throughput vs raw batched forward | >= 80% | {100 * ratio:.0f}% "
              f"({rows[32]['rps']:.1f} vs {bb['rps']:.1f} texts/s) | {'yes' if met else 'NO'} |")
    if 1 in rows:
        gap = rows[1]["p50"] - b1["p50"]
        met = gap <= 10.0
        ok &= met
        goals["c1_p50_gap_ms"] = {"target": 10.0, "measured": gap, "met": met}
        print(f"| c=1 p50 vs raw batch-1 forward p50 | <= +10 ms | {gap:+.1f} ms "
              f"({rows[1]['p50']:.1f} vs {b1['p50']:.1f} ms) | {'yes' if met else 'NO'} |")
        print(f"\nServe's own floor (no-op endpoint, c=1): p50 {floor['p50']:.1f} ms, so kosent's handler, batching "
              f"and forward add {rows[1]['p50'] - floor['p50'] - b1['p50']:+.1f} ms to the raw forward beyond it")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({
            "checkpoint": str(checkpoint), "raw_device": device, "replica_device": replica_device,
            "raw_batch_1": b1, f"raw_batch_{args.raw_batch}": bb,
            "serve": {str(c): r for c, r in rows.items()}, "serve_noop_c1": floor,
            "batch_sizes": {str(k): v for k, v in sorted(new_batches.items())}, "mean_batch": mean_batch,
            "handler_ms_p50": stats["handler_ms_p50"], "forward_ms_mean": fwd_ms, "goals": goals, "goals_met": ok,
            "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
        }, indent=2), encoding="utf-8")
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
