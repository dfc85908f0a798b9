"""Submit a Ray job, follow its logs, and exit by its final status (the Jobs SDK, not CLI text).

    python bin/submit_job.py --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml --result result.json -- python ray_jobs/train.py ...

Exit code 0 only when the job ends ``SUCCEEDED``; 1 when it ends ``FAILED`` or ``STOPPED``; 2 when it
cannot be submitted. ``--result`` writes ``{"submission_id", "status", "message", "seconds"}`` as JSON, for
scripts that decide on it. A fresh cluster's job agent may not be up for a few seconds after ``ray start``
("No available agent"): that refusal happens before any job exists, so the submission is retried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

log = logging.getLogger("submit_job")
AGENT_NOT_READY = "No available agent"


def _runtime_env(path: str | None, working_dir: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if path:
        env = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if working_dir:
        env["working_dir"] = working_dir
    return env


def submit(client: JobSubmissionClient, entrypoint: str, runtime_env: dict[str, Any], wait_agent_s: float) -> str:
    """The submission id; retries only the refusal a not-yet-ready job agent gives."""
    deadline = time.monotonic() + wait_agent_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as e:
            if AGENT_NOT_READY not in str(e) or time.monotonic() > deadline:
                raise
            log.info("the cluster's job agent is not up yet; retrying in 5 s")
            time.sleep(5)


async def _follow(client: JobSubmissionClient, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def wait(client: JobSubmissionClient, submission_id: str, poll_s: float = 1.0) -> JobStatus:
    """Follow the logs to the end, then poll until the status is terminal (logs can end just before it)."""
    try:
        asyncio.run(_follow(client, submission_id))
    except Exception as e:  # noqa: BLE001 - the log stream is a convenience; the status below decides
        log.warning("log stream ended early (%s); waiting for the job's status", e)
    while not (status := client.get_job_status(submission_id)).is_terminal():
        time.sleep(poll_s)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard address")
    parser.add_argument("--working-dir", help="folder uploaded as the job's working directory")
    parser.add_argument("--runtime-env", help="runtime_env YAML (excludes, env_vars)")
    parser.add_argument("--result", help="write the final status as JSON to this file")
    parser.add_argument("--wait-agent-s", type=float, default=300.0,
                        help="how long to retry while a fresh cluster's job agent is not up")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command the job runs")
    args = parser.parse_args(argv)
    command = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not command:
        parser.error("give the job's command after --")
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    # Ray's client logs every packaging decision (and warns that .git and .venv are skipped, which
    # runtime_env.yaml asks for anyway): errors only, and one line of ours instead.
    logging.getLogger("ray").setLevel(logging.ERROR)
    if args.working_dir:
        log.info("uploading %s as the job's working dir", Path(args.working_dir).resolve())

    t0 = time.monotonic()
    client = JobSubmissionClient(args.address)
    try:
        submission_id = submit(client, shlex.join(command), _runtime_env(args.runtime_env, args.working_dir),
                               args.wait_agent_s)
    except (RuntimeError, OSError, ValueError) as e:
        log.error("could not submit the job to %s: %s", args.address, e)
        return 2
    log.info("submitted %s", submission_id)
    status = wait(client, submission_id)
    info = client.get_job_info(submission_id)
    result = {"submission_id": submission_id, "status": str(status), "message": info.message,
              "seconds": round(time.monotonic() - t0, 1)}
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if status == JobStatus.SUCCEEDED:
        log.info("%s succeeded in %.0f s", submission_id, result["seconds"])
        return 0
    log.error("%s ended %s: %s", submission_id, status, info.message)
    return 1


if __name__ == "__main__":
    sys.exit(main())
