"""The config of luban.models.pretrained_image (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("image_classification",), builder="luban.models.pretrained_image:build")
class PretrainedImageConfig(ModelSection):
    """Any HF image backbone (ViT, ResNet, ConvNeXt, ...) + a new classification head."""

    type: Literal["pretrained_image"] = "pretrained_image"
    pretrained: ClassVar[bool] = True
    path: str = Field(description="HF model folder, or a hub id with allow_download: true")
    allow_download: bool = False
    trust_remote_code: bool = False
    freeze: bool = Field(False, description="true: train only the head (frozen backbone); false: full fine-tune")
    dropout: float = Field(0.0, ge=0, lt=1)
