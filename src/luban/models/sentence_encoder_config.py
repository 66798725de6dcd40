"""The config of luban.models.sentence_encoder (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("text_embedding",), default_for=("text_embedding",),
                builder="luban.models.sentence_encoder:build")
class SentenceEncoderConfig(ModelSection):
    """An HF encoder fine-tuned as a sentence embedder; its pooling and query/passage prefixes come from the model
    (luban.embedding.encoder: sentence-transformers files, known families such as e5), not from this config."""

    type: Literal["sentence_encoder"] = "sentence_encoder"
    pretrained: ClassVar[bool] = True
    path: str = Field(description="HF encoder folder, a starter name (starter-e5-small, starter-minilm), or a "
                      "hub id with allow_download")
    allow_download: bool = False
    trust_remote_code: bool = False
    max_length: int | None = Field(None, gt=0, description="tokens per text (longer ones are truncated); default: "
                                   "the model's own limit, at most 512")
    freeze: Union[bool, Annotated[int, Field(ge=0)]] = Field(
        False, description="true: freeze the whole encoder (evaluate only); N: freeze embeddings and the first N "
        "layers")
