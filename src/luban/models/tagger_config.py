"""The config of luban.models.tagger (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("token_classification",), default_for=("token_classification",),
                builder="luban.models.tagger:build_bilstm")
class BiLSTMTaggerConfig(ModelSection):
    """Sequence labelling from scratch: token embeddings -> bidirectional LSTM -> tag scores (+ CRF: tagging.crf)."""

    type: Literal["bilstm_tagger"] = "bilstm_tagger"
    embedding_dim: int = Field(128, gt=0)
    hidden_size: int = Field(256, gt=0, description="both directions together")
    num_layers: int = Field(1, gt=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    bigram_buckets: int = Field(0, ge=0, description="also embed the bigrams each token forms with its neighbours, "
                                "hashed into this many buckets (Chinese segmentation / NER: e.g. 200000); 0: off")
    bigram_dim: int = Field(64, gt=0)
