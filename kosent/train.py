"""The one training loop: the same function runs in a single process and inside every Ray Train worker.

Where it runs is hidden behind a small ``Session`` (rank, device, how to report and restore) and the splits
it is given (a Ray Train worker gets its own shard of the training rows); the loop itself reads top to
bottom: build model -> tokenize (once, or a worker's shard a buffer at a time) -> for each epoch: train,
evaluate, report a checkpoint, maybe stop early. ``kosent.ray_train`` supplies the Ray session; ``fit_local`` the local one.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import get_linear_schedule_with_warmup

from kosent import batches, distill
from kosent.checkpoint import (
    LORA_STATE_FILE,
    STATE_DIR,
    load_training_state,
    read_meta,
    save_checkpoint,
    save_training_state,
    write_meta,
)
from kosent.config import TrainConfig, changed_fields, to_dict
from kosent.data import Splits, make_splits
from kosent.metrics import BEST_METRIC, BEST_MODE, classification_metrics, is_better
from kosent.models import ModelError, freeze, layer_depth, load_model_and_tokenizer, lora
from kosent.models.tfidf import TfidfClassifier

log = logging.getLogger(__name__)


@dataclass
class Session:
    """A single process: rank 0 of 1. Checkpoints go to ``out_dir/epoch_N``; best and last are kept.

    "Best" is by ``metric`` (``mode`` max or min; among ties the earliest epoch): val_macro_f1 for a
    classifier, val_mlm_loss for masked-LM pretraining. An epoch that reports no such metric counts as best.
    """

    out_dir: Path = Path("runs/local")
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    metric: str = BEST_METRIC
    mode: Literal["max", "min"] = BEST_MODE
    best: dict[str, Any] = field(default_factory=dict)
    last: Path | None = None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def training_rows(self, cfg: TrainConfig, splits: Splits, tokenizer: Any) -> batches.TrainingRows:
        """The rows this process trains on, tokenized: here all of ``splits.train`` (and a teacher's texts)."""
        return batches.InMemoryRows(distill.training_set(cfg, splits, tokenizer))

    def restore_dir(self) -> Path | None:
        return None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        dest = self.out_dir / f"epoch_{int(metrics['epoch'])}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(checkpoint_dir), dest)
        previous_best = self.best.get("path")
        if is_better(metrics.get(self.metric), self.best.get(self.metric), self.mode):
            self.best = {"path": dest, self.metric: metrics.get(self.metric)}
        # Keep only the best and the latest epoch on disk.
        for old in {previous_best, self.last} - {self.best["path"], dest, None}:
            shutil.rmtree(old, ignore_errors=True)
        self.last = dest


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe), and with layer-wise
    learning-rate decay when ``cfg.layer_decay < 1``: a parameter at depth d trains at
    ``lr * layer_decay ** (num_layers + 1 - d)`` (the scheduler scales every group alike)."""
    if not 0 < cfg.layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {cfg.layer_decay}")
    num_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
    if cfg.layer_decay < 1 and not num_layers:
        raise ValueError(f"layer_decay {cfg.layer_decay} needs a layered encoder; {type(model).__name__} has none")
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            depth = layer_depth(name, num_layers) if cfg.layer_decay < 1 else 0
            groups.setdefault((depth, p.ndim < 2 or "LayerNorm" in name), []).append(p)
    top = num_layers + 1 if cfg.layer_decay < 1 else 0
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
          "lr": cfg.lr * cfg.layer_decay ** (top - depth)}
         for (depth, no_decay), params in sorted(groups.items())],
        lr=cfg.lr,
    )


def _macro_f1(confusion: np.ndarray, label_names: list[str]) -> float:
    """Macro F1 of a [true, predicted] count matrix, by :func:`kosent.metrics.classification_metrics` (the
    definition every ``*_macro_f1`` uses: a class with no support nor predictions scores 0)."""
    k = len(label_names)
    if not confusion.sum():
        return 0.0
    true, pred = np.divmod(np.repeat(np.arange(k * k), confusion.ravel()), k)  # the examples behind the counts
    return classification_metrics(true, np.eye(k)[pred], label_names)["macro_f1"]


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on GPUs that have it; full precision on CPU, where autocast only slows training."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    enc: batches.Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[list[int], np.ndarray, float]:
    """Softmax probabilities for this rank's share of ``enc``: (indices, probs, summed loss)."""
    model.eval()
    idx_all, probs, loss_sum = [], [], 0.0
    for idx, batch in batches.iterate(enc, batch_size, pad_id, shuffle=False, rank=rank, world_size=world_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device):
            out = model(**batch)
        logits = out.logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        idx_all.extend(idx)
    return idx_all, (np.concatenate(probs) if probs else np.zeros((0, 2))), loss_sum


