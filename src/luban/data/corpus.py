"""Plain-text corpora for language modelling: one file, a folder of text files, or a text column of a table.

A corpus is a list of documents. Held-out text is carved from the end (whole documents when there are enough,
else the last fraction of the characters, cut at a line break), never shuffled across documents, so validation
text never appears in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from luban.data.readers import LINE, decode_file
from luban.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}


@dataclass
class Doc:
    source: str  # file, or file:line for a table row
    text: str


def is_corpus_path(path: Path, fmt: str, has_columns: bool) -> bool:
    """Plain text (not a table): data.format text, a folder, or a .txt/.md file when no columns are named."""
    if fmt == "text":
        return True
    if fmt != "auto":
        return False
    return Path(path).is_dir() or (Path(path).suffix.lower() in TEXT_SUFFIXES and not has_columns)


def read_corpus(path: str | Path, encoding: str = "utf-8") -> list[Doc]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no text files ({', '.join(sorted(TEXT_SUFFIXES))}) in this folder")
    else:
        files = [path]
    docs = [Doc(str(f), decode_file(f, encoding)) for f in files]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"{path}: no text (every file is empty)")
    return docs


def docs_from_table(frame: pd.DataFrame, column: str) -> list[Doc]:
    """One document per row of a text column; empty rows are skipped."""
    src = frame.attrs.get("source", "data")
    for t, line in zip(frame[column], frame[LINE]):
        if t is not None and not isinstance(t, str):
            from luban.data.cleaning import not_text

            raise DataError(f"{src}: line {line}: field {column!r}: {not_text(t)}")
    docs = [Doc(f"{src}:{line}", t) for t, line in zip(frame[column], frame[LINE])
            if isinstance(t, str) and t.strip()]
    if not docs:
        raise DataError(f"{src}: field {column!r}: every row is empty")
    return docs


def _cut_at_line(text: str, at: int) -> int:
    """The first line break at or after `at` (or `at` itself when there is none nearby)."""
    nl = text.find("\n", at)
    return nl + 1 if 0 <= nl < at + 2000 else at


def split_corpus(docs: list[Doc], validation: float, test: float | None) -> tuple[list[Doc], list[Doc], list[Doc]]:
    """Train / validation / test documents carved from the end (test None: no test part is carved)."""
    fracs = [validation] + ([test] if test else [])
    if len(docs) >= 10 * len(fracs):
        n = len(docs)
        n_val = max(1, round(validation * n))
        n_test = max(1, round(test * n)) if test else 0
        return docs[: n - n_val - n_test], docs[n - n_val - n_test: n - n_test], docs[n - n_test:]
    text = "\n".join(d.text for d in docs)
    source = docs[0].source if len(docs) == 1 else f"{docs[0].source} (+{len(docs) - 1} files)"
    a = _cut_at_line(text, int(len(text) * (1 - validation - (test or 0))))
    b = _cut_at_line(text, int(len(text) * (1 - (test or 0)))) if test else len(text)
    parts = text[:a], text[a:b], text[b:]
    if not parts[0].strip() or not parts[1].strip():
        raise DataError(f"{source}: too little text to carve out validation{' and test' if test else ''} "
                        "(give data.validation, or more text)")
    return ([Doc(f"{source} [train part]", parts[0])], [Doc(f"{source} [validation part]", parts[1])],
            [Doc(f"{source} [test part]", parts[2])] if test else [])
