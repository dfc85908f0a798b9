"""Distillation: a teacher's probabilities on unlabelled texts become extra, soft training targets.

    splits = with_unlabelled(cfg, splits, score)   the source's texts outside train/validation/test, capped,
                                                   with the teacher's probabilities (``unlabelled_probs``)
    enc = training_set(cfg, splits, tokenizer)     labelled rows (one-hot) + unlabelled rows (teacher)
    enc = encode_rows(tokenizer, chunk, max_length)  the same for one chunk (a Ray Train worker's buffer)

The teacher scores each unlabelled text once, before training: in this process by default (``kosent train``),
on the cluster's actors in a Ray run (``kosent.scoring``, passed as ``score``). The workers receive the
probabilities with the texts, so a restarted worker group does not score again.

The teacher is any checkpoint folder kosent can predict with, an ensemble one (BERT + TF-IDF,
:mod:`kosent.ensemble`) included: the cheap model's view reaches the student through the targets, and the
served model stays one ordinary checkpoint. The student minimises the cross-entropy against the targets:
on labelled rows that is the usual loss, on the others it pulls the student towards the teacher's whole
distribution rather than its argmax, so the teacher's doubt is kept.

Labels of the unlabelled texts are never read, and no validation or test text is among them (checked).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from kosent import batches
from kosent.checkpoint import CheckpointError, read_meta
from kosent.config import TrainConfig
from kosent.data import Splits, unlabelled_pool

log = logging.getLogger(__name__)


class DistillError(ValueError):
    """A teacher that cannot teach this run (missing, other labels); the message says what to do."""


def check_teacher(teacher: str, label_names: list[str]) -> None:
    """Refuse, before anything is scored, a teacher that is not a checkpoint or predicts other labels."""
    try:
        names = read_meta(teacher)["label_names"]
    except (CheckpointError, OSError, KeyError) as e:
        raise DistillError(f"teacher {teacher}: not a loadable kosent checkpoint ({e})") from e
    if list(names) != list(label_names):
        raise DistillError(f"teacher {teacher} predicts {names}, this run trains {label_names}")


def with_unlabelled(cfg: TrainConfig, splits: Splits, score: Callable[[list[str]], np.ndarray] | None = None) -> Splits:
    """``splits`` with ``unlabelled`` and the teacher's ``unlabelled_probs`` filled when ``cfg.teacher`` is set
    (a no-op otherwise or if already scored). ``score`` maps texts to the teacher's probabilities; by default
    the teacher is loaded in this process, on the GPU when ``cfg.use_gpu`` and one is present."""
    if not cfg.teacher or splits.unlabelled_probs is not None:
        return splits
    check_teacher(cfg.teacher, splits.label_names)
    excluded = set(splits.train["text"]) | set(splits.validation["text"]) | set(splits.test["text"])
    texts = unlabelled_pool(cfg.data, excluded, cfg.seed, cfg.unlabelled_size or None).finish()
    if excluded.intersection(texts):  # cannot happen by construction; the evaluation depends on it
        raise AssertionError("labelled texts leaked into the unlabelled pool")
    if not texts:
        raise DistillError(f"{cfg.data.source}: no text is left outside the train, validation and test splits "
                           "to distil on; lower train_size or use another source")
    if score is None:
        device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
        score = functools.partial(teacher_probs, cfg.teacher, device=device, batch_size=cfg.eval_batch_size)
    t0 = time.perf_counter()
    probs = np.asarray(score(texts), dtype=np.float32)
    if probs.shape != (len(texts), len(splits.label_names)):
        raise DistillError(f"teacher {cfg.teacher}: {probs.shape} scores for {len(texts)} texts and "
                           f"{len(splits.label_names)} labels")
    log.info(f"teacher {cfg.teacher}: {len(texts):,} unlabelled texts scored in {time.perf_counter() - t0:.0f}s "
             f"(mean max-probability {float(probs.max(axis=1).mean()):.3f})")
    return dataclasses.replace(splits, unlabelled=texts, unlabelled_probs=probs)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_c target_c * log softmax(logits)_c (equals cross-entropy on one-hot targets)."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def teacher_probs(teacher: str, texts: list[str], device: torch.device, batch_size: int = 128) -> np.ndarray:
    """The teacher's probabilities for ``texts``, scored in this process on ``device``, with progress (a large
    teacher takes minutes: gemma-ko scores about 30 texts/s on 2 CPU cores)."""
    from kosent.evaluate import predict_with_progress
    from kosent.predict import Predictor

    predictor = Predictor.from_checkpoint(teacher, device=device)
    if hasattr(predictor, "batch_size"):
        predictor.batch_size = batch_size
    return predict_with_progress(predictor, texts, what="unlabelled texts with the teacher")


def training_set(cfg: TrainConfig, splits: Splits, tokenizer: object) -> batches.Encoded:
    """The labelled training rows, plus (with a teacher) the unlabelled rows with the teacher's probabilities,
    tokenized as one :func:`encode_rows` chunk."""
    train = splits.train.to_dict()
    chunk = batches.Chunk(train["text"], train["label"])
    if cfg.teacher:
        probs = splits.unlabelled_probs
        if probs is None or len(probs) != len(splits.unlabelled):
            raise DistillError("a teacher needs scored unlabelled texts: build the splits through "
                               "kosent.distill.with_unlabelled")
        chunk.scored, chunk.probs = splits.unlabelled, probs
    return encode_rows(tokenizer, chunk, cfg.max_length)


def encode_rows(tokenizer: object, chunk: batches.Chunk, max_length: int) -> batches.Encoded:
    """A chunk's labelled rows, then its scored rows, tokenized. With a teacher (``chunk.probs`` set) every row
    gets a target distribution: one-hot for labelled rows, the teacher's probabilities for scored ones, whose
    label is the teacher's argmax, used only for the train accuracy that the loop logs."""
    enc = batches.encode(tokenizer, chunk.texts, chunk.labels, max_length)
    if chunk.probs is None:
        return enc
    probs = np.asarray(chunk.probs, dtype=np.float32)
    soft = batches.encode(tokenizer, chunk.scored, probs.argmax(axis=1).tolist(), max_length)
    one_hot = np.eye(probs.shape[1], dtype=np.float32)[np.asarray(enc.labels, dtype=np.int64)]
    return batches.Encoded(input_ids=enc.input_ids + soft.input_ids, labels=enc.labels + soft.labels,
                           targets=np.concatenate([one_hot, probs]))


__all__ = ["DistillError", "check_teacher", "encode_rows", "soft_cross_entropy", "teacher_probs", "training_set", "with_unlabelled"]
