"""Sweep learning rate x dataset scale factor (x any TrainConfig field, ``--grid``) with Ray Tune (ASHA), then
publish the best checkpoint.

On this machine alone (starts a local cluster on 127.0.0.1, dashboard on):

    python ray_jobs/tune.py --model e5-small-ko --train-size 500 --scales 1 2 --lrs 5e-5 1e-4 \\
        --epochs 2 --max-length 64 --name nsmc-sweep

Against a running cluster (see docs/SWEEPS.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/tune.py --storage-path /abs/runs/sweeps --name nsmc-sweep ...

Resume an interrupted sweep (Ctrl+C, a killed driver): the same ``--name`` / ``--storage-path`` and
``--resume``; every other setting comes from the sweep folder.

Search space: ``--lrs`` is a grid; ``--lr-min/--lr-max`` without ``--lrs`` samples ``--num-samples``
learning rates log-uniformly per scale. ``--scales`` multiplies ``--train-size``. ``--grid KEY=V1,V2 ...``
adds a grid dimension per TrainConfig field (``--grid warmup_ratio=0.0,0.1 epochs=2,3
model=e5-small-ko,/abs/dapt``; ``none`` for a field that may be None, ``true``/``false`` for a bool; or
``grid:`` in the sweep YAML): every combination is a trial. Every TrainConfig /
DataConfig field is a flag (``--train-size`` = ``train_size``); ``--config f.yaml`` reads them from YAML
and ``--sweep-config s.yaml`` reads SweepConfig fields. ``--name`` and ``--storage-path`` name the sweep
(each trial's Train run is <sweep>/train_runs/<trial id>).

Prints the manifest path (what Serve reads), the table of trials, the best configuration and what ASHA
saved. Exit status: 0 done, 1 no usable trial, 2 bad settings, 130 interrupted (resume it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # first: loopback cluster, no usage stats, kosent importable (see _env.py)

# isort: split

import argparse
import dataclasses
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from kosent.config import TrainConfig, add_config_args
    from kosent.sweep import SweepConfig

    parser = argparse.ArgumentParser(
        prog="ray_jobs/tune.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file of TrainConfig fields: the base of every trial (flags override it)")
    parser.add_argument("--sweep-config", help="YAML file of SweepConfig fields (flags override it)")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)",
    )
    # The sweep's own name, storage path and resume; each trial's Train run is named by its trial id inside it.
    add_config_args(parser, SweepConfig, skip={"grid"})
    parser.add_argument("--grid", nargs="+", action="extend", metavar="KEY=V1,V2", default=argparse.SUPPRESS,
                        help="sweep a TrainConfig field too, e.g. --grid warmup_ratio=0.0,0.1 pooling=cls,mean "
                             "(repeatable; overrides the same key of grid: in --sweep-config); every combination "
                             "is a trial")
    add_config_args(parser, TrainConfig, skip={"name", "storage_path", "resume"})
    _env.add_verbosity_flags(parser)
    return parser


def sweep_config_from_args(args: argparse.Namespace):
    """Defaults < ``--sweep-config`` YAML < flags (``--grid`` per key). The grid is checked here, before a cluster
    is started."""
    from kosent.config import config_from_args
    from kosent.sweep import SweepConfig, check_grid, parse_grid

    given = {k: v for k, v in vars(args).items() if k != "grid"}  # --grid is KEY=V1,V2 text: parsed below
    sweep = config_from_args(argparse.Namespace(**given), SweepConfig, yaml_path=args.sweep_config or "")
    if "lrs" not in given and ("lr_min" in given or "lr_max" in given):
        sweep = dataclasses.replace(sweep, lrs=None)  # a range without a grid: sample log-uniformly
    if "grid" in vars(args):
        sweep = dataclasses.replace(sweep, grid=sweep.grid | parse_grid(args.grid))
    return dataclasses.replace(sweep, grid=check_grid(sweep.grid))


def main(argv: list[str] | None = None) -> int:
    from kosent.checkpoint import CheckpointError
    from kosent.config import cache_home, config_from_args
    from kosent.data import DataError
    from kosent.models import ModelError
    from kosent.ray_train import TrainSetupError, connect
    from kosent.sweep import SweepError, markdown_table, run_sweep

    args = _env.parse_args(build_parser(), argv)
    try:
        base = config_from_args(args)
        sweep = sweep_config_from_args(args)
        sweep = dataclasses.replace(sweep, storage_path=_env.durable_path(sweep.storage_path, "--storage-path",
                                                                          cache_home() / "sweeps"))
        connect(args.address)
        result = run_sweep(sweep, base)
    except (SweepError, DataError, ModelError, CheckpointError, TrainSetupError, FileNotFoundError, ValueError) as e:
        print(f"ray_jobs/tune.py: error: {e}", file=sys.stderr)
        return 2

    print("\n" + markdown_table(result.trials) + "\n", flush=True)
    best_config = None
    if result.best is not None:
        trial_file = Path(result.best.run_dir) / "kosent_trial.json"
        if trial_file.is_file():
            best_config = json.loads(trial_file.read_text(encoding="utf-8"))["config"]
    print(json.dumps({
        "sweep": str(result.path),
        "manifest": str(result.manifest) if result.manifest else None,
        "table": [str(result.table_csv), str(result.table_md)],
        "plots": [str(p) for p in result.plots[:2]],
        "tensorboard": f"tensorboard --logdir {result.tensorboard_dir}",
        "best": result.summary()["best"],
        "best_config": best_config,
        "val_metrics": result.val_metrics,
        "test_metrics": result.test_metrics,
        "asha": result.savings,
        "seconds": round(result.seconds, 1),
    }, indent=2, ensure_ascii=False), flush=True)
    if result.interrupted:
        where = (result.location or str(result.path)).rstrip("/").rsplit("/", 1)[0]
        _env.log.warning(f"interrupted; resume with: python ray_jobs/tune.py --resume --name {result.path.name} "
                         f"--storage-path {where}")
        return 130
    if result.manifest is None:
        _env.log.error("no trial produced a usable checkpoint; no manifest written")
        return 1
    print(f"manifest: {result.manifest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
