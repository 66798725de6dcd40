"""A tiny deterministic encoder with luban.embedding.encoder's interface (encode, count_tokens, dim, name,
max_length, fingerprint): bag of character bigrams hashed into `dim` buckets, so texts sharing words are close."""

import hashlib

import numpy as np


class HashEncoder:
    def __init__(self, dim: int = 512, name: str = "hash-encoder", seed: int = 0):
        self.dim, self.name, self.max_length = dim, name, 128
        self.fingerprint = "sha256:" + hashlib.sha256(f"{name}/{dim}/{seed}".encode()).hexdigest()
        self.seed = seed

    def _grams(self, text):
        t = text.lower()
        return [t[i:i + 2] for i in range(max(1, len(t) - 1))]

    def encode(self, texts, kind="query", batch_size=32, progress=False):
        out = np.zeros((len(texts), self.dim), np.float32)
        for r, t in enumerate(texts):
            for g in self._grams(t):
                h = int.from_bytes(hashlib.md5(f"{self.seed}{g}".encode()).digest()[:4], "little")
                out[r, h % self.dim] += 1.0
        out[:, 0] += 1e-3  # no zero rows
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def count_tokens(self, texts, kind="query"):
        return [len(t) + 2 for t in texts]

    def info(self):
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}
