"""The config of luban.models.seq2seq (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection, TokenizerConfig, divisible
from luban.models.registry import register_model


@register_model(tasks=("translation", "summarization"), default_for=("translation", "summarization"),
                builder="luban.models.seq2seq:build_transformer")
class Seq2SeqTransformerConfig(ModelSection):
    """An encoder-decoder Transformer from scratch (translation, summarization)."""

    type: Literal["seq2seq_transformer"] = "seq2seq_transformer"
    d_model: int = Field(256, gt=0)
    nhead: int = Field(4, gt=0)
    num_encoder_layers: int = Field(3, gt=0)
    num_decoder_layers: int = Field(3, gt=0)
    dim_feedforward: int = Field(1024, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    shared_vocabulary: bool = Field(False, description="one vocabulary (and tied embeddings) for source and "
                                    "target")
    source_tokenizer: TokenizerConfig | None = Field(
        None, description="separate vocabularies: the source side's tokenizer (e.g. bpe for English); default: "
        "preprocessing.tokenizer, which always tokenizes the target")
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    copy_source: bool = Field(False, description="pointer-generator head: copy source tokens into the output "
                              "(summarization); needs shared_vocabulary")
    max_source_length: int = Field(128, gt=0, description="longer sources are truncated (tokens)")
    max_target_length: int = Field(128, gt=0, description="longer targets are truncated in training (tokens)")

    @model_validator(mode="after")
    def _heads_divide(self):
        divisible(self, "d_model", "nhead")
        if self.copy_source and not self.shared_vocabulary:
            raise ValueError("copy_source: true needs shared_vocabulary: true (copied source tokens must be target tokens)")
        if self.source_tokenizer is not None and self.shared_vocabulary:
            raise ValueError("source_tokenizer: a shared vocabulary uses preprocessing.tokenizer for both sides")
        return self


@register_model(tasks=("translation", "summarization"), builder="luban.models.seq2seq:build_pretrained")
class PretrainedSeq2SeqConfig(ModelSection):
    """Any Hugging Face encoder-decoder (T5, BART, Marian, mBART...) fine-tuned from a folder."""

    type: Literal["pretrained_seq2seq"] = "pretrained_seq2seq"
    pretrained: ClassVar[bool] = True
    own_tokenizer: ClassVar[bool] = True  # preprocessing.tokenizer is the model's own
    path: str = Field(description="HF model folder, or a hub id with allow_download: true")
    allow_download: bool = False
    trust_remote_code: bool = False
    source_prefix: str = Field("", description="prepended to every source, e.g. 'summarize: ' for T5")
    max_source_length: int = Field(256, gt=0)
    max_target_length: int = Field(128, gt=0)
