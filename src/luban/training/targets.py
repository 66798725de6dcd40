"""The logits a language-model loss needs: those at the trained (non-IGNORE) target positions only.

Instruction tuning and preference training score the reply tokens; the prompt's positions are read but never
scored. A model with `logits_at(ids, keep)` (luban's GPT, an HF causal LM with a plain linear head) runs its
vocabulary-wide output head on the kept rows alone — on Qwen2.5-0.5B a quarter of the work per token, forward and
backward, and no (batch, time, vocab) tensor in memory. Any other module (a DDP wrapper among them) gives its full
logits, indexed the same way, so the values are identical either way.
"""

from __future__ import annotations

import torch
from torch import nn

from luban.data.chat import IGNORE


def target_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits (n, vocab) in float32, targets (n,), row (n,)) at the n positions where y is not IGNORE, row-major."""
    keep = y != IGNORE
    at = getattr(model, "logits_at", None)
    logits = at(x, keep) if at is not None else model(x)[keep]
    return logits.float(), y[keep], keep.nonzero(as_tuple=True)[0]
