"""The paper's recurrent baselines: a GRU and a bidirectional GRU over the same tokenizer as BERT.

They are ``transformers.PreTrainedModel`` subclasses so that they save and load exactly like the BERT
models (``save_pretrained`` -> safetensors + config.json) and go through the same training loop.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from kosent.models.pooling import mean_head


class RNNConfig(PretrainedConfig):
    model_type = "kosent-rnn"

    def __init__(
        self,
        vocab_size: int = 32_000,
        embedding_size: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.2,
        pad_token_id: int = 0,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class RNNForSequenceClassification(PreTrainedModel):
    """Embedding -> GRU -> masked mean over time (plus the last state) -> linear head."""

    config_class = RNNConfig
    base_model_prefix = "rnn"

    def __init__(self, config: RNNConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.gru = nn.GRU(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        width = config.hidden_size * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: object,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(input_ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return mean_head(out, attention_mask, self.dropout, self.classifier, labels)


AutoConfig.register(RNNConfig.model_type, RNNConfig)
AutoModelForSequenceClassification.register(RNNConfig, RNNForSequenceClassification)
