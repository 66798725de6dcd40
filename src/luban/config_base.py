"""The base of every config section, shared by luban.config and the model configs that live beside their models
(luban/models/*_config.py). Torch-free and free of luban imports, so validating a config stays fast."""

from __future__ import annotations

from typing import ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ColumnRef = Union[str, int]  # a column name, or a 0-based index when the file has no header


def divisible(obj, width: str, heads: str) -> None:
    """Attention widths split evenly into heads: raise the config error naming both fields otherwise."""
    w, h = getattr(obj, width), getattr(obj, heads)
    if w % h:
        raise ValueError(f"{width} ({w}) must be divisible by {heads} ({h})")


class Section(BaseModel):
    """A config section: unknown keys are errors, and a validated config is frozen (a changed copy is validated
    again: luban.config.updated)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True,
                              defer_build=True)  # schemas are built on first use: validating one task builds one


class ModelSection(Section):
    """A model's config: `type` (its name in the model registry, luban.models.registry) and its settings. The class
    attributes say what a task may ask of the model without naming its type."""

    pretrained: ClassVar[bool] = False  # loads a Hugging Face checkpoint (model.path); a run keeps its backbone/
    own_tokenizer: ClassVar[bool] = False  # brings its tokenizer: preprocessing.tokenizer.type is pretrained
    ngrams: ClassVar[bool] = False  # text: reads weighted n-grams (its own featurizer), not the tokenizer's ids
    default_threads: ClassVar[int | None] = None  # intra-op threads when trainer.num_threads is unset (None: all)
    trained_by_library: ClassVar[bool] = False  # fitted by its own library (LightGBM), not the gradient engine
    # the model's own training recipe: trainer settings it takes when the config leaves them unset (set ones win;
    # luban.config fills them in before validation, so `luban config render` shows them)
    trainer_defaults: ClassVar[dict] = {}


class TokenizerConfig(Section):
    type: Literal["char", "jieba", "whitespace", "bpe", "byte_bpe", "wordpiece", "pretrained"] = Field(
        "char", description="byte_bpe: GPT-2-style byte-level BPE trained on the corpus (no unknown tokens)")
    path: str | None = Field(None, description="pretrained tokenizer: local folder or hub id")
    allow_download: bool = False
    vocab_size: int = Field(30000, gt=0)
    min_freq: int = Field(1, ge=1)
    max_length: int = Field(256, gt=0, description="longer texts are truncated")
    lowercase: bool = False
