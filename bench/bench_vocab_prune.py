"""Full vs vocabulary-pruned multilingual-e5-small, side by side, in one run.

    python bench/bench_vocab_prune.py [--threads 2] [--warmup 3] [--steps 5]

Builds (or finds in $KOSENT_HOME/models) both folders with ``kosent.models.e5_offline.pull``. Each
model is then measured in its own fresh subprocess, so its peak RSS is its own: parameter count,
safetensors size, memory of parameters + gradients + AdamW state, peak RSS, the median time of a
forward+backward+AdamW step on a batch of 16 real NSMC reviews x 64 tokens, and the median eval
forward time on the same batch. Last, all 150,000 NSMC training reviews are tokenized with both
folders' AutoTokenizer and the token strings compared. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def nsmc_rows() -> list[tuple[str, int]]:
    from kosent.config import data_home

    path = data_home() / "nsmc" / "ratings_train.txt"
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [(r[1], int(r[2])) for r in rows]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(folder: str, threads: int, warmup: int, steps: int, batch_size: int, seq_len: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss_start = rss_mib()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    rss_loaded = rss_mib()

    sample = random.Random(0).sample([r for r in nsmc_rows() if r[0].strip()], batch_size)
    batch = tok([t for t, _ in sample], padding="max_length", truncation=True, max_length=seq_len,
                return_tensors="pt")
    labels = torch.tensor([y for _, y in sample])

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    times, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=False)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    train_s, train_cpu = statistics.median(times), statistics.median(cpu)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state_bytes = sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
    )

    model.eval()
    times, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            model(**batch)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for n, p in model.named_parameters() if n.startswith("bert.")),
        "train_mem_mib": (param_bytes + grad_bytes + state_bytes) / 2**20,
        "rss_start_mib": rss_start,
        "rss_loaded_mib": rss_loaded,
        "rss_peak_mib": rss_mib(),
        "train_step_s": train_s,
        "train_step_cpu_s": train_cpu,
        "eval_forward_s": statistics.median(times),
        "eval_forward_cpu_s": statistics.median(cpu),
        "batch_shape": list(batch["input_ids"].shape),
        "loss": float(loss),
    }


def tokenization_identity(full: Path, pruned: Path) -> dict:
    from transformers import AutoTokenizer

    texts = [t for t, _ in nsmc_rows()]
    out = {"documents": len(texts)}
    tokens = []
    for key, folder in (("full", full), ("pruned", pruned)):
        tok = AutoTokenizer.from_pretrained(str(folder))
        t0 = time.perf_counter()
        ids = tok(texts)["input_ids"]
        out[f"tokenize_{key}_s"] = time.perf_counter() - t0
        tokens.append([tok.convert_ids_to_tokens(x) for x in ids])
        out[f"tokens_{key}"] = sum(len(x) for x in ids)
    differing = [i for i, (a, b) in enumerate(zip(*tokens, strict=True)) if a != b]
    out["differing"] = len(differing)
    out["examples"] = [texts[i] for i in differing[:5]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.child, args.threads, args.warmup, args.steps, args.batch_size, args.seq_len)
        print("RESULT " + json.dumps(res))
        return

    from kosent.models import e5_offline

    t0 = time.perf_counter()
    full = e5_offline.pull(prune=False)
    pruned = e5_offline.pull(prune=True)
    pull_s = time.perf_counter() - t0
    print(f"folders ready in {pull_s:.1f} s: {full}  {pruned}", flush=True)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    results = {}
    for key, folder in (("full", full), ("pruned", pruned)):
        print(f"measuring {key} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--threads", str(args.threads),
             "--warmup", str(args.warmup), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--seq-len", str(args.seq_len)],
            capture_output=True, text=True, env=env, check=False,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{key} failed:\n{proc.stderr[-3000:]}")
        results[key] = json.loads(line[len("RESULT "):])
        results[key]["safetensors_mib"] = (folder / "model.safetensors").stat().st_size / 2**20
        results[key]["vocab"] = json.loads((folder / "config.json").read_text())["vocab_size"]

    print("tokenizing all NSMC training reviews with both tokenizers ...", flush=True)
    ident = tokenization_identity(full, pruned)

    f, p = results["full"], results["pruned"]
    rows = [
        ("vocabulary (embedding rows)", f"{f['vocab']:,}", f"{p['vocab']:,}", "{:.2f}x"),
        ("parameters (with cls head)", f"{f['params'] / 1e6:.1f}M", f"{p['params'] / 1e6:.1f}M", "{:.2f}x"),
        ("model.safetensors (fp32)", f"{f['safetensors_mib']:.0f} MiB", f"{p['safetensors_mib']:.0f} MiB", "{:.2f}x"),
        ("params+grads+AdamW state", f"{f['train_mem_mib']:.0f} MiB", f"{p['train_mem_mib']:.0f} MiB", "{:.2f}x"),
        ("RSS after load", f"{f['rss_loaded_mib']:.0f} MiB", f"{p['rss_loaded_mib']:.0f} MiB", "{:.2f}x"),
        ("peak RSS (train + eval)", f"{f['rss_peak_mib']:.0f} MiB", f"{p['rss_peak_mib']:.0f} MiB", "{:.2f}x"),
        ("train step fwd+bwd+AdamW", f"{f['train_step_s']:.2f} s", f"{p['train_step_s']:.2f} s", "{:.2f}x"),
        ("  CPU time, all threads", f"{f['train_step_cpu_s']:.2f} s", f"{p['train_step_cpu_s']:.2f} s",
         "{:.2f}x"),
        ("eval forward", f"{f['eval_forward_s']:.3f} s", f"{p['eval_forward_s']:.3f} s", "{:.2f}x"),
        ("  CPU time, all threads", f"{f['eval_forward_cpu_s']:.3f} s", f"{p['eval_forward_cpu_s']:.3f} s",
         "{:.2f}x"),
        ("tokenize 150k NSMC", f"{ident['tokenize_full_s']:.1f} s", f"{ident['tokenize_pruned_s']:.1f} s",
         "{:.2f}x"),
    ]
    ratio_keys = ["vocab", "params", "safetensors_mib", "train_mem_mib", "rss_loaded_mib", "rss_peak_mib",
                  "train_step_s", "train_step_cpu_s", "eval_forward_s", "eval_forward_cpu_s", None]
    print()
    print(f"e5-small (full) vs e5-small-ko (pruned); batch {f['batch_shape'][0]} x {f['batch_shape'][1]} tokens, "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times stretch under load; "
          "CPU times much less)")
    print(f"| {'':28} | {'full':>12} | {'pruned':>12} | {'pruned/full':>11} |")
    print(f"|{'-' * 30}|{'-' * 13}:|{'-' * 13}:|{'-' * 12}:|")
    for (label, a, b, fmt), key in zip(rows, ratio_keys, strict=True):
        ratio = p[key] / f[key] if key else ident["tokenize_pruned_s"] / ident["tokenize_full_s"]
        print(f"| {label:28} | {a:>12} | {b:>12} | {fmt.format(ratio):>11} |")
    print()
    print(f"tokenization identity on all {ident['documents']:,} NSMC training reviews: "
          f"{ident['documents'] - ident['differing']:,} identical, {ident['differing']} differ "
          f"({ident['tokens_full']:,} tokens full, {ident['tokens_pruned']:,} pruned)")
    if ident["examples"]:
        print("  differing examples:", ident["examples"])


if __name__ == "__main__":
    main()
