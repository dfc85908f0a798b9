"""Every kind of model kosent trains, behind one function.

``load_model_and_tokenizer(name, label_names)`` accepts a kosent alias (``e5-small-ko``, ``e5-small``,
``gemma-ko``, ``tiny``, ``rnn``, ``birnn``), a local folder (a Hugging Face folder or a kosent checkpoint) or
a hub id. Every model returned takes ``input_ids``, ``attention_mask`` and optional ``labels`` and returns
``.logits`` (and ``.loss``), so the training loop never asks which kind it has.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kosent.models import e5_offline, gemma, hf
from kosent.models.hf import ModelError
from kosent.models.pooling import POOLINGS
from kosent.models.rnn import RNNConfig, RNNForSequenceClassification

# The tokenizer that the tiny BERT and the RNN baselines share with the offline BERT.
BASELINE_TOKENIZER = "e5-small-ko"
ALIASES = ("e5-small-ko", "e5-small", "gemma-ko", "tiny", "rnn", "birnn")

__all__ = ["ALIASES", "ModelError", "freeze", "layer_depth", "load_model_and_tokenizer", "load_tokenizer"]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name in ("tiny", "rnn", "birnn"):
        name = BASELINE_TOKENIZER
    if e5_offline.is_alias(name):
        return hf.load_tokenizer(e5_offline.resolve(name))
    if gemma.is_alias(name):
        return hf.load_tokenizer(gemma.resolve(name))
    return hf.load_tokenizer(name)


def load_model_and_tokenizer(
    name: str, label_names: list[str], pooling: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model ``name`` with a classification head over ``label_names``; ``pooling`` picks what the head
    reads in a BERT ("cls" or "mean"; the RNN baselines pool their own way and take only "cls"). ``None``
    is the model's own way: the mean for EmbeddingGemma (which has no other head), else "cls"."""
    is_gemma = gemma.is_alias(name) or hf.is_gemma_folder(name)
    if pooling is None:
        pooling = "mean" if is_gemma else "cls"
    if is_gemma and pooling != "mean":
        raise ModelError(f"{name} is an EmbeddingGemma encoder: its head reads the mean of its tokens "
                         f"(pooling mean), not '{pooling}'")
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling '{pooling}': use one of {', '.join(POOLINGS)}")
    if pooling != "cls" and name in ("rnn", "birnn"):
        raise ModelError(f"pooling '{pooling}' is for BERT encoders; the {name} baseline has its own")
    if name not in ALIASES and not Path(name).exists() and "/" not in name:
        raise ModelError(
            f"unknown model '{name}': use one of {', '.join(ALIASES)}, a local folder, "
            "or a Hugging Face hub id such as klue/bert-base"
        )
    tokenizer = load_tokenizer(name)
    if name == "tiny":
        model = hf.tiny_bert(len(tokenizer), tokenizer.pad_token_id, label_names, pooling)
    elif name in ("rnn", "birnn"):
        config = RNNConfig(
            vocab_size=len(tokenizer),
            bidirectional=name == "birnn",
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
        model = RNNForSequenceClassification(config)
    elif e5_offline.is_alias(name):
        model = hf.load_pretrained(e5_offline.resolve(name), label_names, pooling)
    elif gemma.is_alias(name):
        model = hf.load_pretrained(gemma.resolve(name), label_names, pooling)
    else:
        model = hf.load_pretrained(name, label_names, pooling)
    return model, tokenizer


def layer_depth(name: str, num_layers: int) -> int:
    """Where parameter ``name`` sits in an encoder: 0 for the embeddings, k + 1 for layer k, ``num_layers + 1``
    for everything above (final norm, pooler, head). BERT (``embeddings.``, ``encoder.layer.k.``) and Gemma
    (``embed_tokens.``, ``layers.k.``) names."""
    if re.search(r"(^|\.)(embeddings|embed_tokens)\.", name):
        return 0
    match = re.search(r"\.layers?\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def freeze(model: torch.nn.Module, embeddings: bool, layers: int) -> None:
    """Keep the embeddings (``embeddings``) or the embeddings and the lowest ``layers`` encoder layers as
    pretrained (``TrainConfig.freeze_embeddings`` / ``frozen_layers``).

    Frozen parameters get no gradient and no AdamW state, and below the lowest trainable layer autograd
    runs no backward pass at all: for ``gemma-ko`` the embedding table is most of the parameters, and each
    frozen layer takes its share of the backward pass off every step (``bench/bench_gemma.py``)."""
    if not embeddings and not layers:
        return
    num_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
    if layers > num_layers:
        raise ModelError(f"frozen_layers {layers}: {type(model).__name__} has {num_layers} encoder layers")
    frozen = {name: p for name, p in model.named_parameters() if layer_depth(name, num_layers) <= layers}
    if not any(layer_depth(n, num_layers) == 0 for n in frozen):
        raise ModelError(f"{type(model).__name__} has no embeddings kosent knows how to freeze "
                         "(freeze_embeddings and frozen_layers are for BERT and Gemma encoders)")
    for p in frozen.values():
        p.requires_grad_(False)
