"""Classical baselines trained on the same split as the deep model, so a user sees whether it earns its keep."""

from __future__ import annotations

import time

import numpy as np

from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars


def text_tfidf_lr(train_texts, train_y, eval_sets: dict, labels: list[str], seed: int) -> dict:
    """Character 1-2-gram TF-IDF + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from luban.training.progress import stage

    t0 = time.perf_counter()
    with stage("baseline: TF-IDF + logistic regression", total=2 + len(eval_sets), unit="steps") as p:
        p.update(step=f"TF-IDF of {len(train_texts)} texts")
        tfidf = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        x = tfidf.fit_transform(train_texts)
        p.advance(step=f"logistic regression on {x.shape[0]} x {x.shape[1]}")
        lr = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, train_y)
        out = {"name": "char 1-2-gram TF-IDF + logistic regression", "train_seconds": time.perf_counter() - t0}
        for split, (texts, y) in eval_sets.items():
            p.advance(step=f"score {split}")
            out[split] = scalars(classification_metrics(y, lr.predict(tfidf.transform(texts)), labels))
        p.advance()
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
    from luban.training.progress import stage

    results = {}
    with stage("baseline", total=len(candidates), unit="models") as p:
        for name, est in candidates.items():
            p.update(model=name.replace("_", " "))
            t0 = time.perf_counter()
            est.fit(x_train, y_train)
            res = {"train_seconds": time.perf_counter() - t0}
            for split, (x, y) in eval_sets.items():
                res[split] = score(y, est.predict(x))
            results[name] = res
            p.advance()
    best = better(results, key=lambda n: results[n]["validation"][key])
    return {"name": best.replace("_", " "), **results[best], "all": results}
