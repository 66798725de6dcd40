"""Bag-of-n-grams featurization for the `ngram_bag` model: character (or word) n-grams, weighted (binary, TF-IDF,
or Naive-Bayes log-count ratio as in NBSVM, Wang & Manning 2012) and L2-normalized.

N-grams are counted in NumPy, not one Python call per n-gram: a chunk of texts becomes one array of code points
(or of word hashes), every n-gram one 64-bit key computed for all positions at once (a splitmix64 chain over its
units), and the vocabulary is the sorted array of the training keys (`np.unique`; an n-gram is found with
`np.searchsorted`). The n-grams are those of scikit-learn's CountVectorizer (lowercasing, runs of whitespace as one
space, char n-grams within a text, word n-grams joined by a space), so runs saved with a string vocabulary
(ngram_vocab.json) load and encode the same. With `hash_buckets` the key is taken modulo the number of buckets:
bounded memory and no vocabulary file, whatever the corpus size. `max_features` keeps the most frequent n-grams.

Each text becomes (feature ids, weights); batches pad both, with weight 0 on padding, so the model is a plain
weighted sum of embedding rows. Torch-free and scikit-learn-free (the ONNX predictor loads it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from luban.errors import RunError
from luban.processor import Processor

META = "ngrams.json"
CHUNK = 8192  # texts keyed at a time (bounds the n-gram arrays' memory)
DEFAULT_RANGE = {"char": (1, 4), "word": (1, 3)}  # ngram_range when the config leaves it out
_WORDS = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks, as the TF-IDF baseline's token_pattern
_WHITE_SPACES = re.compile(r"\s\s+")  # as scikit-learn's char analyzer
_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a uint64 array (wrapping arithmetic)."""
    h ^= h >> _S30
    h *= _M2
    h ^= h >> _S27
    h *= _M3
    h ^= h >> _S31
    return h


