"""Bag-of-n-grams featurization for the `ngram_bag` model: character (or word) n-grams counted with scikit-learn,
weighted (binary, TF-IDF, or Naive-Bayes log-count ratio as in NBSVM, Wang & Manning 2012) and L2-normalized.

Each text becomes (feature ids, weights); batches pad both, with weight 0 on padding, so the model is a plain
weighted sum of embedding rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from luban.errors import RunError
from luban.processor import Processor

META = "ngrams.json"


class NgramFeaturizer(Processor):
    kind = "ngram_bag"

    def __init__(self, analyzer="char", ngram_range=(1, 4), weighting="nb", min_df=1, lowercase=True,
                 nb_alpha=1.0):
        self.analyzer, self.ngram_range, self.weighting = analyzer, tuple(ngram_range), weighting
        self.min_df, self.lowercase, self.nb_alpha = min_df, lowercase, nb_alpha
        self.vectorizer = None
        self.weights: np.ndarray | None = None

    def _make_vectorizer(self, vocabulary=None):
        from sklearn.feature_extraction.text import CountVectorizer

        kw = dict(ngram_range=self.ngram_range, lowercase=self.lowercase, dtype=np.float32,
                  binary=self.weighting != "tfidf", vocabulary=vocabulary)
        if vocabulary is None:
            kw["min_df"] = self.min_df
        if self.analyzer == "char":
            return CountVectorizer(analyzer="char", **kw)
        if self.analyzer == "jieba":
            import jieba

            jieba.setLogLevel(60)
            return CountVectorizer(tokenizer=lambda s: [w for w in jieba.lcut(s) if not w.isspace()],
                                   token_pattern=None, **kw)
        return CountVectorizer(tokenizer=str.split, token_pattern=None, **kw)

    @property
    def vocab_size(self) -> int:
        return len(self.weights) + 1  # + the padding row

    @property
    def pad_id(self) -> int:
        return len(self.weights)

    def fit(self, texts: list[str], labels: list[int]) -> "NgramFeaturizer":
        self.vectorizer = self._make_vectorizer()
        x = self.vectorizer.fit_transform(texts).tocsc()
        y = np.asarray(labels)
        n_features = x.shape[1]
        if self.weighting == "nb":
            # per feature: the largest |log-count ratio| of any class against the rest (= |r| of NBSVM for 2 classes)
            w = np.zeros(n_features, dtype=np.float64)
            for c in np.unique(y):
                p = self.nb_alpha + np.asarray(x[y == c].sum(0)).ravel()
                q = self.nb_alpha + np.asarray(x[y != c].sum(0)).ravel()
                w = np.maximum(w, np.abs(np.log((p / p.sum()) / (q / q.sum()))))
        elif self.weighting == "tfidf":
            df = np.diff(x.indptr)  # documents per feature (csc)
            w = np.log((1 + x.shape[0]) / (1 + df)) + 1.0
        else:
            w = np.ones(n_features)
        self.weights = w.astype(np.float32)
        return self

    def encode_weighted(self, texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        x = self.vectorizer.transform(texts).tocsr()
        if self.weighting == "tfidf":
            x.data = 1.0 + np.log(x.data)  # sublinear term frequency
        x = x.multiply(self.weights[None, :]).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
        ids, vals = [], []
        for i in range(x.shape[0]):
            s, e = x.indptr[i], x.indptr[i + 1]
            if s == e:  # nothing known: one padding entry with weight 0
                ids.append(np.array([self.pad_id]))
                vals.append(np.zeros(1, dtype=np.float32))
            else:
                ids.append(x.indices[s:e].astype(np.int64))
                vals.append((x.data[s:e] / norms[i]).astype(np.float32))
        return ids, vals

    def state(self) -> dict:
        return {"type": self.kind, "analyzer": self.analyzer, "ngram_range": list(self.ngram_range),
                "weighting": self.weighting, "min_df": self.min_df, "lowercase": self.lowercase,
                "nb_alpha": self.nb_alpha}

    def save_assets(self, folder: Path, name: str) -> list[str]:
        """The n-gram vocabulary and weights into folder/name/ (their paths under folder)."""
        (folder / name).mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        (folder / name / "ngram_vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        np.save(folder / name / "ngram_weights.npy", self.weights, allow_pickle=False)
        return [f"{name}/ngram_vocab.json", f"{name}/ngram_weights.npy"]

    def save(self, folder: Path) -> None:
        """The featurizer alone in `folder`: ngrams.json (its state) and its files."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text(json.dumps(self.state()), encoding="utf-8")
        self.save_assets(folder.parent, folder.name)

    @classmethod
    def load(cls, folder: Path) -> "NgramFeaturizer":
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunError(f"{folder}: n-gram features are missing or corrupted ({e})") from None
        return cls.from_state(meta, folder.parent, folder.name)

    @classmethod
    def from_state(cls, meta: dict, folder: Path, name: str) -> "NgramFeaturizer":
        folder = folder / name
        try:
            vocab = json.loads((folder / "ngram_vocab.json").read_text(encoding="utf-8"))
            weights = np.load(folder / "ngram_weights.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunError(f"{folder}: n-gram features are missing or corrupted ({e})") from None
        f = cls(meta["analyzer"], meta["ngram_range"], meta["weighting"], meta["min_df"], meta["lowercase"],
                meta["nb_alpha"])
        f.vectorizer = f._make_vectorizer({w: i for i, w in enumerate(vocab)})
        f.weights = weights
        return f


def load_featurizer(state: dict, folder: Path):
    """A text run's fitted featurizer from its processor part `state` (files under folder/tokenizer/): an n-gram
    featurizer or a tokenizer. Torch-free (the ONNX backend loads it too)."""
    if state.get("type") == NgramFeaturizer.kind:
        return NgramFeaturizer.from_state(state, folder, "tokenizer")
    from luban.data.tokenizers import encoder_from_state

    return encoder_from_state(state, folder / "tokenizer")
