"""Screenshot MLflow's run comparison of a sweep's trials, from the real UI in headless Chromium.

    python bin/mlflow_screenshot.py --store runs/sweeps/mlruns/mlflow.db --out docs/images/mlflow-compare.png

Starts ``mlflow server`` on 127.0.0.1 (a free port, telemetry off) over the given local store, finds the
newest sweep (or the one named by ``--sweep``), opens the compare page of its trial runs and saves a PNG.
Everything stays on 127.0.0.1; the server is stopped at the end. Needs the dev extra (the full ``mlflow``
and Playwright) and the Debian ``chromium`` package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("mlflow_screenshot")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, log_file: Path) -> subprocess.Popen:
    """``mlflow ui`` over the store (its artifacts live beside it, in ``artifacts/``)."""
    exe = Path(sys.executable).with_name("mlflow")
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store.resolve()}"],
        env=env, stdout=log_file.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"mlflow server did not start; its log: {log_file}")


def sweep_trials(uri: str, sweep: str | None) -> tuple[str, list[str], str]:
    """(experiment id, trial run ids, sweep name) of the named or newest sweep."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = "tags.`kosent.kind` = 'sweep'" + (f" and attributes.run_name = '{sweep}'" if sweep else "")
    parents = client.search_runs(experiments, filter_string=query, order_by=["attributes.start_time DESC"],
                                 max_results=1)
    if not parents:
        raise SystemExit(f"no sweep{f' named {sweep!r}' if sweep else ''} in the store at {uri}")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    if len(children) < 2:
        raise SystemExit(f"sweep {parent.info.run_name!r} has {len(children)} trial run(s): nothing to compare")
    return parent.info.experiment_id, [c.info.run_id for c in children], parent.info.run_name


def arrange(page: Any, metric: str) -> None:
    """The parallel-coordinates plot of what a sweep varies (lr, scale, grid fields) against ``metric``:
    MLflow preselects every differing param (a sweep's per-trial storage path too) and its first metric."""
    select = ".du-bois-light-select-selection-item"
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"], [aria-label="Close"]')
    if close.count():  # the assistant's side panel hides half the page
        close.first.click()
    for param in ("storage_path",):
        tag = page.locator(select, has_text=param)
        if tag.count():
            tag.first.locator(f"{select}-remove").click()
    metrics = page.get_by_text("Metrics:", exact=True).locator("xpath=following-sibling::div[1]")
    for tag in metrics.locator(select).all():
        if tag.inner_text().strip() != metric:
            tag.locator(f"{select}-remove").click()
    if not metrics.locator(select, has_text=metric).count():
        metrics.click()
        page.locator(".du-bois-light-select-item-option", has_text=metric).first.click()
        page.keyboard.press("Escape")
    metrics.locator(select, has_text=metric).first.wait_for(timeout=10_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("runs/sweeps/mlruns/mlflow.db"),
                        help="the local MLflow store (SQLite file) of the sweep")
    parser.add_argument("--sweep", help="sweep name (default: the newest)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/mlflow-compare.png"))
    parser.add_argument("--chromium", default=os.environ.get("KOSENT_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--metric", default="val_macro_f1", help="the metric on the plot's last axis")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not args.store.is_file():
        parser.error(f"--store {args.store}: no such file (run a sweep first: python ray_jobs/tune.py ...)")

    experiment, runs, name = sweep_trials(f"sqlite:///{args.store.resolve()}", args.sweep)
    port = _free_port()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = start_server(args.store, port, args.out.with_suffix(".server.log"))
    try:
        from playwright.sync_api import sync_playwright

        query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment])})
        url = f"http://127.0.0.1:{port}/#/compare-runs?{query}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url, wait_until="load", timeout=120_000)  # the UI polls: never network-idle
            page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=60_000)
            arrange(page, args.metric)
            page.wait_for_timeout(2_000)  # plots redraw after a change
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        args.out.with_suffix(".server.log").unlink(missing_ok=True)
    log.info("sweep %s: %d trial runs compared -> %s", name, len(runs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
