"""Text cleaning with an account of every row dropped and why."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from luban.config import CleanConfig
from luban.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

# = luban.data.readers.LINE; not imported from there: checking one text (a prediction's input) must not import
# pandas (`luban predict --backend onnx` starts in well under a second)
LINE = "_line"


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
    redacted: dict[str, dict] = field(default_factory=dict)  # PII type -> {count, rows, columns, lines}

    def note_redactions(self, column: str, lines, per_text) -> None:
        """What data.clean.redact replaced in `column` (per row counts by type): how many and where, no values."""
        for line, counts in zip(lines, per_text):
            for kind, n in counts.items():
                r = self.redacted.setdefault(kind, {"count": 0, "rows": 0, "columns": [], "lines": []})
                r["count"] += n
                r["rows"] += 1
                if column not in r["columns"]:
                    r["columns"].append(column)
                if len(r["lines"]) < 20:
                    r["lines"].append(int(line))

    def drop(self, reason: str, lines) -> None:
        lines = [int(x) for x in lines]
        if lines:
            self.dropped.setdefault(reason, []).extend(lines)

    def summary(self) -> str:
        s = f"{self.source}: {self.rows_in} rows -> {self.rows_out} kept"
        for reason, lines in self.dropped.items():
            shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            s += f"\n    dropped {len(lines)} {reason} (lines {shown})"
        for kind, r in self.redacted.items():
            shown = ", ".join(map(str, r["lines"][:5])) + (", ..." if r["rows"] > 5 else "")
            s += f"\n    redacted {r['count']} {kind} in {r['rows']} rows of {', '.join(r['columns'])} (lines {shown})"
        return s

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "dropped": {k: len(v) for k, v in self.dropped.items()},
                **({"redacted": self.redacted} if self.redacted else {})}


def label_text(value, cfg: CleanConfig) -> str | None:
    """A label cell as its stripped text, or None when it is missing: empty, or spelled as a missing value
    (data.clean.missing_labels: NaN, null, None by default, any case), so "NaN" never becomes a class."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "" or any(text.casefold() == m.casefold() for m in cfg.missing_labels):  # no set built per cell
        return None
    return text


def missing_label_error(src: str, line, column, raw) -> DataError:
    """The error for a missing label when data.clean.drop_missing_label is off."""
    shown = "" if raw is None or str(raw).strip() == "" else f" ({str(raw).strip()!r} is in data.clean.missing_labels)"
    return DataError(f"{src}: line {line}: field {column!r}: missing label{shown}; "
                     "set data.clean.drop_missing_label: true to drop such rows")


def not_text(value) -> str:
    """Why a cell that should hold a text does not: "expected a string, found a list (...)"."""
    kind = type(value).__name__
    if isinstance(value, (list, tuple)):
        return f"expected a string, found a {kind} (join it or name one element)"
    if isinstance(value, dict):
        return f"expected a string, found an object (name one of its fields)"
    return f"expected text, found {kind} {value!r}"[:200]


def checked_text(value, cfg: CleanConfig) -> tuple[str, str | None]:
    """One input text normalized as training data was, and why it cannot be predicted on ("empty text",
    "expected a string, ...") or None."""
    if value is None:
        return "", "empty text"
    if not isinstance(value, str):
        return "", not_text(value)
    norm = normalize_text(value, cfg)
    if not norm:
        return norm, "empty text"
    if not any(unicodedata.category(c)[0] != "C" for c in norm):  # NUL, control or format characters only
        return norm, "empty text (control characters only)"
    return norm, None


def text_problem(value, cfg: CleanConfig) -> str | None:
    """Why one input text cannot be predicted on, or None (checked_text without the text)."""
    return checked_text(value, cfg)[1]


def normalize_inputs(inputs, cfg: CleanConfig) -> list[str]:
    """Texts handed to a predictor (one string or a list), normalized as training data was; a non-string or an
    input left empty by cleaning is a DataError naming its position."""
    if isinstance(inputs, str):
        inputs = [inputs]
    texts = []
    for i, t in enumerate(inputs):
        norm, problem = checked_text(t, cfg)
        if problem:
            raise DataError(f"input {i + 1}: {problem}")
        texts.append(norm)
    return texts


def column_texts(frame: pd.DataFrame, col: str, path, cfg: CleanConfig) -> list[str]:
    """A column of an input file to predict on, normalized; a row left empty is a DataError naming file, line, field."""
    texts = []
    for t, line in zip(frame[col], frame[LINE]):
        norm, problem = checked_text(t, cfg)
        if problem:
            raise DataError(f"{path}: line {line}: field {col!r}: {problem}")
        texts.append(norm)
    return texts


