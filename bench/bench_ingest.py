"""Data at scale: driver memory from 150k to 10M rows, and rows/s from file to tokenized batch in Ray Train workers.

Synthetic corpora are made from NSMC by resampling (each copy of a review gets a round marker, so the texts stay
distinct and the split window has a real pool to choose from); they measure memory and throughput only,
accuracy is never read from them. Everything runs side by side in one invocation:

1. **Driver.** For each corpus (150k, 1M and 10M rows) and the real NSMC file, a fresh process runs
   ``make_splits`` (10,000 train, 1,000 validation, 5,000 test) the streaming way (rows go through the hash
   window, no table) and the previous way (the whole table read first, then split): peak RSS while it runs
   (sampled every 10 ms), RSS after imports, seconds. The same streamed ``make_splits`` over one-line JSON
   arrays of ``--json-rows`` rows (parsed element by element: memory should not follow the file).
2. **Workers.** A local Ray cluster; ``train`` of ``--ingest-rows`` rows (drawn from the first corpus 5x
   larger) reaches 1 and 2 Train workers as Ray Datasets (``get_dataset_shard``); each worker reads its
   shard, tokenizes it (e5-small-ko's tokenizer, <=128 tokens) and builds every length-bucketed batch:
   rows/s and the worker's peak RSS. The same with tokenization in a Ray Data ``map_batches`` actor
   (1 worker: with 2 Train workers holding both CPUs, a Data stage could not be scheduled here).
3. **The model's pace.** Training steps of e5-small-ko (batch 32, <=128 tokens) in this process, so ingest
   rows/s can be set against training samples/s on the same machine (goal: >= 5x).
4. **A worker's memory with a buffer.** One Train worker reads a shard of ``--shard-rows`` rows (smallest and
   largest) as training reads it, whole and ``--buffer-rows`` at a time: its peak RSS should follow the buffer,
   not the shard (goal: flat within 10% from the smallest shard to the largest). With ``--scored-share`` that
   share of each shard is a teacher's scored texts (the unlabelled pool distillation draws, with made-up
   probabilities: only memory and speed are read), mixed into every buffer as distillation mixes them.

    .venv/bin/python bench/bench_ingest.py [--sizes 150000 1000000 10000000] [--ingest-rows 200000] [--json F]
        [--sections driver json workers buffer] [--json-rows 150000 1500000] [--shard-rows 200000 800000]
        [--buffer-rows 50000] [--scored-share 0.5]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local cluster stays on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SPLIT = {"train_size": 10_000, "val_size": 1_000, "test_size": 5_000}
MAX_LENGTH = 128
BATCH_SIZE = 32


def rss_mb() -> float:
    """Current resident memory of this process, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- corpora


