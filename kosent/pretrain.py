"""Domain-adaptive pretraining: continue masked-language-model training of the encoder on in-domain text.

    corpus = unlabelled_corpus(cfg)      texts of the dataset minus every validation and test text
    folder = fit_pretrain(cfg)           Ray Train (same conventions as kosent.ray_train), -> model folder;
                                         each worker gets its shard of the corpus as a Ray Dataset
    pretrain_loop(cfg, corpus, session)  the loop itself, in-process or in each Ray worker

The output is an ordinary Hugging Face folder (``AutoModelForMaskedLM`` weights + tokenizer, safetensors)
plus ``kosent_pretrain.json`` (corpus size, overlap check, losses, config). ``kosent train --model
<folder>`` and sweeps take it as the starting model: the classifier head is new, the encoder is adapted.

Labels are never read for the corpus: only the texts of the labelled file are used, and the validation and
test texts of ``cfg.data`` (the same split settings the fine-tuning will use) are removed, with the overlap
checked and recorded as zero. A small slice of the corpus is held out to report ``val_mlm_loss``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, get_linear_schedule_with_warmup

from kosent import batches
from kosent.checkpoint import copy_checkpoint, load_training_state, save_training_state
from kosent.config import PretrainConfig, to_dict
from kosent.data import make_splits, unlabelled_pool
from kosent.metrics import epochs_since_best, is_better
from kosent.train import Session, _autocast, _optimizer, seed_everything

log = logging.getLogger(__name__)

META_FILE = "kosent_pretrain.json"
#: What picks the epoch a pretraining run delivers and stops it early: the masked-LM loss on held-out texts.
PRETRAIN_METRIC, PRETRAIN_MODE = "val_mlm_loss", "min"


@dataclass
class Corpus:
    """Unlabelled texts for pretraining, the held-out slice for ``val_mlm_loss``, and how they were chosen."""

    texts: list[str]
    holdout: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def unlabelled_corpus(cfg: PretrainConfig) -> Corpus:
    """Every distinct text of ``cfg.data`` except its validation and test texts, in a seeded hash order,
    capped; the source is streamed twice (splits, then the pool), never held as a table."""
    splits = make_splits(cfg.data)  # the fine-tuning splits: their held-out texts must stay unseen
    excluded = set(splits.validation["text"]) | set(splits.test["text"])
    limit = cfg.holdout_size + cfg.unlabelled_size if cfg.unlabelled_size else None
    window = unlabelled_pool(cfg.data, excluded, cfg.seed, limit)
    pool = window.finish()
    n_holdout = min(cfg.holdout_size, window.available // 10)
    holdout, rest = pool[:n_holdout], pool[n_holdout:]
    texts = rest[: cfg.unlabelled_size] if cfg.unlabelled_size else rest
    overlap = len(excluded.intersection(texts)) + len(excluded.intersection(holdout))
    if overlap:  # cannot happen by construction; checked because the whole point depends on it
        raise AssertionError(f"{overlap} validation/test texts leaked into the pretraining corpus")
    report = {
        "source": cfg.data.source, "rows": window.rows, "distinct_texts": window.available + len(excluded),
        "excluded_validation_and_test": len(excluded), "available": window.available,
        "available_exact": window.available_exact, "used": len(texts),
        "holdout": len(holdout), "overlap_with_validation_and_test": overlap,
        "splits_fingerprint": splits.fingerprint, "labels_read": False,
    }
    return Corpus(texts=texts, holdout=holdout, report=report)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, mask_id: int,
                vocab_size: int, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick ``probability`` of the real tokens; of those 80% -> [MASK], 10% random, 10% kept.

    Returns (inputs, labels) with labels -100 where nothing is predicted.
    """
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