def _texts_only(df: pd.DataFrame, col: str, src: str) -> pd.Series:
    """The column, after checking every non-missing value is a string (DataError naming the line otherwise)."""
    values = df[col]
    bad = [i for i, t in enumerate(values) if t is not None and not isinstance(t, str)]
    if bad:
        i = bad[0]
        raise DataError(f"{src}: line {df[LINE].iloc[i]}: field {col!r}: {not_text(values.iloc[i])}")
    return values


def clean_text_frame(df: pd.DataFrame, text_col: str, label_col: str | None, cfg: CleanConfig,
                     dedupe: bool = True, redactor=None) -> tuple[pd.DataFrame, CleaningReport]:
    """Return a frame with columns text, label (str or None), _line; and the account of dropped rows.
    `dedupe` is off for evaluation data (duplicates there are legitimate test cases); `redactor`
    (luban.data.redact.for_clean: data.clean.redact) replaces PII in the texts, counted in the report."""
    src = df.attrs.get("source", "data")
    rep = CleaningReport(source=src, rows_in=len(df))
    texts = _texts_only(df, text_col, src)
    import pandas as pd

    texts = [normalize_text(t, cfg) if t is not None else "" for t in texts]
    if redactor is not None:
        texts, per_text = redactor.redact_many(texts)
        rep.note_redactions(text_col, df[LINE], per_text)
    out = pd.DataFrame({
        "text": texts,
        "label": [label_text(v, cfg) for v in df[label_col]] if label_col is not None else None,
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
                first = out.index[missing][0]
                raise missing_label_error(src, out[LINE][first], label_col, df[label_col].iloc[first])
            rep.drop("missing label", out[LINE][missing])  # empty, or one of data.clean.missing_labels
            out = out[~missing]
        if dedupe and cfg.drop_conflicts:
            n_labels = out.groupby("text")["label"].nunique()
            conflicted = out["text"].isin(n_labels.index[n_labels > 1])
            rep.drop("texts seen with conflicting labels", out[LINE][conflicted])
            out = out[~conflicted]
    return _dedupe_and_close(out, rep, ["text", "label"] if label_col is not None else ["text"],
                             dedupe and cfg.drop_duplicates)


def clean_text_pairs(df: pd.DataFrame, first_col: str, second_col: str, cfg: CleanConfig, dedupe: bool = True,
                     names: tuple[str, str] = ("source", "target"),
                     redactor=None) -> tuple[pd.DataFrame, CleaningReport]:
    """Text pairs (seq2seq source/target, prompt/response): a frame with columns `names` and _line, and the account
    of dropped rows. The first text is normalized by `cfg` (NFKC, whitespace, lowercase); the second is an output
    to learn and score as written, so only its whitespace is tidied. An empty first text follows
    cfg.drop_empty, an empty second one cfg.drop_missing_label (drop with a count, or an error naming the row);
    `dedupe` drops exact duplicate pairs (training data only)."""
    src = df.attrs.get("source", "data")
    rep = CleaningReport(source=src, rows_in=len(df))
    cols = {}
    for name, col in zip(names, (first_col, second_col)):
        values = _texts_only(df, col, src)
        cols[name] = [("" if t is None else normalize_text(t, cfg) if name == names[0]
                       else " ".join(t.split())) for t in values]
        if redactor is not None:  # data.clean.redact, as in clean_text_frame
            cols[name], per_text = redactor.redact_many(cols[name])
            rep.note_redactions(col, df[LINE], per_text)
    import pandas as pd

    out = pd.DataFrame({**cols, LINE: df[LINE].to_numpy()})
    for name, col, drop in ((names[0], first_col, cfg.drop_empty), (names[1], second_col, cfg.drop_missing_label)):
        empty = out[name] == ""
        if empty.any():
            if not drop:
                option = "drop_empty" if name == names[0] else "drop_missing_label"
                raise DataError(f"{src}: line {out[LINE][empty].iloc[0]}: field {col!r}: empty {name} "
                                f"(set data.clean.{option}: true to drop such rows)")
            rep.drop(f"empty {name}", out[LINE][empty])
            out = out[~empty]
    return _dedupe_and_close(out, rep, list(names), dedupe and cfg.drop_duplicates)


def _dedupe_and_close(out: pd.DataFrame, rep: CleaningReport, keys: list[str], dedupe: bool):
    """Drop exact duplicates over `keys` when asked (counted in the report), renumber, note the row count."""
    if dedupe:
        dup = out.duplicated(subset=keys, keep="first")
        rep.drop("exact duplicates", out[LINE][dup])
        out = out[~dup]
    out = out.reset_index(drop=True)
    out.attrs["source"] = rep.source
    rep.rows_out = len(out)
    return out, rep
