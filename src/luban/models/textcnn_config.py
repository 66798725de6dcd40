"""The config of luban.models.textcnn (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("text_classification",), default_for=("text_classification",),
                builder="luban.models.textcnn:build")
class TextCNNConfig(ModelSection):
    type: Literal["textcnn"] = "textcnn"
    embedding_dim: int = Field(128, gt=0)
    kernel_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [2, 3, 4])
    num_filters: int = Field(128, gt=0)
    dropout: float = Field(0.5, ge=0, lt=1)
