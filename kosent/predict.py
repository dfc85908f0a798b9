"""Predictions from a checkpoint folder: the CLI, evaluation and the Serve replica all call this.

An ensemble checkpoint (BERT + TF-IDF, built by :mod:`kosent.ensemble`) is scored here too: :func:`mix` is the
one rule that combines the two models' probabilities. ``kosent.ensemble`` imports this module, never the
reverse, so loading a predictor (a Serve replica) does not import the data readers the ensemble builder needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kosent import batches
from kosent.checkpoint import fetch_checkpoint, load_checkpoint, read_meta
from kosent.models.tfidf import TfidfClassifier
from kosent.storage import is_uri
from kosent.text import normalize


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def mix(p_model: np.ndarray, p_tfidf_positive: np.ndarray, tfidf_weight: float) -> np.ndarray:
    """``(n, 2)`` probabilities from the weighted average of the two models' log-odds of label 1.

    Log-odds rather than probabilities: the fine-tuned model is far more confident than TF-IDF, and in
    probability space its near-0/1 outputs would swamp the baseline's whatever the weight.
    """
    z = (1.0 - tfidf_weight) * _log_odds(np.asarray(p_model)[:, 1]) + tfidf_weight * _log_odds(p_tfidf_positive)
    p1 = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1.0 - p1, p1], axis=1)


@dataclass
class Prediction:
    """One text's answer: ``label`` (a label name), ``probability`` of the positive label (id 1), and the
    probability of every label by name."""

    label: str
    probability: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "scores": self.scores}


class Predictor:
    """A loaded checkpoint. Texts are normalized exactly as in training, then scored in length-sorted batches."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, meta: dict[str, Any], max_length: int = 128,
                 batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.label_names: list[str] = meta["label_names"]
        self.max_length = int(meta.get("config", {}).get("max_length", max_length))
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tfidf: TfidfClassifier | None = None  # set for an ensemble checkpoint
        self.tfidf_weight = 0.0

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """Load a checkpoint folder, or one on object storage (``s3://...``: copied to a local cache first)."""
        if is_uri(path):
            path = fetch_checkpoint(str(path))
        if read_meta(path)["model_type"] == "tfidf":
            return TfidfPredictor(path, batch_size=kwargs.get("batch_size", 64))
        model, tokenizer, meta = load_checkpoint(path, device=device)
        predictor = cls(model, tokenizer, meta, device=device, **kwargs)
        predictor.path = Path(path)
        if meta.get("ensemble"):  # BERT + TF-IDF in one folder (kosent.ensemble)
            predictor.tfidf = TfidfClassifier.load(Path(path) / meta["ensemble"]["tfidf"])
            predictor.tfidf_weight = float(meta["ensemble"]["tfidf_weight"])
        return predictor

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), num_labels)`` probabilities, in the order given."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        enc = self.tokenizer([normalize(t) for t in texts], truncation=True, max_length=self.max_length)
        encoded = batches.Encoded(input_ids=list(enc["input_ids"]), labels=[0] * len(texts))
        out = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        for idx, batch in batches.iterate(encoded, self.batch_size, self.tokenizer.pad_token_id, shuffle=False):
            logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                attention_mask=batch["attention_mask"].to(self.device)).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if self.tfidf is not None:
            out = mix(out, self.tfidf.predict_proba(list(texts)), self.tfidf_weight).astype(np.float32)
        return out

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probs = self.predict_proba(texts)
        positive = 1 if len(self.label_names) > 1 else 0
        return [
            Prediction(
                label=self.label_names[int(p.argmax())],
                probability=float(p[positive]),
                scores={name: float(p[k]) for k, name in enumerate(self.label_names)},
            )
            for p in probs
        ]


class TfidfPredictor(Predictor):
    """The TF-IDF baseline behind the same interface (its checkpoint has no torch model or tokenizer).

    It sets every attribute a :class:`Predictor` has, so callers that describe a model (Serve's ``GET /model``)
    need no special case; ``max_length`` is None: character n-grams see the whole text."""

    def __init__(self, path: str | Path, batch_size: int = 64) -> None:
        self.path = Path(path)
        self.model = None
        self.tokenizer = None
        self.meta = read_meta(path)
        self.label_names = self.meta["label_names"]
        self.max_length = None
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.tfidf = TfidfClassifier.load(path)
        self.tfidf_weight = 1.0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        p = self.tfidf.predict_proba(list(texts)) if texts else np.zeros(0)
        return np.stack([1 - p, p], axis=1).astype(np.float32)
