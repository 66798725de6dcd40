"""The config of luban.models.resnet (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("image_classification",), default_for=("image_classification",),
                builder="luban.models.resnet:build")
class ResNetConfig(ModelSection):
    """A small ResNet from scratch: a stem, then stages of basic residual blocks."""

    type: Literal["resnet"] = "resnet"
    widths: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128])
    blocks: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [2, 2, 2])
    dropout: float = Field(0.0, ge=0, lt=1)
    stem: Literal["auto", "cifar", "imagenet"] = Field(
        "auto", description="cifar: 3x3 conv at full resolution; imagenet: stride-2 conv + max-pool; "
        "auto: imagenet for images of 64 px and more")

    @model_validator(mode="after")
    def _stages_match(self):
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"widths ({len(self.widths)} stages) and blocks ({len(self.blocks)}) must have "
                             "the same length")
        return self
