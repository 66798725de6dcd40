"""Retrieval benchmark: BM25 (jieba words), starter-e5-small, their reciprocal-rank fusion, and e5 fine-tuned with
luban's text_embedding task.

    python benchmarks/retrieval.py --data ../shared/data/csl-summ [--out DIR]
    python benchmarks/retrieval.py --data ../shared/data/cmn-eng

csl-summ (dev.tsv + test.tsv, no header: "to title"<TAB>abstract<TAB>title): the corpus is all 2,000 abstracts; each
of the 1,000 test titles is a query whose gold is its own abstract (the 1,000 dev abstracts are distractors). BM25,
dense (starter-e5-small, "query: " / "passage: " as the model says) and hybrid (RRF, k=60) rank the corpus; then
examples/csl_embedding.yaml fine-tunes e5 on the 1,000 dev pairs (`luban train`, 5% held out for the best epoch)
and the fine-tuned encoder ranks it again, alone and fused with BM25. Texts are cut at --max-length tokens (64 by
default: a 2-core CPU embeds about 2-3 abstracts a second when shared). Keys: bm25_*, dense_*, hybrid_*,
finetuned_*, finetuned_hybrid_* with * in mrr, r1, r10 (Recall@1/10), and goal_met (finetuned_hybrid_mrr >=
bm25_mrr + 0.10).

cmn-eng (cmn.txt: en<TAB>zh<TAB>attribution): a seeded sample of 2,000 pairs with distinct sides; each English
sentence is a query whose gold is its Chinese translation among the 2,000 → dense_r1 (cross-lingual), and bm25_r1
for contrast (English words never match jieba's Chinese ones).

Vectors and the fine-tuned run are kept in --out (default: a fresh temp folder), so a rerun with the same --out
resumes where it stopped. The CPU load average is recorded beside the timings (the machine may be shared). The last
printed line is one JSON object.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load() -> float:
    return round(os.getloadavg()[0], 1)


def encode_cached(out: Path, tag: str, encoder, texts: list[str], kind: str, batch_size: int) -> tuple:
    path = out / f"{tag}.npy"
    if path.is_file():
        v = np.load(path)
        if v.shape[0] == len(texts):
            return v, 0.0
    t0 = time.perf_counter()
    v = encoder.encode(texts, kind, batch_size, progress=True)
    np.save(path, v)
    return v, time.perf_counter() - t0


def figures(prefix: str, scores: np.ndarray, gold: list[list[int]]) -> dict:
    from luban.evaluate.retrieval import retrieval_metrics

    m = retrieval_metrics(scores, gold)
    return {f"{prefix}_mrr": round(m["mrr"], 4), f"{prefix}_r1": round(m["recall_at_1"], 4),
            f"{prefix}_r10": round(m["recall_at_10"], 4)}


def csl(a, out: Path) -> dict:
    from luban.embedding import load_encoder
    from luban.evaluate.retrieval import bm25_scores, dense_scores, rrf

    data = Path(a.data)
    rows = {s: [line.rstrip("\n").split("\t") for line in open(data / f"{s}.tsv", encoding="utf-8") if line.strip()]
            for s in ("dev", "test")}
    corpus = [r[1] for r in rows["dev"] + rows["test"]]
    queries = [r[2] for r in rows["test"]]
    gold = [[len(rows["dev"]) + i] for i in range(len(queries))]
    res = {"dataset": "csl-summ title -> abstract", "corpus": len(corpus), "queries": len(queries),
           "max_length": a.max_length, "load_start": load()}
    t0 = time.perf_counter()
    bm = bm25_scores(corpus, queries)
    res["bm25_seconds"] = round(time.perf_counter() - t0, 1)
    res.update(figures("bm25", bm, gold))
    print(json.dumps(res, ensure_ascii=False), flush=True)

    base = load_encoder(a.model, max_length=a.max_length)
    p, tp = encode_cached(out, "base_corpus", base, corpus, "passage", a.batch_size)
    q, tq = encode_cached(out, "base_queries", base, queries, "query", a.batch_size)
    if tp:
        res["dense_passages_per_second"] = round(len(corpus) / tp, 2)
        res["load_dense"] = load()
    dense = dense_scores(q, p)
    res.update(figures("dense", dense, gold))
    res.update(figures("hybrid", rrf(bm, dense), gold))
    print(json.dumps(res, ensure_ascii=False), flush=True)
    if a.skip_finetune:
        return res

    import luban

    run = out / "finetuned"
    if not (run / "manifest.json").is_file():
        # the run's own test evaluation reads a slice of test.tsv (its 1,000 abstracts as the whole corpus would be
        # embedded twice on a CPU): this benchmark ranks the full corpus with the run's encoder below
        head = out / "test_head.tsv"
        head.write_text("".join("\t".join(r) + "\n" for r in rows["test"][:a.run_test_rows]), encoding="utf-8")
        t0 = time.perf_counter()
        run = luban.train(str(a.config), [f"data.train={data / 'dev.tsv'}", f"data.test={head}",
                                          f"model.path={a.model}", f"model.max_length={a.max_length}",
                                          f"trainer.epochs={a.epochs}", "evaluation.baseline=false",
                                          f"output.dir={out}", "output.name=finetuned", "output.tensorboard=false",
                                          "output.overwrite=true"]
                          + ([f"data.train_limit={a.train_limit}"] if a.train_limit else []) + a.set)
        res["finetune_seconds"] = round(time.perf_counter() - t0, 1)
        res["load_finetune"] = load()
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    res.update({"train_pairs": m["data"]["splits"]["train"], "epochs": m["epochs_run"], "overrides": a.set,
                "train_seconds": m["timings"]["train_seconds"],
                "run_validation_mrr": round(m["validation"]["mrr"], 4)})
    tuned = load_encoder(run)
    p2, _ = encode_cached(out, "tuned_corpus", tuned, corpus, "passage", a.batch_size)
    q2, _ = encode_cached(out, "tuned_queries", tuned, queries, "query", a.batch_size)
    ft = dense_scores(q2, p2)
    res.update(figures("finetuned", ft, gold))
    res.update(figures("finetuned_hybrid", rrf(bm, ft), gold))
    res["goal_met"] = bool(res["finetuned_hybrid_mrr"] >= res["bm25_mrr"] + 0.10)
    return res


def cmn_eng(a, out: Path) -> dict:
    from luban.embedding import load_encoder
    from luban.evaluate.retrieval import bm25_scores, dense_scores

    pairs, seen_en, seen_zh = [], set(), set()
    for line in open(Path(a.data) / "cmn.txt", encoding="utf-8-sig"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2 or parts[0] in seen_en or parts[1] in seen_zh:
            continue
        seen_en.add(parts[0])
        seen_zh.add(parts[1])
        pairs.append((parts[0], parts[1]))
    pairs = random.Random(0).sample(pairs, min(a.pairs, len(pairs)))
    en, zh = [p[0] for p in pairs], [p[1] for p in pairs]
    gold = [[i] for i in range(len(pairs))]
    res = {"dataset": "cmn-eng English -> Chinese translation", "pairs": len(pairs), "load_start": load()}
    res.update(figures("bm25", bm25_scores(zh, en), gold))
    enc = load_encoder(a.model, max_length=a.max_length)
    p, tp = encode_cached(out, "cmn_zh", enc, zh, "passage", a.batch_size)
    q, _ = encode_cached(out, "cmn_en", enc, en, "query", a.batch_size)
    res.update(figures("dense", dense_scores(q, p), gold))
    if tp:
        res["dense_passages_per_second"] = round(len(zh) / tp, 2)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="csl-summ (dev.tsv, test.tsv) or cmn-eng (cmn.txt) folder")
    ap.add_argument("--model", default="starter-e5-small")
    ap.add_argument("--config", default=str(ROOT / "examples" / "csl_embedding.yaml"))
    ap.add_argument("--set", action="append", default=[], help="more overrides of the fine-tuning config")
    ap.add_argument("--out", default=None, help="keeps vectors and the fine-tuned run (a rerun resumes)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per text (abstracts are cut there)")
    ap.add_argument("--run-test-rows", type=int, default=100, help="csl: test rows of the fine-tuning run's own "
                    "test evaluation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=None, help="csl: fine-tune on the first N dev pairs only "
                    "(default: all 1,000; a loaded CPU may need fewer)")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per forward pass when embedding")
    ap.add_argument("--pairs", type=int, default=2000, help="cmn-eng: sentence pairs")
    ap.add_argument("--skip-finetune", action="store_true")
    a = ap.parse_args()
    out = Path(a.out) if a.out else work_dir()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    res = cmn_eng(a, out) if (Path(a.data) / "cmn.txt").is_file() else csl(a, out)
    res.update({"total_seconds": round(time.perf_counter() - t0, 1), "load_end": load(), "cpus": os.cpu_count(),
                "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "out": str(out)})
    emit(res)


if __name__ == "__main__":
    main()
