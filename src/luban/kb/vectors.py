"""Dense vector stores behind one interface: the embedded default (FAISS inverted lists, no server) and a real
server engine (PostgreSQL + pgvector, `luban.kb.pgvector`).

    store.add(ids, vectors); store.remove(ids); store.search(query_vector, k) -> (ids, cosine scores); len(store)

Vectors are L2-normalized float32, so the inner product is the cosine. The embedded store keeps the exact vectors
(vectors.npy, row-aligned with ids.npy) and, from ANN_MIN vectors on, a FAISS IVF-Flat index (ann.faiss: 2 sqrt(n)
k-means lists, NPROBE of them searched) for search; below that an exact matrix product is fast enough (50k x 384 in
a few ms). IVF over HNSW (usearch, FAISS HNSW) by measurement on this 2-core machine: an HNSW graph built 182 chunks/s
(1M chunks: 1.5 hours), the inverted lists build in minutes at the same recall (benchmarks/kb_scale.py,
docs/benchmarks.md). Chunks added later go into the trained lists; removals delete from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANN_MIN = 50_000
LISTS_PER_SQRT = 2  # k-means lists: 2 sqrt(n) (2,000 at 1M chunks)
NPROBE_FRACTION, NPROBE_MIN = 1 / 40, 48  # lists searched per query: 2.5% of them, at least 48
TRAIN_PER_LIST = 40  # k-means training sample: 40 vectors per list


def ivf(vectors: np.ndarray, threads: int = 0):
    """A FAISS IVF-Flat inner-product index trained on a sample of `vectors` (empty: add them next)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = vectors.shape
    nlist = int(max(16, min(8192, LISTS_PER_SQRT * np.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors if n <= nlist * TRAIN_PER_LIST else vectors[
        np.random.default_rng(0).choice(n, nlist * TRAIN_PER_LIST, replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = max(NPROBE_MIN, int(nlist * NPROBE_FRACTION))
    return index


class EmbeddedStore:
    """Exact vectors + a FAISS IVF index over them, saved as .npy files and FAISS's own index file (no pickle)."""

    engine = "faiss"

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
            self.ann.add_with_ids(vectors, np.asarray(ids, np.int64))
        elif len(self) >= ANN_MIN:
            self.rebuild(threads)

    def remove(self, ids) -> None:
        gone = np.asarray(list(ids), np.int64)
        keep = ~np.isin(self.ids, gone)
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]
        if self.ann is not None:
            self.ann.remove_ids(gone)
            if len(self) < ANN_MIN:
                self.ann = None

    def rebuild(self, threads: int = 0) -> None:
        self.ann = ivf(self.vectors, threads) if len(self) else None
        if self.ann is not None:
            self.ann.add_with_ids(self.vectors, self.ids)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = np.asarray(q, np.float32).reshape(-1)
        if self.ann is not None:
            scores, ids = self.ann.search(q[None], k)
            found = ids[0] >= 0  # fewer than k in the lists probed: FAISS pads with -1
            return ids[0][found].astype(np.int64), scores[0][found].astype(np.float32)
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
            import faiss

            faiss.write_index(self.ann, str(folder / "ann.faiss"))

    @classmethod
    def load(cls, folder: Path, dim: int) -> EmbeddedStore:
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        ann = None
        if (folder / "ann.faiss").is_file():
            import faiss

            ann = faiss.read_index(str(folder / "ann.faiss"))
        return cls(dim, ids, vectors, ann)
