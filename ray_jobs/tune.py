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
(each trial's Train run lives inside its trial folder).

Prints the manifest path (what Serve reads), the table of trials, the best configuration and what ASHA
saved. Exit status: 0 done, 1 no usable trial, 2 bad settings, 130 interrupted (resume it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # noqa: E402, F401  (first: loopback cluster, no usage stats, kosent importable; see _env.py)

# isort: split

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

# SweepConfig fields with their own flags (name, storage_path and resume come from the TrainConfig flags).
_SWEEP_FLAGS = ("lrs", "lr_min", "lr_max", "num_samples", "scales", "asha", "grace_period", "reduction_factor",
                "max_concurrent_trials", "driver_cpus")


def build_parser() -> argparse.ArgumentParser:
    from kosent.cli import add_config_args
    from kosent.config import DataConfig, TrainConfig

    parser = argparse.ArgumentParser(
        prog="ray_jobs/tune.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    parser.add_argument("--sweep-config", help="YAML file of SweepConfig fields (flags override it)")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)",
    )
    sweep = parser.add_argument_group("SweepConfig")
    s = argparse.SUPPRESS
    sweep.add_argument("--lrs", type=float, nargs="+", default=s, help="learning-rate grid (default 2e-5 5e-5 1e-4)")
    sweep.add_argument("--lr-min", type=float, default=s, help="log-uniform lower bound (used without --lrs)")
    sweep.add_argument("--lr-max", type=float, default=s, help="log-uniform upper bound (used without --lrs)")
    sweep.add_argument("--num-samples", type=int, default=s,
                       help="learning rates sampled per scale (or repeats of the grid with --lrs); default 1")
    sweep.add_argument("--scales", type=int, nargs="+", default=s, help="dataset scale factors (default 1 2 3 4 5)")
    sweep.add_argument("--grid", nargs="+", action="extend", metavar="KEY=V1,V2", default=s,
                       help="sweep a TrainConfig field too, e.g. --grid warmup_ratio=0.0,0.1 pooling=cls,mean "
                            "(repeatable; overrides the same key of grid: in --sweep-config)")
    sweep.add_argument("--asha", action=argparse.BooleanOptionalAction, default=s,
                       help="early-stop weak trials with ASHA on val_macro_f1 (default on)")
    sweep.add_argument("--grace-period", type=int, default=s, help="epochs every trial runs before ASHA may stop it")
    sweep.add_argument("--reduction-factor", type=float, default=s, help="ASHA reduction factor (default 2)")
    sweep.add_argument("--max-concurrent-trials", type=int, default=s,
                       help="trials at a time (default: as many as the cluster's CPUs hold)")
    sweep.add_argument("--driver-cpus", type=float, default=s, help="CPU of each trial's driver (default 0.01)")
    add_config_args(parser, TrainConfig)
    add_config_args(parser, DataConfig)
    return parser


def sweep_config_from_args(args: argparse.Namespace):
    """Defaults < ``--sweep-config`` YAML < flags (``--grid`` per key); ``--name``, ``--storage-path`` and
    ``--resume`` are the sweep's. The grid is checked here, before a cluster is started."""
    from kosent.config import load_yaml, to_dict
    from kosent.tune import SweepConfig, check_grid, parse_grid

    sweep = load_yaml(args.sweep_config, SweepConfig) if args.sweep_config else SweepConfig()
    given = vars(args)
    values = {k: given[k] for k in _SWEEP_FLAGS if k in given}
    if "lrs" not in given and ("lr_min" in given or "lr_max" in given):
        values["lrs"] = None  # a range without a grid: sample log-uniformly
    if "grid" in given:
        values["grid"] = sweep.grid | parse_grid(given["grid"])
    for k in ("name", "storage_path", "resume"):
        if k in given:
            values[k] = given[k]
    sweep = SweepConfig(**(to_dict(sweep) | values))
    return dataclasses.replace(sweep, grid=check_grid(sweep.grid))


def _in_submitted_job() -> bool:
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def main(argv: list[str] | None = None) -> int:
    from kosent.checkpoint import CheckpointError
    from kosent.cli import config_from_args
    from kosent.config import cache_home
    from kosent.data import DataError
    from kosent.models import ModelError
    from kosent.ray_train import TrainSetupError, connect
    from kosent.tune import SweepError, markdown_table, run_sweep

    args = build_parser().parse_args(argv)
    try:
        base = config_from_args(args)
        sweep = sweep_config_from_args(args)
        if "storage_path" not in vars(args) and not args.sweep_config:
            sweep = dataclasses.replace(sweep, storage_path=f"{base.storage_path.rstrip('/')}/sweeps")
        if not sweep.storage_path.startswith(("/", "~")) and "://" not in sweep.storage_path and _in_submitted_job():
            # A relative path would land in the job's temporary working-dir copy and vanish with it.
            storage = cache_home() / "sweeps"
            print(f"[tune] relative storage path '{sweep.storage_path}' inside a submitted job: using {storage} "
                  "(pass an absolute --storage-path to choose)", flush=True)
            sweep = dataclasses.replace(sweep, storage_path=str(storage))
        connect(args.address)
        result = run_sweep(sweep, base)
    except (SweepError, DataError, ModelError, CheckpointError, TrainSetupError, FileNotFoundError, ValueError) as e:
        print(f"ray_jobs/tune.py: error: {e}", file=sys.stderr)
        return 2

    print("\n" + markdown_table(result.trials) + "\n", flush=True)
    best_config = None
    if result.best is not None:
        trial_file = Path(result.best.path) / "kosent_trial.json"
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
        print(f"[tune] interrupted; resume with: python ray_jobs/tune.py --resume --name {result.path.name} "
              f"--storage-path {where}", file=sys.stderr)
        return 130
    if result.manifest is None:
        print("[tune] no trial produced a usable checkpoint; no manifest written", file=sys.stderr)
        return 1
    print(f"manifest: {result.manifest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
