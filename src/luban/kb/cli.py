"""`luban kb build | add | remove | search | info` and `luban ask`: the parsers and the verbs (configs, paths and
the knowledge base's kb.json are checked before an embedder or torch loads)."""

from __future__ import annotations

import json
import sys


def load_encoder(ref: str):
    """The embedder (luban.embedding.encoder.load_encoder: a text_embedding run, an HF encoder folder or a starter
    name); a seam the tests replace with a tiny encoder."""
    from luban.embedding.encoder import load_encoder as load

    return load(ref)


def _embedder_ref(meta: dict, ref: str | None) -> str:
    """The embedder a command uses: the one named, else the one the knowledge base was built with."""
    return ref or meta["embedder"]["ref"]


def _encoder_for(meta: dict, ref: str | None):
    return load_encoder(_embedder_ref(meta, ref))


def _cmd_build(a):
    from luban.kb.config import kb_config, load_kb_config

    flags = {"docs": a.docs or None, "embedder": a.embedder, "out": a.out, "chunk_tokens": a.chunk_tokens,
             "overlap_tokens": a.overlap_tokens, "text_column": a.text_column, "engine": a.engine, "dsn": a.dsn,
             "min_score": a.min_score, "batch_size": a.batch_size,
             "overwrite": a.overwrite or None, "backend": a.backend, "workers": a.workers, "address": a.address}
    cfg = load_kb_config(a.config, flags) if a.config else kb_config({k: v for k, v in flags.items() if v is not None})
    from luban.kb.readers import expand
    from luban.lifecycle.ray_pool import check_backend

    check_backend(cfg.backend, cfg.workers, cfg.address)  # a cluster that does not answer: before the embedder loads
    expand(cfg.docs)  # a missing document fails before the embedder loads
    from luban.kb.base import build

    out = build(cfg, load_encoder(cfg.embedder))
    from luban.kb.base import KnowledgeBase

    info = KnowledgeBase.open(out).info()
    print(f"built {out}: {info['chunks']} chunks from {info['sources']} documents "
          f"({info['embedder']['name']}, {info['embedder']['dim']}-d, engine {info['engine']})", file=sys.stderr)


def _cmd_add(a):
    from luban.kb.base import add, read_meta
    from luban.kb.readers import expand
    from luban.lifecycle.ray_pool import check_backend

    check_backend(a.backend, a.workers, a.address)  # before the knowledge base is read or the embedder loads
    meta = read_meta(a.kb)
    expand(a.docs)
    ref = _embedder_ref(meta, a.embedder)
    r = add(a.kb, a.docs, load_encoder(ref), batch_size=a.batch_size, backend=a.backend, workers=a.workers,
            address=a.address, ref=ref)
    print(f"added {r['added_chunks']} chunks from {r['added_sources']} documents; {r['chunks']} chunks in {a.kb}",
          file=sys.stderr)


def _cmd_remove(a):
    from luban.kb.base import remove

    r = remove(a.kb, a.sources)
    print(f"removed {r['removed_chunks']} chunks of {r['removed_sources']} documents; {r['chunks']} chunks left",
          file=sys.stderr)


def _cmd_search(a):
    from luban.kb.base import KnowledgeBase, read_meta

    meta = read_meta(a.kb)
    encoder = None if a.mode == "lexical" else _encoder_for(meta, a.embedder)
    kb = KnowledgeBase.open(a.kb)
    for rank, h in enumerate(kb.search(a.query, encoder, k=a.k, mode=a.mode), 1):
        print(json.dumps({"rank": rank, **h.to_dict()}, ensure_ascii=False))


def _cmd_info(a):
    from luban.kb.base import KnowledgeBase

    print(json.dumps(KnowledgeBase.open(a.kb).info(), ensure_ascii=False, indent=1))


def _cmd_ask(a):
    from luban.kb.answer import ChatModel, answer
    from luban.kb.base import KnowledgeBase, read_meta

    meta = read_meta(a.kb)
    encoder = _encoder_for(meta, a.embedder)
    kb = KnowledgeBase.open(a.kb)
    model = ChatModel(a.model)
    knobs = {"max_new_tokens": a.max_new_tokens, "temperature": a.temperature}
    r = answer(kb, encoder, model, [{"role": "user", "content": a.question}], k=a.k, mode=a.mode,
               min_score=a.min_score, on_piece=lambda p: print(p, end="", flush=True), **knobs)
    print(flush=True)
    if a.json:
        print(json.dumps(r, ensure_ascii=False))
        return
    for c in r["citations"]:
        where = c["source"] + (f" p.{c['page']}" if c["page"] is not None else "")
        mark = "*" if c["cited"] else " "
        print(f"{mark}[{c['index']}] {where} chars {c['start']}-{c['end']}  score {c['score']:.4f}"
              + (f"  cosine {c['cosine']:.3f}" if c["cosine"] is not None else ""), file=sys.stderr)