def evaluate_encoded(
    model: torch.nn.Module,
    enc: batches.Encoded,
    label_names: list[str],
    cfg: TrainConfig,
    pad_id: int,
    session: Session,
    prefix: str = "val_",
) -> dict[str, float]:
    """Metrics over all of ``enc``: each rank scores a share, rank results are gathered."""
    idx, probs, loss_sum = predict_probs(
        model, enc, cfg.eval_batch_size, pad_id, session.device, session.rank, session.world_size
    )
    parts = session.gather((idx, probs, loss_sum))
    order = [i for part in parts for i in part[0]]
    all_probs = np.concatenate([part[1] for part in parts])
    labels = [enc.labels[i] for i in order]
    loss = sum(part[2] for part in parts) / max(1, len(order))
    return classification_metrics(labels, all_probs, label_names, prefix=prefix, loss=loss)


def train_loop(
    cfg: TrainConfig,
    splits: Splits,
    session: Session,
) -> list[dict[str, float]]:
    """Train ``cfg.model`` on ``splits.train``, reporting metrics and a checkpoint every epoch.

    Returns the per-epoch history.
    """
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    label_names = splits.label_names
    model, tokenizer = load_model_and_tokenizer(cfg.model, label_names, cfg.pooling)
    freeze(model, cfg.freeze_embeddings, cfg.frozen_layers)
    if cfg.lora_rank:
        model = lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.frozen_layers)
    pad_id = tokenizer.pad_token_id
    val = splits.validation.to_dict()  # column access is row by row
    train_rows = session.training_rows(cfg, splits, tokenizer)
    val_enc = batches.encode(tokenizer, val["text"], val["label"], cfg.max_length)

    # The rows are this process's own: all of them in one process, a Ray Train worker's equal shard
    # (kosent.data.streaming), so every rank takes the same number of steps.
    steps_per_epoch = train_rows.batches_per_epoch(cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    model.to(session.device)
    optimizer = _optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    start_epoch, step, history = 0, 0, []
    best, bad_epochs = -1.0, 0
    restore = session.restore_dir()
    if restore is not None:
        if cfg.lora_rank:  # the pretrained weights as loaded, plus the adapters and head that trained
            lora.load_trainable_state(model, load_file(str(restore / STATE_DIR / LORA_STATE_FILE)))
        else:
            model.load_state_dict(load_file(str(restore / "model.safetensors")))
        progress = load_training_state(restore, optimizer, scheduler)
        start_epoch, step, history = progress["epoch"], progress["step"], progress["history"]
        best, bad_epochs = progress["best"], progress["bad_epochs"]
        if session.rank == 0:
            log.info(f"resumed from {restore} after epoch {start_epoch} (step {step})")
    wrapped = session.prepare_model(model)

    if session.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            f"training {cfg.model} ({params / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M of them trained"
            f"{f', LoRA rank {cfg.lora_rank}' if cfg.lora_rank else ''}) on {len(train_rows):,} texts per worker x "
            f"{cfg.epochs} epochs, {session.world_size} worker(s), {steps_per_epoch} steps/epoch/worker, "
            f"device {session.device}"
        )
    for epoch in range(start_epoch, cfg.epochs):
        wrapped.train()
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        step_times: list[float] = []  # per step, for the steady-state median (the first steps warm up)
        t_step = t0
        confusion = np.zeros((len(label_names), len(label_names)), dtype=np.int64)  # [true, predicted]
        report_every = max(1, steps_per_epoch // 10)
        stream = train_rows.epoch(cfg.batch_size, pad_id, seed=cfg.seed + epoch)
        for i, (_, batch) in enumerate(stream):
            batch = {k: v.to(session.device) for k, v in batch.items()}
            targets = batch.pop("targets", None)  # distillation: train towards these, not the labels
            with _autocast(session.device):
                out = wrapped(**(batch if targets is None else {k: v for k, v in batch.items() if k != "labels"}))
            loss = out.loss if targets is None else distill.soft_cross_entropy(out.logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1} step {i + 1}: lr {cfg.lr} diverged")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n = batch["labels"].shape[0]
            seen += n
            loss_sum += loss.item() * n
            pred = out.logits.argmax(-1)
            correct += (pred == batch["labels"]).sum().item()
            np.add.at(confusion, (batch["labels"].cpu().numpy(), pred.cpu().numpy()), 1)
            now = time.perf_counter()
            step_times.append(now - t_step)
            t_step = now
            if session.rank == 0 and (i + 1) % report_every == 0:
                rate = seen / (time.perf_counter() - t0)
                eta = (steps_per_epoch - i - 1) * cfg.batch_size / max(rate, 1e-9)
                log.info(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {loss_sum / seen:.4f} "
                         f"{rate * session.world_size:.1f} samples/s, epoch eta {eta:.0f}s")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        train_seconds = time.perf_counter() - t0
        totals = session.gather((seen, loss_sum, correct, confusion))
        seen_all = sum(t[0] for t in totals)
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": sum(t[1] for t in totals) / max(1, seen_all),
            "train_accuracy": sum(t[2] for t in totals) / max(1, seen_all),
            "train_macro_f1": _macro_f1(sum(t[3] for t in totals), label_names),
            "samples_per_second": seen_all / max(train_seconds, 1e-9),
            "epoch_seconds": train_seconds,
            "median_step_seconds": float(np.median(step_times[2:] or step_times or [0.0])),
        }
        metrics.update(evaluate_encoded(model, val_enc, label_names, cfg, pad_id, session))
        improved = metrics[BEST_METRIC] > best
        best, bad_epochs = (metrics[BEST_METRIC], 0) if improved else (best, bad_epochs + 1)
        stop = bad_epochs >= cfg.patience or (cfg.max_steps is not None and step >= cfg.max_steps)
        history.append(metrics)

        ckpt_dir = None
        if session.rank == 0:
            log.info(
                f"epoch {epoch + 1}/{cfg.epochs} train_loss {metrics['train_loss']:.4f} "
                f"val_loss {metrics['val_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f} "
                f"val_macro_f1 {metrics['val_macro_f1']:.4f} {metrics['samples_per_second']:.1f} samples/s "
                f"({train_seconds:.0f}s){' *' if improved else ''}"
            )
            ckpt_dir = Path(tempfile.mkdtemp(prefix="kosent-ckpt-"))
            save_checkpoint(
                ckpt_dir, lora.merged(model), tokenizer, label_names=label_names, metrics=metrics,
                config=to_dict(cfg), data_fingerprint=splits.fingerprint,
            )
            save_training_state(
                ckpt_dir, optimizer, scheduler,
                {"epoch": epoch + 1, "step": step, "history": history, "best": best, "bad_epochs": bad_epochs},
            )
            if cfg.lora_rank:
                save_file(lora.trainable_state(model), str(ckpt_dir / STATE_DIR / LORA_STATE_FILE))
        session.report(metrics, ckpt_dir)
        if stop:
            if session.rank == 0 and epoch + 1 < cfg.epochs:
                log.info(f"stopping early after epoch {epoch + 1}")
            break
    return history


