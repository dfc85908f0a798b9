"""The paper's experiments in one Ray job: baselines, data scaling and news comments, then docs/RESULTS.md.

On this machine alone (starts a local cluster on 127.0.0.1, dashboard on), a reduced CPU version (9 min
on 2 busy cores; it wrote the current docs/RESULTS.md):

    python ray_jobs/paper.py --train-size 1000 --val-size 200 --test-size 1000 --epochs 1 --kmhas-epochs 1 \\
        --batch-size 32 --max-length 64 --models tfidf rnn birnn e5-small-ko --scale-models tfidf rnn \\
        --scales 1 2 3 --kmhas-models tfidf e5-small-ko --lrs e5-small-ko=1e-4 --max-points 1000 --name paper-reduced

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
import _env  # first: loopback cluster, no usage stats, kosent importable (see _env.py)

# isort: split

import argparse
import dataclasses
import shlex
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from kosent.config import add_config_args, reject_renamed
    from kosent.paper import PaperConfig

    p = argparse.ArgumentParser(prog="ray_jobs/paper.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default: $RAY_ADDRESS; none: start a local cluster on 127.0.0.1)")
    p.add_argument("--results-md", default="docs/RESULTS.md", help="the results document (default docs/RESULTS.md)")
    p.add_argument("--figures-dir", default=None, help="its figures (default: <results-md folder>/paper)")
    add_config_args(p, PaperConfig)
    reject_renamed(p, {"--lr": "--lrs MODEL=LR"})
    _env.add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from kosent import tracking
    from kosent.config import cache_home, config_from_args
    from kosent.data import DataError
    from kosent.models import ModelError
    from kosent.paper import PaperConfig, PaperError, run_paper
    from kosent.paper_report import write_results
    from kosent.ray_train import TrainSetupError, connect

    args = _env.parse_args(build_parser(), argv)
    command = "python ray_jobs/paper.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    name = getattr(args, "name", None) or f"paper-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    values = dataclasses.asdict(config_from_args(args, PaperConfig, yaml_path=""))
    storage = _env.durable_path(values["storage_path"], "--storage-path", cache_home() / "runs" / "paper")
    values.update(name=name, storage_path=storage)
    results_md = _env.durable_path(args.results_md, "--results-md", cache_home() / "paper" / name / "RESULTS.md")
    figures_dir = (_env.durable_path(args.figures_dir, "--figures-dir", Path(results_md).parent / "paper")
                   if args.figures_dir else None)
    try:
        # Tracking: one store for the whole job (the scale sweeps log there too), a parent run for the job and
        # a run per trained model nested in it (kosent.tracking.track_records).
        uri = tracking.tracking_uri(values["tracking"], values["storage_path"])
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
    _env.log.info(f"wrote {md} and {len(figs)} figure file(s) in {figs['results_json'].parent}")
    _env.log.info(f"{len(result.records)} run(s), {len(result.failed)} failed, {result.seconds:.0f}s in all")
    for r in result.failed:
        _env.log.error(f"failed: {r.key}: {r.error}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
