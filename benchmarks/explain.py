"""Faithfulness of luban's explanations: a deletion test on ChnSentiCorp and SST-2.

    python benchmarks/explain.py --data ../shared/data            # both datasets, both explainers

For each dataset it trains two small runs on a slice of train: the linear n-gram bag (explained exactly) and a
TextCNN (explained by integrated gradients on its embeddings). On `--examples` test rows it removes the k tokens
with the highest attribution toward the predicted class (characters for Chinese, words for English) and, separately,
k tokens drawn at random (seeded), and records how much the predicted class's probability drops. Faithful
attributions drop it more than random ones. Last line: one JSON object with topk_drop / random_drop per dataset and
explainer, and overall (the mean over all of them).
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, work_dir  # noqa: E402

MODELS = {
    "ngram_bag": ({"type": "ngram_bag", "analyzer": "char", "ngram_range": [1, 3], "weighting": "nb",
                   "embedding_dim": 0}, {"optimizer": "adam", "lr": 0.025, "grad_clip": None, "epochs": 4}),
    "textcnn": ({"type": "textcnn", "embedding_dim": 64, "num_filters": 64, "kernel_sizes": [2, 3, 4],
                 "dropout": 0.2}, {"epochs": 3, "lr": 0.002}),
}


def config(data: Path, model: str, limit: int, out: Path) -> dict:
    import csv

    with open(data / "train.tsv", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter="\t"))
    text = next(c for c in ("text_a", "sentence", "text") if c in header)
    zh = text == "text_a"
    m, trainer = MODELS[model]
    return {"task": "text_classification", "seed": 0,
            "data": {"train": str(data / "train.tsv"), "validation": str(data / "dev.tsv"),
                     "test": str(data / "test.tsv"), "columns": {"text": text, "label": "label"},
                     "train_limit": limit},
            "preprocessing": {"tokenizer": {"type": "char" if zh else "whitespace", "max_length": 200,
                                            "lowercase": True}},
            "model": m if zh or model != "ngram_bag" else {**m, "analyzer": "word", "ngram_range": [1, 2]},
            "trainer": {"batch_size": 64, "num_threads": 2, "device": "cpu", "precision": "fp32", **trainer},
            "evaluation": {"baseline": False},
            "output": {"dir": str(out), "name": f"{data.name}-{model}", "tensorboard": False, "overwrite": True}}


def deletion(p, texts: list[str], k: int, seed: int) -> dict:
    rng = random.Random(seed)
    top_drops, rand_drops = [], []
    res = p.explain(texts)
    cut_top, cut_rand, base = [], [], []
    for e in res:
        toks = [t for t in e["tokens"] if t["text"].strip()]
        if len(toks) <= k:
            continue
        top = sorted(toks, key=lambda t: -t["score"])[:k]
        rand = rng.sample(toks, k)
        cut_top.append(_remove(e["text"], top))
        cut_rand.append(_remove(e["text"], rand))
        base.append((e["target_probability"], e["target"]))
    for texts_cut, drops in ((cut_top, top_drops), (cut_rand, rand_drops)):
        preds = p.predict([t if t.strip() else "。" for t in texts_cut])
        for (prob, target), pr in zip(base, preds):
            drops.append(prob - pr["probabilities"][target])
    n = len(base)
    return {"topk_drop": round(sum(top_drops) / n, 4), "random_drop": round(sum(rand_drops) / n, 4), "examples": n}


def _remove(text: str, tokens: list[dict]) -> str:
    keep = [True] * len(text)
    for t in tokens:
        for i in range(t["start"], t["end"]):
            keep[i] = False
    return "".join(c for c, k in zip(text, keep) if k)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data", help="folder holding chnsenticorp/ and sst2/")
    ap.add_argument("--datasets", default="chnsenticorp,sst2")
    ap.add_argument("--models", default="ngram_bag,textcnn")
    ap.add_argument("--train-limit", type=int, default=6000)
    ap.add_argument("--examples", type=int, default=200, help="test rows explained per run")
    ap.add_argument("--k", type=int, default=3, help="tokens removed")
    a = ap.parse_args()
    import csv

    import luban

    out, result, t0 = work_dir(), {}, time.perf_counter()
    load0 = os.getloadavg()[0]
    for name in a.datasets.split(","):
        data = Path(a.data) / name
        with open(data / "test.tsv", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        col = next(c for c in ("text_a", "sentence", "text") if c in rows[0])
        texts = [r[col].strip() for r in rows if r[col].strip()]
        texts = random.Random(1).sample(texts, min(a.examples, len(texts)))
        for model in a.models.split(","):
            run = luban.train(config(data, model, a.train_limit, out), quiet=True)
            p = luban.load(run, backend="torch")
            r = deletion(p, texts, a.k, seed=0)
            import json

            r["test_accuracy"] = round(json.loads((run / "metrics.json").read_text())["test"]["accuracy"], 4)
            result[f"{name}_{model}"] = r
            print(name, model, r, flush=True)
    runs = list(result.values())
    result["overall"] = {"topk_drop": round(sum(r["topk_drop"] for r in runs) / len(runs), 4),
                         "random_drop": round(sum(r["random_drop"] for r in runs) / len(runs), 4)}
    for name in a.datasets.split(","):
        mine = [r for key, r in result.items() if key.startswith(name + "_")]
        result[name] = {"topk_drop": round(sum(r["topk_drop"] for r in mine) / len(mine), 4),
                        "random_drop": round(sum(r["random_drop"] for r in mine) / len(mine), 4)}
    result.update(k=a.k, seconds=round(time.perf_counter() - t0, 1), load_avg_start=round(load0, 2),
                  load_avg_end=round(os.getloadavg()[0], 2), peak_rss_mb=peak_rss_mb())
    emit(result)


if __name__ == "__main__":
    main()
