"""Input pipeline vs model: is tokenization a bottleneck, and what does dynamic padding save?

Side by side in one run on the real NSMC file:
  1. tokenize + length-bucket + collate all 150k reviews, vs one training step (forward + backward + AdamW);
  2. dynamic padding (length buckets) vs fixed 128-token padding: real tokens per batch, padded tokens
     per batch, and the training-step time for each.

    .venv/bin/python bench/bench_batches.py [--model e5-small-ko] [--batch-size 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kosent import batches
from kosent.config import DataConfig
from kosent.data import load_table
from kosent.models import load_model_and_tokenizer


def step_time(model, batch, optimizer, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if r:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="e5-small-ko")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)

    table = load_table(DataConfig(source="nsmc"))
    model, tokenizer = load_model_and_tokenizer(args.model, table.label_names)
    t0 = time.perf_counter()
    enc = batches.encode(tokenizer, table.texts, table.labels, args.max_length)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_batches = 0
    for _ in batches.iterate(enc, args.batch_size, tokenizer.pad_token_id, shuffle=True, seed=0):
        n_batches += 1
    t_collate = time.perf_counter() - t0

    lengths = [len(x) for x in enc.input_ids]
    order = batches.batch_indices(lengths, args.batch_size, shuffle=True, seed=0)
    real = sum(lengths) / len(order)
    dyn_width = statistics.mean(max(lengths[i] for i in b) for b in order)
    # A typical dynamic batch (median width) vs the same texts padded to max_length.
    typical = sorted(order, key=lambda b: max(lengths[i] for i in b))[len(order) // 2]
    dyn_batch = batches.collate(enc, typical, tokenizer.pad_token_id)
    fixed_batch = batches.collate(enc, typical, tokenizer.pad_token_id, pad_to=args.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    t_dyn = step_time(model, dyn_batch, optimizer, args.steps)
    t_fixed = step_time(model, fixed_batch, optimizer, args.steps)

    print(f"model {args.model}, batch {args.batch_size}, {len(enc)} NSMC reviews, torch threads {torch.get_num_threads()}")
    print("| what | figure |")
    print("|---|---|")
    print(f"| tokenize all reviews | {t_tok:.1f} s ({len(enc) / t_tok:,.0f} texts/s) |")
    print(f"| bucket + collate all {n_batches} batches | {t_collate:.1f} s ({t_collate / n_batches * 1e3:.2f} ms/batch) |")
    print(f"| one training step, dynamic padding (width {dyn_batch['input_ids'].shape[1]}) | {t_dyn * 1e3:.0f} ms |")
    print(f"| one training step, fixed {args.max_length}-token padding | {t_fixed * 1e3:.0f} ms |")
    print(f"| collate cost / dynamic step | {t_collate / n_batches / t_dyn:.2%} |")
    print(f"| real tokens per batch (mean) | {real:.0f} |")
    print(f"| padded tokens per batch: dynamic / fixed | {dyn_width * args.batch_size:.0f} / {args.max_length * args.batch_size} |")
    print(f"| step-time ratio fixed / dynamic | {t_fixed / t_dyn:.2f}x |")


if __name__ == "__main__":
    main()
