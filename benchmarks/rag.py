"""Closed book vs open book: does a knowledge base make the chat model answer right, and cite the right chunk?

A knowledge base of Tatoeba English-Chinese pairs (/work/shared/data/cmn-eng, one pair per row: "English — 中文"),
and questions "‘<English sentence>’用中文怎么说？" about pairs in it. An answer matches when it contains the gold
Chinese (punctuation and spaces ignored). The same model answers alone (closed book) and with the knowledge base
(open book: `luban.kb.answer`, hybrid retrieval, k chunks in the prompt); citation accuracy is the share of open-book
answers whose first cited chunk is the gold pair; answer_p50_s is the median open-book answer time (retrieval +
generation, greedy).

    python benchmarks/rag.py --model ~/.cache/luban/models/qwen2.5-coder-0.5b-instruct --questions 150
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PUNCT = re.compile(r"[\s\u3000-\u303f\uff00-\uffef.,!?;:'\"“”‘’()\-—…]+")


def norm(text: str) -> str:
    return PUNCT.sub("", text).lower()


def pairs(path: Path) -> list[tuple[str, str]]:
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        en, zh = parts[0].strip(), parts[1].strip()
        if en in seen or len(en.split()) < 4:  # short lines ("Hi.") are not questions anyone asks a KB
            continue
        seen.add(en)
        out.append((en, zh))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cmn-eng", help="the cmn-eng folder (or its cmn.txt)")
    ap.add_argument("--model", default=str(Path.home() / ".cache" / "luban" / "models" /
                                           "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--embedder", default="starter-e5-small")
    ap.add_argument("--kb-size", type=int, default=1000, help="pairs in the knowledge base")
    ap.add_argument("--questions", type=int, default=150)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    load_before = os.getloadavg()

    from luban.embedding.encoder import load_encoder
    from luban.kb.answer import ChatModel, answer
    from luban.kb.base import KnowledgeBase, build
    from luban.kb.config import kb_config

    data = Path(a.data)
    rows = pairs(data / "cmn.txt" if data.is_dir() else data)
    rng = random.Random(a.seed)
    rng.shuffle(rows)
    corpus = rows[:a.kb_size]
    asked = rng.sample(range(len(corpus)), min(a.questions, len(corpus)))
    tmp = Path(tempfile.mkdtemp(prefix="rag_"))
    doc = tmp / "pairs.jsonl"
    with open(doc, "w", encoding="utf-8") as f:
        for en, zh in corpus:
            f.write(json.dumps({"text": f"{en} — {zh}"}, ensure_ascii=False) + "\n")
    t0 = time.perf_counter()
    encoder = load_encoder(a.embedder)
    kb = KnowledgeBase.open(build(kb_config({"docs": [str(doc)], "embedder": a.embedder, "out": str(tmp / "kb"),
                                             "chunk_tokens": 128, "overlap_tokens": 0}), encoder))
    kb_seconds = time.perf_counter() - t0
    model = ChatModel(a.model)
    knobs = {"max_new_tokens": a.max_new_tokens, "temperature": 0.0}
    closed, opened, cites, times, closed_times = [], [], [], [], []
    for n, i in enumerate(asked, 1):
        en, zh = corpus[i]
        q = f"‘{en}’用中文怎么说？"
        t = time.perf_counter()
        alone = "".join(model.stream([{"role": "user", "content": q}], **knobs))
        closed_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = answer(kb, encoder, model, [{"role": "user", "content": q}], k=a.k, mode="hybrid", min_score=-1.0,
                   **knobs)
        times.append(time.perf_counter() - t)
        closed.append(norm(zh) in norm(alone))
        opened.append(norm(zh) in norm(r["answer"]))
        first = next((c for c in r["citations"] if c["cited"]), None)
        cites.append(first is not None and first["page"] == i + 1)  # a .jsonl row's page is its line number
        print(json.dumps({"n": n, "q": q, "gold": zh, "closed": alone, "open": r["answer"], "closed_ok": closed[-1],
                          "open_ok": opened[-1], "cite_ok": cites[-1], "seconds": round(times[-1], 2)},
                         ensure_ascii=False), file=sys.stderr, flush=True)
    out = {"questions": len(asked), "kb_chunks": len(kb.chunks), "model": Path(a.model).name,
           "embedder": a.embedder, "k": a.k, "closed_book_match": round(float(np.mean(closed)), 4),
           "open_book_match": round(float(np.mean(opened)), 4), "citation_accuracy": round(float(np.mean(cites)), 4),
           "answer_p50_s": round(float(np.median(times)), 3),
           "closed_book_p50_s": round(float(np.median(closed_times)), 3), "kb_build_seconds": round(kb_seconds, 1),
           "cpus": os.cpu_count(), "load_before": [round(v, 1) for v in load_before],
           "load_after": [round(v, 1) for v in os.getloadavg()]}
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
