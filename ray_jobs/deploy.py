"""Deploy the Serve application (serve/app.py) for a manifest or checkpoint and print its URL.

Against a running cluster (the app keeps running after this script exits; see docs/SERVING.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/deploy.py --manifest /abs/runs/sweeps/nsmc-sweep/manifest.json --port 8000

On this machine alone (starts a local cluster on 127.0.0.1 and serves until Ctrl+C):

    python ray_jobs/deploy.py --manifest runs/sweeps/nsmc-sweep/manifest.json

Any serve.app.ServeArgs field is a flag too (``--max-replicas 2``, ``--auth-token-env VAR``,
``--model tiny=runs/tiny/manifest.json`` for multiplexing). Exit status: 0 deployed (or stopped with
Ctrl+C), 2 bad settings, 1 the app did not become healthy.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # noqa: E402, F401  (first: loopback cluster, no usage stats, kosent importable; see _env.py)

# isort: split

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if _env.JOINS_CLUSTER:
    os.environ.setdefault("KOSENT_JOIN_CLUSTER", "1")  # serve.app then leaves the node address alone

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

SKIP = {"manifest", "checkpoint", "models", "autoscaling"}  # flags with their own spelling below


def build_parser() -> argparse.ArgumentParser:
    from serve.app import ServeArgs

    parser = argparse.ArgumentParser(
        prog="ray_jobs/deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--manifest", help="manifest.json (or its folder) naming the checkpoint to serve")
    src.add_argument("--checkpoint", help="a checkpoint folder to serve directly")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="another model behind the endpoint (manifest or checkpoint); repeatable")
    parser.add_argument("--autoscaling", help="extra autoscaling_config keys as JSON")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local one on 127.0.0.1 "
                             "and serve until Ctrl+C)")
    parser.add_argument("--host", default="127.0.0.1", help="proxy host (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="proxy port (default 8000)")
    parser.add_argument("--http-timeout-s", type=float, default=60.0,
                        help="proxy end-to-end request timeout (408), set when Serve starts")
    parser.add_argument("--name", default="kosent", help="application name")
    parser.add_argument("--route-prefix", default="/", help="URL prefix of the application")
    parser.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for /healthz")
    parser.add_argument("--block", action="store_true",
                        help="keep running after deploying (always so when this script started the cluster)")
    for name, info in ServeArgs.model_fields.items():
        if name in SKIP:
            continue
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float}.get(info.annotation, None)
        parser.add_argument(flag, dest=name, type=kind or str, default=None,
                            help=f"{info.description or name} (default: {info.default})")
    return parser


def serve_args(ns: argparse.Namespace) -> dict:
    from serve.app import ServeArgs

    args = {k: getattr(ns, k) for k in ServeArgs.model_fields if k not in SKIP and getattr(ns, k) is not None}
    if ns.manifest:
        args["manifest"] = ns.manifest
    if ns.checkpoint:
        args["checkpoint"] = ns.checkpoint
    if ns.model:
        models = {}
        for item in ns.model:
            name, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"--model {item!r}: expected NAME=PATH")
            models[name] = path
        args["models"] = models
    if ns.autoscaling:
        args["autoscaling"] = json.loads(ns.autoscaling)
    return args


def wait_healthy(url: str, timeout_s: float) -> dict:
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own loopback URL
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s ({last})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    from pydantic import ValidationError

    from serve.app import ServeArgs, build

    try:
        args = ServeArgs(**serve_args(ns))
        app = build(args)
    except (ValidationError, ValueError, FileNotFoundError) as e:
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
    t0 = time.monotonic()
    serve.run(app, name=ns.name, route_prefix=ns.route_prefix, blocking=False)
    prefix = ns.route_prefix.rstrip("/")
    url = f"http://{ns.host}:{ns.port}{prefix}"
    try:
        health = wait_healthy(f"{url}/healthz", ns.wait_s)
    except TimeoutError as e:
        print(f"deploy: {e}; see `serve status`", file=sys.stderr)
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
