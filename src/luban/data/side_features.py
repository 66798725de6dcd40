"""User / item feature tables for recommendation: categorical values, multi-valued lists (genres), bags of words
(titles, descriptions) and numbers, encoded once and looked up by id.

MovieLens tables are read directly with their columns typed: ml-100k `u.user` (age, gender, occupation) and
`u.item` (genres from the 19 flags, release year), ml-1m `users.dat` and `movies.dat` (genres, year from the title).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from luban.data.interactions import ITEM, USER, canonical_ids, parse_numbers, read_movielens
from luban.data.readers import LINE, read_table, resolve_column
from luban.errors import ConfigError, DataError
from luban.processor import Processor

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
MAX_BAG = 32          # tokens kept per multi-valued / text cell
MAX_TEXT_VOCAB = 20000


def _year(text) -> float:
    m = re.search(r"(\d{4})\)?\s*$", str(text or ""))
    return float(m.group(1)) if m else np.nan


def _movielens_table(path: Path, role: str) -> tuple[pd.DataFrame, dict] | None:
    """(frame, preset spec) for a MovieLens user/item table, else None."""
    name = path.name.lower()
    if name == "u.user":
        df = read_movielens(path, "|", [USER, "age", "gender", "occupation", "zip"])
        return df, {"numeric": ["age"], "categorical": ["gender", "occupation"]}
    if name == "users.dat":
        df = read_movielens(path, "::", [USER, "gender", "age", "occupation", "zip"])
        return df, {"categorical": ["gender", "age", "occupation"]}
    if name == "u.item":
        flags = [f"g{i}" for i in range(19)]
        df = read_movielens(path, "|", [ITEM, "title", "release_date", "video_release_date", "url"] + flags)
        genre_file = path.with_name("u.genre")
        names = ML100K_GENRES
        if genre_file.is_file():
            pairs = [ln.split("|") for ln in genre_file.read_text(encoding="latin-1").splitlines() if "|" in ln]
            names = [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))] if len(pairs) == 19 else names
        on = df[flags].to_numpy() == "1"
        df["genres"] = ["|".join(n for n, f in zip(names, row, strict=True) if f) for row in on]
        df["year"] = [_year(d) for d in df["release_date"]]
        return df[[ITEM, "title", "genres", "year", LINE]], {"multi_valued": {"genres": "|"}, "numeric": ["year"]}
    if name == "movies.dat":
        df = read_movielens(path, "::", [ITEM, "title", "genres"])
        df["year"] = [_year(t) for t in df["title"]]
        return df, {"multi_valued": {"genres": "|"}, "numeric": ["year"]}
    return None


def _words(text) -> list[str]:
    return re.findall(r"\w+", str(text).lower()) if text is not None else []


class FeatureTable(Processor):
    """Encoded features of the ids in one table: `cat` [n, C] value ids (0 = unknown), one bag [n, MAX_BAG] of
    token ids per multi-valued / text column (0 = padding) and `num` [n, N] standardized numbers (0 = mean)."""

    def __init__(self, role: str, spec: dict, vocab: dict, stats: dict, ids: list[str], widths: dict | None = None):
        self.role, self.spec, self.vocab, self.stats = role, spec, vocab, stats
        self.widths = widths or {}  # bag column -> tokens kept per row
        self.ids = ids
        self.index = {v: i for i, v in enumerate(ids)}
        self.arrays: dict[str, np.ndarray] = {}

    # fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, table_cfg, role: str, int_ids: bool) -> "FeatureTable":
        path = Path(table_cfg.path)
        preset = _movielens_table(path, role) if path.exists() else None
        if preset is not None:
            frame, spec = preset
            id_col = role
            if role not in frame.columns:
                raise ConfigError(f"recommendation.{role}_features.path: {path.name} is a MovieLens "
                                  f"{'item' if role == USER else 'user'} table, not a {role} table")
            given = any([table_cfg.categorical, table_cfg.numeric, table_cfg.multi_valued, table_cfg.text])
            if given:
                spec = {}
        else:
            frame = read_table(path, table_cfg.format, table_cfg.header, table_cfg.delimiter, "auto",
                               table_cfg.encoding)
            cols = [c for c in frame.columns if c != LINE]
            if table_cfg.id is not None:
                id_col = resolve_column(frame, table_cfg.id, f"{role}_features.id")
            else:
                lower = {str(c).lower(): c for c in cols}
                id_col = next((lower[c] for c in (role, f"{role}_id", f"{role}id", "id") if c in lower), cols[0])
            spec = {}
        if not spec:
            spec = cls._spec_from_config(frame, table_cfg, id_col, role)
        return cls.fit(frame, id_col, spec, role, int_ids)

    @staticmethod
    def _spec_from_config(frame: pd.DataFrame, t, id_col: str, role: str) -> dict:
        where = f"recommendation.{role}_features"
        res = lambda refs, what: [resolve_column(frame, c, f"{role}_features.{what}") for c in refs]  # noqa: E731
        spec = {"categorical": res(t.categorical, "categorical"), "numeric": res(t.numeric, "numeric"),
                "multi_valued": {resolve_column(frame, c, f"{role}_features.multi_valued"): sep
                                 for c, sep in t.multi_valued.items()},
                "text": res(t.text, "text")}
        if not any(spec.values()):  # nothing listed: numbers are numeric, anything else categorical
            for c in frame.columns:
                if c in (LINE, id_col):
                    continue
                vals = pd.to_numeric(pd.Series(list(frame[c]), dtype=object), errors="coerce")
                present = frame[c].notna() & (frame[c].astype(str).str.strip() != "")
                (spec["numeric"] if vals[present.to_numpy()].notna().all() else spec["categorical"]).append(c)
        for sep in spec["multi_valued"].values():
            if not sep:
                raise ConfigError(f"{where}.multi_valued: the separator must not be empty")
        return spec

    @classmethod
    def fit(cls, frame: pd.DataFrame, id_col: str, spec: dict, role: str, int_ids: bool) -> "FeatureTable":
        src = frame.attrs.get("source", f"{role} features")
        lines = frame[LINE].to_numpy()
        ids = list(canonical_ids(frame[id_col], lines, src, str(id_col), role, int_ids))
        seen: dict[str, int] = {}
        for v, line in zip(ids, lines, strict=True):
            if v in seen:
                raise DataError(f"{src}: line {line}: field {id_col!r}: {role} {v!r} appears again (first at line "
                                f"{seen[v]}); a feature table needs one row per {role}")
            seen[v] = line
        spec = {"id": str(id_col), "categorical": [str(c) for c in spec.get("categorical", [])],
                "numeric": [str(c) for c in spec.get("numeric", [])],
                "multi_valued": {str(c): s for c, s in spec.get("multi_valued", {}).items()},
                "text": [str(c) for c in spec.get("text", [])]}
        vocab, stats = {}, {}
        for c in spec["categorical"]:
            vocab[c] = sorted({str(v).strip() for v in frame[c] if v is not None and str(v).strip() != ""})
        for c, sep in spec["multi_valued"].items():
            vocab[c] = sorted({t.strip() for v in frame[c] if v is not None for t in str(v).split(sep) if t.strip()})
        for c in spec["text"]:
            counts = Counter(w for v in frame[c] for w in _words(v))
            vocab[c] = sorted(w for w, _ in counts.most_common(MAX_TEXT_VOCAB))
        for c in spec["numeric"]:
            x = parse_numbers(frame[c], lines, src, str(c), "value")
            mean = float(np.nanmean(x)) if (~np.isnan(x)).any() else 0.0
            std = float(np.nanstd(x)) if (~np.isnan(x)).any() else 1.0
            stats[c] = [mean, std or 1.0]
        table = cls(role, spec, vocab, stats, ids)
        for c in table.bag_columns():
            table.widths[c] = max(1, min(MAX_BAG, max((len(table._tokens(c, v)) for v in frame[c]), default=1)))
        table.arrays = table.encode_frame(frame, src)
        return table

    # encoding -----------------------------------------------------------------------------------------------
    def _tokens(self, col: str, value) -> list[str]:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return []
        if col in self.spec["multi_valued"]:
            if isinstance(value, (list, tuple)):
                return [str(t).strip() for t in value]
            return [t.strip() for t in str(value).split(self.spec["multi_valued"][col]) if t.strip()]
        return _words(value)

    def encode_records(self, records: list[dict], source: str = "input") -> dict[str, np.ndarray]:
        """Features of rows given as {column: value} dicts (new users / items); missing columns count as unknown."""
        for r in records:
            unknown = sorted(set(r) - set(self.columns()) - {self.spec["id"]})
            if unknown:
                raise DataError(f"{source}: unknown {self.role} feature(s) {', '.join(map(repr, unknown))}; "
                                f"this run knows {', '.join(self.columns()) or 'none'}")
        frame = pd.DataFrame.from_records([dict(r) for r in records])
        for c in self.columns():
            if c not in frame.columns:
                frame[c] = None
        frame[LINE] = range(1, len(frame) + 1)
        return self.encode_frame(frame, source)

    def encode_frame(self, frame: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        n = len(frame)
        lines = frame[LINE].to_numpy()
        cat = np.zeros((n, len(self.spec["categorical"])), dtype=np.int64)
        for j, c in enumerate(self.spec["categorical"]):
            index = {v: i + 1 for i, v in enumerate(self.vocab[c])}
            cat[:, j] = [index.get(str(v).strip(), 0) if v is not None else 0 for v in frame[c]]
        num = np.zeros((n, len(self.spec["numeric"])), dtype=np.float32)
        for j, c in enumerate(self.spec["numeric"]):
            x = parse_numbers(frame[c], lines, source, str(c), "value")
            mean, std = self.stats[c]
            num[:, j] = np.where(np.isnan(x), 0.0, (x - mean) / std)
        out = {"cat": cat, "num": num}
        for c in self.bag_columns():
            index = {v: i + 1 for i, v in enumerate(self.vocab[c])}
            width = self.widths.get(c, MAX_BAG)
            bag = np.zeros((n, width), dtype=np.int64)
            for r, v in enumerate(frame[c]):
                ids = [index[t] for t in self._tokens(c, v) if t in index][:width]
                bag[r, : len(ids)] = ids
            out[f"bag:{c}"] = bag
        return out

    def columns(self) -> list[str]:
        return self.spec["categorical"] + self.spec["numeric"] + self.bag_columns()

    def bag_columns(self) -> list[str]:
        return list(self.spec["multi_valued"]) + self.spec["text"]

    def dims(self) -> dict:
        """What a model needs to size its feature embeddings."""
        return {"categorical": [len(self.vocab[c]) + 1 for c in self.spec["categorical"]],
                "bags": [len(self.vocab[c]) + 1 for c in self.bag_columns()],
                "numeric": len(self.spec["numeric"])}

    def rows_for(self, raw_ids: list[str]) -> dict[str, torch.Tensor]:
        """Feature tensors for these ids in order; ids not in the table get all-unknown features."""
        rows = np.array([self.index.get(v, -1) for v in raw_ids], dtype=np.int64)
        return self.gather(rows)

    def gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        for k, a in self.arrays.items():
            x = np.zeros((len(rows),) + a.shape[1:], dtype=a.dtype)
            ok = rows >= 0
            x[ok] = a[rows[ok]]
            out[k] = torch.from_numpy(x)
        return out

    def has(self, raw_id: str) -> bool:
        return raw_id in self.index

    # saving -------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"role": self.role, "spec": self.spec, "vocab": self.vocab, "stats": self.stats, "ids": self.ids,
                "widths": self.widths}

    def save_assets(self, folder: Path, name: str) -> list[str]:
        """The encoded arrays: folder/<name>.safetensors (name: "<role>_features")."""
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(folder / f"{name}.safetensors"))
        return [f"{name}.safetensors"]

    @classmethod
    def from_state(cls, meta: dict, folder: Path, name: str) -> "FeatureTable":
        from safetensors.numpy import load_file

        table = cls(meta["role"], meta["spec"], meta["vocab"], meta["stats"], meta["ids"], meta["widths"])
        table.arrays = load_file(str(folder / f"{name}.safetensors"))
        return table
