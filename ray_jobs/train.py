"""Train with Ray Train, evaluate the best checkpoint on the untouched test split, write the run's outputs.

Against a running cluster (see docs/TRAINING.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/train.py --model e5-small-ko --num-workers 2 --storage-path /abs/runs --name nsmc-e5

Or on this machine alone (starts a local cluster on 127.0.0.1, dashboard on):

    python ray_jobs/train.py --model tiny --train-size 2000 --epochs 2

Every TrainConfig / DataConfig field is a flag (``--train-size`` = ``train_size``); ``--config f.yaml``
reads them from YAML first. Writes into the run folder: summary.json, curves.png, manifest.json.
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
import tempfile
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from kosent.config import TrainConfig, add_config_args

    parser = argparse.ArgumentParser(
        prog="ray_jobs/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)",
    )
    add_config_args(parser, TrainConfig)
    _env.add_verbosity_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kosent import tracking
    from kosent.checkpoint import CheckpointError
    from kosent.config import cache_home, config_from_args
    from kosent.data import DataError, make_splits
    from kosent.models import ModelError
    from kosent.ray_train import TrainRunError, TrainSetupError, fit, resolve_model

    args = _env.parse_args(build_parser(), argv)
    try:
        cfg = config_from_args(args)
        cfg = dataclasses.replace(cfg, storage_path=_env.durable_path(cfg.storage_path, "--storage-path",
                                                                      cache_home() / "runs"))
        resolve_model(cfg.model)  # a bad model name fails before the data is read (fit checks the rest)
        splits = make_splits(cfg.data)
        _env.log.info(splits.report.summary())
        _env.log.info(f"splits {splits.sizes()} fingerprint {splits.fingerprint[:16]}")
        # Tracking (kosent.tracking): the run is created before training, so a failed fit is recorded FAILED.
        run = tracking.start_run(cfg.tracking, cfg.storage_path, kind="train", name=cfg.name,
                                 params=tracking.config_params(cfg), fingerprint=splits.fingerprint)
        with tracking.tracked(run, finish=False):
            result = fit(cfg, splits, address=args.address)
    except (DataError, ModelError, CheckpointError, TrainSetupError, FileNotFoundError, ValueError) as e:
        print(f"ray_jobs/train.py: error: {e}", file=sys.stderr)
        return 2
    except TrainRunError as e:
        print(f"ray_jobs/train.py: {e}", file=sys.stderr)
        return 1

    with tracking.tracked(run):
        return _outputs(cfg, splits, result, run)


def _outputs(cfg: Any, splits: Any, result: Any, run: Any) -> int:
    """Test score, summary, curves and manifest of a finished run; all of it logged to ``run`` (when tracked)."""
    from kosent import storage, tracking
    from kosent.config import to_dict
    from kosent.evaluate import evaluate_checkpoint
    from kosent.manifest import write_manifest
    from kosent.plots import plot_learning_curves
    from kosent.ray_train import run_scorer

    # Scored once: on the cluster's actors or in this process (--score-on).
    scorer = run_scorer(cfg, result.checkpoint_uri or str(result.checkpoint), "test split")
    test = evaluate_checkpoint(result.checkpoint, list(splits.test["text"]), list(splits.test["label"]), score=scorer)
    remote = storage.is_uri(result.run_dir)
    out_dir = Path(tempfile.mkdtemp(prefix="kosent-run-")) if remote else Path(result.run_dir)
    cfg_dict = to_dict(cfg) | {"name": result.name}
    summary = {
        "name": result.name,
        "run_dir": result.run_dir,
        "checkpoint": result.checkpoint_uri or str(result.checkpoint),
        "local_checkpoint": str(result.checkpoint),
        "config": cfg_dict,
        "val_metrics": result.metrics,
        "test_metrics": test,
        "wall_seconds": result.wall_seconds,
        "history": result.history,
        "data": {"fingerprint": splits.fingerprint, "sizes": splits.sizes()},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_learning_curves(result.history, out_dir / "curves.png", title=f"{result.name} ({cfg.model})")
    extra = {"checkpoint": result.checkpoint_uri} if remote else {}
    if run is not None:  # lineage: the manifest names the MLflow run of its checkpoint
        extra[tracking.MANIFEST_KEY] = run.lineage()
    write_manifest(out_dir / "manifest.json", result.checkpoint, val_metrics=result.metrics,
                   test_metrics=test, source="train", extra=extra or None)
    if remote:
        for name in ("summary.json", "curves.png", "manifest.json"):
            storage.copy_files(out_dir / name, storage.join(result.run_dir, name))
    if run is not None:
        run.set_name(result.name)
        if cfg.name is None:
            run.log_params({"name": result.name})
        run.log_history(result.history)
        run.log_metrics(test | {"wall_seconds": result.wall_seconds})
        run.set_tags({"kosent.run_dir": result.run_dir, "kosent.checkpoint": summary["checkpoint"]})
        for name in ("summary.json", "curves.png", "manifest.json"):
            tracking.safely(f"log {name}", run.log_artifact, out_dir / name)
    where = result.run_dir if remote else str(out_dir)
    print(json.dumps({
        "run_dir": result.run_dir,
        "checkpoint": summary["checkpoint"],
        "val_macro_f1": result.metrics.get("val_macro_f1"),
        "test_accuracy": test["test_accuracy"],
        "test_macro_f1": test["test_macro_f1"],
        "summary": f"{where}/summary.json",
        "curves": f"{where}/curves.png",
        "manifest": f"{where}/manifest.json",
        "wall_seconds": round(result.wall_seconds, 1),
    } | ({"mlflow_run_id": run.run_id, "tracking_uri": run.uri} if run is not None else {}), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
