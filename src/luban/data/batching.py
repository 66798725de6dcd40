"""Batches for variable-length sequences: length bucketing and dynamic padding.

Bucketing shuffles, then sorts within windows of `window` batches by length, then shuffles the batches: every
batch holds texts of similar length (little padding) while epochs still differ. Order is a pure function of
(seed, epoch), which makes --resume reproduce an uninterrupted run.
"""

from __future__ import annotations

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  bucket: bool = True, window: int = 50) -> list[list[int]]:
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i]) if bucket else list(range(n))
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if bucket:
        span = batch_size * window
        order = [i for s in range(0, n, span) for i in sorted(order[s:s + span], key=lambda i: lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if bucket:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[p] for p in perm]
    return batches


def pad_ids(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence in the batch; returns (ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask
