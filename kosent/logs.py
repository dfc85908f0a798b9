"""How kosent's processes log: one format, set once by whatever starts the process.

Entry points (``kosent`` CLI, ``ray_jobs/*.py``) call :func:`setup`, with the level their ``-q/--quiet`` /
``-v/--verbose`` flags ask for (:func:`add_verbosity_flags`, :func:`level_from_args`); library modules only
use ``log = logging.getLogger(__name__)``. Timestamps are UTC (``[kosent.train 13:45:07Z] ...``).

Processes started by the entry point log at the same level: :func:`setup` writes it to ``$KOSENT_LOG_LEVEL``
(:data:`LEVEL_ENV`) and reads it from there by default. Ray Train workers get that variable in their
environment (``kosent.ray_train``) and call :func:`setup` first thing; so do the Ray tasks kosent starts.

Ray Train configures logging in its workers before our code runs: the root logger at INFO with a console
handler that prints the bare message. :func:`setup` replaces the root logger's console handlers by its own
(one line per record, in kosent's format) and leaves handlers that write elsewhere (files, captures) alone.

Why the libraries are quieted: every ``from_pretrained`` of an encoder with a new classification head
prints a load-report table (the head's weights are new: expected, nothing to act on) and a
"Loading weights" progress bar, once per worker and once more per evaluation. In a job's log that
drowns the lines a person reads (progress, metrics, where the outputs went). Errors still show.
Workers get :data:`QUIET_LIBRARY_ENV` in their environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TextIO

FORMAT = "[%(name)s %(asctime)s] %(message)s"
DATE_FORMAT = "%H:%M:%SZ"  # UTC (the formatter's converter is time.gmtime)

#: The environment variable holding kosent's log level (a name such as ``INFO`` or a number): set by
#: :func:`setup`, read by it as the default, passed to Ray Train workers.
LEVEL_ENV = "KOSENT_LOG_LEVEL"

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


def formatter() -> logging.Formatter:
    """kosent's one log format, its times in UTC."""
    fmt = logging.Formatter(FORMAT, DATE_FORMAT)
    fmt.converter = time.gmtime
    return fmt


class ConsoleHandler(logging.StreamHandler):
    """kosent's console handler: writes to whatever ``sys.stderr`` is when a record comes (a worker's
    redirected stream, a test's capture), not to the stream of the moment it was made."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def _is_console(handler: logging.Handler) -> bool:
    """A handler printing to this process's stdout / stderr (not a file, not a capture)."""
    if isinstance(handler, ConsoleHandler):
        return True
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    return handler.stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


def parse_level(value: str | int | None, default: int = logging.INFO) -> int:
    """A level from a name (``info``, ``WARNING``) or a number (``10``); ``default`` for None, empty or unknown."""
    if value is None or str(value).strip() == "":
        return default
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    return level if isinstance(level, int) else default


def _level_name(level: int) -> str:
    """``INFO`` for 20; the number itself for a level without a name."""
    name = logging.getLevelName(level)
    return name if parse_level(name, -1) == level else str(level)


def level_from_env(default: int = logging.INFO) -> int:
    """The level in ``$KOSENT_LOG_LEVEL`` (what the process that started this one was set up with), else ``default``."""
    return parse_level(os.environ.get(LEVEL_ENV), default)


def setup(level: int | None = None) -> None:
    """The one log format for a kosent process, at ``level`` for kosent's own loggers (default: the level in
    ``$KOSENT_LOG_LEVEL``, else INFO); other libraries' warnings and errors show too.

    Safe to call again (a worker, an entry point after parsing its flags): the console handler is replaced,
    never added twice. The level is written to ``$KOSENT_LOG_LEVEL`` for the processes this one starts."""
    if level is None:
        level = level_from_env()
    os.environ[LEVEL_ENV] = _level_name(level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _is_console(h)]:
        root.removeHandler(handler)
    handler = ConsoleHandler()
    handler.setFormatter(formatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kosent").setLevel(level)
    quiet_libraries()


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` (warnings and errors only) and ``-v/--verbose`` (debug too), mutually exclusive;
    :func:`level_from_args` turns them into a level for :func:`setup`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=False,
                       help="log warnings and errors only")
    group.add_argument("-v", "--verbose", action="store_true", default=False,
                       help="log debug messages too")


def level_from_args(args: argparse.Namespace) -> int:
    """WARNING with ``--quiet``, DEBUG with ``--verbose``, else ``$KOSENT_LOG_LEVEL`` or INFO."""
    if getattr(args, "quiet", False):
        return logging.WARNING
    if getattr(args, "verbose", False):
        return logging.DEBUG
    return level_from_env()


__all__ = ["DATE_FORMAT", "FORMAT", "LEVEL_ENV", "QUIET_LIBRARY_ENV", "ConsoleHandler", "add_verbosity_flags",
           "formatter", "level_from_args", "level_from_env", "parse_level", "quiet_libraries", "setup"]
