"""The config of luban.models.gan (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("image_generation",), default_for=("image_generation",), builder="luban.models.gan:build")
class DCGANConfig(ModelSection):
    """A DCGAN-style generator + discriminator, optionally class-conditional."""

    type: Literal["dcgan"] = "dcgan"
    latent_dim: int = Field(64, gt=0)
    base_channels: int = Field(64, gt=0)
    conditional: bool = True
    spectral_norm: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="real targets become 1 - this")
    lr_discriminator: float | None = Field(None, gt=0, description="default: trainer.lr")
    beta1: float = Field(0.5, ge=0, lt=1)
    eval_samples: int = Field(1000, gt=1, description="generated samples scored each epoch (balanced over labels)")
    classifier_epochs: int = Field(8, gt=0, description="epochs of the quality classifier trained on real images "
                                   "(at least 150 steps)")
