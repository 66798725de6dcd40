"""CTC decoding: greedy (best path, repeats merged, blanks dropped) and prefix beam search.

Both take per-frame log-probabilities with index 0 = blank and return unit ids (blank excluded).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

BLANK = 0


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """log_probs (batch, frames, units) -> per row the best path with repeats merged and blanks removed."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist(), strict=True):
        ids, prev = [], BLANK
        for t in row[:n].tolist():
            if t != prev and t != BLANK:
                ids.append(t)
            prev = t
        out.append(ids)
    return out


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(log_probs: torch.Tensor, beam: int = 8, prune: float = -12.0) -> list[int]:
    """One utterance, (frames, units) log-probabilities -> the most probable unit sequence summed over all its
    alignments (the standard CTC prefix beam search; units below `prune` log-prob at a frame are skipped)."""
    lp = log_probs.float().cpu().tolist()
    # prefix -> (log p ending in blank, log p ending in non-blank)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in lp:
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        units = [u for u, p in enumerate(frame) if p > prune] or [max(range(len(frame)), key=frame.__getitem__)]
        for prefix, (pb, pnb) in beams.items():
            total = _logsumexp(pb, pnb)
            for u in units:
                p = frame[u]
                if u == BLANK:
                    e = nxt[prefix]
                    e[0] = _logsumexp(e[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                extended = prefix + (u,)
                e = nxt[extended]
                if u == last:  # a repeat only extends after a blank; otherwise it merges into the prefix
                    e[1] = _logsumexp(e[1], pb + p)
                    same = nxt[prefix]
                    same[1] = _logsumexp(same[1], pnb + p)
                else:
                    e[1] = _logsumexp(e[1], total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return list(max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))[0])


def decode(log_probs: torch.Tensor, lengths: torch.Tensor, beam: int = 1) -> list[list[int]]:
    if beam <= 1:
        return greedy_decode(log_probs, lengths)
    return [prefix_beam_search(lp[:n], beam) for lp, n in zip(log_probs, lengths.tolist(), strict=True)]
