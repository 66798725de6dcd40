"""The config of luban.models.detector (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("object_detection",), default_for=("object_detection",), builder="luban.models.detector:build")
class CenterNetConfig(ModelSection):
    """An anchor-free single-stage detector (CenterNet-style heatmap + size + offset heads)."""

    type: Literal["centernet"] = "centernet"
    widths: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128, 256])
    head_channels: int = Field(64, gt=0)
    score_threshold: float = Field(0.05, ge=0, le=1)
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_detections: int = Field(100, gt=0)
    output_stride: Literal[4, 8] = Field(4, description="stride of the heatmap (4: finer, 8: ~3x cheaper)")
    blocks: int = Field(1, ge=0, description="residual blocks per backbone stage")
    scale_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = Field(
        (0.5, 1.5), description="training: random zoom range relative to the letterboxed fit (random crop/translate)")
    mosaic: float = Field(0.5, ge=0, le=1, description="training: probability of a 4-image mosaic sample")
    giou_weight: float = Field(2.0, ge=0, description="weight of the GIoU box loss")
