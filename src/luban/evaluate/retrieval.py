"""Retrieval metrics and rankers shared by the text_embedding task and benchmarks/retrieval.py.

Every query ranks the whole corpus (no sampled negatives) by a score matrix [queries, passages]; its gold passages
are the relevant ones. Recall@K, NDCG@K and MRR are luban.evaluate.ranking's (the recommendation task's, the same
definitions): recall@1 with one gold passage is the share of queries whose first hit is right.

    dense_scores(q_vecs, p_vecs)          cosine (the vectors are unit length)
    bm25_scores(passages, queries)        BM25 over jieba words / lowercased words (luban.kb.lexical)
    rrf(score matrices, k=60)             reciprocal-rank fusion (hybrid): sum of 1 / (k + rank) over the rankers
    retrieval_metrics(scores, gold)       {"recall_at_1", "recall_at_10", "mrr", "ndcg_at_10", "queries", "passages"}
"""

from __future__ import annotations

import numpy as np

KS = (1, 10)
METRICS = ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10")


def dense_scores(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float32) @ np.asarray(p, np.float32).T


def bm25_scores(passages: list[str], queries: list[str]) -> np.ndarray:
    """[queries, passages] BM25 scores (jieba words where the text has Chinese, else lowercased \\w+ words)."""
    from luban.kb.lexical import BM25Index

    index = BM25Index.build(list(passages))
    return np.stack([index.scores(q) for q in queries]) if queries else np.zeros((0, len(passages)), np.float32)


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """[q, n] 0-based rank of each passage in each query's ranking (best = 0; ties: the lower index first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(scores.shape[1])[None, :]
    return ranks


def rrf(*scores: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack et al. 2009) of several [q, n] score matrices."""
    return sum(1.0 / (k + 1 + ranks_of(s)) for s in scores)


def retrieval_metrics(scores: np.ndarray, gold: list[list[int]], detailed: bool = False) -> dict:
    """Recall@1/10, MRR, NDCG@10 of rankings by `scores` [q, n] against each query's gold passage indexes.
    detailed: also `gold_ranks` (the best gold rank of each query, 0-based)."""
    import torch

    from luban.evaluate.ranking import RankingMetrics, full_ranking, target_ranks

    n = scores.shape[1]
    acc = RankingMetrics(list(KS), n)
    best = []
    for s in range(0, len(gold), 256):
        part = torch.from_numpy(np.ascontiguousarray(scores[s:s + 256], np.float32))
        targets = [np.asarray(g, np.int64) for g in gold[s:s + 256]]
        acc.add(part, targets)
        if detailed:
            best += [int(r.min()) for r in target_ranks(full_ranking(part), targets)]
    at = acc.result(10)["at_k"]
    out = {"recall_at_1": at["1"]["recall"], "recall_at_10": at["10"]["recall"], "mrr": acc.mrr / max(acc.users, 1),
           "ndcg_at_10": at["10"]["ndcg"], "queries": len(gold), "passages": n}
    if detailed:
        out["gold_ranks"] = best
    return out
