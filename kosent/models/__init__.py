"""Every kind of model kosent trains, behind one function.

``load_model_and_tokenizer(name, label_names)`` accepts a kosent alias (``e5-small-ko``, ``e5-small``,
``tiny``, ``rnn``, ``birnn``), a local folder (a Hugging Face folder or a kosent checkpoint) or a hub
id. Every model returned takes ``input_ids``, ``attention_mask`` and optional ``labels`` and returns
``.logits`` (and ``.loss``), so the training loop never asks which kind it has.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kosent.models import e5_offline, hf
from kosent.models.hf import ModelError
from kosent.models.pooling import POOLINGS
from kosent.models.rnn import RNNConfig, RNNForSequenceClassification

# The tokenizer that the tiny BERT and the RNN baselines share with the offline BERT.
BASELINE_TOKENIZER = "e5-small-ko"
ALIASES = ("e5-small-ko", "e5-small", "tiny", "rnn", "birnn")

__all__ = ["ALIASES", "ModelError", "load_model_and_tokenizer", "load_tokenizer"]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name in ("tiny", "rnn", "birnn"):
        name = BASELINE_TOKENIZER
    if e5_offline.is_alias(name):
        return hf.load_tokenizer(e5_offline.resolve(name))
    return hf.load_tokenizer(name)


def load_model_and_tokenizer(
    name: str, label_names: list[str], pooling: str = "cls"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model ``name`` with a classification head over ``label_names``; ``pooling`` picks what the head
    reads in a BERT ("cls" or "mean"; the RNN baselines pool their own way and take only "cls")."""
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
    else:
        model = hf.load_pretrained(name, label_names, pooling)
    return model, tokenizer