def make_corpus(rows: int, path: Path, chunk: int = 1_000_000) -> None:
    """``rows`` NSMC reviews drawn with replacement, ``text`` + `` #<round>`` and ``label``, as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from kosent.config import DataConfig
    from kosent.data import load_table

    nsmc = load_table(DataConfig(source="nsmc"))
    texts = pa.array(nsmc.texts, pa.string())
    labels = np.asarray(nsmc.labels, np.int64)
    rng = np.random.default_rng(0)
    schema = pa.schema([("text", pa.string()), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            idx = rng.integers(0, len(labels), n)
            marker = pa.array([f" #{(start + i) // len(labels)}" for i in range(n)], pa.string())
            text = pc.binary_join_element_wise(texts.take(pa.array(idx)), marker, "")
            writer.write_table(pa.table({"text": text, "label": labels[idx]}, schema=schema), row_group_size=65_536)


def write_json_array(parquet: Path, rows: int, path: Path) -> None:
    """The first ``rows`` rows of a corpus as one JSON array on one line (``json.dump``'s layout)."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet).slice(0, rows)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(table.to_pylist(), f, ensure_ascii=False)


# -------------------------------------------------------------------------------------- 1. driver


def driver_child(source: str, path: str, mode: str, imports: str) -> None:
    """Runs in a fresh process: make_splits one way, then prints one JSON line of figures. ``imports`` "train"
    first imports what a training driver holds (kosent.ray_train: torch, transformers, Ray); "data" only
    kosent.data, so the data path's own growth shows against a small base."""
    if imports == "train":
        import kosent.ray_train  # noqa: F401
    from kosent.config import DataConfig
    from kosent.data import load_table, make_splits

    cfg = DataConfig(source=source, path=path or None, **SPLIT)
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:  # the process's own peak from here on (ru_maxrss would include import spikes)
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    splits = make_splits(cfg) if mode == "stream" else make_splits(cfg, load_table(cfg))
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    dedup = splits.report.dedup
    print(json.dumps({
        "mode": mode, "imports": imports, "rows": splits.report.rows_read, "seconds": seconds, "base_mb": base,
        "peak_mb": max(peak[0], rss_mb()), "pool": dedup["pool"], "exact": dedup["exact"], "sizes": splits.sizes(),
    }))


def run_driver(source: str, path: str, mode: str, imports: str) -> dict:
    cmd = [sys.executable, __file__, "--driver-child", source, path, mode, imports]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- 2. workers


def ingest_loop(config: dict) -> None:
    """A Train worker: one epoch of its shard to tokenized, length-bucketed batches, read as training reads it
    (``RaySession.training_rows``: ``buffer_rows`` at a time) or tokenized earlier by a map_batches stage;
    report rows/s and the worker's peak RSS."""
    import ray.train

    from kosent import batches
    from kosent.config import TrainConfig
    from kosent.data.streaming import read_shard
    from kosent.models import load_tokenizer
    from kosent.ray_train import RaySession, _worker_splits

    tokenizer = load_tokenizer(config["model"])
    payload = config["splits"]
    # Training reads validation whole before its first batch; rows tokenized by map_batches need none.
    splits = None if config["tokenized"] else _worker_splits(payload)
    base = rss_mb()
    t0 = time.perf_counter()
    if config["tokenized"]:  # input_ids came from a map_batches stage
        table = read_shard("train", columns=("input_ids", "label"))
        enc = batches.Encoded(table.column("input_ids").to_pylist(), table.column("label").to_pylist())
        rows = batches.InMemoryRows(enc)
    else:
        cfg = TrainConfig(model=config["model"], max_length=MAX_LENGTH, buffer_rows=config["buffer_rows"],
                          teacher="bench-teacher" if payload["unlabelled_rows"] else None)
        session = RaySession(train_rows=payload["train_rows"], unlabelled_rows=payload["unlabelled_rows"])
        rows = session.training_rows(cfg, splits, tokenizer)
    n_batches = sum(1 for _ in rows.epoch(BATCH_SIZE, tokenizer.pad_token_id, seed=0))
    seconds = time.perf_counter() - t0
    rank = ray.train.get_context().get_world_rank()
    figures = {"rows": len(rows), "seconds": seconds, "batches": n_batches, "peak_mb": peak_rss_mb(), "base_mb": base}
    Path(config["out"], f"rank_{rank}.json").write_text(json.dumps(figures), encoding="utf-8")


class Tokenize:
    """A Ray Data actor: loads the tokenizer once, then tokenizes batch after batch."""

    def __init__(self, model: str):
        from kosent.models import load_tokenizer

        self.tokenizer = load_tokenizer(model)

    def __call__(self, batch: dict) -> dict:
        ids = self.tokenizer(list(batch["text"]), truncation=True, max_length=MAX_LENGTH, padding=False)["input_ids"]
        return {"input_ids": ids, "label": batch["label"]}


def run_workers(splits, workers: int, model: str, map_batches: bool, storage: str, buffer_rows: int | None = None) -> dict:
    """Ingest in ``workers`` Train workers; ``buffer_rows`` None: the whole shard in one buffer."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kosent.data import streaming
    from kosent.ray_train import _splits_payload

    datasets = streaming.to_ray_datasets(splits)
    if map_batches:  # one tokenizer actor on the CPU the single Train worker leaves free
        datasets["train"] = datasets["train"].map_batches(
            Tokenize, fn_constructor_args=(model,), batch_size=4096, batch_format="numpy", concurrency=1, num_cpus=1
        )
    out = tempfile.mkdtemp(prefix="ingest-", dir=storage)
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        ingest_loop,
        train_loop_config={"model": model, "tokenized": map_batches, "out": out,
                           "splits": _splits_payload(splits, list(datasets)),
                           "buffer_rows": buffer_rows or len(splits.train) + len(splits.unlabelled)},
        datasets=datasets,
        dataset_config=streaming.data_config(list(datasets)),
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"ingest-{workers}-{int(map_batches)}-{buffer_rows}", storage_path=storage),
    )
    trainer.fit()
    wall = time.perf_counter() - t0
    ranks = [json.loads((Path(out) / f"rank_{r}.json").read_text(encoding="utf-8")) for r in range(workers)]
    seconds = max(r["seconds"] for r in ranks)  # the slowest worker sets the pace of a synchronous step
    return {"workers": workers, "map_batches": map_batches, "rows_per_worker": ranks[0]["rows"], "seconds": seconds,
            "rows_per_s": sum(r["rows"] for r in ranks) / seconds,
            "worker_peak_mb": max(r["peak_mb"] for r in ranks), "worker_base_mb": max(r["base_mb"] for r in ranks),
            "buffer_rows": buffer_rows, "scored_rows_per_worker": len(splits.unlabelled) // workers, "wall_s": wall}


def shard_splits(source: str, rows: int, scored_share: float):
    """Splits whose training rows are ``rows`` in all: labelled, and with ``scored_share`` > 0 that share of them
    unlabelled texts of the source (``unlabelled_pool``, as distillation draws them) with made-up probabilities."""
    import dataclasses

    import numpy as np

    from kosent.config import DataConfig
    from kosent.data import make_splits, unlabelled_pool

    scored = round(rows * scored_share)
    data = DataConfig(source=source, train_size=rows - scored, val_size=1_000, test_size=1_000)
    splits = make_splits(data)
    if not scored:
        return splits
    excluded = set(splits.train["text"]) | set(splits.validation["text"]) | set(splits.test["text"])
    texts = unlabelled_pool(data, excluded, seed=0, limit=scored).finish()
    probs = np.random.default_rng(0).dirichlet([1.0, 1.0], len(texts)).astype(np.float32)
    return dataclasses.replace(splits, unlabelled=texts, unlabelled_probs=probs)


# ---------------------------------------------------------------------------------- 3. model pace


def training_samples_per_s(model_name: str, steps: int = 4) -> float:
    """Median e5-small-ko training step (forward, backward, AdamW) on a typical length-bucketed batch."""
    import torch

    from bench.bench_batches import step_time
    from kosent import batches
    from kosent.config import DataConfig
    from kosent.data import make_splits
    from kosent.models import load_model_and_tokenizer

    splits = make_splits(DataConfig(source="nsmc", train_size=2_000, val_size=100, test_size=100))
    model, tokenizer = load_model_and_tokenizer(model_name, splits.label_names)
    enc = batches.encode(tokenizer, splits.train["text"], splits.train["label"], MAX_LENGTH)
    order = batches.batch_indices([len(x) for x in enc.input_ids], BATCH_SIZE, shuffle=True, seed=0)
    typical = sorted(order, key=lambda b: max(len(enc.input_ids[i]) for i in b))[len(order) // 2]
    batch = batches.collate(enc, typical, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    return BATCH_SIZE / step_time(model, batch, optimizer, steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[150_000, 1_000_000, 10_000_000], help="corpus rows")
    p.add_argument("--ingest-rows", type=int, default=200_000, help="train rows fed to the Train workers")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="e5-small-ko")
    p.add_argument("--sections", nargs="+", choices=["driver", "json", "workers", "buffer"],
                   default=["driver", "json", "workers", "buffer"], help="which parts to run (default: all)")
    p.add_argument("--json-rows", type=int, nargs="+", default=[150_000, 1_500_000],
                   help="json section: rows of the one-line JSON arrays, smallest and largest")
    p.add_argument("--shard-rows", type=int, nargs="+", default=[200_000, 800_000],
                   help="buffer section: train rows of the one worker's shard, smallest and largest")
    p.add_argument("--buffer-rows", type=int, default=50_000, help="buffer section: the worker's buffer")
    p.add_argument("--scored-share", type=float, default=0.0,
                   help="buffer section: the share of each shard that is a teacher's scored texts (0: none)")
    p.add_argument("--skip-table", type=int, default=None,
                   help="leave the read-whole-table path out for corpora larger than this")
    p.add_argument("--work-dir", help="where corpora are written (default: a temporary folder, removed)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--driver-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.driver_child:
        driver_child(*args.driver_child)
        return 0

    import shutil

    from kosent.config import DataConfig
    from kosent.data import make_splits

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kosent-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = [("NSMC file", "nsmc", "", 150_000)]
    for n in args.sizes:
        path = work / f"nsmc-resampled-{n}.parquet"
        if not path.is_file():
            t0 = time.perf_counter()
            make_corpus(n, path)
            print(f"[bench] wrote {path.name}: {path.stat().st_size / 2**20:.0f} MB in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        corpora.append((f"{n:,} rows", str(path), "", n))

    figures: dict = {"driver": [], "json": [], "workers": [], "buffer": []}
    for label, source, path, n in corpora if "driver" in args.sections else []:
        for mode, imports in (("stream", "data"), ("stream", "train"), ("table", "data")):
            if mode == "table" and args.skip_table is not None and n > args.skip_table:
                continue
            row = run_driver(source, path, mode, imports) | {"corpus": label}
            figures["driver"].append(row)
            print(f"[bench] driver {label} {mode} ({imports} imports): peak {row['peak_mb']:.0f} MB, "
                  f"{row['seconds']:.1f} s", flush=True)

    for n in args.json_rows if "json" in args.sections else []:  # one line, as json.dump writes it
        path = work / f"nsmc-resampled-{n}.json"
        if not path.is_file():
            write_json_array(Path(next(c[1] for c in corpora if c[1].endswith(".parquet") and c[3] >= n)), n, path)
        row = run_driver(str(path), "", "stream", "data") | {"corpus": f"{n:,} rows, one-line JSON array",
                                                               "mb": path.stat().st_size / 2**20}
        figures["json"].append(row)
        print(f"[bench] json {n:,}: peak {row['peak_mb']:.0f} MB, {row['seconds']:.1f} s", flush=True)

    from kosent.ray_train import connect

    def corpus_of(at_least: int) -> str:
        rows = next((n for n in sorted(args.sizes) if n >= at_least), max(args.sizes))
        return str(work / f"nsmc-resampled-{rows}.parquet")

    if {"workers", "buffer"} & set(args.sections):
        connect()
    storage = tempfile.mkdtemp(prefix="kosent-ingest-runs-")
    pace = None
    if "workers" in args.sections:
        pace = figures["training_samples_per_s"] = training_samples_per_s(args.model)
        print(f"[bench] {args.model} training: {pace:.1f} samples/s", flush=True)
        splits = make_splits(DataConfig(source=corpus_of(5 * args.ingest_rows), train_size=args.ingest_rows,
                                        val_size=1_000, test_size=1_000))
        for workers in args.workers:
            figures["workers"].append(run_workers(splits, workers, args.model, False, storage))
            print(f"[bench] workers {figures['workers'][-1]}", flush=True)
        figures["workers"].append(run_workers(splits, 1, args.model, True, storage))
        print(f"[bench] workers {figures['workers'][-1]}", flush=True)
    if "buffer" in args.sections:  # one worker, its shard whole vs through the buffer, at two shard sizes
        for n in args.shard_rows:
            splits = shard_splits(corpus_of(2 * n), n, args.scored_share)
            for buffer in (None, args.buffer_rows):
                figures["buffer"].append(run_workers(splits, 1, args.model, False, storage, buffer) | {"shard_rows": n})
                print(f"[bench] buffer {figures['buffer'][-1]}", flush=True)
    shutil.rmtree(storage, ignore_errors=True)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)

    if figures["driver"]:
        print()
        print(f"make_splits ({SPLIT['train_size']:,} / {SPLIT['val_size']:,} / {SPLIT['test_size']:,}), one fresh "
              "process each: streamed through the hash window vs the whole table read first")
        print("| corpus | rows | path | process | peak RSS MB | after imports MB | seconds | pool |")
        print("|---|---|---|---|---|---|---|---|")
        for r in figures["driver"]:
            pool = f"{r['pool']:,}" + ("" if r["exact"] else " (est.)")
            process = "training driver" if r["imports"] == "train" else "kosent.data only"
            print(f"| {r['corpus']} | {r['rows']:,} | {r['mode']} | {process} | {r['peak_mb']:.0f} | "
                  f"{r['base_mb']:.0f} | {r['seconds']:.1f} | {pool} |")
        for imports in ("data", "train"):
            stream = [r["peak_mb"] for r in figures["driver"]
                      if r["mode"] == "stream" and r["imports"] == imports and r["corpus"] != "NSMC file"]
            figures[f"stream_peak_ratio_{imports}"] = max(stream) / min(stream)
            print(f"streamed peak RSS over the Parquet corpora ({imports} imports), highest / lowest: "
                  f"{max(stream) / min(stream):.3f}x, +{max(stream) - min(stream):.0f} MB (goal: within 1.10x)")
    if figures["json"]:
        print()
        print("make_splits over a JSON array written on one line (streamed element by element), one fresh process each")
        print("| corpus | file MB | peak RSS MB | after imports MB | seconds |")
        print("|---|---|---|---|---|")
        for r in figures["json"]:
            print(f"| {r['corpus']} | {r['mb']:.0f} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | {r['seconds']:.1f} |")
        peaks = [r["peak_mb"] for r in figures["json"]]
        figures["json_peak_ratio"] = max(peaks) / min(peaks)
        print(f"peak RSS, largest / smallest: {max(peaks) / min(peaks):.3f}x (goal: within 1.10x)")
    if figures["workers"]:
        print()
        print(f"Ray Train ingest of {args.ingest_rows:,} train rows (file -> Ray Dataset shard -> tokenized, "
              f"length-bucketed batches of {BATCH_SIZE}); {args.model} trains at {pace:.1f} samples/s here")
        print("| workers | tokenized in | rows per worker | seconds | rows/s (all workers) | x training pace | "
              "worker peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for r in figures["workers"]:
            where = "Ray Data map_batches" if r["map_batches"] else "the worker"
            print(f"| {r['workers']} | {where} | {r['rows_per_worker']:,} | {r['seconds']:.1f} | "
                  f"{r['rows_per_s']:,.0f} | {r['rows_per_s'] / pace:.0f}x | {r['worker_peak_mb']:.0f} |")
    if figures["buffer"]:
        print()
        scored = f", {args.scored_share:.0%} of it a teacher's scored texts" if args.scored_share else ""
        print(f"One Train worker's memory: its shard{scored} read whole vs {args.buffer_rows:,} rows at a time "
              "(buffer_rows), one epoch to tokenized batches")
        print("| shard rows | buffer | worker peak RSS MB | above its base MB | seconds | rows/s |")
        print("|---|---|---|---|---|---|")
        for r in figures["buffer"]:
            buffer = f"{r['buffer_rows']:,}" if r["buffer_rows"] else "whole shard"
            print(f"| {r['shard_rows']:,} | {buffer} | {r['worker_peak_mb']:.0f} | "
                  f"{r['worker_peak_mb'] - r['worker_base_mb']:.0f} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} |")
        for mode, buffer in (("whole shard", None), ("buffered", args.buffer_rows)):
            peaks = [r["worker_peak_mb"] for r in figures["buffer"] if r["buffer_rows"] == buffer]
            figures[f"worker_peak_ratio_{mode.replace(' ', '_')}"] = max(peaks) / min(peaks)
            print(f"{mode}: worker peak RSS, largest shard / smallest ({max(args.shard_rows) / min(args.shard_rows):.0f}x"
                  f" the rows): {max(peaks) / min(peaks):.2f}x (goal for buffered: flat, within 1.10x)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