def fit_tfidf(cfg: TrainConfig, splits: Splits, out: Path) -> TrainResult:
    """The TF-IDF + logistic regression baseline, saved as a checkpoint folder like every other model."""
    given = changed_fields(cfg, ("pooling", "freeze_embeddings", "frozen_layers", "lora_rank"))
    if given:
        raise ModelError(f"{', '.join(given)}: settings of an encoder; the tfidf model has none (leave them unset)")
    t0 = time.perf_counter()
    train, val = splits.train.to_dict(), splits.validation.to_dict()
    model = TfidfClassifier().fit(train["text"], train["label"])
    seconds = time.perf_counter() - t0
    probs = model.predict_proba(val["text"])
    metrics = {"epoch": 1, "epoch_seconds": seconds} | classification_metrics(
        val["label"], np.stack([1 - probs, probs], axis=1), splits.label_names, prefix="val_"
    )
    folder = out / "epoch_1"
    model.save(folder)
    write_meta(folder, model_type="tfidf", label_names=splits.label_names, metrics=metrics,
               config=to_dict(cfg), data_fingerprint=splits.fingerprint)
    log.info(f"tfidf: fit in {seconds:.1f}s, val_accuracy {metrics['val_accuracy']:.4f} val_macro_f1 {metrics['val_macro_f1']:.4f}")
    return TrainResult(checkpoint=folder, metrics=metrics, history=[metrics])


def fit_local(cfg: TrainConfig, splits: Splits | None = None, out_dir: str | Path | None = None) -> TrainResult:
    """Train in this process (no cluster): the library works without Ray."""
    splits = splits or make_splits(cfg.data)
    out = Path(out_dir or Path(cfg.storage_path) / (cfg.name or f"local-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model == "tfidf":
        return fit_tfidf(cfg, splits, out)
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    session = Session(out_dir=out, device=device)
    history = train_loop(cfg, distill.with_unlabelled(cfg, splits), session)
    best = Path(session.best["path"])
    return TrainResult(checkpoint=best, metrics=read_meta(best)["metrics"], history=history)


__all__ = ["Session", "TrainResult", "evaluate_encoded", "fit_local", "predict_probs", "train_loop"]
