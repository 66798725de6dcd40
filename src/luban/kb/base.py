"""A knowledge base on disk: chunks (text, source, page, character offsets), their dense vectors and a BM25 index,
built with one embedder and searched densely, lexically or both (reciprocal-rank fusion).

    KB/
      kb.json          format, version, the embedder (name, fingerprint, dim, ref), engine, chunking, sources
      v<version>/      chunks.jsonl, ids.npy + vectors.npy (+ ann.faiss from 50k chunks), bm25/
                       (engine pgvector: the vectors live in PostgreSQL, table kb_<id>)

Writes are atomic: `build` writes a hidden sibling folder and renames it into place; `add` / `remove` write the
next v<version> folder, then replace kb.json (one rename), then delete the old version. An interrupted write
leaves the knowledge base as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luban.errors import ConfigError, DataError, RunError
from luban.evaluate.retrieval import fuse_ranks

FORMAT = 1
META = "kb.json"
MODES = ("dense", "lexical", "hybrid")


@dataclass
class Hit:
    id: int
    score: float
    source: str
    page: int | None
    start: int
    end: int
    text: str
    cosine: float | None = None  # the dense score (also in lexical / hybrid results where known)

    def to_dict(self) -> dict:
        return {"id": self.id, "score": round(self.score, 6), "source": self.source, "page": self.page,
                "start": self.start, "end": self.end, "text": self.text,
                "cosine": None if self.cosine is None else round(self.cosine, 6)}


# ------------------------------------------------------------------------------------------------ opening


def read_meta(folder: str | Path) -> dict:
    """kb.json of a knowledge base (torch-free: the CLI checks a KB before it loads an embedder)."""
    folder = Path(folder)
    path = folder / META
    if not folder.exists():
        raise RunError(f"{folder}: no such knowledge base (build one with `luban kb build DOCS... --embedder "
                       f"MODEL --out {folder}`)")
    if not path.is_file():
        raise RunError(f"{folder}: not a knowledge base (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunError(f"{path}: damaged ({e})") from None
    if meta.get("format") != FORMAT:
        raise RunError(f"{path}: knowledge base format {meta.get('format')!r}; this luban reads format {FORMAT}")
    return meta


def check_encoder(meta: dict, encoder, where: str) -> None:
    """A KB answers only to the embedder it was built with: same dimension, same fingerprint."""
    want = meta["embedder"]
    if int(encoder.dim) != int(want["dim"]):
        raise ConfigError(f"{where}: dimension mismatch: the knowledge base holds {want['dim']}-d vectors of "
                          f"{want['name']}; the embedder {encoder.name} gives {encoder.dim}-d vectors")
    if encoder.fingerprint != want["fingerprint"]:
        raise ConfigError(f"{where}: built with embedder {want['name']} ({want['fingerprint'][:19]}…), not "
                          f"{encoder.name} ({encoder.fingerprint[:19]}…); search it with the same embedder (leave "
                          "--embedder out to use the recorded one) or rebuild it")


def _store_for(meta: dict, folder: Path, version_dir: Path):
    if meta["engine"] == "pgvector":
        from luban.kb.pgvector import PgVectorStore

        return PgVectorStore.open(meta, folder)
    from luban.kb.vectors import EmbeddedStore

    return EmbeddedStore.load(version_dir, int(meta["embedder"]["dim"]))


class KnowledgeBase:
    def __init__(self, folder: Path, meta: dict, chunks: list[dict], store, bm25):
        self.folder, self.meta, self.chunks, self.store, self.bm25 = folder, meta, chunks, store, bm25
        self.row_of = {c["id"]: i for i, c in enumerate(chunks)}

    @classmethod
    def open(cls, folder: str | Path) -> KnowledgeBase:
        from luban.kb.lexical import BM25Index

        folder = Path(folder)
        meta = read_meta(folder)
        vdir = folder / f"v{meta['version']}"
        try:
            chunks = [json.loads(line) for line in (vdir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
                      if line]
            return cls(folder, meta, chunks, _store_for(meta, folder, vdir), BM25Index.load(vdir / "bm25"))
        except (OSError, ValueError) as e:
            raise RunError(f"{folder}: damaged knowledge base ({e})") from None

    @property
    def min_score(self) -> float:
        return float(self.meta.get("min_score", 0.8))

    def info(self) -> dict:
        m = self.meta
        return {"path": str(self.folder), "chunks": len(self.chunks), "sources": len(m["sources"]),
                "embedder": m["embedder"], "engine": m["engine"], "chunking": m["chunking"],
                "min_score": m["min_score"], "version": m["version"], "created": m["created"],
                "updated": m["updated"], "files": {s: n for s, n in sorted(m["sources"].items())}}

    # ---------------------------------------------------------------------------------------- search
    def _hit(self, cid: int, score: float, cosine: float | None) -> Hit:
        c = self.chunks[self.row_of[cid]]
        return Hit(cid, float(score), c["source"], c["page"], c["start"], c["end"], c["text"], cosine)

    def dense(self, qvec: np.ndarray, k: int) -> list[Hit]:
        ids, scores = self.store.search(qvec, k)
        return [self._hit(int(i), float(s), float(s)) for i, s in zip(ids, scores) if int(i) in self.row_of]

    def lexical(self, query: str, k: int) -> list[Hit]:
        return [self._hit(self.chunks[row]["id"], s, None) for row, s in self.bm25.search(query, k)]

    def search(self, query: str, encoder=None, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best chunks for a query. dense: cosine of the embeddings; lexical: BM25; hybrid: both lists
        fused by reciprocal rank (luban.evaluate.retrieval.fuse_ranks: score = sum of 1 / (RRF_K + rank)), each hit
        keeping its cosine where known."""
        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
        if not query or not query.strip():
            raise DataError("query: empty")
        if k <= 0:
            raise ConfigError(f"--k {k}: must be at least 1")
        if mode == "lexical":
            return self.lexical(query, k)
        if encoder is None:
            raise ConfigError("a dense or hybrid search needs the embedder")
        check_encoder(self.meta, encoder, str(self.folder))
        q = encoder.encode([query], kind="query")[0]
        if mode == "dense":
            return self.dense(q, k)
        depth = max(4 * k, 50)
        dense, lex = self.dense(q, depth), self.lexical(query, depth)
        cos = {h.id: h.cosine for h in dense}
        fused = fuse_ranks([h.id for h in dense], [h.id for h in lex])
        best = sorted(fused, key=lambda i: -fused[i])[:k]
        return [self._hit(i, fused[i], cos.get(i)) for i in best]


