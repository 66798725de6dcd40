"""The config of luban.models.gpt (torch-free: validating a config imports no model code), and the from-scratch GPT's
recipe: the trainer settings it takes when the config leaves them unset, and the settings derived from the corpus
("auto": the width from the vocabulary, the optimizer steps from the corpus' size), resolved when the data is read
and recorded in the run's config.yaml."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection, divisible
from luban.models.registry import register_model

# model.n_embd: auto. A GPT's next-token logits are a rank-n_embd map of its context: 128 dimensions fit the bigram
# statistics of an alphabet (65 characters of tiny-shakespeare), not those of thousands of CJK characters, where 128
# ended worse than the smoothed-bigram baseline (docs/benchmarks.md, "Generation recipes").
NARROW, WIDE, WIDE_FROM = 128, 256, 1024  # n_embd for vocabularies below / from WIDE_FROM tokens
# trainer.steps_per_epoch: auto. The whole run sees one pass over the training tokens, at least MIN_TOKENS (a small
# corpus is seen many times: the best epoch is kept; tiny-shakespeare's measured recipe trains 1.0M tokens) and at
# most MAX_TOKENS (minutes on one CPU core), and never more than MAX_PASSES passes over a tiny corpus.
MIN_TOKENS, MAX_TOKENS, MAX_PASSES = 1_000_000, 4_000_000, 50


@register_model(tasks=("text_generation",), default_for=("text_generation",), builder="luban.models.gpt:build")
class GPTConfig(ModelSection):
    """A decoder-only Transformer (GPT) from scratch: luban.models.gpt."""

    type: Literal["gpt"] = "gpt"
    block_size: int = Field(64, gt=0, description="context length in tokens (training windows, generation)")
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description=f"width; auto: {NARROW} for a vocabulary under {WIDE_FROM:,} tokens, else {WIDE} "
        "(resolved when the corpus is read; the run's config.yaml records the number)")
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = True
    positions: Literal["learned", "rope"] = "learned"
    tie_weights: bool = Field(True, description="share the token embedding with the output head")

    # measured on tiny-shakespeare (examples/char_lm_shakespeare.yaml) and People's Daily 1998 (benchmarks/char_lm.py)
    trainer_defaults: ClassVar[dict] = {
        "epochs": 10, "batch_size": 12, "optimizer": "adamw", "lr": 3e-3, "betas": [0.9, 0.99],
        "weight_decay": 0.1, "scheduler": "cosine", "warmup_ratio": 0.05, "min_lr_ratio": 0.1, "grad_clip": 1.0}

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.n_embd != "auto":
            divisible(self, "n_embd", "n_head")
        return self


def auto_width(vocab_size: int, n_head: int) -> int:
    """model.n_embd: auto for a vocabulary of this size (a multiple of n_head)."""
    width, step = (WIDE if vocab_size >= WIDE_FROM else NARROW), 2 * n_head  # even head sizes (RoPE)
    return max(step, width // step * step)


def auto_steps(train_tokens: int, epochs: int, batch_size: int, block_size: int) -> int:
    """trainer.steps_per_epoch: auto for a corpus of `train_tokens` training tokens: the token budget (above) over
    the epochs, in batches of batch_size windows of block_size tokens."""
    budget = min(max(train_tokens, MIN_TOKENS), MAX_TOKENS, MAX_PASSES * train_tokens)
    return max(1, math.ceil(budget / (epochs * batch_size * block_size)))
