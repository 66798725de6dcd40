"""Metrics via scikit-learn: classification (accuracy, P/R/F1 macro/micro/weighted, per class, confusion matrix)
and regression (MSE, RMSE, MAE, R²)."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """y_true / y_pred are class ids into `labels`. Returns flat scalar metrics plus per_class and confusion."""
    from sklearn import metrics as skm  # here, not at import: a predictor never pays for scikit-learn

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    rows = {"kind": "classification", "y_true": y_true, "y_pred": y_pred, "labels": list(labels)}
    out = Scores({"accuracy": float(skm.accuracy_score(y_true, y_pred))}, rows=rows)
    # averages run over the classes that occur (as truth or prediction): a class absent from an evaluation file
    # would otherwise count as F1 0 and drag the macro average down even when every prediction is right
    present = sorted({int(v) for v in np.concatenate([y_true.ravel(), y_pred.ravel()])}) or ids
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg,
                                                         zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    out["per_class"] = {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                    "support": int(s[i])} for i in ids}
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    return out


def regression_metrics(y_true, y_pred) -> dict:
    from sklearn import metrics as skm

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    mse = float(skm.mean_squared_error(y_true, y_pred))
    return Scores({"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(skm.mean_absolute_error(y_true, y_pred)),
                   "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")},
                  rows={"kind": "regression", "y_true": y_true, "y_pred": y_pred})


def scalars(m: dict) -> dict:
    """Only the scalar entries (for history lines and tables); the per-row predictions of a Scores stay with it."""
    return Scores({k: v for k, v in m.items() if isinstance(v, (int, float))}, rows=getattr(m, "rows", None))


def classification_with_worst(probs, y_true, labels: list[str], worst: int, describe) -> dict:
    """classification_metrics from class probabilities, plus the `worst` most confidently wrong rows;
    `describe(i)` gives the JSON-ready fields that identify row i (its line, text or image)."""
    probs = np.asarray(probs)
    pred = probs.argmax(-1)
    y = np.asarray(y_true)
    m = classification_metrics(y, pred, labels)
    m.rows["probs"] = probs  # for the report's ROC / calibration charts
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    m["worst_examples"] = [
        {**describe(int(i)), "label": labels[y[i]], "predicted": labels[pred[i]],
         "confidence": round(float(probs[i, pred[i]]), 4)}
        for i in wrong[np.argsort(-conf, kind="stable")][:worst]]
    return m


class Scores(dict):
    """A metrics dict that also carries the per-row predictions it was computed from (`rows`: y_true, y_pred and,
    for classifiers scored from probabilities, probs), for the report's noise-aware comparison with the baseline
    and its ROC / calibration / scatter charts. The rows are an attribute, so they never reach metrics.json."""

    def __init__(self, *args, rows: dict | None = None, **kw):
        super().__init__(*args, **kw)
        self.rows = rows