# ------------------------------------------------------------------------------------------------ writing


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _token_counter(encoder, budget: int):
    """The embedder's tokenizer as a chunk-size counter (prefix and special tokens not counted), else an estimate."""
    from luban.kb.chunking import estimate_tokens

    counter = getattr(encoder, "count_tokens", None)
    if counter is None:
        return estimate_tokens
    overhead = counter([""], kind="passage")[0]
    return lambda text: max(0, counter([text], kind="passage")[0] - overhead)


def read_chunks(paths: list[str], text_column: str, chunk_tokens: int, overlap_tokens: int, encoder,
                first_id: int, known: set[str] = frozenset()) -> list[dict]:
    """Every document read, cleaned and chunked (all files are read before anything is embedded: a bad file fails
    in seconds)."""
    from luban.kb.chunking import chunk
    from luban.kb.readers import expand, read
    from luban.training.progress import track

    files = expand(paths)
    again = sorted({str(f) for f in files} & known)
    if again:
        raise DataError(f"{again[0]}: already in the knowledge base; remove it first (`luban kb remove KB "
                        f"{again[0]}`) to index it again")
    limit = int(getattr(encoder, "max_length", chunk_tokens) or chunk_tokens)
    budget = min(chunk_tokens, limit - 2) if limit > 8 else chunk_tokens
    count = _token_counter(encoder, budget)
    out, next_id = [], first_id
    for f in track(files, "reading documents", unit="files"):
        for unit in read(f, text_column):
            for c in chunk(unit.text, budget, min(overlap_tokens, budget - 1), count):
                out.append({"id": next_id, "source": unit.source, "page": unit.page, "start": c.start,
                            "end": c.end, "text": c.text})
                next_id += 1
    return out


