"""TextCNN (Kim 2014): parallel 1-D convolutions of several widths, max-pooled over time."""

import torch
from torch import nn

from luban.models.pooling import masked_max


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, embedding_dim=128, kernel_sizes=(2, 3, 4),
                 num_filters=128, dropout=0.5, pad_id=0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, k, padding=k // 2) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_filters * len(kernel_sizes), num_classes)

    def forward(self, ids, mask):
        x = self.dropout(self.embed(ids)).transpose(1, 2)  # (B, E, T)
        feats = []
        for conv in self.convs:
            h = torch.relu(conv(x))[:, :, : ids.shape[1]].transpose(1, 2)  # (B, T, F)
            feats.append(masked_max(h, mask))
        return self.head(self.dropout(torch.cat(feats, dim=1)))


def build(cfg, *, vocab_size: int, num_classes: int, pad_id: int, **_) -> TextCNN:
    """The registry's builder for TextCNNConfig (luban.models.textcnn_config)."""
    return TextCNN(vocab_size, num_classes, pad_id=pad_id, **cfg.model_dump(exclude={"type"}))