def _ray_options(p, default: bool) -> None:
    """--backend / --workers / --address of `kb build` (defaults from the kb: config) and `kb add`."""
    p.add_argument("--backend", choices=["local", "ray"], default=None if not default else "local",
                   help="embed the chunks here (local, default) or on Ray actors (ray: pip install "
                   "'luban[distributed]')")
    p.add_argument("--workers", type=int, default=None if not default else 2,
                   help="--backend ray: embedding actors, each loading the embedder once (default 2)")
    p.add_argument("--address", default=None if not default else "local",
                   help="--backend ray: local (start Ray here, default) or a running cluster (auto, "
                   "ray://head:10001)")


def add_parser(sub) -> None:
    """The `kb` verb group and `ask` on the main parser's subparsers."""
    k = sub.add_parser("kb", help="knowledge bases: index documents (dense + BM25) and search them")
    ksub = k.add_subparsers(dest="kb_verb", required=True, metavar="ACTION")
    b = ksub.add_parser("build", help="read, chunk, embed and index documents into a new knowledge base")
    b.add_argument("docs", nargs="*", help="files or folders (.txt .md .html .pdf .jsonl .csv .tsv)")
    b.add_argument("--config", help="a YAML file with a kb: section (flags override it)")
    b.add_argument("--embedder", help="a text_embedding run, an HF encoder folder or a starter name "
                   "(e.g. starter-e5-small)")
    b.add_argument("--out", help="the knowledge base folder")
    b.add_argument("--chunk-tokens", type=int, help="the embedder's tokens per chunk (default 256)")
    b.add_argument("--overlap-tokens", type=int, help="tokens of whole sentences shared by neighbours (default 32)")
    b.add_argument("--text-column", help=".jsonl/.csv/.tsv: the column holding the text (default: text)")
    b.add_argument("--engine", choices=["faiss", "pgvector"], help="vector store (default: faiss, embedded)")
    b.add_argument("--dsn", help="pgvector: a PostgreSQL URL (default: a local pgserver, data in $LUBAN_PGDATA or ~/.cache/luban/pgdata)")
    b.add_argument("--min-score", type=float, help="grounded answers: the cosine below which the documents do not "
                   "answer (default 0.80)")
    b.add_argument("--batch-size", type=int, help="texts per embedding batch (default 32)")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _ray_options(b, default=False)
    b.set_defaults(fn=_cmd_build)
    ad = ksub.add_parser("add", help="index more documents into a knowledge base (only they are embedded)")
    ad.add_argument("kb")
    ad.add_argument("docs", nargs="+")
    ad.add_argument("--embedder", help="default: the one the knowledge base was built with")
    ad.add_argument("--batch-size", type=int, default=32)
    _ray_options(ad, default=True)
    ad.set_defaults(fn=_cmd_add)
    rm = ksub.add_parser("remove", help="take documents out of a knowledge base (by source, see `kb info`)")
    rm.add_argument("kb")
    rm.add_argument("sources", nargs="+")
    rm.set_defaults(fn=_cmd_remove)
    se = ksub.add_parser("search", help="the best chunks for a query (JSON lines)")
    se.add_argument("kb")
    se.add_argument("query")
    se.add_argument("--k", type=int, default=5)
    se.add_argument("--mode", choices=["dense", "lexical", "hybrid"], default="hybrid",
                    help="hybrid: dense and BM25 fused by reciprocal rank (default)")
    se.add_argument("--embedder", help="default: the one the knowledge base was built with")
    se.set_defaults(fn=_cmd_search)
    inf = ksub.add_parser("info", help="a knowledge base's embedder, engine, chunking and documents")
    inf.add_argument("kb")
    inf.set_defaults(fn=_cmd_info)

    ak = sub.add_parser("ask", help="a grounded answer from a knowledge base, with citations (streamed)")
    ak.add_argument("kb")
    ak.add_argument("question")
    ak.add_argument("--model", required=True, help="a text_generation run or an HF causal-LM folder / starter name")
    ak.add_argument("--k", type=int, default=4, help="chunks in the prompt")
    ak.add_argument("--mode", choices=["dense", "lexical", "hybrid"], default="hybrid")
    ak.add_argument("--min-score", type=float, default=None,
                    help="below this best cosine the answer is that the documents do not say (default: the KB's)")
    ak.add_argument("--embedder", help="default: the one the knowledge base was built with")
    ak.add_argument("--max-new-tokens", type=int, default=200)
    ak.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ak.add_argument("--json", action="store_true", help="also print the answer and citations as one JSON line")
    ak.set_defaults(fn=_cmd_ask)
