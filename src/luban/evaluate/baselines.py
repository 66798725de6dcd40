"""Classical baselines trained on the same split as the deep model, so a user sees whether it earns its keep."""

from __future__ import annotations

import time

import numpy as np

from luban.data.scripts import text_analyzer
from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars


def text_tfidf_lr(train_texts, train_y, eval_sets: dict, labels: list[str], seed: int) -> dict:
    """TF-IDF + logistic regression over the units of the training texts' script: word 1-2-grams for languages
    written with spaces (English, ...), character 1-2-grams for Chinese, Japanese and other unspaced scripts
    (text_analyzer), so the baseline is a fair one in either."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from luban.training.progress import stage

    t0 = time.perf_counter()
    analyzer = text_analyzer(train_texts)
    with stage("baseline: TF-IDF + logistic regression", total=2 + len(eval_sets), unit="steps") as p:
        p.update(step=f"TF-IDF of {len(train_texts)} texts")
        tfidf = (TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
                 if analyzer == "char" else
                 TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True,
                                 token_pattern=r"(?u)\b\w+\b|[^\w\s]"))  # one-letter words and punctuation count
        x = tfidf.fit_transform(train_texts)
        p.advance(step=f"logistic regression on {x.shape[0]} x {x.shape[1]}")
        lr = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, train_y)
        out = {"name": f"{analyzer} 1-2-gram TF-IDF + logistic regression", "train_seconds": time.perf_counter() - t0}
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

    from threadpoolctl import threadpool_limits

    results = {}
    # OpenMP threads spin-wait: on a small table (or a busy machine) one thread fits gradient boosting far faster
    with stage("baseline", total=len(candidates), unit="models") as p, \
            threadpool_limits(1 if len(y_train) < 100_000 else None, user_api="openmp"):
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
