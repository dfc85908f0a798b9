"""Predictions from a checkpoint folder: the CLI, evaluation and the Serve replica all call this.

An ensemble checkpoint (BERT + TF-IDF, built by :mod:`kosent.ensemble`) is scored here too: :func:`mix` is the
one rule that combines the two models' probabilities. ``kosent.ensemble`` imports this module, never the
reverse, so loading a predictor (a Serve replica) does not import the data readers the ensemble builder needs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
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

logger = logging.getLogger(__name__)

#: A traced model must give the eager model's probabilities to within this (float32 rounding, not a change).
TRACE_TOLERANCE = 1e-4


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
        #: ``(input_ids, attention_mask) -> logits``: the model itself, or its TorchScript trace (:meth:`trace`).
        self._logits = self._eager_logits
        self.forward_mode = "eager"

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
        out = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        for idx, input_ids, attention_mask in self._batches(texts):
            out[idx] = torch.softmax(self._logits(input_ids, attention_mask).float(), dim=-1).cpu().numpy()
        if self.tfidf is not None:
            out = mix(out, self.tfidf.predict_proba(list(texts)), self.tfidf_weight).astype(np.float32)
        return out

    def _batches(self, texts: Sequence[str]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """``(indices, input_ids, attention_mask)`` of length-sorted, padded batches, on the model's device."""
        enc = self.tokenizer([normalize(t) for t in texts], truncation=True, max_length=self.max_length)
        encoded = batches.Encoded(input_ids=list(enc["input_ids"]), labels=[0] * len(texts))
        for idx, batch in batches.iterate(encoded, self.batch_size, self.tokenizer.pad_token_id, shuffle=False):
            yield idx, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def _eager_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.inference_mode()
    def trace(self, texts: Sequence[str]) -> str | None:
        """Run forward passes through a TorchScript trace of the model, traced on ``texts``; None when it is
        in use, else why not (the model then stays eager, unchanged).

        Why: a traced module runs its whole pass in C++ without taking Python's GIL, while an eager pass
        takes it back after every op. In a Serve replica the event loop shares the process: under overload
        it answers dozens of requests (refusals) a second, and an eager pass contends with it for the GIL at
        every op (measured on 2 cores: 20x goodput 79% of 1x eager, 94% traced, docs/SERVING.md). The trace
        shares the model's weights (no second copy). ``texts`` must pad (texts of different lengths), so
        the padded-mask path is the one recorded; the trace is then checked against the eager model on
        batches of other shapes and dropped if any probability differs by more than ``TRACE_TOLERANCE``.
        """
        if self.model is None:
            return "no torch model (TF-IDF)"
        sample = list(self._batches(texts))
        if len(sample) < 1 or bool(sample[0][2].all()):
            return "the tracing texts must have different lengths (a padded batch)"
        _, input_ids, attention_mask = sample[0]
        try:
            with warnings.catch_warnings():  # the tracer's notes on Python branches: the check below decides
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(_Logits(self.model).eval(), (input_ids, attention_mask),
                                         strict=False, check_trace=False)
            first = int(attention_mask[0].sum())  # one text alone, unpadded; the batch in another order
            checks = [(input_ids[:1, :first], attention_mask[:1, :first]),
                      (input_ids.flip(0), attention_mask.flip(0))]
            checks += [(ids, mask) for _, ids, mask in sample[1:]]
            for ids, mask in checks:
                diff = (torch.softmax(traced(ids, mask).float(), -1)
                        - torch.softmax(self._eager_logits(ids, mask).float(), -1)).abs().max().item()
                if not diff <= TRACE_TOLERANCE:
                    return f"the trace differs from the model by {diff:.2g} on a batch of shape {tuple(ids.shape)}"
        except Exception as e:  # noqa: BLE001 - any tracing failure leaves the eager model in place
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'tracing failed'}"
        self._logits, self.forward_mode = traced, "traced"
        return None

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


class _Logits(torch.nn.Module):
    """``model(input_ids, attention_mask).logits`` as a module of two tensors, the form a trace records."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


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
        self.forward_mode = "tfidf"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        p = self.tfidf.predict_proba(list(texts)) if texts else np.zeros(0)
        return np.stack([1 - p, p], axis=1).astype(np.float32)
