"""One GPU worker fine-tuning e5-small on NSMC with mixed precision: speed, peak GPU memory, accuracy.

    python bench/bench_gpu.py                   # e5-small, 10,000 train / 1,000 validation reviews, 1 epoch,
                                                # batch 32 x <=128 tokens: a few minutes on one modern GPU
    python bench/bench_gpu.py --no-ray          # the same loop in this process (kosent.train.fit_local)
    python bench/bench_gpu.py --allow-cpu --model tiny --max-steps 5     # CPU smoke run (what the tests run)

It runs ``kosent.train.train_loop`` in one Ray Train worker holding one GPU (``TrainConfig(use_gpu=True)``;
the loop autocasts to bf16 on GPUs that have it, else fp16), or in this process when Ray is not installed
(or with ``--no-ray``): the training code is the same either way. It prints training throughput (samples/s
over the training steps, and the steady state from the median step), peak GPU memory
(``torch.cuda.max_memory_allocated`` in the training process), validation accuracy and macro F1, and the
wall time against a 10-minute budget; ``--json`` writes the same figures to a file.

Joining a cluster (``--address``, or ``$RAY_ADDRESS`` inside ``ray job submit``) the GPU may be on another
node: the driver then only needs the cluster to have one, and the run goes to ``--storage-path`` (default
``$KOSENT_STORAGE/bench`` when set, as on the cluster of cluster.yaml; else a temporary local folder, which
only works on one machine). The run folder is deleted at the end. Without a CUDA GPU (here, or in the cluster it
joins) it stops with exit status 2 and says so, unless ``--allow-cpu``: then it trains on the CPU with
small defaults (256 train / 128 validation reviews, batch 16 x <=64 tokens) as a smoke test of the same
path. Needs the NSMC file (``--path``, or ``$KOSENT_DATA/nsmc/ratings_train.txt``) and the model
(``kosent pull --full`` builds e5-small offline).
"""

from __future__ import annotations

import os
import sys

# Before Ray is imported: a cluster this script starts stays on loopback and reports nothing.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BUDGET_S = 600.0
GPU_DEFAULTS = {"train_size": 10_000, "val_size": 1_000, "test_size": 5_000, "batch_size": 32, "max_length": 128}
CPU_DEFAULTS = {"train_size": 256, "val_size": 128, "test_size": 128, "batch_size": 16, "max_length": 64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/bench_gpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="e5-small", help="model alias, folder or hub id (default e5-small)")
    p.add_argument("--path", help="the NSMC ratings_train.txt (default: $KOSENT_DATA/nsmc/ratings_train.txt)")
    for name, kind in (("train_size", int), ("val_size", int), ("test_size", int), ("batch_size", int),
                       ("max_length", int)):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"default {GPU_DEFAULTS[name]} on a GPU, {CPU_DEFAULTS[name]} with --allow-cpu")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many training steps")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs of the Ray Train worker")
    p.add_argument("--storage-path", default=None,
                   help="where the run's checkpoint goes (a URI on a multi-node cluster; default "
                        "$KOSENT_STORAGE/bench if set, else a temporary folder); deleted at the end")
    p.add_argument("--no-ray", action="store_true", help="train in this process even if Ray is installed")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default $RAY_ADDRESS; none: a local one on 127.0.0.1)")
    p.add_argument("--allow-cpu", action="store_true", help="without a CUDA GPU, run a small CPU smoke test")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-time budget to report against")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p


def _gpu_info() -> dict[str, Any]:
    """What the training process ran on (called where the model trains)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "autocast": "none (CPU: full precision)", "peak_gpu_memory_bytes": None}
    return {
        "device": torch.cuda.get_device_name(),
        "autocast": "bf16" if torch.cuda.is_bf16_supported() else "fp16",
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated()),
    }


def _ray_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: kosent's own per-worker function, then the peak memory of this process, written
    beside the run's checkpoints (the storage every node reaches)."""
    import ray.train
    import torch

    from kosent.ray_train import train_loop_per_worker
    from kosent.storage import write_text

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_loop_per_worker(config)
    if ray.train.get_context().get_world_rank() == 0:
        write_text(config["bench_out"], json.dumps(_gpu_info()))