def embed_passages(encoder, texts: list[str], batch_size: int = 32, backend: str = "local", workers: int = 2,
                   address: str = "local", ref: str | None = None) -> np.ndarray:
    """Passage vectors (float32, L2-normalized, row i for texts[i]) with a progress bar and ETA. backend ray: the
    batches go to `workers` Ray actors (luban.lifecycle.ray_pool), each loading the embedder `ref` (the reference
    `encoder` was loaded from) once; the vectors come back in input order, 2 batches per actor in flight."""
    from luban.training.progress import stage

    dim = int(encoder.dim)
    out = np.zeros((len(texts), dim), np.float32)
    parts = (texts[s:s + batch_size] for s in range(0, len(texts), batch_size))

    def fill(done, st):
        s = 0
        for part, vectors in done:
            out[s:s + len(part)] = vectors
            s += len(part)
            st.advance(len(part))

    if backend == "ray" and texts:
        from luban.embedding.encoder import worker_ref
        from luban.lifecycle.ray_pool import actor_pool, ordered

        with actor_pool(_passage_encoder, (worker_ref(encoder, ref), encoder.fingerprint), workers,
                        address) as actors:
            with stage(f"embedding chunks on {workers} Ray workers", total=len(texts), unit="chunks") as st:
                fill(ordered(actors, parts, 2 * workers), st)
        return out
    with stage("embedding chunks", total=len(texts), unit="chunks") as st:
        fill(((part, encoder.encode(part, kind="passage")) for part in parts), st)
    return out


def _passage_encoder(ref: str, fingerprint: str):
    """A Ray actor's worker: the driver's embedder loaded once, texts -> passage vectors."""
    from luban.embedding.encoder import check_same, load_encoder

    encoder = load_encoder(ref)
    check_same(encoder, fingerprint, ref)
    return lambda texts: encoder.encode(texts, kind="passage")


def _write_version(vdir: Path, chunks: list[dict], store, engine: str) -> None:
    from luban.kb.lexical import BM25Index

    vdir.mkdir(parents=True)
    with open(vdir / "chunks.jsonl", "w", encoding="utf-8") as f:
        for c in chunks:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    if engine == "faiss":
        store.save(vdir)
    BM25Index.build([c["text"] for c in chunks]).save(vdir / "bm25")


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / f".{META}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, folder / META)


