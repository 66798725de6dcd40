"""The config of luban.models.mlp (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("tabular_regression", "tabular_classification"), builder="luban.models.mlp:build")
class MLPConfig(ModelSection):
    type: Literal["mlp"] = "mlp"
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [128, 64])
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)
    batch_norm: bool = False
    embedding_dim: int | None = Field(None, gt=0, description="categorical embedding size; default from cardinality")