def _history_of(checkpoint: Any) -> list[dict[str, float]]:
    """Every epoch's metrics, from the checkpoint's training state (as ``kosent.ray_train.fit`` reads it)."""
    from kosent.checkpoint import STATE_DIR

    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_DIR}/state.json") as f:
        return json.loads(f.read().decode("utf-8"))["progress"]["history"]


def _remove(location: str) -> None:
    """Delete the bench's run folder, local or in object storage."""
    import pyarrow.fs

    from kosent.storage import is_uri

    if not is_uri(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        fs.delete_dir(path)
    except OSError as e:
        print(f"[bench_gpu] warning: could not delete {location}: {e}", file=sys.stderr)


def run_with_ray(cfg: Any, splits: Any) -> tuple[list[dict], dict, str]:
    """In one Ray Train worker; joins the cluster already connected, else starts a local one on 127.0.0.1."""
    import ray
    from ray.train.torch import TorchTrainer

    from kosent.ray_train import build_trainer, check_resources, resolve_model
    from kosent.storage import exists, read_text

    resolve_model(cfg.model)  # builds the offline model folder here, before the worker starts
    if not ray.is_initialized():
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)
    try:
        check_resources(cfg)
        base = build_trainer(cfg, splits)
        info_file = f"{cfg.storage_path}/{cfg.name}/gpu-info.json"
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=dict(base.train_loop_config) | {"bench_out": info_file},
            datasets=base.datasets,
            dataset_config=base.data_config,
            scaling_config=base.scaling_config,
            run_config=base.run_config,
        )
        result = trainer.fit()
        history = _history_of(result.checkpoint)
        info = json.loads(read_text(info_file)) if exists(info_file) else {}
        workers = f"Ray Train, 1 worker x {cfg.cpus_per_worker:g} CPU{' + 1 GPU' if cfg.use_gpu else ''}"
        return history, info, workers
    finally:
        ray.shutdown()


