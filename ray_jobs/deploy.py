"""Deploy the Serve application (kosent.serve) for a manifest or checkpoint and print its URL.

Against a running cluster (the app keeps running after this script exits; see docs/SERVING.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/deploy.py --manifest /abs/runs/sweeps/nsmc-sweep/manifest.json --port 8000

On this machine alone (starts a local cluster on 127.0.0.1 and serves until Ctrl+C):

    python ray_jobs/deploy.py --manifest runs/sweeps/nsmc-sweep/manifest.json

Every kosent.serve.ServeArgs field is a flag (``--max-replicas 2``, ``--auth-token-env VAR``,
``--models tiny=runs/tiny/manifest.json`` for more models behind the endpoint).

Before deploying it checks that the replicas fit the cluster's free CPUs. A redeploy over a running app
starts its new replicas beside the old ones (``max_surge_percent``); when they cannot fit it stops at once
and names the ways out: ``--replace`` (replace in place: old replicas stop first, requests wait in
Serve's proxy, or get 503, until a new one is up) or a smaller ``--num-cpus``. While Serve brings the app up, its status is
printed every few seconds, and a replica that stays unschedulable ends the wait with Serve's reason.

Exit status: 0 deployed (or stopped with Ctrl+C), 2 bad settings or no room for the replicas, 1 the app
did not become healthy.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # first: loopback cluster, no usage stats, kosent importable (see _env.py)

# isort: split

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if _env.JOINS_CLUSTER:
    os.environ.setdefault("KOSENT_JOIN_CLUSTER", "1")  # kosent.serve then leaves the node address alone

import argparse
import dataclasses
import json
import logging
import math
import time
import urllib.error
import urllib.request

DEPLOYMENT = "KosentServer"
#: Serve's words for a replica that waits for resources the cluster does not have free.
UNSCHEDULABLE = ("cannot be scheduled", "could not be scheduled", "insufficient resources", "resources required",
                 "unschedulable", "pending resources", "waiting for resources")
log = logging.getLogger("kosent.deploy")


def build_parser() -> argparse.ArgumentParser:
    from kosent.config import add_config_args, reject_renamed
    from kosent.serve import ServeArgs

    parser = argparse.ArgumentParser(
        prog="ray_jobs/deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local one on 127.0.0.1 "
                             "and serve until Ctrl+C)")
    parser.add_argument("--host", default="127.0.0.1", help="proxy host (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="proxy port (default 8000)")
    parser.add_argument("--http-timeout-s", type=float, default=60.0,
                        help="proxy end-to-end request timeout (408), set when Serve starts (default 60)")
    parser.add_argument("--name", default="kosent", help="the Serve application's name (default kosent)")
    parser.add_argument("--route-prefix", default="/", help="URL prefix of the application (default /)")
    parser.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for /healthz (default 300)")
    parser.add_argument("--replace", action="store_true",
                        help="redeploy in place (max_surge_percent 0): old replicas stop before new ones start, so "
                             "requests wait (or get 503) for a replica's start-up time; for clusters without room "
                             "for new replicas beside the old")
    parser.add_argument("--unschedulable-s", type=float, default=20.0,
                        help="give up when a replica stays unschedulable this long (Serve's reason is printed)")
    parser.add_argument("--block", action="store_true",
                        help="keep running after deploying (always so when this script started the cluster)")
    add_config_args(parser, ServeArgs)
    reject_renamed(parser, {"--model": "--models NAME=PATH"})  # --model is an encoder in train and tune
    _env.add_verbosity_flags(parser)
    return parser


def serve_args(ns: argparse.Namespace) -> dict:
    """The ServeArgs fields given on the command line (``--replace``: ``max_surge_percent`` 0)."""
    from kosent.serve import ServeArgs

    given = vars(ns)
    args = {f.name: given[f.name] for f in dataclasses.fields(ServeArgs) if f.name in given}
    if ns.replace:
        args["max_surge_percent"] = 0
    return args


def room_problem(args, free_cpus: float, running: int, app: str) -> str | None:
    """Why the replicas this deploy starts cannot fit ``free_cpus`` (None when they can). ``running`` is the
    number of replicas the app has now: a redeploy starts ``max_surge_percent`` of them beside the old ones."""
    if running:
        starting = max(1, math.ceil(running * args.max_surge_percent / 100)) if args.max_surge_percent else 0
        need = starting * args.num_cpus
        if need <= free_cpus + 1e-9:
            return None
        fewer = free_cpus if free_cpus >= 0.01 else None
        ways = ["  --replace            replace in place (max_surge_percent 0): the old replica stops first; until "
                "the new one is up (a replica's start-up: model load and warm-up, about 10-30 s on a 2-core "
                "machine) requests wait in Serve's proxy (up to max_queued_requests; more get 503)"]
        if fewer:
            ways.append(f"  --num-cpus {fewer:g}        new replicas small enough to start beside the old ones")
        ways.append(f"  serve delete {app}     then deploy again (the endpoint is down meanwhile)")
        return (f"app '{app}' runs {running} replica(s); this redeploy starts {starting} new replica(s) of "
                f"{args.num_cpus:g} CPU beside them before stopping the old ones (max_surge_percent "
                f"{args.max_surge_percent}), but the cluster has {free_cpus:g} CPU free. Serve would wait for "
                "CPUs that never come. Ways out:\n" + "\n".join(ways))
    starting = max(1, args.min_replicas)
    if starting * args.num_cpus > free_cpus + 1e-9:
        return (f"{starting} replica(s) of {args.num_cpus:g} CPU need {starting * args.num_cpus:g} CPU; the cluster "
                f"has {free_cpus:g} free. Use --num-cpus {max(0.01, free_cpus / starting):g} or free CPUs first.")
    return None


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or DEPLOYMENT not in status.deployments:
        return 0
    return status.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


def wait_running(app: str, timeout_s: float, unschedulable_s: float) -> None:
    """Wait until Serve reports ``app`` RUNNING, printing its status as it changes; raise with Serve's reason
    when it fails to deploy or a replica stays unschedulable for ``unschedulable_s``."""
    from ray import serve

    t0 = time.monotonic()
    last, stuck_since = None, None
    while time.monotonic() - t0 < timeout_s:
        status = serve.status().applications.get(app)
        if status is not None:
            dep = status.deployments.get(DEPLOYMENT)
            message = " ".join(m for m in (status.message, dep.message if dep else "") if m).strip()
            state = f"{status.status}" + (f" ({dep.status}, replicas {dict(dep.replica_states)})" if dep else "")
            if status.status == "RUNNING":
                return
            if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"app '{app}' {status.status}: {message or 'see serve status'}")
            if (state, message) != last:
                log.info(f"waiting for '{app}': {state}{': ' + message if message else ''}")
                last = (state, message)
            if any(word in message.lower() for word in UNSCHEDULABLE):
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > unschedulable_s:
                    raise RuntimeError(f"a replica of '{app}' cannot be scheduled: {message}. The update stays "
                                       "pending in the cluster: deploy again with --replace or a smaller "
                                       f"--num-cpus, or `serve delete {app}`")
            else:
                stuck_since = None
        time.sleep(1.0)
    raise TimeoutError(f"app '{app}' not RUNNING after {timeout_s:.0f}s; see `serve status`")


def wait_healthy(url: str, timeout_s: float) -> dict:
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s ({last})")


def main(argv: list[str] | None = None) -> int:
    ns = _env.parse_args(build_parser(), argv)
    from kosent.config import from_dict
    from kosent.serve import ServeArgs, build

    try:
        args = from_dict(ServeArgs, serve_args(ns))
        app = build(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    own_cluster = not ns.address
    if own_cluster:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}})
    else:
        ray.init(address=ns.address)
    serve.start(http_options={"host": ns.host, "port": ns.port, "request_timeout_s": ns.http_timeout_s})
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if args.num_gpus > gpus + 1e-9:
        print(f"deploy: not deployed: --num-gpus {args.num_gpus:g} per replica, but the cluster has {gpus:g} GPUs "
              "(drop --num-gpus to serve on CPU)", file=sys.stderr)
        return 2
    problem = room_problem(args, ray.available_resources().get("CPU", 0.0), running_replicas(ns.name), ns.name)
    if problem:
        print(f"deploy: not deployed: {problem}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    # Not serve.run: it waits silently for as long as a replica cannot be scheduled.
    serve.run_many([serve.RunTarget(app, name=ns.name, route_prefix=ns.route_prefix)],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    prefix = ns.route_prefix.rstrip("/")
    url = f"http://{ns.host}:{ns.port}{prefix}"
    try:
        wait_running(ns.name, ns.wait_s, ns.unschedulable_s)
        health = wait_healthy(f"{url}/healthz", max(10.0, ns.wait_s - (time.monotonic() - t0)))
    except (TimeoutError, RuntimeError) as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1
    print(f"kosent is serving model '{health['model']}' at {url}/ ({time.monotonic() - t0:.0f}s)")
    print(f"  try it:  curl -s {url}/predict -H 'Content-Type: application/json' -d '{{\"text\": \"정말 재미있어요\"}}'")
    print(f"  page:    {url}/     docs: {url}/docs     model: {url}/model")
    print(f"URL {url}/", flush=True)
    if own_cluster or ns.block:
        print("serving until Ctrl+C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
