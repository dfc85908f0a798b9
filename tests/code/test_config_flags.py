"""One configuration system: every config is a dataclass declared the same way, every entry point's flags are
generated from it with a help line, renamed flags name their new spelling, and every command the docs show
still parses."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from kosent import cli
from kosent.config import DataConfig, PretrainConfig, TrainConfig, add_config_args, config_from_args
from kosent.paper import PaperConfig
from kosent.serve import ServeArgs
from kosent.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (DataConfig, TrainConfig, PretrainConfig, SweepConfig, PaperConfig, ServeArgs)
JOBS = ("train", "tune", "paper", "deploy", "pretrain")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_a_validated_dataclass_with_a_description_per_field(cls):
    assert dataclasses.is_dataclass(cls) and hasattr(cls, "__pydantic_fields__"), cls
    missing = [name for name, info in cls.__pydantic_fields__.items() if not info.description]
    assert not missing, f"{cls.__name__}: fields without a description (their flag's help): {missing}"
    with pytest.raises(ValueError, match="typo_field"):  # unknown fields are refused, by name
        cls(typo_field=1)


def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {flag: a.help or "" for a in parser._actions for flag in a.option_strings}


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_of_every_job_says_what_it_does(job, job_module):
    parser = job_module(job).build_parser()
    bare = {flag: text for flag, text in _help_lines(parser).items()
            if text != argparse.SUPPRESS and (not text.strip() or re.fullmatch(r"\(?default:[^)]*\)?", text.strip()))}
    assert not bare, f"ray_jobs/{job}.py: flags whose help is empty or only a default: {bare}"
    for flag in ("--quiet", "--verbose"):
        assert flag in _help_lines(parser), f"ray_jobs/{job}.py has no {flag}"


def test_every_argument_of_every_kosent_command_says_what_it_does():
    commands = cli.build_parser()._subparsers._actions[-1].choices
    bare = [f"kosent {name} {a.option_strings[0] if a.option_strings else a.dest}"
            for name, command in commands.items() for a in command._actions
            if not (a.help or "").strip() or re.fullmatch(r"\(?default:[^)]*\)?", (a.help or "").strip())]
    assert not bare, f"arguments whose help is empty or only a default: {bare}"
    assert all("--quiet" in _help_lines(command) for command in commands.values())


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("epochs: 3\nlr: 1.0e-4\ndata:\n  train_size: 500\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_args(parser, TrainConfig)
    cfg = config_from_args(parser.parse_args(["--config", str(yaml), "--lr", "3e-4", "--test-size", "200",
                                              "--label-map", "neg=0", "pos=1", "--no-use-gpu"]))
    assert (cfg.epochs, cfg.lr, cfg.data.train_size, cfg.data.test_size) == (3, 3e-4, 500, 200)
    assert cfg.data.label_map == {"neg": 0, "pos": 1} and cfg.use_gpu is False
    assert cfg.batch_size == TrainConfig().batch_size
    with pytest.raises(ValueError, match=r"^TrainConfig: epochs=0: Input should be greater than or equal to 1$"):
        config_from_args(parser.parse_args(["--epochs", "0"]))  # refused, named in one line


def test_renamed_flags_fail_with_the_new_spelling(capsys, job_module):
    deploy, paper = job_module("deploy"), job_module("paper")
    with pytest.raises(SystemExit):
        deploy.build_parser().parse_args(["--checkpoint", "/x", "--model", "b=/y"])
    assert "--model is now --models NAME=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper.build_parser().parse_args(["--lr", "rnn=1e-3"])
    assert "--lr is now --lrs MODEL=LR" in capsys.readouterr().err
    # The new spellings: repeatable mappings, merged.
    ns = deploy.build_parser().parse_args(["--checkpoint", "/x", "--models", "b=/y", "--models", "c=/z",
                                           "--autoscaling", "metrics_interval_s=2", "--replace"])
    args = ServeArgs(**deploy.serve_args(ns))
    assert args.models == {"b": "/y", "c": "/z"} and args.autoscaling == {"metrics_interval_s": 2}
    assert args.max_surge_percent == 0
    lrs = config_from_args(paper.build_parser().parse_args(["--lrs", "rnn=1e-3", "e5-small-ko=1e-4"]), PaperConfig,
                           yaml_path="").lrs
    assert lrs == {"rnn": 1e-3, "e5-small-ko": 1e-4}


def test_tune_name_storage_path_and_resume_are_the_sweeps(tune_job):
    tune = tune_job
    help_of = _help_lines(tune.build_parser())
    assert "sweep" in help_of["--name"] and "sweep" in help_of["--storage-path"] and "sweep" in help_of["--resume"]
    args = tune.build_parser().parse_args(["--name", "s1", "--storage-path", "/tmp/sw", "--resume"])
    sweep = tune.sweep_config_from_args(args)
    assert (sweep.name, sweep.storage_path, sweep.resume) == ("s1", "/tmp/sw", True)


def _documented_commands() -> list[tuple[str, str, list[str], bool]]:
    """``(file, script, argv, whole)`` for every ``python ray_jobs/X.py ...`` and ``kosent ...`` in the README and
    docs (continuation lines joined; commands with placeholders such as ``...`` left out). ``whole``: a command
    line of a code block; otherwise a mention in the text (``ray_jobs/paper.py --tracking``), whose flags are
    checked but which need not be complete."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text(encoding="utf-8"))
        for line in text.splitlines():
            line = line.split("  #")[0].strip().strip("`")
            m = re.search(r"(?:python |^|`)(ray_jobs/(\w+)\.py|kosent (?=[a-z]))(.*)$", line)
            rest = (m.group(3) if m else "").split("`")[0]  # a command quoted inline ends at its backquote
            if not m or "..." in rest or "<" in rest or "|" in rest or "$" in rest:
                continue
            script = m.group(2) or "kosent"
            try:
                argv = shlex.split(rest)
            except ValueError:
                continue
            if script == "kosent" and (not argv or argv[0] not in cli.build_parser()._subparsers._actions[-1].choices):
                continue
            found.append((doc.name, script, argv, line.startswith(("python ", "kosent "))))
    return found


def test_every_command_in_the_docs_still_parses(capsys, job_module):
    commands = _documented_commands()
    assert len(commands) >= 20, commands  # the README alone shows a dozen
    failed = []
    for doc, script, argv, whole in commands:
        parser = cli.build_parser() if script == "kosent" else job_module(script).build_parser()
        if not whole:  # a mention: its flags must exist
            if script == "kosent":
                parser = parser._subparsers._actions[-1].choices[argv[0]]
            known = {flag for a in parser._actions for flag in a.option_strings}
            failed += [f"{doc}: {script}: unknown flag {t}" for t in argv if t.startswith("--") and t.split("=")[0] not in known]
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            err = capsys.readouterr().err.strip().splitlines()
            if e.code:  # --help exits 0
                failed.append(f"{doc}: {script} {shlex.join(argv)}: {err[-1] if err else e.code}")
    assert not failed, "documented commands that no longer parse:\n" + "\n".join(failed)
