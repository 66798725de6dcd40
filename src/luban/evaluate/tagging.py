"""Sequence labelling metrics: span precision / recall / F1 (seqeval: entities, or words for segmentation), token
accuracy, per-type figures; for plain tag sets, macro precision / recall / F1 over tags (scikit-learn)."""

from __future__ import annotations

from collections import Counter, defaultdict

from luban.data.tagging import spans


def tagging_metrics(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict:
    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    out = {"accuracy": correct / max(tokens, 1), "sequences": len(gold), "tokens": tokens}
    if scheme == "plain":
        from sklearn.metrics import precision_recall_fscore_support

        flat_g = [t for g in gold for t in g]
        flat_p = [t for p in pred for t in p]
        labels = sorted(set(flat_g))
        p, r, f, n = precision_recall_fscore_support(flat_g, flat_p, labels=labels, average=None, zero_division=0)
        out.update(precision=float(p.mean()), recall=float(r.mean()), f1=float(f.mean()))
        out["per_type"] = {t: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
                           for t, a, b, c, d in zip(labels, p, r, f, n)}
        return out
    hits, n_gold, n_pred = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        gs, ps = set(spans(g, scheme)), set(spans(p, scheme))
        for kind, *_ in gs:
            n_gold[kind] += 1
        for kind, *_ in ps:
            n_pred[kind] += 1
        for kind, *_ in gs & ps:
            hits[kind] += 1
    out.update(_prf(sum(hits.values()), sum(n_pred.values()), sum(n_gold.values())))
    name = (lambda k: "word") if scheme == "segmentation" else (lambda k: k)
    out["per_type"] = {name(k): {**_prf(hits[k], n_pred[k], n_gold[k]), "support": n_gold[k]}
                       for k in sorted(set(n_gold) | set(n_pred))}
    return out


def _prf(hit: int, predicted: int, actual: int) -> dict:
    p = hit / predicted if predicted else 0.0
    r = hit / actual if actual else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


class MostFrequentTag:
    """The classical baseline: each token gets the tag it had most often in training (unseen tokens: the most
    frequent tag overall)."""

    def __init__(self, tokens: list[list[str]], tags: list[list[str]]):
        counts: dict[str, Counter] = defaultdict(Counter)
        overall = Counter()
        for ts, gs in zip(tokens, tags):
            for t, g in zip(ts, gs):
                counts[t][g] += 1
                overall[g] += 1
        self.best = {t: c.most_common(1)[0][0] for t, c in counts.items()}
        self.default = overall.most_common(1)[0][0]

    def predict(self, tokens: list[str]) -> list[str]:
        return [self.best.get(t, self.default) for t in tokens]
