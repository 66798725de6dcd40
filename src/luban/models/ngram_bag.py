"""fastText-style classifier: the mean of embeddings of token n-grams (n-grams > 1 hashed into buckets)."""

import torch
from torch import nn

_PRIMES = (1, 1_000_003, 998_244_353, 1_000_000_007, 2_147_483_647, 3_141_592_653)


class NgramBag(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, ngrams=(1, 2, 3), buckets=2_000_000, embedding_dim=64,
                 dropout=0.2, pad_id=0):
        super().__init__()
        self.vocab_size, self.ngrams, self.buckets, self.pad_id = vocab_size, tuple(ngrams), buckets, pad_id
        has_long = any(n > 1 for n in self.ngrams)
        self.embed = nn.Embedding(vocab_size + (buckets if has_long else 0), embedding_dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)

    def ngram_ids(self, ids: torch.Tensor, mask: torch.Tensor):
        """(B, T) token ids -> (B, K) n-gram row ids and (B, K) validity mask, computed with tensor ops."""
        all_ids, all_mask = [], []
        for n in self.ngrams:
            if n == 1:
                all_ids.append(ids)
                all_mask.append(mask.bool())
                continue
            if ids.shape[1] < n:
                continue
            h = torch.zeros_like(ids[:, n - 1:])
            valid = torch.ones_like(h, dtype=torch.bool)
            for k in range(n):
                window = ids[:, k: ids.shape[1] - n + 1 + k]
                h = h + window * _PRIMES[k]
                valid &= mask[:, k: ids.shape[1] - n + 1 + k].bool()
            all_ids.append(self.vocab_size + (h * n) % self.buckets)
            all_mask.append(valid)
        return torch.cat(all_ids, dim=1), torch.cat(all_mask, dim=1)

    def forward(self, ids, mask):
        rows, valid = self.ngram_ids(ids, mask)
        e = self.embed(rows) * valid.unsqueeze(-1)
        pooled = e.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        return self.head(self.dropout(pooled))
