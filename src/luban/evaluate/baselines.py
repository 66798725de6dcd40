"""Classical baselines trained on the same split as the deep model, so a user sees whether it earns its keep."""

from __future__ import annotations

import time

import numpy as np

from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars


def text_tfidf_lr(train_texts, train_y, eval_sets: dict, labels: list[str], seed: int) -> dict:
    """Character 1-2-gram TF-IDF + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(C=10.0, max_iter=2000, random_state=seed))
    model.fit(train_texts, train_y)
    out = {"name": "char 1-2-gram TF-IDF + logistic regression", "train_seconds": time.perf_counter() - t0}
    for split, (texts, y) in eval_sets.items():
        out[split] = scalars(classification_metrics(y, model.predict(texts), labels))
    return out


def tabular_baselines(kind: str, x_train, y_train, eval_sets: dict, labels: list[str] | None, seed: int) -> dict:
    """Ridge (or logistic regression) and gradient boosting; the better one on validation is 'the baseline'."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV

    if kind == "regression":
        candidates = {"ridge": RidgeCV(alphas=np.logspace(-3, 3, 13)),
                      "gradient_boosting": HistGradientBoostingRegressor(random_state=seed)}
        score = lambda y, p: regression_metrics(y, p)  # noqa: E731
        key, better = "rmse", min
    else:
        candidates = {"logistic_regression": LogisticRegression(max_iter=2000, random_state=seed),
                      "gradient_boosting": HistGradientBoostingClassifier(random_state=seed)}
        score = lambda y, p: scalars(classification_metrics(y, p, labels))  # noqa: E731
        key, better = "accuracy", max
    results = {}
    for name, est in candidates.items():
        t0 = time.perf_counter()
        est.fit(x_train, y_train)
        res = {"train_seconds": time.perf_counter() - t0}
        for split, (x, y) in eval_sets.items():
            res[split] = score(y, est.predict(x))
        results[name] = res
    best = better(results, key=lambda n: results[n]["validation"][key])
    return {"name": best.replace("_", " "), **results[best], "all": results}
