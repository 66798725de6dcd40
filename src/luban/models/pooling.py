"""Pooling a (batch, time, dim) sequence to (batch, dim) under a padding mask."""

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(x.dtype).min).max(1).values


class AttentionPool(nn.Module):
    """Additive attention over time steps (Yang et al. 2016), padding masked out."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, x, mask):
        scores = self.proj(x).squeeze(-1).masked_fill(~mask.bool(), torch.finfo(x.dtype).min)
        return (torch.softmax(scores, dim=1).unsqueeze(-1) * x).sum(1)
