"""Text cleaning with an account of every row dropped and why."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import pandas as pd

from luban.config import CleanConfig
from luban.data.readers import LINE
from luban.errors import DataError


def normalize_text(text: str, cfg: CleanConfig) -> str:
    if cfg.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.strip:
        text = " ".join(text.split()) if text.strip() else ""
    if cfg.lowercase:
        text = text.lower()
    return text


@dataclass
class CleaningReport:
    source: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> source lines

    def drop(self, reason: str, lines) -> None:
        lines = [int(x) for x in lines]
        if lines:
            self.dropped.setdefault(reason, []).extend(lines)

    def summary(self) -> str:
        s = f"{self.source}: {self.rows_in} rows -> {self.rows_out} kept"
        for reason, lines in self.dropped.items():
            shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            s += f"\n    dropped {len(lines)} {reason} (lines {shown})"
        return s

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "dropped": {k: len(v) for k, v in self.dropped.items()}}


def clean_text_frame(df: pd.DataFrame, text_col: str, label_col: str | None, cfg: CleanConfig,
                     dedupe: bool = True) -> tuple[pd.DataFrame, CleaningReport]:
    """Return a frame with columns text, label (str or None), _line; and the account of dropped rows.
    `dedupe` is off for evaluation data (duplicates there are legitimate test cases)."""
    src = df.attrs.get("source", "data")
    rep = CleaningReport(source=src, rows_in=len(df))
    texts = df[text_col]
    bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
    if bad:
        i = bad[0]
        raise DataError(f"{src}: line {df[LINE].iloc[i]}: field {text_col!r}: expected text, "
                        f"found {type(texts.iloc[i]).__name__} {texts.iloc[i]!r}")
    out = pd.DataFrame({
        "text": [normalize_text(t, cfg) if t is not None else "" for t in texts],
        "label": [None if v is None or str(v).strip() == "" else str(v).strip() for v in df[label_col]]
        if label_col is not None else None,
        LINE: df[LINE].to_numpy(),
    })
    empty = out["text"] == ""
    if empty.any():
        if not cfg.drop_empty:
            raise DataError(f"{src}: line {out[LINE][empty].iloc[0]}: field {text_col!r}: empty text "
                            "(set data.clean.drop_empty: true to drop such rows)")
        rep.drop("empty text", out[LINE][empty])
        out = out[~empty]
    if label_col is not None:
        missing = out["label"].isna()
        if missing.any():
            if not cfg.drop_missing_label:
                raise DataError(f"{src}: line {out[LINE][missing].iloc[0]}: field {label_col!r}: missing label")
            rep.drop("missing label", out[LINE][missing])
            out = out[~missing]
        if dedupe and cfg.drop_conflicts:
            n_labels = out.groupby("text")["label"].nunique()
            conflicted = out["text"].isin(n_labels.index[n_labels > 1])
            rep.drop("texts seen with conflicting labels", out[LINE][conflicted])
            out = out[~conflicted]
    if dedupe and cfg.drop_duplicates:
        keys = ["text", "label"] if label_col is not None else ["text"]
        dup = out.duplicated(subset=keys, keep="first")
        rep.drop("exact duplicates", out[LINE][dup])
        out = out[~dup]
    out = out.reset_index(drop=True)
    out.attrs["source"] = src
    rep.rows_out = len(out)
    return out, rep