def run_in_process(cfg: Any, splits: Any, out_dir: Path) -> tuple[list[dict], dict, str]:
    import torch

    from kosent.train import fit_local

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = fit_local(cfg, splits, out_dir=out_dir / "local")
    return result.history, _gpu_info(), "this process (kosent.train.fit_local)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    use_ray = not args.no_ray
    if use_ray:
        try:
            import ray
        except ImportError:
            print("[bench_gpu] ray is not installed: training in this process with kosent.train.fit_local "
                  "(the same loop)", flush=True)
            use_ray = False
    cuda = torch.cuda.is_available()
    where_gpu = "here"
    if use_ray and args.address and not cuda:  # a cluster's GPU may be on another node than this driver
        ray.init(address=args.address, log_to_driver=True)
        cuda, where_gpu = ray.cluster_resources().get("GPU", 0) >= 1, "here or in the Ray cluster"
    if not cuda and not args.allow_cpu:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"bench/bench_gpu.py: no CUDA GPU is available {where_gpu} (torch {torch.__version__}, {build}). "
              "This benchmark fine-tunes on one GPU with bf16 autocast: run it on a GPU node (docs/OPERATIONS.md, "
              "'GPU benchmark'), or pass --allow-cpu for a small CPU smoke run of the same code.", file=sys.stderr)
        return 2
    if use_ray and args.address and not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)

    from kosent.config import DataConfig, TrainConfig
    from kosent.data import make_splits
    from kosent.storage import absolute

    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v
             for k, v in (GPU_DEFAULTS if cuda else CPU_DEFAULTS).items()}
    data = DataConfig(path=args.path, train_size=sizes["train_size"], val_size=sizes["val_size"],
                      test_size=sizes["test_size"])
    out_dir = Path(tempfile.mkdtemp(prefix="kosent-bench-gpu-"))
    storage = args.storage_path or (f"{os.environ['KOSENT_STORAGE']}/bench" if os.environ.get("KOSENT_STORAGE")
                                    else str(out_dir / "runs"))
    storage = absolute(storage)  # the driver and the worker must agree on it
    cfg = TrainConfig(
        model=args.model, epochs=args.epochs, lr=args.lr, batch_size=sizes["batch_size"],
        max_length=sizes["max_length"], max_steps=args.max_steps, use_gpu=cuda, num_workers=1,
        cpus_per_worker=args.cpus_per_worker, keep_checkpoints=1, storage_path=storage,
        name=f"bench-gpu-{uuid.uuid4().hex[:6]}", data=data,
    )
    t0 = time.perf_counter()
    try:
        splits = make_splits(data)
        print(f"[bench_gpu] {len(splits.train)} train / {len(splits.validation)} validation reviews; "
              f"{'Ray Train' if use_ray else 'in-process'} on {'the GPU' if cuda else 'the CPU (--allow-cpu)'}",
              flush=True)
        run = run_with_ray(cfg, splits) if use_ray else run_in_process(cfg, splits, out_dir)
        history, info, where = run
    finally:
        wall = time.perf_counter() - t0
        if use_ray:
            _remove(f"{storage.rstrip('/')}/{cfg.name}")
        shutil.rmtree(out_dir, ignore_errors=True)
    last = history[-1]
    best = max(history, key=lambda h: h["val_macro_f1"])
    median_step = last.get("median_step_seconds")
    peak = info.get("peak_gpu_memory_bytes")
    figures = {
        "bench": "gpu", "model": cfg.model, "where": where, "device": info.get("device"),
        "autocast": info.get("autocast"), "train_rows": len(splits.train), "val_rows": len(splits.validation),
        "epochs": int(last["epoch"]), "steps": int(last["step"]), "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "samples_per_second": round(float(last["samples_per_second"]), 1),
        "steady_samples_per_second": round(cfg.batch_size / median_step, 1) if median_step else None,
        "peak_gpu_memory_mib": round(peak / 2**20, 1) if peak is not None else None,
        "val_accuracy": round(float(best["val_accuracy"]), 4), "val_macro_f1": round(float(best["val_macro_f1"]), 4),
        "best_epoch": int(best["epoch"]), "wall_seconds": round(wall, 1), "budget_seconds": args.budget_s,
        "within_budget": wall <= args.budget_s, "torch": torch.__version__, "cuda": torch.version.cuda,
        # every epoch's rate: the first carries CUDA's start-up and kernel compilation, so comparisons of two
        # loops (bench/gpu_ray.py) read the epochs after it too
        "history": [{k: h.get(k) for k in ("epoch", "epoch_seconds", "samples_per_second", "median_step_seconds")}
                    for h in history],
    }
    peak_text = f"{figures['peak_gpu_memory_mib']:,.0f} MiB" if peak is not None else "n/a (no GPU)"
    steady = figures["steady_samples_per_second"]
    print(f"""
[bench_gpu] {where}; device {figures['device']}, autocast {figures['autocast']}
  model {cfg.model}: {figures['train_rows']:,} train reviews x {figures['epochs']} epoch(s), {figures['steps']} steps of
  batch {cfg.batch_size} x <={cfg.max_length} tokens; validation on {figures['val_rows']:,} reviews
  samples/s, training steps        {figures['samples_per_second']:,.1f}
  samples/s, steady (median step)  {f'{steady:,.1f}' if steady else 'n/a'}
  peak GPU memory (allocated)      {peak_text}
  val accuracy / macro F1          {figures['val_accuracy']:.4f} / {figures['val_macro_f1']:.4f} (epoch {figures['best_epoch']})
  wall time                        {wall:.0f} s (budget {args.budget_s:.0f} s{'' if figures['within_budget'] else ': OVER'})
""", flush=True)
    print(json.dumps(figures), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    if not figures["within_budget"]:
        print(f"[bench_gpu] warning: {wall:.0f}s is over the {args.budget_s:.0f}s budget; lower --train-size "
              "or --max-length", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
