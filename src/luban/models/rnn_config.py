"""The config of luban.models.rnn (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("text_classification",), builder="luban.models.rnn:build")
class RNNConfig(ModelSection):
    type: Literal["rnn"] = "rnn"
    cell: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = Field(128, gt=0)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(1, gt=0)
    bidirectional: bool = True
    pooling: Literal["attention", "mean", "max", "last"] = "attention"
    dropout: float = Field(0.3, ge=0, lt=1)
