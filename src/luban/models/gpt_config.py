"""The config of luban.models.gpt (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection, divisible
from luban.models.registry import register_model


@register_model(tasks=("text_generation",), default_for=("text_generation",), builder="luban.models.gpt:build")
class GPTConfig(ModelSection):
    """A decoder-only Transformer (GPT) from scratch: luban.models.gpt."""

    type: Literal["gpt"] = "gpt"
    block_size: int = Field(128, gt=0, description="context length in tokens (training windows, generation)")
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = True
    positions: Literal["learned", "rope"] = "learned"
    tie_weights: bool = Field(True, description="share the token embedding with the output head")

    @model_validator(mode="after")
    def _heads_divide(self):
        divisible(self, "n_embd", "n_head")
        return self