def _sources(chunks: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chunks:
        out[c["source"]] = out.get(c["source"], 0) + 1
    return out


def build(cfg, encoder) -> Path:
    """A new knowledge base at cfg.out from cfg.docs (luban.kb.config.KBConfig); the path."""
    from luban.version import __version__

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out}: exists; pass --overwrite to replace it (or `luban kb add {out} DOCS...`)")
    chunks = read_chunks(cfg.docs, cfg.text_column, cfg.chunk_tokens, cfg.overlap_tokens, encoder, 0)
    vectors = embed_passages(encoder, [c["text"] for c in chunks], cfg.batch_size, cfg.backend, cfg.workers,
                             cfg.address, cfg.embedder)
    ids = np.array([c["id"] for c in chunks], np.int64)
    meta = {"format": FORMAT, "id": uuid.uuid4().hex[:12], "version": 1, "luban_version": __version__,
            "embedder": {"name": encoder.name, "fingerprint": encoder.fingerprint, "dim": int(encoder.dim),
                         "ref": cfg.embedder},
            "engine": cfg.engine, "dsn": cfg.dsn, "text_column": cfg.text_column,
            "chunking": {"chunk_tokens": cfg.chunk_tokens, "overlap_tokens": cfg.overlap_tokens},
            "min_score": cfg.min_score, "next_id": len(chunks), "sources": _sources(chunks),
            "created": _now(), "updated": _now()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    store = None
    try:
        tmp.mkdir()
        store = _new_store(meta)
        store.add(ids, vectors)
        _write_version(tmp / "v1", chunks, store, cfg.engine)
        _write_meta(tmp, meta)
        if cfg.engine == "pgvector":
            store.commit()
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            _drop_table(old)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if store is not None and cfg.engine == "pgvector":
            store.drop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _new_store(meta: dict):
    if meta["engine"] == "pgvector":
        from luban.kb.pgvector import PgVectorStore

        return PgVectorStore.create(meta)
    from luban.kb.vectors import EmbeddedStore

    return EmbeddedStore(int(meta["embedder"]["dim"]))


def _drop_table(folder: Path) -> None:
    """A replaced pgvector knowledge base's table goes with it."""
    try:
        meta = read_meta(folder)
    except RunError:
        return
    if meta.get("engine") == "pgvector":
        from luban.kb.pgvector import PgVectorStore

        PgVectorStore.open(meta, folder).drop()


def _next_version(kb: KnowledgeBase, chunks: list[dict], meta: dict, change) -> None:
    """Write v<n+1> with `chunks`, apply `change` to the store (pgvector: one transaction committed right before the
    switch), switch kb.json, remove v<n>."""
    folder = kb.folder
    old = folder / f"v{kb.meta['version']}"
    meta["version"] = kb.meta["version"] + 1
    meta["updated"] = _now()
    meta["sources"] = _sources(chunks)
    tmp = folder / f".v{meta['version']}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        change(kb.store)
        _write_version(tmp, chunks, kb.store, meta["engine"])
        if meta["engine"] == "pgvector":
            kb.store.commit()
        os.rename(tmp, folder / f"v{meta['version']}")
    except BaseException:
        if meta["engine"] == "pgvector":
            kb.store.rollback()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_meta(folder, meta)
    shutil.rmtree(old, ignore_errors=True)
    kb.meta = meta


def add(folder: str | Path, docs: list[str], encoder, batch_size: int = 32, backend: str = "local", workers: int = 2,
        address: str = "local", ref: str | None = None) -> dict:
    """Index more documents into a knowledge base (only the new chunks are embedded; backend ray: on Ray actors
    loading `ref`, by default the embedder the knowledge base records)."""
    kb = KnowledgeBase.open(folder)
    check_encoder(kb.meta, encoder, str(folder))
    meta = dict(kb.meta)
    new = read_chunks(docs, meta["text_column"], meta["chunking"]["chunk_tokens"],
                      meta["chunking"]["overlap_tokens"], encoder, meta["next_id"], set(meta["sources"]))
    vectors = embed_passages(encoder, [c["text"] for c in new], batch_size, backend, workers, address,
                             ref or meta["embedder"]["ref"])
    meta["next_id"] = meta["next_id"] + len(new)
    _next_version(kb, kb.chunks + new, meta,
                  lambda store: store.add(np.array([c["id"] for c in new], np.int64), vectors))
    return {"added_chunks": len(new), "added_sources": len(_sources(new)), "chunks": len(kb.chunks) + len(new)}


def remove(folder: str | Path, sources: list[str]) -> dict:
    """Take documents (by source, as `kb info` lists them) out of a knowledge base."""
    kb = KnowledgeBase.open(folder)
    known = kb.meta["sources"]
    wanted = set()
    for s in sources:
        match = s if s in known else str(Path(s)) if str(Path(s)) in known else None
        if match is None:
            raise DataError(f"{s}: not a source of {folder} (see `luban kb info {folder}`)")
        wanted.add(match)
    gone = [c["id"] for c in kb.chunks if c["source"] in wanted]
    keep = [c for c in kb.chunks if c["source"] not in wanted]
    _next_version(kb, keep, dict(kb.meta), lambda store: store.remove(gone))
    return {"removed_chunks": len(gone), "removed_sources": len(wanted), "chunks": len(keep)}
