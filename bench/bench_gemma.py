"""EmbeddingGemma (``gemma-ko``) against e5-small-ko, side by side in one run: which pooling, and what a
training step costs with parts of the encoder frozen.

    python bench/bench_gemma.py [--threads 2] [--probe-rows 2000] [--steps 4] [--skip-probe] [--skip-steps]

1. Frozen probe. ``--probe-rows`` NSMC training reviews train a logistic regression on frozen sentence
   vectors and as many other reviews score it (seed 0). Each encoder embeds the texts once; the vectors
   are read three ways: the mean over real tokens, the first token (``<bos>`` / ``[CLS]``) and the last real
   token (what ``Gemma3TextForSequenceClassification`` reads). For Gemma, once more with EmbeddingGemma's
   own classification prompt (``task: classification | query: ``) in front of every text.
2. Step cost. Each variant runs in a fresh subprocess (its peak RSS is its own): a forward + backward +
   AdamW step on 16 real reviews x 64 tokens, median of ``--steps`` after two warm-up steps, for the full
   encoder, the embeddings frozen (``--freeze-embeddings``), the embeddings plus the lower half of the
   layers frozen (``--frozen-layers 12``), and LoRA adapters of rank 16 (``--lora-rank 16``) on every layer
   or on the upper half, with e5-small-ko's full step as the yardstick.
Prints tables; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import statistics
import subprocess
import sys
import time

GEMMA_PROMPT = "task: classification | query: "  # from EmbeddingGemma's config_sentence_transformers.json


def nsmc_rows() -> list[tuple[str, int]]:
    from kosent.config import data_home

    with open(data_home() / "nsmc" / "ratings_train.txt", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [(r[1], int(r[2])) for r in rows if r[1].strip()]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embed(folder: str, texts: list[str], threads: int) -> dict[str, object]:
    """Mean, first-token and last-token vectors of ``texts`` from the frozen encoder in ``folder``."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from kosent.models.pooling import masked_mean

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = {k: np.zeros((len(texts), model.config.hidden_size), np.float32) for k in ("mean", "first", "last")}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"]
            last = mask.sum(1) - 1  # right padding: the last real token
            out["mean"][idx] = masked_mean(hidden, mask).numpy()
            out["first"][idx] = hidden[:, 0].numpy()
            out["last"][idx] = hidden[torch.arange(len(idx)), last].numpy()
    out["seconds"] = time.perf_counter() - t0
    return out


def probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean())


def run_probe(args: argparse.Namespace) -> None:
    import numpy as np

    from kosent.models import e5_offline, gemma

    rows = random.Random(0).sample(nsmc_rows(), 2 * args.probe_rows)
    texts = [t for t, _ in rows]
    y = np.array([label for _, label in rows])
    n = args.probe_rows
    encoders = [
        ("e5-small-ko", str(e5_offline.resolve("e5-small-ko")), ""),
        ("gemma-ko", str(gemma.resolve("gemma-ko")), ""),
        ("gemma-ko + prompt", str(gemma.resolve("gemma-ko")), GEMMA_PROMPT),
    ]
    print(f"\nfrozen probe: logistic regression on {n:,} NSMC reviews, accuracy on {n:,} others (seed 0)")
    print("| encoder | mean | first token | last token | texts/s embedded |")
    print("|---|---|---|---|---|")
    for name, folder, prompt in encoders:
        vec = embed(folder, [prompt + t for t in texts], args.threads)
        acc = {k: probe(vec[k][:n], y[:n], vec[k][n:], y[n:]) for k in ("mean", "first", "last")}
        print(f"| {name} | {acc['mean']:.3f} | {acc['first']:.3f} | {acc['last']:.3f} | "
              f"{len(texts) / vec['seconds']:.0f} |", flush=True)


STEP_VARIANTS = {
    "e5-small-ko, full": ("e5-small-ko", {}),
    "gemma-ko, full": ("gemma-ko", {}),
    "gemma-ko, embeddings frozen": ("gemma-ko", {"freeze_embeddings": True}),
    "gemma-ko, embeddings + 12 layers frozen": ("gemma-ko", {"freeze_embeddings": True, "frozen_layers": 12}),
    "gemma-ko, LoRA rank 16, all layers": ("gemma-ko", {"lora_rank": 16}),
    "gemma-ko, LoRA rank 16, 12 layers frozen": ("gemma-ko", {"lora_rank": 16, "frozen_layers": 12}),
}


def step_child(variant: str, threads: int, steps: int) -> dict:
    import torch

    from kosent.config import TrainConfig
    from kosent.models import freeze, load_model_and_tokenizer, lora
    from kosent.train import _optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_name, frozen = STEP_VARIANTS[variant]
    cfg = TrainConfig(model=model_name, pooling="mean", lr=1e-4, **frozen)
    model, tok = load_model_and_tokenizer(cfg.model, ["negative", "positive"], cfg.pooling)
    freeze(model, cfg.freeze_embeddings, cfg.frozen_layers)
    if cfg.lora_rank:
        model = lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.frozen_layers)
    sample = random.Random(0).sample(nsmc_rows(), 16)
    batch = tok([t for t, _ in sample], padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor([label for _, label in sample])
    model.train()
    opt = _optimizer(model, cfg)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": statistics.median(times),
        "peak_rss_mib": rss_mib(),
    }


def run_steps(args: argparse.Namespace) -> None:
    print(f"\ntraining step: batch 16 x 64 tokens, forward + backward + AdamW, {args.threads} threads, "
          f"median of {args.steps}")
    print("| variant | params | trainable | s/step | vs e5-small-ko | peak RSS |")
    print("|---|---|---|---|---|---|")
    base = None
    for variant in STEP_VARIANTS:
        proc = subprocess.run(
            [sys.executable, __file__, "--step-child", variant, "--threads", str(args.threads),
             "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        base = base or r["step_s"]
        print(f"| {variant} | {r['params_m']:.1f}M | {r['trainable_m']:.1f}M | {r['step_s']:.2f} | "
              f"{r['step_s'] / base:.1f}x | {r['peak_rss_mib'] / 1024:.1f} GiB |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-rows", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--step-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_child:
        print(json.dumps(step_child(args.step_child, args.threads, args.steps)))
        return
    from kosent.logs import setup

    setup()
    if not args.skip_steps:
        run_steps(args)
    if not args.skip_probe:
        run_probe(args)


if __name__ == "__main__":
    main()
