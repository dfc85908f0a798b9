"""Encoders with a mean-pooling classification head: BERT (``TrainConfig.pooling = "mean"``) and Gemma.

``BertForSequenceClassification`` classifies the first token through BERT's pooler (a dense layer + tanh).
e5 was trained to embed a sentence as the mean of its last layer over real tokens, and its folder has no
pooler weights at all (the pooler starts random), so reading the mean is the natural head for it.

The class is registered with the Auto classes (model type ``kosent-bert-mean``, as the RNN baseline is), so
a checkpoint saved with it loads through ``AutoModelForSequenceClassification`` once ``kosent.models`` is
imported, and the weights keep BERT's names (``bert.*``): any BERT folder loads into it and back.

EmbeddingGemma (``gemma-ko``, :mod:`kosent.models.gemma`) gets the same head over its bidirectional Gemma 3
encoder (model type ``kosent-gemma-mean``). The stock ``Gemma3TextForSequenceClassification`` reads the last
real token, the habit of causal decoders whose last position has seen the whole text; EmbeddingGemma's
attention is bidirectional and it was trained to embed a sentence as the mean over its tokens, and the mean
is also what measured best as a frozen probe (``bench/bench_gemma.py``, docs/IMPROVING.md).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    Gemma3TextConfig,
    Gemma3TextModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.gemma3.modeling_gemma3 import Gemma3PreTrainedModel

POOLINGS = ("cls", "mean")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over real tokens (``attention_mask`` 1) of ``hidden`` [batch, length, width]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def mean_head(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    dropout: nn.Module,
    classifier: nn.Module,
    labels: torch.Tensor | None,
) -> SequenceClassifierOutput:
    """The head every mean-pooling classifier here shares: masked mean -> dropout -> linear, and the
    cross-entropy against ``labels`` when given (in fp32, also under bf16 autocast)."""
    logits = classifier(dropout(masked_mean(hidden.float(), attention_mask)))
    loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


class BertMeanPoolConfig(BertConfig):
    model_type = "kosent-bert-mean"


class BertMeanPoolForSequenceClassification(BertPreTrainedModel):
    """BERT encoder -> masked mean of the last hidden states -> dropout -> linear."""

    config_class = BertMeanPoolConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_head(hidden, attention_mask, self.dropout, self.classifier, labels)


def mean_pool_from_pretrained(path: str, **kwargs: object) -> BertMeanPoolForSequenceClassification:
    """Load any BERT folder (e5's included) with the mean-pooling head; the head starts fresh."""
    return _with_head(path, BertMeanPoolConfig, BertMeanPoolForSequenceClassification, **kwargs)


def _with_head(path: str, config_class: type, model_class: type, **kwargs: object):
    """The encoder folder at ``path`` loaded into ``model_class`` (its config retyped as ``config_class``)."""
    base = AutoConfig.from_pretrained(path).to_dict()
    base.pop("model_type", None)
    return model_class.from_pretrained(path, config=config_class(**(base | kwargs)))


class GemmaMeanPoolConfig(Gemma3TextConfig):
    model_type = "kosent-gemma-mean"


class GemmaMeanPoolForSequenceClassification(Gemma3PreTrainedModel):
    """Bidirectional Gemma 3 encoder -> masked mean of the last hidden states -> dropout -> linear.

    The weights keep ``Gemma3TextModel``'s names under ``model.`` (its ``base_model_prefix``), so an
    EmbeddingGemma folder loads into it with a fresh head."""

    config_class = GemmaMeanPoolConfig

    def __init__(self, config: Gemma3TextConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Gemma3TextModel(config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.1)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return mean_head(hidden, attention_mask, self.dropout, self.classifier, labels)


def gemma_from_pretrained(path: str, **kwargs: object) -> GemmaMeanPoolForSequenceClassification:
    """Load a Gemma 3 text encoder folder (``gemma-ko``) with the mean-pooling head; the head starts fresh."""
    return _with_head(path, GemmaMeanPoolConfig, GemmaMeanPoolForSequenceClassification, **kwargs)


AutoConfig.register(BertMeanPoolConfig.model_type, BertMeanPoolConfig)
AutoModelForSequenceClassification.register(BertMeanPoolConfig, BertMeanPoolForSequenceClassification)
AutoConfig.register(GemmaMeanPoolConfig.model_type, GemmaMeanPoolConfig)
AutoModelForSequenceClassification.register(GemmaMeanPoolConfig, GemmaMeanPoolForSequenceClassification)
