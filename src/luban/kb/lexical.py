"""BM25 over chunks: jieba words for Chinese, lower-cased word tokens for other text (bm25s: sparse matrices).

    index = BM25Index.build(texts)            # texts: list[str]
    index.search("退货政策", k=5)               # [(doc index, score), ...], best first, score > 0 only
    index.save(folder); BM25Index.load(folder)  # JSON + .npy arrays, no pickle

The API is deliberately small: the knowledge base (`luban.kb`) and the retrieval benchmark both use it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

FORMAT = 1
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+", re.UNICODE)
_JIEBA = None


def _jieba():
    global _JIEBA
    if _JIEBA is None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." lines on stderr
        _JIEBA = jieba
    return _JIEBA


def tokenize(text: str) -> list[str]:
    """Words of one text: jieba's search-mode cut where the text has Chinese (finer words as well as the long ones,
    so 退货政策 matches 退货), else \\w+ runs; lower-cased, punctuation and spaces dropped."""
    text = text.lower()
    if _HAN.search(text):
        return [w for w in _jieba().lcut_for_search(text) if _WORD.fullmatch(w.strip() or "-")]
    return _WORD.findall(text)


class BM25Index:
    """A BM25 (Lucene variant) index of a list of texts; document i is texts[i]."""

    def __init__(self, retriever, n_docs: int, k1: float, b: float):
        self._r = retriever
        self.n_docs = n_docs
        self.k1, self.b = k1, b

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.5, b: float = 0.75) -> BM25Index:
        import bm25s

        tokens = [tokenize(t) for t in texts]
        r = bm25s.BM25(k1=k1, b=b, method="lucene")
        if texts:
            # a document without a single word still takes its row; a placeholder token keeps bm25s's vocab
            # non-empty and matches no query (queries never hold it)
            r.index([t or ["\x00"] for t in tokens], show_progress=False)
        return cls(r, len(texts), k1, b)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for the query (float32, length n_docs)."""
        if self.n_docs == 0:
            return np.zeros(0, np.float32)
        vocab = self._r.vocab_dict
        words = [w for w in tokenize(query) if w in vocab]
        if not words:
            return np.zeros(self.n_docs, np.float32)
        return np.asarray(self._r.get_scores(words), dtype=np.float32)

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The k best documents as (index, score), best first; documents sharing no word with the query are left
        out (so fewer than k may come back)."""
        s = self.scores(query)
        if s.size == 0 or k <= 0:
            return []
        k = min(k, s.size)
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top], kind="stable")]
        return [(int(i), float(s[i])) for i in top if s[i] > 0]

    # ------------------------------------------------------------------ persistence (no pickle)
    def save(self, folder: str | Path) -> None:
        """bm25s's own files (.npy arrays read with allow_pickle=False, JSON vocab and parameters) + bm25.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.n_docs:
            self._r.save(str(folder))
        meta = {"format": FORMAT, "n_docs": self.n_docs, "k1": self.k1, "b": self.b}
        (folder / "bm25.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        import bm25s

        from luban.errors import RunError

        folder = Path(folder)
        meta_path = folder / "bm25.json"
        if not meta_path.is_file():
            raise RunError(f"{folder}: no lexical index (bm25.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise RunError(f"{meta_path}: lexical index format {meta.get('format')!r}, this luban reads {FORMAT}")
        if meta["n_docs"]:
            r = bm25s.BM25.load(str(folder), load_corpus=False, allow_pickle=False)
        else:
            r = bm25s.BM25(k1=meta["k1"], b=meta["b"], method="lucene")
        return cls(r, meta["n_docs"], meta["k1"], meta["b"])