def _token_hash(token: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def _ngram_keys(units: np.ndarray, lengths: np.ndarray, n_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram (n in n_range) inside each text of `units` (one uint64 per character or word, texts back to
    back with `lengths`): (text index, 64-bit key), keys depending only on n and the units."""
    starts = np.concatenate(([0], np.cumsum(lengths)))[:-1]
    text_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    room = (starts + lengths)[text_of] - np.arange(len(units))  # units from here to the end of the text
    texts, keys = [], []
    with np.errstate(over="ignore"):
        for n in range(n_range[0], n_range[1] + 1):
            m = len(units) - n + 1
            if m <= 0:
                break
            h = np.full(m, np.uint64(n) * _M1, dtype=np.uint64)
            for k in range(n):
                h ^= units[k:k + m]
                _mix(h)
            inside = room[:m] >= n
            texts.append(text_of[:m][inside])
            keys.append(h[inside])
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    return np.concatenate(texts), np.concatenate(keys)


class NgramFeaturizer(Processor):
    kind = "ngram_bag"

    def __init__(self, analyzer="auto", ngram_range=None, weighting="nb", min_df=1, lowercase=True,
                 nb_alpha=1.0, max_features=None, hash_buckets=0):
        # analyzer "auto" / ngram_range None are decided by fit from the training texts (state() saves the choice)
        self.analyzer, self.weighting = analyzer, weighting
        self.ngram_range = tuple(ngram_range) if ngram_range is not None else None
        self.words = "match"  # word analyzer: words and punctuation marks as the baseline's (_WORDS); "split": legacy
        self.min_df, self.lowercase, self.nb_alpha = min_df, lowercase, nb_alpha
        self.max_features, self.hash_buckets = max_features, hash_buckets
        self.keys: np.ndarray | None = None  # the vocabulary: sorted n-gram keys (None when hashed)
        self.key_rows: np.ndarray | None = None  # a legacy run's row of each sorted key (None: the key's position)
        self.weights: np.ndarray | None = None
        self._token_cache: dict[str, int] = {}
        self._index = None  # the vocabulary's hash table (pandas), made on first use

    @property
    def vocab_size(self) -> int:
        return len(self.weights) + 1  # + the padding row

    @property
    def pad_id(self) -> int:
        return len(self.weights)

    # -- n-gram keys -------------------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[str]:
        if self.analyzer == "jieba":
            import jieba

            jieba.setLogLevel(60)
            return [w for w in jieba.lcut(text) if not w.isspace()]
        if self.words == "split":  # a run saved before words were matched (its n-grams are of whitespace tokens)
            return text.split()
        return _WORDS.findall(text)

    def _units(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One uint64 per character (char analyzer) or per word (its hash), texts back to back, and their lengths."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if self.analyzer == "char":
            texts = [_WHITE_SPACES.sub(" ", t) for t in texts]
            lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
            codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
            return codes.astype(np.uint64), lengths
        cache, docs = self._token_cache, [self._tokens(t) for t in texts]
        for doc in docs:
            for tok in doc:
                if tok not in cache:
                    cache[tok] = _token_hash(tok)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        units = np.fromiter((cache[tok] for doc in docs for tok in doc), dtype=np.uint64, count=int(lengths.sum()))
        return units, lengths

    def _keys(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        units, lengths = self._units(texts)
        return _ngram_keys(units, lengths, self.ngram_range)

    def _string_keys(self, ngrams: list[str]) -> np.ndarray:
        """The key of each n-gram string of a saved vocabulary (chars, or words joined by a space)."""
        if self.analyzer == "char":
            units, lengths = self._units_raw(ngrams)
        else:
            docs = [g.split(" ") for g in ngrams]
            lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
            units = np.fromiter((_token_hash(t) for d in docs for t in d), dtype=np.uint64, count=int(lengths.sum()))
        keys = np.empty(len(ngrams), dtype=np.uint64)
        for n in np.unique(lengths):  # each string is one n-gram of its own length
            sel = np.flatnonzero(lengths == n)
            texts, k = _ngram_keys(units[np.repeat(lengths == n, lengths)], lengths[sel], (int(n), int(n)))
            keys[sel[texts]] = k
        return keys

    def feature_ids(self, ngrams: list[str]) -> list[int | None]:
        """The model row of each n-gram string (None: not in the vocabulary), e.g. to read its weight."""
        keys = self._string_keys([g.lower() if self.lowercase else g for g in ngrams])
        if self.hash_buckets:
            return [int(k % np.uint64(self.hash_buckets)) for k in keys]
        pos = self._lookup(keys)
        rows = pos if self.key_rows is None else np.where(pos >= 0, self.key_rows[pos], -1)
        return [int(r) if r >= 0 else None for r in rows]

    @staticmethod
    def _units_raw(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        return np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64), lengths

    # -- fit / encode ------------------------------------------------------------------------------------------
    def _counts(self, texts: list[str]):
        """texts x features counts (scipy csr; binary unless TF-IDF), over the fitted vocabulary or buckets."""
        import scipy.sparse as sp

        parts = []
        for s in range(0, len(texts), CHUNK):
            chunk = texts[s:s + CHUNK]
            text_of, keys = self._keys(chunk)
            if self.hash_buckets:
                ids = (keys % np.uint64(self.hash_buckets)).astype(np.int64)
            else:
                pos = self._lookup(keys)
                known = pos >= 0
                text_of, ids = text_of[known], pos[known]
                if self.key_rows is not None:
                    ids = self.key_rows[ids]
            m = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), (text_of, ids)),
                              shape=(len(chunk), self.n_features))
            m.sum_duplicates()
            if self.weighting != "tfidf":
                m.data[:] = 1.0
            parts.append(m)
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.n_features), dtype=np.float32)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each key's position in the vocabulary, -1 if unknown (a uint64 hash table, built once)."""
        if self._index is None:
            import pandas as pd

            self._index = pd.Index(self.keys)
        return self._index.get_indexer(keys)

    @property
    def n_features(self) -> int:
        return self.hash_buckets or len(self.keys)

    def _fit_vocabulary(self, texts: list[str]) -> None:
        """The sorted keys of the training n-grams seen in >= min_df texts (the max_features most frequent)."""
        import scipy.sparse as sp

        found, docs = [], []
        for s in range(0, len(texts), CHUNK):
            chunk = texts[s:s + CHUNK]
            text_of, keys = self._keys(chunk)
            k, local = np.unique(keys, return_inverse=True)
            m = sp.csr_matrix((np.ones(len(local), dtype=np.float32), (text_of, local.ravel())),
                              shape=(len(chunk), len(k)))
            m.sum_duplicates()  # one entry per (text, n-gram): document frequency
            found.append(k)
            docs.append(np.bincount(m.indices, minlength=len(k)))
        keys = np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        df = np.bincount(inverse, weights=np.concatenate(docs) if docs else None, minlength=len(uniq))
        keep = df >= self.min_df
        if self.max_features and keep.sum() > self.max_features:  # the most frequent (ties: the smaller key)
            order = np.argsort(-df[keep], kind="stable")[: self.max_features]
            uniq = np.sort(uniq[keep][order])
        else:
            uniq = uniq[keep]
        self.keys, self._index = uniq, None

    def fit(self, texts: list[str], labels: list[int]) -> "NgramFeaturizer":
        self.fit_encode(texts, labels)
        return self

    def resolve(self, texts: list[str]) -> None:
        """analyzer "auto": characters for scripts written without spaces, words otherwise; ngram_range None:
        1-4 for characters, 1-3 for words (measured on ChnSentiCorp and SST-2, docs/benchmarks.md)."""
        if self.analyzer == "auto":
            from luban.data.scripts import text_analyzer

            self.analyzer = text_analyzer(texts)
        if self.ngram_range is None:
            self.ngram_range = DEFAULT_RANGE["char" if self.analyzer == "char" else "word"]

    def fit_encode(self, texts: list[str], labels: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Fit on the training texts and return their encoding."""
        self.resolve(texts)
        if not self.hash_buckets:
            self._fit_vocabulary(texts)
        x = self._counts(texts)
        y = np.asarray(labels)
        df = np.bincount(x.indices, minlength=x.shape[1])  # texts per feature
        if self.weighting == "nb":
            w = nb_weights(x, y, self.nb_alpha)
        elif self.weighting == "tfidf":
            w = np.log((1 + x.shape[0]) / (1 + df)) + 1.0
        else:
            w = np.ones(x.shape[1])
        if self.hash_buckets:  # min_df on buckets: a bucket seen in too few texts (or none) weighs 0
            w = np.where(df >= self.min_df, w, 0.0)
        self.weights = w.astype(np.float32)
        return self._weighted(x)

    def encode_weighted(self, texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self._weighted(self._counts(texts))

    def _weighted(self, x) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Counts (csr) -> per text: feature ids and L2-normalized weights (weight-0 features dropped)."""
        x = x.astype(np.float32, copy=True)
        if self.weighting == "tfidf":
            x.data = 1.0 + np.log(x.data)  # sublinear term frequency
        x.data *= self.weights[x.indices]
        x.eliminate_zeros()
        counts = np.diff(x.indptr)
        rows = np.repeat(np.arange(x.shape[0]), counts)
        norms = np.sqrt(np.bincount(rows, weights=x.data.astype(np.float64) ** 2, minlength=x.shape[0]))
        x.data /= norms[rows].astype(np.float32)
        cuts = x.indptr[1:-1]
        ids = np.split(x.indices.astype(np.int64), cuts)
        vals = np.split(x.data, cuts)
        empty_ids, empty_vals = np.array([self.pad_id], dtype=np.int64), np.zeros(1, dtype=np.float32)
        for i in np.flatnonzero(counts == 0):  # nothing known: one padding entry with weight 0
            ids[i], vals[i] = empty_ids, empty_vals
        return ids, vals

    # -- saving ------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"type": self.kind, "analyzer": self.analyzer, "ngram_range": list(self.ngram_range),
                "weighting": self.weighting, "min_df": self.min_df, "lowercase": self.lowercase,
                "nb_alpha": self.nb_alpha, "max_features": self.max_features, "hash_buckets": self.hash_buckets,
                "words": self.words}

    def save_assets(self, folder: Path, name: str) -> list[str]:
        """The n-gram keys and weights into folder/name/ (their paths under folder)."""
        (folder / name).mkdir(parents=True, exist_ok=True)
        np.save(folder / name / "ngram_weights.npy", self.weights, allow_pickle=False)
        if self.hash_buckets:  # hashed: the weights are the whole state
            return [f"{name}/ngram_weights.npy"]
        np.save(folder / name / "ngram_keys.npy", self.keys, allow_pickle=False)
        return [f"{name}/ngram_keys.npy", f"{name}/ngram_weights.npy"]

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
        f = cls(meta["analyzer"], meta["ngram_range"], meta["weighting"], meta["min_df"], meta["lowercase"],
                meta["nb_alpha"], meta.get("max_features"), meta.get("hash_buckets", 0))
        f.words = meta.get("words", "split")
        try:
            weights = np.load(folder / "ngram_weights.npy", allow_pickle=False)
            if not f.hash_buckets and (folder / "ngram_keys.npy").is_file():
                f.keys = np.load(folder / "ngram_keys.npy", allow_pickle=False)
            elif not f.hash_buckets:  # a run saved with a string vocabulary (scikit-learn's row order)
                vocab = json.loads((folder / "ngram_vocab.json").read_text(encoding="utf-8"))
                keys = f._string_keys(vocab)
                order = np.argsort(keys, kind="stable")
                f.keys, f.key_rows = keys[order], order  # sorted key -> the saved model's row
        except (OSError, ValueError) as e:
            raise RunError(f"{folder}: n-gram features are missing or corrupted ({e})") from None
        f.weights = weights
        return f


def nb_weights(x, y: np.ndarray, alpha: float, chunk: int = 1 << 18) -> np.ndarray:
    """Per feature: the largest |log-count ratio| of any class against the rest (NBSVM's |r| for two classes), from
    one sparse product (classes x features counts, O(nonzeros)) and evaluated a block of features at a time, so
    many classes over millions of n-grams never hold a dense classes x features float64 table."""
    import scipy.sparse as sp

    classes, y_idx = np.unique(y, return_inverse=True)
    onehot = sp.csr_matrix((np.ones(len(y_idx), dtype=np.float32), (y_idx, np.arange(len(y_idx)))),
                           shape=(len(classes), x.shape[0]))
    counts = (onehot @ x).tocsc()  # classes x features, sparse
    total = np.asarray(counts.sum(0), dtype=np.float64).ravel()
    per_class = np.asarray(counts.sum(1), dtype=np.float64).ravel()
    n_features = x.shape[1]
    p_sum = per_class + alpha * n_features  # |p_c| over all features, |q_c| = everything else's counts
    q_sum = (per_class.sum() - per_class) + alpha * n_features
    w = np.empty(n_features, dtype=np.float64)
    for s in range(0, n_features, chunk):
        c = counts[:, s:s + chunk].toarray().astype(np.float64)  # classes x chunk
        p = (alpha + c) / p_sum[:, None]
        q = (alpha + total[None, s:s + chunk] - c) / q_sum[:, None]
        w[s:s + chunk] = np.abs(np.log(p / q)).max(0)
    return w


def load_featurizer(state: dict, folder: Path):
    """A text run's fitted featurizer from its processor part `state` (files under folder/tokenizer/): an n-gram
    featurizer or a tokenizer. Torch-free (the ONNX backend loads it too)."""
    if state.get("type") == NgramFeaturizer.kind:
        return NgramFeaturizer.from_state(state, folder, "tokenizer")
    from luban.data.tokenizers import encoder_from_state

    return encoder_from_state(state, folder / "tokenizer")
