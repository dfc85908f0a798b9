"""How kosent's processes log: one format, set once by whatever starts the process.

Entry points (``kosent`` CLI, ``ray_jobs/*.py``) call :func:`setup`; library modules only use
``logging.getLogger(__name__)``. Ray Train workers get :data:`QUIET_LIBRARY_ENV` in their environment.

Why the libraries are quieted: every ``from_pretrained`` of an encoder with a new classification head
prints a load-report table (the head's weights are new: expected, nothing to act on) and a
"Loading weights" progress bar, once per worker and once more per evaluation. In a job's log that
drowns the lines a person reads (progress, metrics, where the outputs went). Errors still show.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "[%(name)s %(asctime)s] %(message)s"
DATE_FORMAT = "%H:%M:%S"

#: Environment that makes Hugging Face libraries print errors only and no progress bars; read when they are
#: imported, so it is set for worker processes before they start (and here, for this process).
QUIET_LIBRARY_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def quiet_libraries() -> None:
    """Hugging Face load reports and progress bars off in this process and in the processes it starts.

    The libraries read the environment when imported; one imported already is told directly."""
    for key, value in QUIET_LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def setup(level: int = logging.INFO) -> None:
    """The one log format for a kosent process, at ``level`` for kosent's own loggers."""
    logging.basicConfig(format=FORMAT, datefmt=DATE_FORMAT, level=logging.WARNING)
    logging.getLogger("kosent").setLevel(level)
    quiet_libraries()
