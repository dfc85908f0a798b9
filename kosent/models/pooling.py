"""BERT with a mean-pooling classification head (``TrainConfig.pooling = "mean"``).

``BertForSequenceClassification`` classifies the first token through BERT's pooler (a dense layer + tanh).
e5 was trained to embed a sentence as the mean of its last layer over real tokens, and its folder has no
pooler weights at all (the pooler starts random), so reading the mean is the natural head for it.

The class is registered with the Auto classes (model type ``kosent-bert-mean``, as the RNN baseline is), so
a checkpoint saved with it loads through ``AutoModelForSequenceClassification`` once ``kosent.models`` is
imported, and the weights keep BERT's names (``bert.*``): any BERT folder loads into it and back.
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
)
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("cls", "mean")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over real tokens (``attention_mask`` 1) of ``hidden`` [batch, length, width]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


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
        logits = self.classifier(self.dropout(masked_mean(hidden.float(), attention_mask)))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def mean_pool_from_pretrained(path: str, **kwargs: object) -> BertMeanPoolForSequenceClassification:
    """Load any BERT folder (e5's included) with the mean-pooling head; the head starts fresh."""
    base = AutoConfig.from_pretrained(path).to_dict()
    base.pop("model_type", None)
    config = BertMeanPoolConfig(**(base | kwargs))
    return BertMeanPoolForSequenceClassification.from_pretrained(path, config=config)


AutoConfig.register(BertMeanPoolConfig.model_type, BertMeanPoolConfig)
AutoModelForSequenceClassification.register(BertMeanPoolConfig, BertMeanPoolForSequenceClassification)
