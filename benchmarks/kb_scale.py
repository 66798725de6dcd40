"""Knowledge-base index at scale: build and query N synthetic chunks (default 1M) in the embedded store (FAISS IVF-Flat
inverted lists), against exact search; optionally the server engine (PostgreSQL + pgvector) at a smaller N.

Vectors are synthetic (clustered, L2-normalized, 384-d like starter-e5-small): embedding 1M real texts on 2 shared
CPU cores would take days, and the index's speed and recall depend on the vectors' count and geometry, not on where
they came from. Queries are dataset vectors plus noise; recall@10 is the ANN's top 10 against the exact top 10.

    python benchmarks/kb_scale.py --chunks 1000000          # last line: one JSON object
    python benchmarks/kb_scale.py --chunks 200000 --server-chunks 20000
    python benchmarks/kb_scale.py --chunks 0 --embed-chunks 2000 --embed-workers 2   # real texts: local vs Ray

--embed-chunks N embeds N real Chinese texts (the csl-summ abstracts, cut into pieces of about --embed-chars
characters) with --embedder (starter-e5-small) the way `luban kb build` does (luban.kb.base.embed_passages): in this
process, then on --embed-workers Ray actors (`--backend ray`), and reports chunks/s of both and the largest
difference between their vectors. The Ray time includes the actors' start and model loading, not `ray.init`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def engine_name() -> str:
    from luban.kb import vectors

    return (f"faiss IVF-Flat ({vectors.LISTS_PER_SQRT} sqrt(n) lists, nprobe {vectors.NPROBE_FRACTION:.1%} of "
            f"them, min {vectors.NPROBE_MIN})")


LATENT = 48


def synthetic(n: int, dim: int, seed: int = 0, clusters: int = 5000) -> np.ndarray:
    """Sentence-embedding-like vectors: topics (a Gaussian mixture) in a LATENT-d space, linearly embedded in dim
    dimensions, plus small isotropic noise, L2-normalized. (Isotropic random vectors have no near neighbours to
    find: no index, exact search aside, reaches recall 0.95 on them at these speeds.)"""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0].T.astype(np.float32)  # LATENT x dim, orthonormal
    centers = rng.standard_normal((clusters, LATENT)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        z = centers[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, LATENT)).astype(np.float32)
        x = z @ basis + 0.05 * rng.standard_normal((m, dim)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def queries(x: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Dataset vectors moved by noise (paraphrases of stored chunks)."""
    rng = np.random.default_rng(seed)
    q = x[rng.integers(0, len(x), n)] + 0.02 * rng.standard_normal((n, x.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    best = np.zeros((len(q), k), np.int64)
    scores = np.full((len(q), k), -np.inf, np.float32)
    for s in range(0, len(x), 200_000):
        part = q @ x[s:s + 200_000].T
        ids = np.concatenate([best, np.arange(s, s + part.shape[1])[None].repeat(len(q), 0)], 1)
        sc = np.concatenate([scores, part], 1)
        top = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        best, scores = np.take_along_axis(ids, top, 1), np.take_along_axis(sc, top, 1)
    return best


def timed_queries(search, q: np.ndarray, k: int):
    lat, found = [], []
    for v in q:
        t = time.perf_counter()
        ids = search(v, k)
        lat.append((time.perf_counter() - t) * 1000)
        found.append(set(int(i) for i in ids))
    return np.array(lat), found


def embedded(x, q, gold, k, threads):
    from luban.kb.vectors import EmbeddedStore

    folder = Path(tempfile.mkdtemp(prefix="kb_scale_"))
    try:
        store = EmbeddedStore(x.shape[1])
        store.ids, store.vectors = np.arange(len(x), dtype=np.int64), x
        t = time.perf_counter()
        store.rebuild(threads=threads)
        build = time.perf_counter() - t
        store.save(folder)
        index_mb = (folder / "ann.faiss").stat().st_size / 2**20
        total_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        loaded = EmbeddedStore.load(folder, x.shape[1])
        lat, found = timed_queries(lambda v, kk: loaded.search(v, kk)[0], q, k)
        recall = float(np.mean([len(f & set(g.tolist())) / k for f, g in zip(found, gold)]))
        return {"build_seconds": round(build, 1), "build_chunks_per_s": round(len(x) / build),
                "index_mb": round(index_mb, 1), "kb_vectors_mb": round(total_mb, 1),
                "query_p50_ms": round(float(np.percentile(lat, 50)), 3),
                "query_p99_ms": round(float(np.percentile(lat, 99)), 3), "ann_recall10": round(recall, 4)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server(x, q, gold, k):
    from luban.kb.pgvector import PgVectorStore

    folder = Path(tempfile.mkdtemp(prefix="kb_scale_pg_"))
    os.environ.setdefault("LUBAN_PGDATA", str(folder / "pgdata"))
    store = PgVectorStore.create({"id": "bench", "embedder": {"dim": x.shape[1]}, "dsn": None})
    try:
        t = time.perf_counter()
        store.add(np.arange(len(x), dtype=np.int64), x)
        store.commit()  # the HNSW index is built here
        build = time.perf_counter() - t
        lat, found = timed_queries(lambda v, kk: store.search(v, kk)[0], q, k)
        recall = float(np.mean([len(f & set(g.tolist())) / k for f, g in zip(found, gold)]))
        return {"server_engine": "pgvector (pgserver: PostgreSQL + pgvector 0.6, HNSW m=16 ef_construction=64, "
                                 "ef_search=100)", "server_chunks": len(x),
                "server_build_seconds": round(build, 1), "server_build_chunks_per_s": round(len(x) / build),
                "server_index_mb": round(store.table_mb(), 1),
                "server_query_p50_ms": round(float(np.percentile(lat, 50)), 3),
                "server_query_p99_ms": round(float(np.percentile(lat, 99)), 3),
                "server_ann_recall10": round(recall, 4)}
    finally:
        store.drop()
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def real_texts(data: Path, n: int, chars: int) -> list[str]:
    """n pieces of the csl-summ abstracts (dev then test), each about `chars` characters."""
    out: list[str] = []
    for split in ("dev.tsv", "test.tsv"):
        for line in (data / split).read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            text = parts[1] if len(parts) > 2 else parts[-1]
            out += [text[s:s + chars] for s in range(0, len(text), chars) if len(text[s:s + chars]) > chars // 4]
            if len(out) >= n:
                return out[:n]
    if len(out) < n:
        out = (out * (n // max(1, len(out)) + 1))[:n]
    return out


def embedding(a) -> dict:
    """`luban kb build`'s embedding step, local vs --backend ray, on the same texts."""
    from luban.embedding import load_encoder
    from luban.kb.base import embed_passages

    texts = real_texts(Path(a.data), a.embed_chunks, a.embed_chars)
    encoder = load_encoder(a.embedder)
    encoder.encode(texts[:8], kind="passage")  # warm up
    t = time.perf_counter()
    local = embed_passages(encoder, texts, a.batch_size)
    local_s = time.perf_counter() - t
    from luban.lifecycle.ray_pool import start

    start()  # Ray itself is up before the clock starts (on a cluster it is); the actors' model loading is timed
    t = time.perf_counter()
    ray = embed_passages(encoder, texts, a.batch_size, "ray", a.embed_workers, "local", a.embedder)
    ray_s = time.perf_counter() - t
    return {"embed_chunks": len(texts), "embedder": a.embedder, "embed_chars": a.embed_chars,
            "embed_batch_size": a.batch_size, "embed_local_seconds": round(local_s, 1),
            "embed_local_chunks_per_s": round(len(texts) / local_s, 1), "embed_ray_workers": a.embed_workers,
            "embed_ray_seconds": round(ray_s, 1), "embed_ray_chunks_per_s": round(len(texts) / ray_s, 1),
            "embed_max_abs_diff": float(np.abs(local - ray).max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--server-chunks", type=int, default=0, help="also the pgvector engine at this N (0: skip)")
    ap.add_argument("--embed-chunks", type=int, default=0, help="also embed this many real texts, local vs Ray "
                    "(0: skip)")
    ap.add_argument("--embed-workers", type=int, default=2)
    ap.add_argument("--embed-chars", type=int, default=128, help="characters per real text")
    ap.add_argument("--embedder", default="starter-e5-small")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", default="../shared/data/csl-summ", help="--embed-chunks: the csl-summ folder")
    a = ap.parse_args()
    load = os.getloadavg()
    out = {}
    if a.chunks:
        x = synthetic(a.chunks, a.dim)
        q = queries(x, a.queries)
        gold = exact_top(x, q, a.k)
        out = {"chunks": a.chunks, "dim": a.dim, "engine": engine_name(),
               **embedded(x, q, gold, a.k, a.threads)}
        print(json.dumps(out), flush=True)
    if a.embed_chunks:
        out.update(embedding(a))
    if a.server_chunks and a.chunks:
        xs = x[:a.server_chunks]
        qs = queries(xs, a.queries, seed=2)
        out.update(server(xs, qs, exact_top(xs, qs, a.k), a.k))
    out.update({"cpus": os.cpu_count(), "threads": a.threads, "load_before": [round(v, 1) for v in load],
                "load_after": [round(v, 1) for v in os.getloadavg()]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
