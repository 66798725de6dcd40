"""Differentially private training on ChnSentiCorp: accuracy at epsilon 1, 3, 8 and without DP, and how much a
membership-inference attack learns from each model.

    python benchmarks/privacy.py --data ../shared/data/chnsenticorp

Trains the same small character TextCNN (luban's DP-SGD path: trainer.privacy, Opacus) on the first --train-limit
training rows, without DP and at each epsilon (delta 1e-5). The attack is the loss-threshold test (Yeom et al.): the
lower a row's loss under the model, the likelier it was trained on; its ROC AUC separating --mia-rows training rows
from as many held-out test rows is 0.5 when the model leaks nothing about membership. Last line: one JSON object
with acc_nodp, acc_eps1, acc_eps3, acc_eps8, mia_auc_nodp, mia_auc_eps1/3/8, the epsilon spent, seconds and load.
"""

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, work_dir  # noqa: E402


def config(data: Path, out: Path, name: str, a, epsilon: float | None) -> dict:
    trainer = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "optimizer": "adam",
               "weight_decay": 0.0, "num_threads": 2, "device": "cpu", "precision": "fp32", "grad_clip": None,
               "scheduler": "constant", "keep": "last"}
    if epsilon is not None:
        trainer["privacy"] = {"epsilon": epsilon, "delta": 1e-5, "max_grad_norm": a.max_grad_norm}
    if a.backbone:  # DP fine-tuning's usual shape: a frozen public encoder, the head trained privately
        preprocessing = {"tokenizer": {"type": "pretrained", "max_length": a.max_length}}
        model = {"type": "pretrained", "path": a.backbone, "freeze": True}
    else:
        preprocessing = {"tokenizer": {"type": "char", "max_length": a.max_length, "vocab_size": a.vocab,
                                       "min_freq": 2}}
        model = {"type": "textcnn", "embedding_dim": 32, "num_filters": 64, "kernel_sizes": [2, 3], "dropout": 0.0}
    return {"task": "text_classification", "seed": 0,
            "data": {"train": str(data / "train.tsv"), "validation": str(data / "dev.tsv"),
                     "test": str(data / "test.tsv"), "columns": {"text": "text_a", "label": "label"},
                     "train_limit": a.train_limit},
            "preprocessing": preprocessing, "model": model,
            "trainer": trainer, "evaluation": {"baseline": False, "worst_examples": 0},
            "output": {"dir": str(out), "name": name, "tensorboard": False, "overwrite": True}}


def losses(p, rows: list[tuple[str, str]]) -> list[float]:
    preds = p.predict([t for t, _ in rows])
    return [-math.log(max(r["probabilities"].get(y, 0.0), 1e-12)) for r, (_, y) in zip(preds, rows)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/chnsenticorp")
    ap.add_argument("--train-limit", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=3000)
    ap.add_argument("--mia-rows", type=int, default=1000)
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--backbone", default=None, help="a pretrained encoder (e.g. starter-e5-small): frozen, only "
                    "its classification head trained (privately); default: a from-scratch char TextCNN")
    ap.add_argument("--skip-nodp", action="store_true", help="only the private runs (e.g. to add an epsilon to an "
                    "earlier run's figures: the runs are seeded, so the non-private one is the same)")
    a = ap.parse_args()
    import luban
    from sklearn.metrics import roc_auc_score

    data, out, t0, load0 = Path(a.data), work_dir(), time.perf_counter(), os.getloadavg()[0]

    def read(split):
        with open(data / split, encoding="utf-8-sig") as f:
            return [(r["text_a"].strip(), r["label"].strip()) for r in csv.DictReader(f, delimiter="\t",
                                                                                       quoting=csv.QUOTE_NONE)
                    if r["text_a"].strip()]
    members = read("train.tsv")[: a.train_limit][: a.mia_rows]
    held_out = read("test.tsv")[: len(members)]
    result = {}
    for eps in ([] if a.skip_nodp else [None]) + [float(e) for e in a.epsilons.split(",") if e]:
        key = "nodp" if eps is None else f"eps{eps:g}"
        t = time.perf_counter()
        run = luban.train(config(data, out, key, a, eps), quiet=True)
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        p = luban.load(run, backend="torch")
        scores = [-x for x in losses(p, members) + losses(p, held_out)]
        auc = roc_auc_score([1] * len(members) + [0] * len(held_out), scores)
        result[f"acc_{key}"] = round(m["test"]["accuracy"], 4)
        result[f"mia_auc_{key}"] = round(float(auc), 4)
        if eps is not None:
            result[f"epsilon_spent_{key}"] = m["privacy"]["epsilon_spent"]
        result[f"seconds_{key}"] = round(time.perf_counter() - t, 1)
        print(key, {k: v for k, v in result.items() if k.endswith(key)}, flush=True)
    if "acc_eps8" in result and "acc_nodp" in result:
        result["eps8_within_3_points"] = result["acc_nodp"] - result["acc_eps8"] <= 0.03
        result["eps8_mia_auc_ok"] = result["mia_auc_eps8"] <= 0.55
    result.update(train_rows=a.train_limit, epochs=a.epochs, batch_size=a.batch_size, model=(f"{a.backbone} frozen + head" if a.backbone else "textcnn (char)"),
                  seconds=round(time.perf_counter() - t0, 1), load_avg_start=round(load0, 2),
                  load_avg_end=round(os.getloadavg()[0], 2), peak_rss_mb=peak_rss_mb())
    emit(result)


if __name__ == "__main__":
    main()
