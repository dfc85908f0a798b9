"""Serve under overload: offered load at 0.5x, 1x, 2x, 5x and 20x the measured capacity, for a fixed time each.

1. Serve on a local cluster (127.0.0.1 only), the settings of ``serve/config.yaml`` (proxy timeout 60 s,
   ``max_queued_requests`` 64, admission on) with one replica of ``--num-cpus`` CPUs (``--max-replicas 2``
   lets it scale; ``--policy serve`` swaps kosent's demand-aware policy for Serve's default one).
2. Capacity (1x): ``--capacity-clients`` closed-loop clients sending requests of ``--texts`` NSMC reviews
   for ``--capacity-s``; texts answered per second.
3. Each level: open-loop arrivals (evenly spaced) of requests of ``--texts`` reviews at ``level x capacity``
   texts/s for ``--duration-s``, each with the deadline header ``X-Request-Timeout-S: --deadline-s``; then
   the level drains (every request ends: answered, refused or timed out; the client waits 90 s, longer
   than the proxy's 60 s, so a 408 would be seen). At most ``--max-in-flight`` requests are open at once;
   an arrival beyond that is counted as not sent.

Printed per level: answers by status, goodput (texts answered within the deadline, per second of the
level), latency of answered requests, latency of refusals, replicas seen; then the goals: zero 408/504 at
every level, goodput from 1x to 20x at least 90% of the 1x level's, answered p99 within the deadline,
refusals p99 under 100 ms.

    .venv/bin/python bench/bench_overload.py --train e5-small-ko
    .venv/bin/python bench/bench_overload.py --checkpoint runs/demo/checkpoint --max-replicas 2 --levels 5
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
import logging
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.bench_serve import nsmc_texts, percentile, train_checkpoint

log = logging.getLogger("bench_overload")
CLIENT_TIMEOUT_S = 90.0  # longer than the proxy's 60 s: a 408 must be seen, not cut short here


@dataclass
class Level:
    """What the client saw at one offered load."""

    name: str
    offered_texts_per_s: float
    seconds: float = 0.0
    codes: Counter = field(default_factory=Counter)
    answered_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    good_texts: int = 0
    not_sent: int = 0
    replicas: set[int] = field(default_factory=set)  # RUNNING, sampled every second
    started: set[int] = field(default_factory=set)  # every replica not stopping: RUNNING + STARTING
    first_scale_s: float | None = None  # seconds into the level when a second replica was first asked for
    errors: Counter = field(default_factory=Counter)


def post(session: requests.Session, url: str, texts: list[str], deadline_s: float) -> tuple[int | str, float]:
    t0 = time.perf_counter()
    try:
        r = session.post(url, json={"texts": texts}, timeout=CLIENT_TIMEOUT_S,
                         headers={"X-Request-Timeout-S": f"{deadline_s:g}"})
        code: int | str = r.status_code
    except requests.RequestException as e:
        code = type(e).__name__
    return code, time.perf_counter() - t0


def capacity(url: str, texts: list[str], per_request: int, clients: int, seconds: float) -> float:
    """Texts answered per second by ``clients`` closed-loop clients (no deadline pressure)."""
    done, lock = [0], threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with requests.Session() as s:
            i = k * 97
            while time.perf_counter() < stop:
                chunk = [texts[(i + j) % len(texts)] for j in range(per_request)]
                i += per_request
                code, _ = post(s, url, chunk, 60.0)
                if code == 200:
                    with lock:
                        done[0] += per_request

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - t0)


def offer(url: str, texts: list[str], level: Level, per_request: int, seconds: float, deadline_s: float,
          max_in_flight: int, replicas_now) -> None:  # a callable -> int
    """Open-loop arrivals at ``level.offered_texts_per_s`` for ``seconds``, then wait for all to end."""
    interval = per_request / level.offered_texts_per_s
    lock, local = threading.Lock(), threading.local()
    in_flight = [0]

    def one(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        code, took = post(local.session, url, chunk, deadline_s)
        with lock:
            in_flight[0] -= 1
            level.codes[code] += 1
            if code == 200:
                level.answered_ms.append(took * 1000)
                if took <= deadline_s:
                    level.good_texts += per_request
            elif code == 503:
                level.refused_ms.append(took * 1000)

    stop_sampling = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop_sampling.is_set():
            running, started = replicas_now()
            level.replicas.add(running)
            level.started.add(started)
            if started > 1 and level.first_scale_s is None:
                level.first_scale_s = time.perf_counter() - t0
            stop_sampling.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(max_in_flight) as pool:
        t0 = time.perf_counter()
        i = 0
        while True:
            due = t0 + i * interval
            if due - t0 >= seconds:
                break
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            with lock:
                full = in_flight[0] >= max_in_flight
                if not full:
                    in_flight[0] += 1
            if full:
                level.not_sent += 1
            else:
                pool.submit(one, i)
            i += 1
        level.seconds = time.perf_counter() - t0
    stop_sampling.set()
    sampler.join()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest")
    src.add_argument("--checkpoint")
    src.add_argument("--train", metavar="MODEL", help="train a throwaway checkpoint of MODEL (e5-small-ko, tiny)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 1, 2, 5, 20], help="multiples of capacity")
    ap.add_argument("--duration-s", type=float, default=20.0, help="offered load per level")
    ap.add_argument("--deadline-s", type=float, default=5.0, help="X-Request-Timeout-S of every request")
    ap.add_argument("--texts", type=int, default=16, help="reviews per request")
    ap.add_argument("--capacity-s", type=float, default=15.0)
    ap.add_argument("--capacity-clients", type=int, default=4)
    ap.add_argument("--max-in-flight", type=int, default=256, help="client bound on open requests")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="per replica (serve/config.yaml: 1)")
    ap.add_argument("--max-replicas", type=int, default=1)
    ap.add_argument("--policy", choices=("kosent", "serve"), default="kosent",
                    help="autoscaling policy: kosent's demand-aware one (default) or Serve's request-based one")
    ap.add_argument("--admission", choices=("on", "off"), default="on", help="off: the old behaviour, for contrast")
    ap.add_argument("--port", type=int, default=8127)
    args = ap.parse_args()

    texts = nsmc_texts(2000)
    tmp = tempfile.TemporaryDirectory(prefix="kosent-bench-overload-")
    if args.train:
        checkpoint = str(train_checkpoint(args.train, Path(tmp.name)))
    elif args.manifest:
        from kosent.manifest import read_manifest

        checkpoint = read_manifest(args.manifest)["checkpoint"]
    else:
        checkpoint = args.checkpoint
    log.info(f"checkpoint {checkpoint}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    import ray
    from ray import serve

    from kosent.serve import app_builder

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}})
    levels: list[Level] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port, "request_timeout_s": 60})
        settings = {"checkpoint": checkpoint, "num_cpus": args.num_cpus, "min_replicas": 1,
                    "max_replicas": args.max_replicas, "admission": args.admission == "on"}
        if args.policy == "serve":
            settings["autoscaling"] = {"policy": {"policy_function":
                                                  "ray.serve.autoscaling_policy:replica_queue_length_autoscaling_policy"}}
        serve.run(app_builder(settings), name="overload", route_prefix="/")
        url = f"http://127.0.0.1:{args.port}/predict"

        def replicas_now() -> tuple[int, int]:
            """(RUNNING replicas, replicas not stopping)."""
            app = serve.status().applications.get("overload")
            if app is None:
                return 0, 0
            states = app.deployments["KosentServer"].replica_states
            return states.get("RUNNING", 0), sum(n for s, n in states.items() if s != "STOPPING")

        capacity(url, texts, args.texts, 2, 5.0)  # warm-up
        cap = capacity(url, texts, args.texts, args.capacity_clients, args.capacity_s)
        log.info(f"capacity: {cap:.1f} texts/s ({args.capacity_clients} closed-loop clients, {args.texts} texts "
                 f"per request); load average {os.getloadavg()[0]:.1f}")
        for mult in args.levels:
            level = Level(f"{mult:g}x", mult * cap)
            offer(url, texts, level, args.texts, args.duration_s, args.deadline_s, args.max_in_flight, replicas_now)
            levels.append(level)
            log.info(f"{level.name}: {dict(level.codes)}, goodput {level.good_texts / level.seconds:.1f} texts/s, "
                     f"replicas running {sorted(level.replicas)}, started {sorted(level.started)}, second asked for "
                     f"at {level.first_scale_s}s, load average {os.getloadavg()[0]:.1f}")
            time.sleep(3.0)
        stats = requests.get(url.replace("/predict", "/stats"), timeout=30).json()
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()

    print(f"\ncapacity (1x): {cap:.1f} texts/s; requests of {args.texts} texts, deadline {args.deadline_s:g} s, "
          f"{args.duration_s:g} s per level, {args.num_cpus:g} CPU per replica, max_replicas {args.max_replicas}, "
          f"policy {args.policy}, admission {args.admission}")
    print("\n| offered | texts/s offered | requests | 200 | 503 | 504 | 408 | other | goodput texts/s | vs 1x "
          "| answered p50 / p99 ms | refused p50 / p99 ms | replicas running (started) | 2nd replica at |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = next((lv for lv in levels if lv.name == "1x"), None)
    base_good = base.good_texts / base.seconds if base else float("nan")
    for lv in levels:
        n = sum(lv.codes.values())
        other = n - sum(lv.codes[c] for c in (200, 503, 504, 408))
        good = lv.good_texts / lv.seconds
        print(f"| {lv.name} | {lv.offered_texts_per_s:.1f} | {n} | {lv.codes[200]} | {lv.codes[503]} | {lv.codes[504]} "
              f"| {lv.codes[408]} | {other}{f' (+{lv.not_sent} not sent)' if lv.not_sent else ''} | {good:.1f} "
              f"| {100 * good / base_good:.0f}% | {percentile(lv.answered_ms, 0.5):.0f} / "
              f"{percentile(lv.answered_ms, 0.99):.0f} | {percentile(lv.refused_ms, 0.5):.0f} / "
              f"{percentile(lv.refused_ms, 0.99):.0f} | {min(lv.replicas, default=0)}-{max(lv.replicas, default=0)} "
              f"({max(lv.started, default=0)}) | {'-' if lv.first_scale_s is None else f'{lv.first_scale_s:.0f} s'} |")
    print(f"\nlast replica's /stats: refused {stats['refused']}, timeouts {stats['timeouts']}, dropped texts "
          f"{stats['dropped_texts']}, refusal p50 / p99 inside the replica {stats['refusal_ms_p50']} / "
          f"{stats['refusal_ms_p99']} ms, forward-pass "
          f"sizes {stats['batch_sizes']}")
    print("\n| goal | target | measured | met |")
    print("|---|---|---|---|")
    ok = True
    timeouts = sum(lv.codes[408] + lv.codes[504] for lv in levels)
    others = sum(sum(v for k, v in lv.codes.items() if k not in (200, 503)) for lv in levels)
    rows = [("408/504 at every level", "0", f"{timeouts} (other non-200/503: {others})", timeouts == 0)]
    over = [lv for lv in levels if lv.offered_texts_per_s >= cap * 0.999]
    worst = min((lv.good_texts / lv.seconds / base_good for lv in over), default=float("nan"))
    rows.append(("goodput 1x..20x vs 1x", ">= 90%", f"worst {100 * worst:.0f}%", worst >= 0.9))
    p99 = max((percentile(lv.answered_ms, 0.99) for lv in levels if lv.answered_ms), default=float("nan"))
    rows.append(("answered p99", f"<= {args.deadline_s * 1000:.0f} ms", f"worst level {p99:.0f} ms",
                 p99 <= args.deadline_s * 1000))
    r99 = max((percentile(lv.refused_ms, 0.99) for lv in levels if lv.refused_ms), default=0.0)
    rows.append(("refusal p99", "< 100 ms", f"worst level {r99:.0f} ms", r99 < 100))
    for what, target, measured, met in rows:
        ok &= bool(met)
        print(f"| {what} | {target} | {measured} | {'yes' if met else 'NO'} |")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
