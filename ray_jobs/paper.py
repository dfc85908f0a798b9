"""The paper's experiments in one Ray job: baselines, data scaling and news comments, then docs/RESULTS.md.

On this machine alone (starts a local cluster on 127.0.0.1, dashboard on), a reduced CPU version (9 min
on 2 busy cores; it wrote the current docs/RESULTS.md):

    python ray_jobs/paper.py --train-size 1000 --val-size 200 --test-size 1000 --epochs 1 --kmhas-epochs 1 \\
        --batch-size 32 --max-length 64 --models tfidf rnn birnn e5-small-ko --scale-models tfidf rnn \\
        --scales 1 2 3 --kmhas-models tfidf e5-small-ko --lr e5-small-ko=1e-4 --max-points 1000 --name paper-reduced

Against a running cluster, the full version (the defaults are the paper's setting; use GPUs):

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/paper.py --use-gpu --storage-path /abs/runs/paper --results-md /abs/RESULTS.md

Experiments (``--experiments``): ``baselines`` (``--models`` on NSMC ``--train-size`` / ``--test-size``),
``scale`` (``--scale-models`` at ``--scales`` x ``--train-size``, same test set), ``kmhas`` (``--kmhas-models``
on K-MHaS as it is and resampled to ``--kmhas-negative-fraction`` hate). Neural models train with Ray Train,
several runs at once as the cluster's CPUs allow; the scale runs of a neural model are one Ray Tune sweep.
Every checkpoint gets an evaluation report folder (``kosent evaluate``'s) in the run folder
``--storage-path/--name``; the document (``--results-md``) and its figures (``<its folder>/paper/``) are
written at the end: only the block between the generated markers is replaced.

Exit status: 0 done, 1 some run failed (the document says which), 2 bad settings.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ray_jobs/, also when loaded by path
import _env  # noqa: E402, F401  (first: loopback cluster, no usage stats, kosent importable; see _env.py)

# isort: split

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _lr(value: str) -> tuple[str, float]:
    model, sep, lr = value.rpartition("=")
    try:
        if not sep or not model:
            raise ValueError
        return model, float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=LR such as rnn=2e-3, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from kosent.paper import EXPERIMENTS, PaperConfig

    d = PaperConfig()
    p = argparse.ArgumentParser(prog="ray_jobs/paper.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)")
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=d.experiments)
    p.add_argument("--models", nargs="+", default=d.models, help=f"baselines on NSMC (default: {' '.join(d.models)})")
    p.add_argument("--scale-models", nargs="+", default=d.scale_models, help="models of the scale experiment")
    p.add_argument("--kmhas-models", nargs="+", default=d.kmhas_models, help="models of the K-MHaS experiment")
    p.add_argument("--scales", nargs="+", type=int, default=d.scales, help="multiples of --train-size (default 1-5)")
    for name in ("train_size", "val_size", "test_size", "split_seed", "seed", "epochs", "kmhas_epochs", "batch_size",
                 "max_length", "num_workers", "max_points"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=f"default: {getattr(d, name)}")
    p.add_argument("--max-steps", type=int, default=None, help="at most this many optimizer steps per neural run")
    p.add_argument("--kmhas-negative-fraction", type=float, default=d.kmhas_negative_fraction,
                   help=f"share of hate texts after resampling (default {d.kmhas_negative_fraction})")
    p.add_argument("--lr", nargs="+", type=_lr, default=[], metavar="MODEL=LR",
                   help="learning rate per model (defaults: e5 5e-5, rnn/birnn 2e-3, tiny 3e-3)")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--use-gpu", action="store_true", help="a GPU (or --gpus-per-worker of one) per Ray Train worker")
    p.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker,
                   help="GPU share per worker with --use-gpu: 0.25 runs four jobs' workers on one GPU at once "
                        f"(default {d.gpus_per_worker:g})")
    p.add_argument("--embeddings", nargs="*", default=None, metavar="MODEL",
                   help="models whose NSMC test embeddings get PCA / t-SNE views (default: the transformer models)")
    p.add_argument("--storage-path", default=d.storage_path, help=f"run folders go to <this>/<name> (default {d.storage_path})")
    p.add_argument("--name", default=None, help="run name (default: paper-<time>)")
    p.add_argument("--results-md", default="docs/RESULTS.md", help="the results document (default docs/RESULTS.md)")
    p.add_argument("--figures-dir", default=None, help="its figures (default: <results-md folder>/paper)")
    p.add_argument("--tracking", default=None,
                   help="MLflow tracking URI, or 'off' (default: $MLFLOW_TRACKING_URI, else <storage-path>/mlruns)")
    return p


def _in_submitted_job() -> bool:
    """True when `ray job submit` started this process (its working dir is a temporary copy)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def _keep(path: str, what: str, fallback: Path) -> str:
    """A relative path inside a submitted job would land in the job's temporary working-dir copy and vanish."""
    if Path(path).expanduser().is_absolute() or not _in_submitted_job():
        return path
    print(f"[paper] relative {what} '{path}' inside a submitted job: using {fallback} (pass an absolute path)", flush=True)
    return str(fallback)


def main(argv: list[str] | None = None) -> int:
    from kosent import tracking
    from kosent.config import cache_home
    from kosent.data import DataError
    from kosent.models import ModelError
    from kosent.paper import PaperConfig, PaperError, run_paper
    from kosent.paper_report import write_results
    from kosent.ray_train import TrainSetupError, connect

    args = build_parser().parse_args(argv)
    command = "python ray_jobs/paper.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    name = args.name or f"paper-{time.strftime('%Y%m%d-%H%M%S')}"
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PaperConfig) if hasattr(args, f.name)}
    values.update(lrs=dict(args.lr), name=name,
                  storage_path=_keep(args.storage_path, "--storage-path", cache_home() / "runs" / "paper"))
    results_md = _keep(args.results_md, "--results-md", cache_home() / "paper" / name / "RESULTS.md")
    figures_dir = _keep(args.figures_dir, "--figures-dir", Path(results_md).parent / "paper") if args.figures_dir else None
    try:
        # Tracking: one store for the whole job (the scale sweeps log there too), a parent run for the job and
        # a run per trained model nested in it (kosent.tracking.track_records).
        uri = tracking.tracking_uri(args.tracking, values["storage_path"])
        values["tracking"] = uri or tracking.OFF
        pcfg = PaperConfig(**values)
        pcfg.validate()
        connect(args.address)
        run = tracking.start_run(uri or tracking.OFF, pcfg.storage_path, kind="paper", name=name,
                                 params=tracking.config_params(dataclasses.asdict(pcfg)), tags={"kosent.command": command})
        with tracking.tracked(run, finish=False):
            result = run_paper(pcfg, Path(pcfg.storage_path) / name)
    except (PaperError, DataError, ModelError, TrainSetupError, FileNotFoundError, ValueError) as e:
        print(f"ray_jobs/paper.py: error: {e}", file=sys.stderr)
        return 2
    with tracking.tracked(run):
        md, figs = write_results(result, results_md, command, figures_dir)
        if run is not None:
            tracking.safely("log the paper's runs", tracking.track_records, run, result.records)
            tracking.safely("log the results document", run.log_artifact, md)
            tracking.safely("log the figures", run.log_artifact, figs["results_json"].parent, "figures")
    print(f"[paper] wrote {md} and {len(figs)} figure file(s) in {figs['results_json'].parent}", flush=True)
    print(f"[paper] {len(result.records)} run(s), {len(result.failed)} failed, {result.seconds:.0f}s in all", flush=True)
    for r in result.failed:
        print(f"[paper] failed: {r.key}: {r.error}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
