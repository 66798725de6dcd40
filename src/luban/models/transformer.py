"""A small Transformer encoder classifier: token + learned position embeddings, pre-norm layers."""

import torch
from torch import nn

from luban.models.pooling import masked_mean


class TransformerClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, max_length: int, d_model=128, nhead=4, num_layers=2,
                 dim_feedforward=256, dropout=0.1, pooling="mean", pad_id=0):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Embedding(max_length + 1, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids, mask):
        b, t = ids.shape
        x = torch.cat([self.cls.expand(b, 1, -1), self.embed(ids)], dim=1)
        x = x + self.pos(torch.arange(t + 1, device=ids.device))
        full_mask = torch.cat([torch.ones(b, 1, dtype=mask.dtype, device=mask.device), mask], dim=1)
        h = self.norm(self.encoder(self.dropout(x), src_key_padding_mask=~full_mask.bool()))
        pooled = h[:, 0] if self.pooling == "cls" else masked_mean(h[:, 1:], mask)
        return self.head(self.dropout(pooled))


def build(cfg, *, vocab_size: int, num_classes: int, pad_id: int, max_length: int, **_) -> TransformerClassifier:
    """The registry's builder for TransformerConfig (luban.models.transformer_config)."""
    return TransformerClassifier(vocab_size, num_classes, max_length, pad_id=pad_id, **cfg.model_dump(exclude={"type"}))
