"""kosent.logs: one format (UTC times), the level from --quiet / --verbose, passed on through the environment.

Real logging throughout: records go through the handler that setup() installs to the captured stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import pytest

from kosent import logs


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """setup() changes process-wide state: the root logger's console handler, two levels and the environment."""
    root, kosent = logging.getLogger(), logging.getLogger("kosent")
    before = [h for h in root.handlers if logs._is_console(h)]  # what setup() replaces
    levels = root.level, kosent.level
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)  # restored (or removed again) afterwards
    for key in logs.QUIET_LIBRARY_ENV:
        monkeypatch.setenv(key, os.environ.get(key, logs.QUIET_LIBRARY_ENV[key]))
    yield
    for handler in [h for h in root.handlers if logs._is_console(h)]:
        root.removeHandler(handler)
    for handler in before:
        root.addHandler(handler)
    root.setLevel(levels[0])
    kosent.setLevel(levels[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kosent")
    logs.add_verbosity_flags(parser)
    return parser


def _level(argv: list[str]) -> int:
    return logs.level_from_args(_parser().parse_args(argv))


def test_flags_give_levels_and_exclude_each_other(capsys):
    assert _level([]) == logging.INFO
    assert _level(["-q"]) == _level(["--quiet"]) == logging.WARNING
    assert _level(["-v"]) == _level(["--verbose"]) == logging.DEBUG
    with pytest.raises(SystemExit):
        _parser().parse_args(["--quiet", "--verbose"])
    assert "not allowed with" in capsys.readouterr().err


def test_quiet_hides_kosent_info_and_shows_warnings(capsys):
    from kosent.train import log as train_log

    logs.setup(_level(["--quiet"]))
    train_log.info("epoch 1/2 train_loss 0.5000")
    train_log.debug("a detail")
    train_log.warning("warning: could not confirm that checkpoint epoch_1 was committed")
    logging.getLogger("some.library").warning("a library's warning")
    err = capsys.readouterr().err
    assert "epoch 1/2" not in err and "a detail" not in err
    assert "[kosent.train " in err and "warning: could not confirm" in err
    assert "[some.library " in err and "a library's warning" in err
    assert os.environ[logs.LEVEL_ENV] == "WARNING"  # what the processes this one starts will use


def test_verbose_gives_debug_and_keeps_captures(capsys, caplog):
    logs.setup(_level(["--verbose"]))
    log = logging.getLogger("kosent.paper")
    log.debug("planning %d run(s)", 3)
    log.info("started baselines/nsmc/tiny")
    logging.getLogger("some.library").info("a library's info")
    err = capsys.readouterr().err
    assert logging.getLogger("kosent").getEffectiveLevel() == logging.DEBUG
    assert "planning 3 run(s)" in err and "started baselines/nsmc/tiny" in err
    assert "a library's info" not in err  # other libraries: warnings and errors only
    # setup() replaces console handlers only: the test's log capture still gets every kosent record
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("kosent")] == [
        ("kosent.paper", logging.DEBUG, "planning 3 run(s)"), ("kosent.paper", logging.INFO, "started baselines/nsmc/tiny")]
    assert os.environ[logs.LEVEL_ENV] == "DEBUG"


def test_level_comes_from_the_environment_by_default(monkeypatch, capsys):
    """A Ray worker calls setup() without a level: it logs at the level its entry point set."""
    logs.setup()
    assert logging.getLogger("kosent").level == logging.INFO and os.environ[logs.LEVEL_ENV] == "INFO"
    monkeypatch.setenv(logs.LEVEL_ENV, "warning")
    logs.setup()
    assert logging.getLogger("kosent").level == logging.WARNING
    monkeypatch.setenv(logs.LEVEL_ENV, "10")
    assert _level([]) == logging.DEBUG  # no flag: the environment's level
    assert _level(["-q"]) == logging.WARNING  # a flag wins
    monkeypatch.setenv(logs.LEVEL_ENV, "nonsense")
    assert logs.level_from_env() == logging.INFO


def test_one_console_handler_however_often_setup_runs(capsys):
    """A Ray Train worker's root logger already prints bare messages to stderr: kosent's handler replaces it."""
    root = logging.getLogger()
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(plain)
    logs.setup()
    logs.setup()
    logging.getLogger("kosent.train").info("epoch 1 step 3/10 loss 0.6931")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "epoch 1 step 3/10" in ln]
    assert len(lines) == 1 and lines[0].startswith("[kosent.train ")
    assert plain not in root.handlers


def test_times_are_utc(monkeypatch):
    record = logging.LogRecord("kosent.train", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 0.0  # 1970-01-01T00:00:00Z
    try:
        with monkeypatch.context() as m:
            m.setenv("TZ", "Asia/Seoul")  # nine hours ahead of UTC: a local time would read 09:00:00
            time.tzset()
            assert logs.formatter().format(record) == "[kosent.train 00:00:00Z] hello"
    finally:
        time.tzset()


def test_kosent_modules_log_through_their_own_loggers():
    from kosent import distill, ensemble, paper, pretrain, train
    from kosent.models import e5_offline

    for module in (train, paper, e5_offline, distill, ensemble, pretrain):
        assert isinstance(module.log, logging.Logger) and module.log.name == module.__name__
