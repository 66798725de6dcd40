"""Dense vector stores behind one interface: the embedded default (usearch HNSW, one file, no server) and a real
server engine (PostgreSQL + pgvector, `luban.kb.pgvector`).

    store.add(ids, vectors); store.remove(ids); store.search(query_vector, k) -> (ids, cosine scores); len(store)

Vectors are L2-normalized float32, so the inner product is the cosine. The embedded store keeps the exact vectors
(vectors.npy, row-aligned with ids.npy) and, from ANN_MIN vectors on, an HNSW graph (ann.usearch) for search;
below that an exact matrix product is faster than any graph (20k x 384 in ~2 ms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANN_MIN = 20_000
# HNSW settings measured in benchmarks/kb_scale.py (1M x 384: recall@10 vs exact >= 0.95 at p50 well under 20 ms)
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 96


def hnsw(dim: int):
    from usearch.index import Index

    return Index(ndim=dim, metric="ip", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                 expansion_search=EXPANSION_SEARCH)


class EmbeddedStore:
    """Exact vectors + an usearch HNSW index over them, saved as .npy files and one usearch file (no pickle)."""

    engine = "usearch"

    def __init__(self, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None, ann=None):
        self.dim = dim
        self.ids = np.zeros(0, np.int64) if ids is None else ids.astype(np.int64)
        self.vectors = np.zeros((0, dim), np.float32) if vectors is None else vectors.astype(np.float32)
        self.ann = ann

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids, vectors: np.ndarray, threads: int = 0) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors
        if self.ann is not None:
            self.ann.add(np.asarray(ids, np.int64), vectors, threads=threads)
        elif len(self) >= ANN_MIN:
            self.rebuild(threads)

    def remove(self, ids) -> None:
        keep = ~np.isin(self.ids, np.asarray(list(ids), np.int64))
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]
        self.ann = None
        if len(self) >= ANN_MIN:
            self.rebuild()

    def rebuild(self, threads: int = 0) -> None:
        self.ann = hnsw(self.dim)
        if len(self):
            self.ann.add(self.ids, self.vectors, threads=threads)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = np.asarray(q, np.float32).reshape(-1)
        if self.ann is not None:
            m = self.ann.search(q, k)
            # usearch's "ip" distance is 1 - inner product
            return np.asarray(m.keys, np.int64), (1.0 - np.asarray(m.distances, np.float32))
        s = self.vectors @ q
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top], kind="stable")]
        return self.ids[top], s[top]

    def exact(self, q: np.ndarray, k: int) -> np.ndarray:
        """The exact top-k ids (recall reference of the ANN)."""
        s = self.vectors @ np.asarray(q, np.float32).reshape(-1)
        top = np.argpartition(-s, k - 1)[:k]
        return self.ids[top[np.argsort(-s[top], kind="stable")]]

    # ------------------------------------------------------------------ files
    def save(self, folder: Path) -> None:
        np.save(folder / "ids.npy", self.ids, allow_pickle=False)
        np.save(folder / "vectors.npy", self.vectors, allow_pickle=False)
        if self.ann is not None:
            self.ann.save(str(folder / "ann.usearch"))

    @classmethod
    def load(cls, folder: Path, dim: int) -> EmbeddedStore:
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        ann = None
        if (folder / "ann.usearch").is_file():
            ann = hnsw(dim)
            ann.load(str(folder / "ann.usearch"))
        return cls(dim, ids, vectors, ann)
