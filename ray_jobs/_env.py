"""What every ``ray_jobs`` script sets before Ray is imported; each script's first import is ``import _env``.

- No usage reports to anyone (``RAY_USAGE_STATS_ENABLED=0``), no tokenizer thread pools in forked workers.
- A script that starts its own cluster (no ``$RAY_ADDRESS``, no ``--address``) keeps it on 127.0.0.1
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); one that joins a cluster leaves the cluster's settings alone.
- The repository root goes on ``sys.path``, so ``python ray_jobs/<script>.py`` from a checkout (or from
  ``ray job submit --working-dir .``) imports ``kosent`` and ``serve`` without installing them.
- kosent's one log format (``kosent.logs.setup``), and Hugging Face's load reports and progress bars off
  here and in every process the script starts (Ray Train workers read the same environment).
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

from kosent.logs import setup  # noqa: E402

setup()
