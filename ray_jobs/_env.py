"""What every ``ray_jobs`` script sets before Ray is imported; each script's first import is ``import _env``.

- No usage reports to anyone (``RAY_USAGE_STATS_ENABLED=0``), no tokenizer thread pools in forked workers.
- A script that starts its own cluster (no ``$RAY_ADDRESS``, no ``--address``) keeps it on 127.0.0.1
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); one that joins a cluster leaves the cluster's settings alone.
- The repository root goes on ``sys.path``, so ``python ray_jobs/<script>.py`` from a checkout (or from
  ``ray job submit --working-dir .``) imports ``kosent`` and ``serve`` without installing them.
- kosent's one log format (``kosent.logs.setup``), and Hugging Face's load reports and progress bars off
  here and in every process the script starts (Ray Train workers read the same environment); every script's
  ``--quiet`` / ``--verbose`` (:func:`parse_args`).
- What every script needs to know about how it was launched (:func:`in_submitted_job`, :func:`durable_path`).
"""

import os
import sys

JOINS_CLUSTER = bool(os.environ.get("RAY_ADDRESS")) or any(
    a == "--address" or a.startswith("--address=") for a in sys.argv
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not JOINS_CLUSTER:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from kosent.logs import add_verbosity_flags, level_from_args, setup  # noqa: E402
from kosent.storage import is_uri  # noqa: E402

setup()
log = logging.getLogger("kosent.jobs")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser``'s arguments (``--quiet`` / ``--verbose`` added where the script has not), the log level set
    from them."""
    if not any("--quiet" in a.option_strings for a in parser._actions):
        add_verbosity_flags(parser)
    args = parser.parse_args(argv)
    setup(level_from_args(args))
    return args


def in_submitted_job() -> bool:
    """True when ``ray job submit`` started this process: its working directory is a temporary copy."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def durable_path(path: str, what: str, fallback: Path) -> str:
    """``path``, or ``fallback`` for a relative local path inside a submitted job: it would land in the job's
    temporary working-dir copy and vanish with it."""
    if is_uri(path) or Path(path).expanduser().is_absolute() or not in_submitted_job():
        return path
    log.warning(f"relative {what} '{path}' inside a submitted job: using {fallback} (pass an absolute path or a "
                "URI to choose)")
    return str(fallback)
