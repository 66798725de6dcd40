"""Bag of weighted n-grams: a linear model (NBSVM-style, embedding_dim 0) or fastText-style (mean embedding,
dropout, linear head). Input: padded feature ids and their weights (0 on padding).

The n-gram table has sparse gradients: a training step touches only the rows of the batch's n-grams
(luban.training.optim.LazyAdam, or Adagrad / plain SGD), so its cost follows the batch, not vocabulary x classes.
The forward stays a gather + weighted sum, which exports to ONNX as Gather/Mul/ReduceSum."""

import torch
from torch import nn


class NgramBag(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, embedding_dim=0, dropout=0.0, pad_id=0):
        super().__init__()
        self.linear = embedding_dim == 0
        self.embed = nn.Embedding(vocab_size, num_classes if self.linear else embedding_dim, padding_idx=pad_id,
                                  sparse=True)
        if self.linear:
            nn.init.zeros_(self.embed.weight)
            self.bias = nn.Parameter(torch.zeros(num_classes))
        else:
            nn.init.normal_(self.embed.weight, std=0.02)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, ids, weights):
        pooled = (self.embed(ids) * weights.unsqueeze(-1).to(self.embed.weight.dtype)).sum(1)
        if self.linear:
            return pooled + self.bias
        return self.head(self.dropout(pooled))


def build(cfg, *, vocab_size: int, num_classes: int, pad_id: int, **_) -> NgramBag:
    """The registry's builder for NgramBagConfig (luban.models.ngram_bag_config)."""
    return NgramBag(vocab_size, num_classes, embedding_dim=cfg.embedding_dim, dropout=cfg.dropout, pad_id=pad_id)
