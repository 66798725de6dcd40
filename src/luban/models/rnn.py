"""Bidirectional LSTM/GRU encoder with attention (or mean/max/last) pooling."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from luban.models.pooling import AttentionPool, masked_max, masked_mean


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, cell="lstm", embedding_dim=128, hidden_size=128,
                 num_layers=1, bidirectional=True, pooling="attention", dropout=0.3, pad_id=0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        out_dim = hidden_size * (2 if bidirectional else 1)
        self.pooling = pooling
        self.attn = AttentionPool(out_dim) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(out_dim, num_classes)

    def forward(self, ids, mask):
        lengths = mask.sum(1).clamp(min=1).cpu()
        x = self.dropout(self.embed(ids))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        if self.pooling == "attention":
            pooled = self.attn(out, mask)
        elif self.pooling == "mean":
            pooled = masked_mean(out, mask)
        elif self.pooling == "max":
            pooled = masked_max(out, mask)
        else:  # last real step of each sequence
            pooled = out[torch.arange(out.shape[0]), lengths.to(out.device) - 1]
        return self.head(self.dropout(pooled))


def build(cfg, *, vocab_size: int, num_classes: int, pad_id: int, **_) -> RNNClassifier:
    """The registry's builder for RNNConfig (luban.models.rnn_config)."""
    return RNNClassifier(vocab_size, num_classes, pad_id=pad_id, **cfg.model_dump(exclude={"type"}))
