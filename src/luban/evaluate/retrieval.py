"""Retrieval metrics and rankers shared by the text_embedding task and benchmarks/retrieval.py.

Every query ranks the whole corpus (no sampled negatives) by a score matrix [queries, passages]; its gold passages
are the relevant ones. Recall@K, NDCG@K and MRR are luban.evaluate.ranking's (the recommendation task's, the same
definitions): recall@1 with one gold passage is the share of queries whose first hit is right.

    dense_scores(q_vecs, p_vecs)          cosine (the vectors are unit length)
    bm25_scores(passages, queries)        BM25 over jieba words / lowercased words (luban.kb.lexical)
    fuse_ranks(ranked id lists, k=RRF_K)  reciprocal-rank fusion (hybrid): each id's sum of 1 / (k + rank) over the
                                          rankings (luban.kb's hybrid search fuses its hit lists with it)
    rrf(score matrices, k=RRF_K)          the same fusion of whole rankings, per query
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


RRF_K = 60  # the reciprocal-rank fusion constant (Cormack et al. 2009)


def fuse_ranks(*rankings, k: int = RRF_K) -> dict:
    """Reciprocal-rank fusion (Cormack et al. 2009): {id: sum over the rankings (lists of ids, best first) that
    hold it of 1 / (k + rank)}, rank 1-based."""
    fused: dict = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + rank)
    return fused


def rrf(*scores: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank fusion of several [q, n] score matrices, vectorised: each query's rankings (ties: the lower
    index first) fused as fuse_ranks fuses id lists — every passage's sum of 1 / (k + its 1-based rank)."""
    out = np.zeros(scores[0].shape, np.float64)
    cols = np.arange(out.shape[1])
    for s in scores:
        order = np.argsort(-np.asarray(s), axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, cols[None, :] + 1, axis=1)
        out += 1.0 / (k + ranks)
    return out


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
