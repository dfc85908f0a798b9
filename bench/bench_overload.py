"""Serve under overload: offered load at 0.5x, 1x, 2x, 5x and 20x the measured capacity, for a fixed time each.

1. Serve on a local cluster (127.0.0.1 only), the settings of ``serve/config.yaml`` (proxy timeout 60 s,
   ``max_queued_requests`` 64, admission on) with one replica of ``--num-cpus`` CPUs (``--max-replicas 2``
   lets it scale; ``--policy serve`` swaps kosent's demand-aware policy for Serve's default one).
2. The client is its own process (one asyncio loop on keep-alive connections, started once): on a small
   machine it shares the cores with Serve, and a thread-per-request client cost the replica more CPU
   than the requests it was measuring.
3. Capacity (1x): ``--capacity-clients`` closed-loop clients sending requests of ``--texts`` NSMC reviews
   for ``--capacity-s``; texts answered per second.
4. Each level: open-loop arrivals (evenly spaced) of requests of ``--texts`` reviews at ``level x capacity``
   texts/s for ``--duration-s``, each with the deadline header ``X-Request-Timeout-S: --deadline-s``; then
   the level drains (every request ends: answered, refused or timed out; the client waits 90 s, longer
   than the proxy's 60 s, so a 408 would be seen). At most ``--max-in-flight`` requests are open at once;
   an arrival beyond that is counted as not sent.

Printed per level: answers by status, goodput (texts answered within the deadline, per second of the
level), latency of answered requests, latency of refusals, replicas seen; then the goals: zero 408/504 at
every level, goodput from 1x to 20x at least 90% of the 1x level's, answered p99 within the deadline,
refusals p99 under 100 ms. And where the CPU went during each level (cores used by the client, Serve's
proxy, the replica, the controller, Ray's daemons, this driver and anything else, from /proc), with the
model's own speed (texts per second of forward-pass time, from the replica's ``/stats``): when goodput drops,
this tells a slower model from an idle one. Then where the passes' time went: on a CPU, waiting for a CPU,
blocked in the forward thread (the GIL, mostly), or handing over between the event loop and that thread;
and the CPU milliseconds each text cost (a model computing slower shows there, a starved one does not).

``--forward eager traced ...`` deploys once per entry, with the replica's forward passes eager or traced
(``traced_forward``), and measures each in turn in the same run, then prints their goodput side by side.

    .venv/bin/python bench/bench_overload.py --train e5-small-ko
    .venv/bin/python bench/bench_overload.py --checkpoint runs/demo/checkpoint --max-replicas 2 --levels 5
    .venv/bin/python bench/bench_overload.py --train e5-small-ko --forward eager traced eager traced --levels 1 20
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
import asyncio
import json
import logging
import multiprocessing
import tempfile
import threading
import time
from collections import Counter
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
    cores: dict[str, float] = field(default_factory=dict)  # cores each role used during the level
    pass_texts_per_s: float = float("nan")  # inside the replica: texts per second of forward-pass time
    pass_share: float = float("nan")  # forward-pass time / level time: how busy the model was
    #: Where the passes' time went, shares of it: on a CPU, waiting for one, blocked (the GIL, mostly), and
    #: handing over between the event loop and the forward thread; and CPU milliseconds per text.
    pass_split: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_text: float = float("nan")


# ---- the load generator: its own process, one asyncio loop --------------------------------------------
# The client shares the machine's cores with Serve. Threads with ``requests`` cost ~1 ms of CPU per request
# and hold the GIL against the sampling thread, which inflates both the CPU taken from the replica and the
# latencies measured; one asyncio loop on keep-alive connections, in its own process, costs a fraction of it.

_BODIES: list[bytes] = []


def _client_init(bodies: list[bytes]) -> None:
    _BODIES[:] = bodies


def _run(coro):  # uvloop when present (it ships with Ray Serve): a cheaper client loop
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _post(session, url: str, i: int, deadline_s: float) -> tuple[int | str, float]:
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.post(url, data=_BODIES[i % len(_BODIES)],
                                headers={"Content-Type": "application/json",
                                         "X-Request-Timeout-S": f"{deadline_s:g}"}) as r:
            await r.read()
            code: int | str = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        code = type(e).__name__
    return code, time.perf_counter() - t0


def _session(limit: int):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))


def client_capacity(url: str, clients: int, seconds: float) -> float:
    """Texts answered per second by ``clients`` closed-loop clients (no deadline pressure)."""

    async def go() -> float:
        done = [0]
        async with _session(clients) as s:
            stop = time.perf_counter() + seconds

            async def client(k: int) -> None:
                i = k * 97
                while time.perf_counter() < stop:
                    code, _ = await _post(s, url, i, 60.0)
                    i += 1
                    if code == 200:
                        done[0] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(clients)))
            return done[0] / (time.perf_counter() - t0)

    return _run(go())


def client_offer(url: str, interval_s: float, seconds: float, deadline_s: float, max_in_flight: int) -> dict:
    """Open-loop arrivals every ``interval_s`` for ``seconds``, then wait until every request has ended."""

    async def go() -> dict:
        out: dict = {"codes": Counter(), "answered_s": [], "refused_s": [], "not_sent": 0}
        in_flight = [0]

        async def one(i: int) -> None:
            code, took = await _post(s, url, i, deadline_s)
            in_flight[0] -= 1
            out["codes"][code] += 1
            if code == 200:
                out["answered_s"].append(took)
            elif code == 503:
                out["refused_s"].append(took)

        async with _session(max_in_flight) as s:
            tasks = []
            t0 = time.perf_counter()
            i = 0
            while (due := i * interval_s) < seconds:
                pause = t0 + due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                if in_flight[0] >= max_in_flight:
                    out["not_sent"] += 1
                else:
                    in_flight[0] += 1
                    tasks.append(asyncio.ensure_future(one(i)))
                i += 1
            out["seconds"] = time.perf_counter() - t0
            await asyncio.gather(*tasks)
        return out

    return _run(go())


# ---- where the CPU goes ------------------------------------------------------------------------------

ROLES = ("client", "proxy", "replica", "controller", "ray system", "bench driver", "other")


def _cpu_by_pid() -> dict[int, tuple[float, str]]:
    """CPU seconds (user + system) and command line of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(d.name)] = ((int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


def _role(pid: int, cmd: str, client_pid: int) -> str:
    if pid == client_pid:
        return "client"
    if pid == os.getpid():
        return "bench driver"
    for needle, role in (("ServeReplica", "replica"), ("ProxyActor", "proxy"), ("ServeController", "controller")):
        if needle in cmd:
            return role
    if any(k in cmd for k in ("raylet", "gcs_server", "ray/dashboard", "monitor.py", "ray::",
                              "default_worker.py", "runtime_env")):
        return "ray system"
    return "other"


def cores_used(before: dict[int, tuple[float, str]], after: dict[int, tuple[float, str]], seconds: float,
               client_pid: int) -> dict[str, float]:
    """Cores each role used between two :func:`_cpu_by_pid` readings ``seconds`` apart."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (cpu, cmd) in after.items():
        used[_role(pid, cmd, client_pid)] += cpu - before.get(pid, (0.0, ""))[0]
    return {k: v / seconds for k, v in used.items()}


def replica_stats(url: str) -> dict | None:
    """``GET /stats`` of the replica that answers (None when none does)."""
    try:
        r = requests.get(url.replace("/predict", "/stats"), timeout=30)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def _passed_texts(stats: dict) -> int:
    return sum(int(size) * n for size, n in stats["batch_sizes"].items())


def pass_split(stats0: dict, stats1: dict) -> tuple[dict[str, float], float]:
    """Shares of the forward passes' time between two ``/stats`` (on CPU, waiting for a CPU, blocked,
    hand-over), and CPU milliseconds per text; empty and nan where the replica does not report them."""
    def delta(key: str) -> float | None:
        a, b = stats0.get(key), stats1.get(key)
        return None if a is None or b is None else b - a

    loop, thread, cpu, runq = (delta(k) for k in ("forward_seconds", "forward_thread_seconds",
                                                  "forward_cpu_seconds", "forward_runqueue_seconds"))
    texts = _passed_texts(stats1) - _passed_texts(stats0)
    if not loop or thread is None or cpu is None or runq is None or not texts:
        return {}, float("nan")
    split = {"on CPU": cpu, "waiting for a CPU": runq, "blocked": thread - cpu - runq, "hand-over": loop - thread}
    return {k: v / loop for k, v in split.items()}, 1000 * cpu / texts


def offer(pool, url: str, level: Level, per_request: int, seconds: float, deadline_s: float, max_in_flight: int,
          replicas_now, client_pid: int) -> None:
    """One level: the client process offers ``level.offered_texts_per_s``; replicas and CPU sampled here."""
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
    stats0 = replica_stats(url)
    cpu0, t0 = _cpu_by_pid(), time.perf_counter()
    pending = pool.apply_async(client_offer, (url, per_request / level.offered_texts_per_s, seconds, deadline_s,
                                              max_in_flight))
    time.sleep(seconds)
    level.cores = cores_used(cpu0, _cpu_by_pid(), time.perf_counter() - t0, client_pid)
    out = pending.get()
    stats1 = replica_stats(url)
    if stats0 and stats1:  # one replica answered both (with several, the figures are one replica's sample)
        busy = stats1["forward_seconds"] - stats0["forward_seconds"]
        level.pass_texts_per_s = (_passed_texts(stats1) - _passed_texts(stats0)) / busy if busy > 0 else float("nan")
        level.pass_share = busy / (time.perf_counter() - t0)
        level.pass_split, level.cpu_ms_per_text = pass_split(stats0, stats1)
    stop_sampling.set()
    sampler.join()
    level.seconds, level.codes, level.not_sent = out["seconds"], out["codes"], out["not_sent"]
    level.answered_ms = [s * 1000 for s in out["answered_s"]]
    level.refused_ms = [s * 1000 for s in out["refused_s"]]
    level.good_texts = per_request * sum(1 for s in out["answered_s"] if s <= deadline_s)


@dataclass
class Run:
    """One deployment measured through every level: its forward mode, capacity, levels and last ``/stats``."""

    forward: str
    capacity: float = float("nan")
    levels: list[Level] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    model_forward: str | None = None  # what the replica's GET /model says it runs: traced, eager, tfidf


def measure(pool, client_pid: int, url: str, args: argparse.Namespace, run: Run, replicas_now) -> None:
    """Capacity, then each level in turn, against the deployment now running."""
    pool.apply(client_capacity, (url, 2, 5.0))  # warm-up
    run.capacity = pool.apply(client_capacity, (url, args.capacity_clients, args.capacity_s)) * args.texts
    log.info(f"[{run.forward}] capacity: {run.capacity:.1f} texts/s ({args.capacity_clients} closed-loop clients, "
             f"{args.texts} texts per request); load average {os.getloadavg()[0]:.1f}")
    for mult in args.levels:
        level = Level(f"{mult:g}x", mult * run.capacity)
        offer(pool, url, level, args.texts, args.duration_s, args.deadline_s, args.max_in_flight, replicas_now,
              client_pid)
        run.levels.append(level)
        log.info(f"[{run.forward}] {level.name}: {dict(level.codes)}, goodput {level.good_texts / level.seconds:.1f} "
                 f"texts/s, replicas running {sorted(level.replicas)}, started {sorted(level.started)}, second asked "
                 f"for at {level.first_scale_s}s, load average {os.getloadavg()[0]:.1f}")
        time.sleep(3.0)
    run.stats = replica_stats(url) or {}


def report(run: Run, args: argparse.Namespace) -> bool:
    """Print one run's tables and goals; True when every goal is met."""
    levels, cap = run.levels, run.capacity
    print(f"\n## forward {run.forward} (the replica ran: {run.model_forward})\n\ncapacity (1x): {cap:.1f} texts/s; "
          f"requests of {args.texts} texts, deadline {args.deadline_s:g} s, {args.duration_s:g} s per level, "
          f"{args.num_cpus:g} CPU per replica, max_replicas {args.max_replicas}, policy {args.policy}, "
          f"admission {args.admission}")
    print("\n| offered | texts/s offered | requests | 200 | 503 | 504 | 408 | other | goodput texts/s | vs 1x "
          "| answered p50 / p99 ms | refused p50 / p99 ms | replicas running (started) | 2nd replica at |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = next((lv for lv in levels if lv.name == "1x"), None)
    base_good = base.good_texts / base.seconds if base and base.good_texts else float("nan")
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
    print("\ncores used during each level (CPU seconds per second, from /proc; the machine has "
          f"{os.cpu_count()}), and the model's own speed (texts per second of forward-pass time, and the share "
          "of the level it was computing):\n")
    print("| offered | " + " | ".join(ROLES) + " | total | forward texts/s | forward busy |")
    print("|---|" + "---|" * (len(ROLES) + 3))
    for lv in levels:
        print(f"| {lv.name} | " + " | ".join(f"{lv.cores[r]:.2f}" for r in ROLES) + f" | {sum(lv.cores.values()):.2f} "
              f"| {lv.pass_texts_per_s:.1f} | {100 * lv.pass_share:.0f}% |")
    if any(lv.pass_split for lv in levels):
        print("\nwhere the forward passes' time went (shares of it, from the replica's /stats: the forward thread's "
              "CPU time and Linux's schedstat), and the CPU each text cost:\n")
        names = ["on CPU", "waiting for a CPU", "blocked", "hand-over"]
        print("| offered | " + " | ".join(names) + " | CPU ms per text |")
        print("|---|" + "---|" * (len(names) + 1))
        for lv in levels:
            if lv.pass_split:
                print(f"| {lv.name} | " + " | ".join(f"{100 * lv.pass_split[k]:.1f}%" for k in names)
                      + f" | {lv.cpu_ms_per_text:.1f} |")
    stats = run.stats
    if stats:
        print(f"\nlast replica's /stats: refused {stats['refused']}, timeouts {stats['timeouts']}, dropped texts "
              f"{stats['dropped_texts']}, refusal p50 / p99 inside the replica {stats['refusal_ms_p50']} / "
              f"{stats['refusal_ms_p99']} ms, forward-pass sizes {stats['batch_sizes']}")
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
    return ok


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
    ap.add_argument("--forward", nargs="+", choices=("traced", "eager"), default=["traced"],
                    help="the replica's forward passes (traced_forward on / off), one deployment each, measured in "
                         "turn in this run (e.g. eager traced eager traced: side by side)")
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
    runs = [Run(forward) for forward in args.forward]
    pool = None
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port, "request_timeout_s": 60})
        url = f"http://127.0.0.1:{args.port}/predict"

        def replicas_now() -> tuple[int, int]:
            """(RUNNING replicas, replicas not stopping)."""
            app = serve.status().applications.get("overload")
            if app is None:
                return 0, 0
            states = app.deployments["KosentServer"].replica_states
            return states.get("RUNNING", 0), sum(n for s, n in states.items() if s != "STOPPING")

        bodies = [json.dumps({"texts": texts[i:i + args.texts]}, ensure_ascii=False).encode()
                  for i in range(0, len(texts) - args.texts + 1, args.texts)]
        pool = multiprocessing.get_context("spawn").Pool(1, _client_init, (bodies,))
        client_pid = pool.apply(os.getpid)
        for run in runs:
            settings = {"checkpoint": checkpoint, "num_cpus": args.num_cpus, "min_replicas": 1,
                        "max_replicas": args.max_replicas, "admission": args.admission == "on",
                        "traced_forward": run.forward == "traced"}
            if args.policy == "serve":
                settings["autoscaling"] = {"policy": {"policy_function":
                                                      "ray.serve.autoscaling_policy:replica_queue_length_autoscaling_policy"}}
            serve.run(app_builder(settings), name="overload", route_prefix="/")
            run.model_forward = requests.get(url.replace("/predict", "/model"), timeout=10).json().get("forward")
            log.info(f"[{run.forward}] deployed; the replica runs its model {run.model_forward}")
            measure(pool, client_pid, url, args, run, replicas_now)
            serve.delete("overload")
            time.sleep(3.0)
    finally:
        if pool is not None:
            pool.terminate()
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()

    ok = True
    for run in runs:
        ok &= report(run, args)
    if len(runs) > 1:
        print("\n| run | forward | capacity texts/s | " + " | ".join(f"{lv.name} goodput vs 1x" for lv in runs[0].levels)
              + " |")
        print("|---|---|---|" + "---|" * len(runs[0].levels))
        for k, run in enumerate(runs, 1):
            base = next((lv for lv in run.levels if lv.name == "1x"), None)
            base_good = base.good_texts / base.seconds if base and base.good_texts else float("nan")
            print(f"| {k} | {run.forward} | {run.capacity:.1f} | "
                  + " | ".join(f"{100 * lv.good_texts / lv.seconds / base_good:.0f}%" for lv in run.levels) + " |")
    from kosent.paper_report import hardware

    hw = hardware()  # machines of one kind differ (see docs/SERVING.md): say which one this was
    print(f"\nmachine: {hw['cpu']}, {hw['cores']} cores, {hw['platform']}; "
          f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