def load_mlm(name: str, tokenizer: Any) -> Any:
    """The encoder ``name`` with a masked-LM head (new if the checkpoint has none, as e5's has not)."""
    from transformers import BertConfig, BertForMaskedLM

    from kosent.models import e5_offline

    if name == "tiny":  # the test-speed random BERT, same shape as kosent.models.hf.tiny_bert
        return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=128, max_position_embeddings=514,
                                          pad_token_id=tokenizer.pad_token_id))
    path = str(e5_offline.resolve(name)) if e5_offline.is_alias(name) else name
    return AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32)


def pretrain_loop(cfg: PretrainConfig, corpus: Corpus, session: Session) -> list[dict[str, float]]:
    """MLM training of ``cfg.model`` on ``corpus.texts``; reports losses and a model folder every epoch."""
    from kosent.models import load_tokenizer

    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(cfg.model)
    model = load_mlm(cfg.model, tokenizer)
    enc = batches.encode(tokenizer, corpus.texts, [0] * len(corpus.texts), cfg.max_length)
    held = batches.encode(tokenizer, corpus.holdout, [0] * len(corpus.holdout), cfg.max_length)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    pad_id, mask_id, vocab = tokenizer.pad_token_id, tokenizer.mask_token_id, model.config.vocab_size

    # The corpus is this process's own: all of it in one process, a Ray Train worker's equal shard, so every
    # rank takes the same number of steps.
    steps_per_epoch = batches.num_batches(len(enc), cfg.batch_size)
    total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 10**12)
    model.to(session.device)
    optimizer = _optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    start_epoch, step, history = 0, 0, []
    restore = session.restore_dir()
    if restore is not None:
        model.load_state_dict(load_file(str(restore / "model.safetensors")), strict=False)
        progress = load_training_state(restore, optimizer, scheduler)
        start_epoch, step, history = progress["epoch"], progress["step"], progress["history"]
    head_steps = int(cfg.head_warmup_ratio * total)
    encoder = [p for n, p in model.named_parameters() if not n.startswith("cls.")]
    wrapped = session.prepare_model(model)
    if session.rank == 0:
        log.info(f"pretraining {cfg.model} (masked LM) on {len(enc):,} unlabelled texts per worker x {cfg.epochs} epoch(s), "
                 f"{steps_per_epoch} steps/epoch/worker, {session.world_size} worker(s), device {session.device}")

    for epoch in range(start_epoch, cfg.epochs):
        wrapped.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + session.rank)
        t0, seen, loss_sum, report_every = time.perf_counter(), 0, 0.0, max(1, steps_per_epoch // 10)
        stream = batches.iterate(enc, cfg.batch_size, pad_id, shuffle=True, seed=cfg.seed + epoch)
        for i, (_, batch) in enumerate(stream):
            inputs, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], special, mask_id, vocab,
                                         cfg.mlm_probability, gen)
            with _autocast(session.device):
                out = wrapped(input_ids=inputs.to(session.device),
                              attention_mask=batch["attention_mask"].to(session.device), labels=labels.to(session.device))
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"MLM loss is {out.loss.item()} at epoch {epoch + 1} step {i + 1}: lr {cfg.lr} diverged")
            out.loss.backward()
            if step < head_steps:  # head warm-up: drop the encoder's gradients, so AdamW leaves it untouched
                for p in encoder:
                    p.grad = None
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == head_steps:
                if session.rank == 0:
                    log.info(f"step {step}: masked-LM head warmed up; training the encoder too")
            seen += len(inputs)
            loss_sum += out.loss.item() * len(inputs)
            if session.rank == 0 and (i + 1) % report_every == 0:
                rate = seen / (time.perf_counter() - t0)
                log.info(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} mlm loss {loss_sum / seen:.4f} "
                         f"{rate * session.world_size:.1f} texts/s, epoch eta {(steps_per_epoch - i - 1) * cfg.batch_size / rate:.0f}s")
            if step >= total:
                break
        seconds = time.perf_counter() - t0
        totals = session.gather((seen, loss_sum))
        seen_all = sum(t[0] for t in totals)
        metrics = {"epoch": epoch + 1, "step": step, "train_mlm_loss": sum(t[1] for t in totals) / max(1, seen_all),
                   "val_mlm_loss": _holdout_loss(model, held, special, mask_id, vocab, cfg, pad_id, session.device),
                   "samples_per_second": seen_all / max(seconds, 1e-9), "epoch_seconds": seconds}
        history.append(metrics)
        # Early stop as in fine-tuning, on the held-out loss (recomputed from the history, so a resumed run agrees).
        best, bad_epochs = epochs_since_best([h["val_mlm_loss"] for h in history], mode=PRETRAIN_MODE)
        folder = None
        if session.rank == 0:
            log.info(f"epoch {epoch + 1}/{cfg.epochs} train_mlm_loss {metrics['train_mlm_loss']:.4f} "
                     f"val_mlm_loss {metrics['val_mlm_loss']:.4f} {metrics['samples_per_second']:.1f} texts/s ({seconds:.0f}s)")
            folder = Path(tempfile.mkdtemp(prefix="kosent-pretrain-"))
            save_model_folder(folder, model, tokenizer, cfg, corpus.report, history)
            save_training_state(folder, optimizer, scheduler, {"epoch": epoch + 1, "step": step, "history": history,
                                                               "best": best, "bad_epochs": bad_epochs})
        session.report(metrics, folder)
        if step >= total:
            break
        if bad_epochs >= cfg.patience and epoch + 1 < cfg.epochs:
            if session.rank == 0:
                log.info(f"stopping early: val_mlm_loss has not fallen below {best:.4f} for {bad_epochs} epoch(s) "
                         f"(--patience {cfg.patience})")
            break
    return history


