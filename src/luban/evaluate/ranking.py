"""Ranking metrics over the full catalogue (no sampled negatives): HR@K, Recall@K, NDCG@K, MRR and catalogue
coverage@K, plus RMSE/MAE for predicted ratings.

A user's ranking sorts every item by score, highest first; ties go to the lower item index (a stable sort), and
items the caller masked with -inf (the user's seen items) sort last. With R the user's relevant held-out items and
r the 0-based rank of each:
  hr@K      1 if some r < K
  recall@K  |{r < K}| / |R|
  ndcg@K    sum over r < K of 1/log2(r + 2), divided by the same sum for a perfect ranking (min(|R|, K) hits)
  mrr       1 / (1 + the best r)            (the full ranking, no cutoff)
  coverage@K  distinct items in anyone's top K / catalogue size
Every metric but coverage is a mean over the evaluated users.
"""

from __future__ import annotations

import numpy as np
import torch


def full_ranking(scores: torch.Tensor) -> torch.Tensor:
    """[B, n] scores -> [B, n] item indexes, best first (stable: ties keep the lower index first)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def target_ranks(order: torch.Tensor, targets: list[np.ndarray]) -> list[np.ndarray]:
    """0-based rank of each user's target items within its full ranking."""
    inverse = torch.empty_like(order)
    inverse.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    inverse = inverse.cpu().numpy()
    return [inverse[r, t] for r, t in enumerate(targets)]


def user_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """hr, recall, ndcg at k and the reciprocal rank for one user whose relevant items sit at `ranks`."""
    ranks = np.asarray(ranks)
    hits = ranks[ranks < k]
    ideal = (1.0 / np.log2(np.arange(min(len(ranks), k)) + 2)).sum()
    return {"hr": float(len(hits) > 0), "recall": len(hits) / len(ranks),
            "ndcg": float((1.0 / np.log2(hits + 2)).sum() / ideal), "mrr": 1.0 / (1 + ranks.min())}


class RankingMetrics:
    """Accumulates full-ranking metrics over batches of users at several cutoffs."""

    def __init__(self, ks: list[int], n_items: int):
        self.ks, self.n_items = sorted(set(ks)), n_items
        self.sums = {k: {"hr": 0.0, "recall": 0.0, "ndcg": 0.0} for k in self.ks}
        self.mrr, self.users = 0.0, 0
        self.covered = {k: np.zeros(n_items, dtype=bool) for k in self.ks}

    def add(self, scores: torch.Tensor, targets: list[np.ndarray]) -> None:
        """`scores` [B, n] with the seen items already -inf; `targets` the relevant items of each row (non-empty)."""
        order = full_ranking(scores.float())
        top = order[:, : max(self.ks)].cpu().numpy()
        for k in self.ks:
            self.covered[k][top[:, :k].ravel()] = True
        for ranks in target_ranks(order, targets):
            for k in self.ks:
                m = user_metrics(ranks, k)
                for name in ("hr", "recall", "ndcg"):
                    self.sums[k][name] += m[name]
            self.mrr += 1.0 / (1 + ranks.min())
            self.users += 1

    def result(self, k: int) -> dict:
        """Scalars at cutoff k (hr, recall, ndcg, mrr, coverage) and `at_k`: the same for every cutoff."""
        n = max(self.users, 1)
        at = {str(c): {**{m: v / n for m, v in self.sums[c].items()}, "coverage": self.covered[c].mean()}
              for c in self.ks}
        main = at[str(k)]
        return {"ndcg": main["ndcg"], "hr": main["hr"], "recall": main["recall"], "mrr": self.mrr / n,
                "coverage": float(main["coverage"]),
                "at_k": {c: {m: float(v) for m, v in d.items()} for c, d in at.items()}}


def rating_errors(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    err = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}
