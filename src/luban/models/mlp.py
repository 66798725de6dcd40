"""Tabular MLP (the seeds' SimpleNN): standardized numeric features + categorical embeddings -> hidden layers."""

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def embedding_size(cardinality: int) -> int:
    return int(min(32, round(1.6 * cardinality ** 0.56)))


class TabularMLP(nn.Module):
    def __init__(self, num_numeric: int, cardinalities: list[int], out_dim: int, hidden_sizes=(128, 64),
                 activation="relu", dropout=0.1, batch_norm=False, embedding_dim=None):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(c, embedding_dim or embedding_size(c)) for c in cardinalities)
        width = num_numeric + sum(e.embedding_dim for e in self.embeds)
        layers = []
        for h in hidden_sizes:
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batch_norm else [])
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, numeric, categorical):
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeds)]
        return self.head(self.body(torch.cat(parts, dim=1)))


def build(cfg, *, n_numeric: int, cardinalities, out_dim: int, **_) -> TabularMLP:
    """The registry's builder for MLPConfig (luban.models.mlp_config)."""
    return TabularMLP(n_numeric, cardinalities, out_dim, hidden_sizes=cfg.hidden_sizes, activation=cfg.activation,
                      dropout=cfg.dropout, batch_norm=cfg.batch_norm, embedding_dim=cfg.embedding_dim)
