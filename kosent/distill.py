"""Distillation: a teacher's probabilities on unlabelled texts become extra, soft training targets.

    splits = with_unlabelled(cfg, splits)          the source's texts outside train/validation/test, capped
    enc = training_set(cfg, splits, tokenizer, device)   labelled rows (one-hot) + unlabelled rows (teacher)

The teacher is any checkpoint folder kosent can predict with, an ensemble one (BERT + TF-IDF,
:mod:`kosent.ensemble`) included: the cheap model's view reaches the student through the targets, and the
served model stays one ordinary checkpoint. The student minimises the cross-entropy against the targets:
on labelled rows that is the usual loss, on the others it pulls the student towards the teacher's whole
distribution rather than its argmax, so the teacher's doubt is kept.

Labels of the unlabelled texts are never read, and no validation or test text is among them (checked).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from kosent import batches
from kosent.config import TrainConfig
from kosent.data import Splits, load_table, unseen_texts

log = logging.getLogger(__name__)


class DistillError(ValueError):
    """A teacher that cannot teach this run (missing, other labels); the message says what to do."""


def with_unlabelled(cfg: TrainConfig, splits: Splits) -> Splits:
    """``splits`` with ``unlabelled`` filled when ``cfg.teacher`` is set (a no-op otherwise or if already filled)."""
    if not cfg.teacher or splits.unlabelled:
        return splits
    excluded = set(splits.train["text"]) | set(splits.validation["text"]) | set(splits.test["text"])
    pool = unseen_texts(load_table(cfg.data), excluded, cfg.seed)
    texts = pool[: cfg.unlabelled_size] if cfg.unlabelled_size else pool
    if excluded.intersection(texts):  # cannot happen by construction; the evaluation depends on it
        raise AssertionError("labelled texts leaked into the unlabelled pool")
    if not texts:
        raise DistillError(f"{cfg.data.source}: no text is left outside the train, validation and test splits "
                           "to distil on; lower train_size or use another source")
    return dataclasses.replace(splits, unlabelled=texts)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_c target_c * log softmax(logits)_c (equals cross-entropy on one-hot targets)."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def teacher_probs(teacher: str, texts: list[str], label_names: list[str], device: torch.device,
                  batch_size: int = 128) -> np.ndarray:
    """The teacher's probabilities for ``texts``; its labels must be the run's, in the same order."""
    from kosent.checkpoint import CheckpointError
    from kosent.predict import Predictor

    try:
        predictor = Predictor.from_checkpoint(teacher, device=device)
    except (CheckpointError, OSError) as e:
        raise DistillError(f"teacher {teacher}: not a loadable kosent checkpoint ({e})") from e
    if list(predictor.label_names) != list(label_names):
        raise DistillError(f"teacher {teacher} predicts {predictor.label_names}, this run trains {label_names}")
    if hasattr(predictor, "batch_size"):
        predictor.batch_size = batch_size
    return predictor.predict_proba(texts)


def training_set(cfg: TrainConfig, splits: Splits, tokenizer: object, device: torch.device,
                 quiet: bool = False) -> batches.Encoded:
    """The labelled training rows, plus (with a teacher) the unlabelled rows with the teacher's probabilities.

    Every row gets a target distribution when there is a teacher (one-hot for labelled rows); the label of
    an unlabelled row is the teacher's argmax, used only for the train accuracy that the loop logs.
    ``quiet``: no log line (the Ray Train workers other than rank 0)."""
    train = splits.train.to_dict()
    enc = batches.encode(tokenizer, train["text"], train["label"], cfg.max_length)
    if not cfg.teacher:
        return enc
    if not splits.unlabelled:
        raise DistillError("a teacher needs unlabelled texts: build the splits through kosent.distill.with_unlabelled")
    t0 = time.perf_counter()
    probs = teacher_probs(cfg.teacher, splits.unlabelled, splits.label_names, device, cfg.eval_batch_size)
    if not quiet:
        log.info(f"teacher {cfg.teacher}: {len(probs):,} unlabelled texts scored in {time.perf_counter() - t0:.0f}s "
                 f"(mean max-probability {float(probs.max(axis=1).mean()):.3f})")
    soft = batches.encode(tokenizer, splits.unlabelled, probs.argmax(axis=1).tolist(), cfg.max_length)
    one_hot = np.eye(len(splits.label_names), dtype=np.float32)[np.asarray(enc.labels, dtype=np.int64)]
    return batches.Encoded(input_ids=enc.input_ids + soft.input_ids, labels=enc.labels + soft.labels,
                           targets=np.concatenate([one_hot, probs.astype(np.float32)]))


__all__ = ["DistillError", "soft_cross_entropy", "teacher_probs", "training_set", "with_unlabelled"]