@torch.inference_mode()
def _holdout_loss(model: torch.nn.Module, held: batches.Encoded, special: torch.Tensor, mask_id: int, vocab: int,
                  cfg: PretrainConfig, pad_id: int, device: torch.device) -> float:
    """MLM loss on the held-out texts with a fixed masking, so epochs (and runs) compare."""
    if not len(held):
        return float("nan")
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    total, n = 0.0, 0
    for _, batch in batches.iterate(held, cfg.eval_batch_size, pad_id, shuffle=False):
        inputs, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], special, mask_id, vocab,
                                     cfg.mlm_probability, gen)
        k = int((labels != -100).sum())
        if k:
            with _autocast(device):
                out = model(input_ids=inputs.to(device), attention_mask=batch["attention_mask"].to(device),
                            labels=labels.to(device))
            total, n = total + out.loss.item() * k, n + k
    model.train()
    return total / max(1, n)


def save_model_folder(folder: Path, model: Any, tokenizer: Any, cfg: PretrainConfig, corpus_report: dict[str, Any],
                      history: list[dict[str, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    doc = {"kind": "domain-adaptive MLM pretraining", "base_model": cfg.model, "corpus": corpus_report,
           "history": history, "config": to_dict(cfg)}
    (folder / META_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def fit_pretrain_local(cfg: PretrainConfig, out: str | Path) -> Path:
    """Pretrain in this process (no cluster; on the GPU when ``cfg.use_gpu``): the same loop, the same folder."""
    corpus = unlabelled_corpus(cfg)
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    out = Path(out)
    session = Session(out_dir=out.parent / f".{out.name}-epochs", device=device, metric=PRETRAIN_METRIC,
                      mode=PRETRAIN_MODE)
    session.out_dir.mkdir(parents=True, exist_ok=True)
    history = pretrain_loop(cfg, corpus, session)
    _deliver(Path(session.best["path"]), history, out)
    shutil.rmtree(session.out_dir, ignore_errors=True)
    return out


def _deliver(chosen: Path, history: list[dict[str, float]], dest: Path) -> Path:
    """Copy the chosen epoch's folder (the lowest val_mlm_loss) to ``dest`` without its training state; its
    ``kosent_pretrain.json`` gets the whole run's ``history`` and the ``epoch`` it holds."""
    if dest.exists():
        shutil.rmtree(dest)
    copy_checkpoint(chosen, dest)
    meta = dest / META_FILE
    doc = json.loads(meta.read_text(encoding="utf-8"))
    doc["epoch"] = int(doc["history"][-1]["epoch"])
    doc["history"] = history
    meta.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    losses = ", ".join(f"{h['val_mlm_loss']:.4f}" for h in history)
    log.info(f"pretrained model folder: {dest}, epoch {doc['epoch']} of {len(history)} (val_mlm_loss per epoch: {losses})")
    return dest


# --------------------------------------------------------------------------------------------------
# Ray Train
# --------------------------------------------------------------------------------------------------


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: its shard of the corpus and the whole holdout, read as Ray Datasets."""
    from kosent.config import from_dict
    from kosent.data import streaming
    from kosent.logs import setup as setup_logging
    from kosent.ray_train import RaySession

    setup_logging()  # kosent's format and level ($KOSENT_LOG_LEVEL) in this worker process
    cfg = from_dict(PretrainConfig, config["cfg"])
    texts, holdout = (streaming.read_shard(name, columns=("text",)).column("text").to_pylist()
                      for name in ("unlabelled", "validation"))
    corpus = Corpus(texts=texts, holdout=holdout, report=config["report"])
    if cfg.threads is None:
        import os

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or cfg.cpus_per_worker or 1)))
    session = RaySession(seed=cfg.seed)
    try:
        pretrain_loop(cfg, corpus, session)
    finally:
        session.cleanup()


def fit_pretrain(cfg: PretrainConfig, out: str | Path | None = None) -> Path:
    """Check, build the corpus, pretrain with Ray Train, copy the best epoch's folder to ``out``; return it."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kosent.data import streaming
    from kosent.ray_train import (
        CONTROLLER_FAILURE_LIMIT,
        _history,
        _local_copy,
        _with_run_location,
        _worker_env,
        check_resources,
        check_storage,
        connect,
        resolve_model,
        worker_resources,
    )

    connect()
    cfg = _with_run_location(cfg)
    resolve_model(cfg.model)
    check_storage(cfg.storage_path)
    check_resources(cfg)
    corpus = unlabelled_corpus(cfg)
    log.info(f"corpus: {corpus.report['used']:,} texts of {corpus.report['available']:,} available "
             f"({corpus.report['excluded_validation_and_test']:,} validation/test texts excluded, overlap "
             f"{corpus.report['overlap_with_validation_and_test']}), {corpus.report['holdout']:,} held out")
    resources = worker_resources(cfg)
    # The corpus is split into one equal shard per worker, the holdout read whole by each (kosent.data.streaming)
    datasets = {"unlabelled": streaming.texts_dataset(corpus.texts), "validation": streaming.texts_dataset(corpus.holdout)}
    trainer = TorchTrainer(
        pretrain_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "report": corpus.report},
        datasets=datasets,
        dataset_config=streaming.data_config(list(datasets)),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=PRETRAIN_METRIC,
                                               checkpoint_score_order=PRETRAIN_MODE),
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
    )
    result = trainer.fit()
    candidates = list(result.best_checkpoints or [])
    if not candidates:
        raise ray.train.TrainingFailedError(f"pretraining run {cfg.name} ended without a checkpoint: {result.error}")
    # The epoch the in-process run would pick: kept epochs in order, each replacing the best when is_better says so.
    chosen, held = None, None
    for ckpt, metrics in sorted(candidates, key=lambda cm: cm[1].get("epoch", 0)):
        if is_better(metrics.get(PRETRAIN_METRIC), held, PRETRAIN_MODE):  # held None: the first epoch wins
            chosen, held = ckpt, metrics.get(PRETRAIN_METRIC)
    history = _history(result.checkpoint or chosen)
    return _deliver(_local_copy(chosen, cfg.name), history, Path(out) if out else Path(cfg.storage_path) / cfg.name / "model")


__all__ = ["Corpus", "fit_pretrain", "fit_pretrain_local", "mask_tokens", "pretrain_loop", "unlabelled_corpus"]
