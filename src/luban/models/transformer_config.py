"""The config of luban.models.transformer (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection, divisible
from luban.models.registry import register_model


@register_model(tasks=("text_classification",), builder="luban.models.transformer:build")
class TransformerConfig(ModelSection):
    type: Literal["transformer"] = "transformer"
    d_model: int = Field(128, gt=0)
    nhead: int = Field(4, gt=0)
    num_layers: int = Field(2, gt=0)
    dim_feedforward: int = Field(256, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["cls", "mean"] = "mean"

    @model_validator(mode="after")
    def _heads_divide(self):
        divisible(self, "d_model", "nhead")
        return self
