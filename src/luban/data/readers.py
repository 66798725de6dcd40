"""Readers for CSV, TSV, JSONL and Parquet.

Every reader returns a pandas DataFrame of strings (missing cells are None) plus a `_line` column holding the
1-based line of the source file each row came from, so later errors can name file and line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from luban.data.frames import given_table
from luban.errors import DataError

LINE = "_line"


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    for s in reversed(suffixes):
        if s in (".csv",):
            return "csv"
        if s in (".tsv", ".tab", ".txt"):
            return "tsv"
        if s in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        if s in (".parquet", ".pq"):
            return "parquet"
    raise DataError(f"{path}: cannot tell the format from the file name; set data.format "
                    "(csv, tsv, jsonl or parquet)")


def decode_file(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; bad bytes are an error naming the line (a UTF-8 BOM is dropped)."""
    raw = path.read_bytes()
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: bytes {raw[e.start:e.start + 4]!r} are not valid {encoding} "
                        f"({e.reason}); set data.encoding (e.g. gbk, latin-1) to the file's encoding") from None
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {encoding!r}") from None


def _read_delimited(path: Path, text: str, delimiter: str, quoting: str, header: bool) -> pd.DataFrame:
    quote = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quote, strict=True)
    rows, lines = [], []
    names: list[str] | None = None
    width = None
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and rec[0].strip() == ""):
                continue  # blank line
            if names is None and header:
                names = [c.strip() for c in rec]
                width = len(names)
                continue
            if width is None:
                width = len(rec)
            if len(rec) != width:
                raise DataError(f"{path}: line {reader.line_num}: expected {width} fields, found {len(rec)} "
                                f"(ragged row{'; check quoting or the delimiter' if len(rec) > width else ''})")
            rows.append(rec)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'}: "
                        f"{e}") from None
    if names is None:
        names = [str(i) for i in range(width or 0)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{path}: line 1: duplicate column names {dup}")
    df = pd.DataFrame(rows, columns=names, dtype=object)
    df[LINE] = lines
    return df


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records, lines = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {i}: expected a JSON object per line, found {type(obj).__name__}")
        records.append(obj)
        lines.append(i)
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    df = df.astype(object).where(df.notna(), None)
    df[LINE] = lines
    return df


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'luban[parquet]'") from None
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    df = df.astype(object).where(df.notna(), None)
    df[LINE] = range(1, len(df) + 1)  # row number within the file
    return df


def read_table(path: str | Path, fmt: str = "auto", header: bool = True, delimiter: str | None = None,
               quoting: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    given = given_table(path)  # luban.train(config, data=DataFrame): the frame stands in for the file
    if given is not None:
        return given
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        df = _read_parquet(path)
    else:
        text = decode_file(path, encoding)
        if fmt == "jsonl":
            df = _read_jsonl(path, text)
        else:
            delim = delimiter or ("\t" if fmt == "tsv" else ",")
            q = quoting if quoting != "auto" else ("none" if fmt == "tsv" else "minimal")
            df = _read_delimited(path, text, delim, q, header)
    if len(df) == 0:
        raise DataError(f"{path}: no data rows")
    df.attrs["source"] = str(path)
    return df


def resolve_column(df: pd.DataFrame, ref, role: str) -> str:
    """Map a configured column (name, or index for header-less files) to the frame's column name."""
    cols = [c for c in df.columns if c != LINE]
    src = df.attrs.get("source", "data")
    if isinstance(ref, int):
        if 0 <= ref < len(cols):
            return cols[ref]
        raise DataError(f"{src}: data.columns.{role}: column index {ref} is out of range "
                        f"(the file has {len(cols)} columns)")
    if ref in df.columns and ref != LINE:
        return ref
    raise DataError(f"{src}: data.columns.{role}: column {ref!r} not found; columns are: "
                    f"{', '.join(map(str, cols))}")
