"""Domain-adaptive pretraining with Ray Train: masked-LM training of the encoder on unlabelled in-domain text.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/pretrain.py --model e5-small-ko --unlabelled-size 0 --storage-path /abs/runs/pretrain --name nsmc-dapt
    python ray_jobs/pretrain.py --unlabelled-size 8000 --out runs/pretrain/e5-nsmc     # local cluster on 127.0.0.1

The corpus is the texts (never the labels) of ``--source`` (default NSMC) minus the validation and test texts
of the same split settings the fine-tuning will use (``--val-size``, ``--test-size``, ``--split-seed``); the
overlap is checked and recorded as zero. The result is a Hugging Face folder: pass it to training as
``--model <folder>``. Your own comments: ``--source table --path comments.csv --text-column ...``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # first: loopback cluster, no usage stats, kosent importable (see _env.py)

# isort: split

import argparse
import json


def build_parser() -> argparse.ArgumentParser:
    from kosent.config import CLASSIFIER_ONLY, PretrainConfig, add_config_args

    parser = argparse.ArgumentParser(prog="ray_jobs/pretrain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of PretrainConfig fields (flags override it)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)")
    parser.add_argument("--out", help="the model folder to write (default: <storage_path>/<name>/model)")
    add_config_args(parser, PretrainConfig, skip=CLASSIFIER_ONLY)
    _env.add_verbosity_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kosent import tracking
    from kosent.config import PretrainConfig, config_from_args
    from kosent.data import DataError
    from kosent.models import ModelError
    from kosent.ray_train import TrainSetupError, connect

    args = _env.parse_args(build_parser(), argv)
    try:
        cfg = config_from_args(args, PretrainConfig)
        connect(args.address)
        from kosent.pretrain import fit_pretrain

        # Tracking: one run for the pretraining job (FAILED if it raises); its epochs, corpus report and folder.
        run = tracking.start_run(cfg.tracking, cfg.storage_path, kind="pretrain", name=cfg.name,
                                 params=tracking.config_params(cfg))
        with tracking.tracked(run, finish=False):
            folder = fit_pretrain(cfg, out=args.out)
    except (DataError, ModelError, TrainSetupError, FileNotFoundError, ValueError) as e:
        print(f"ray_jobs/pretrain.py: error: {e}", file=sys.stderr)
        return 2
    doc = json.loads((folder / "kosent_pretrain.json").read_text(encoding="utf-8"))
    with tracking.tracked(run):
        if run is not None:
            run.log_history(doc["history"])
            run.set_tags({"kosent.model_folder": str(folder)})
            tracking.safely("log kosent_pretrain.json", run.log_artifact, folder / "kosent_pretrain.json")
    print(json.dumps({"model_folder": str(folder), "corpus": doc["corpus"], "history": doc["history"],
                      "next": f"python ray_jobs/train.py --model {folder} ..."}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
