"""Readers for CSV, TSV, JSONL (and a JSON array of objects), Parquet and plain text (one text per line).

Every reader returns a pandas DataFrame of strings (missing cells are None) plus a `_line` column holding the
1-based line of the source file each row came from, so later errors can name file and line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from luban.data.frames import LINE, given_table
from luban.errors import DataError



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
                        f"({e.reason}); set data.encoding to the file's encoding (e.g. gbk, latin-1; or one "
                        "per file: {train: gbk, test: utf-8})") from None
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {encoding!r}") from None


JSON_SHAPE = "luban reads JSON Lines or a JSON array of objects"


def _frame(path: Path, records: list, lines: list[int], names: list[str] | None = None) -> pd.DataFrame:
    """A chunk of rows as the frame every reader returns: strings / values, missing cells None, plus _line."""
    if names is not None:
        df = pd.DataFrame(records, columns=names, dtype=object)
    else:
        df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
        df = df.astype(object).where(df.notna(), None)
    df[LINE] = lines
    df.attrs["source"] = str(path)
    return df


def _chunks(path: Path, rows, size: int | None, names_of=None):
    """Group (line, record) pairs into frames of `size` rows (None: one frame); `names_of()` gives the column
    names of a delimited file once its header is read."""
    records, lines = [], []
    for line, rec in rows:
        records.append(rec)
        lines.append(line)
        if size is not None and len(records) >= size:
            yield _frame(path, records, lines, names_of() if names_of else None)
            records, lines = [], []
    if records or size is None:
        yield _frame(path, records, lines, names_of() if names_of else None)


def _delimited_rows(path: Path, f, delimiter: str, quoting: str, header: bool, state: dict):
    """(line, fields) for every data row. A line that is only whitespace is a row (its text is whitespace). An
    empty line is a row with an empty text in a one-column file (except empty lines at the end of the file); in a
    file of several columns it holds no fields and is not a row (as in pandas)."""
    quote = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long document is a row, not a parse error
    reader = csv.reader(f, delimiter=delimiter, quoting=quote, strict=True)
    width = None
    blank: list[int] = []  # empty lines seen since the last row: rows only if another row follows
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        for rec in reader:
            if not rec:
                if width == 1 or (width is None and not header):
                    blank.append(reader.line_num)
                continue
            if state["names"] is None and header:
                names = [c.strip() for c in rec]
                if len(set(names)) != len(names):
                    dup = sorted({n for n in names if names.count(n) > 1})
                    raise DataError(f"{path}: line {reader.line_num}: duplicate column names {dup}")
                state["names"], width = names, len(names)
                continue
            if width is None:
                width = len(rec)
                state["names"] = [str(i) for i in range(width)]
            if width == 1:
                for line in blank:
                    yield line, [None]
            blank = []
            if len(rec) != width:
                raise DataError(f"{path}: line {reader.line_num}: expected {width} fields, found {len(rec)} "
                                f"(ragged row{'; check quoting or the delimiter' if len(rec) > width else ''})")
            yield reader.line_num, rec
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed {kind}: {e}") from None


def _check_object(path: Path, line: int, obj) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: line {line}: expected a JSON object, found {type(obj).__name__}; {JSON_SHAPE}")
    return obj


def _jsonl_rows(path: Path, f):
    for i, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = f"; {JSON_SHAPE}" if path.suffix.lower() == ".json" else ""
            raise DataError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None
        yield i, _check_object(path, i, obj)


def _json_array_rows(path: Path, text: str):
    """The objects of a JSON array, each with the line it starts on."""
    dec = json.JSONDecoder()
    n, pos, line = len(text), text.index("[") + 1, 1
    counted = 0

    def skip(p):
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    def line_at(p):
        nonlocal counted, line
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        return
    while True:
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        yield line_at(pos), _check_object(path, line_at(pos), obj)
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < n and text[pos] == "]" and skip(pos + 1) == n:
            return
        raise DataError(f"{path}: line {line_at(pos)}: not valid JSON (expected ',' or the closing ']'); "
                        f"{JSON_SHAPE}")


def _lines_rows(f):
    """A plain text file: every line is one text (no header), an empty line an empty text; a final newline ends
    the last line rather than starting an empty one."""
    for i, line in enumerate(f, start=1):
        yield i, [line.rstrip("\r\n")]


def _open_text(path: Path, encoding: str, newline=None):
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return open(path, encoding=enc, newline=newline)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {encoding!r}") from None


def _starts_with_bracket(path: Path, encoding: str) -> bool:
    with _open_text(path, encoding) as f:
        while True:
            c = f.read(1)
            if not c or not c.isspace():
                return c == "["


def iter_table(path: str | Path, fmt: str = "auto", header: bool = True, delimiter: str | None = None,
               quoting: str = "auto", encoding: str = "utf-8", chunk_rows: int | None = 10_000):
    """The file's rows as frames of `chunk_rows` rows (None: one frame), read as a stream: memory stays flat in
    the file's size (a JSON array is the exception: it is parsed whole). Formats: csv, tsv, jsonl (also a .json
    file holding a JSON array of objects), parquet, and `lines` (one text per line, column "text")."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows)
        return
    try:
        if fmt == "jsonl" and path.suffix.lower() == ".json" and _starts_with_bracket(path, encoding):
            yield from _chunks(path, _json_array_rows(path, decode_file(path, encoding)), chunk_rows)
            return
        with _open_text(path, encoding, newline="" if fmt in ("csv", "tsv") else None) as f:
            if fmt == "jsonl":
                yield from _chunks(path, _jsonl_rows(path, f), chunk_rows)
            elif fmt == "lines":
                for df in _chunks(path, _lines_rows(f), chunk_rows, lambda: ["text"]):
                    df.attrs["format"] = "lines"  # its one column stands for whichever text column is asked
                    yield df
            else:
                delim = delimiter or ("\t" if fmt == "tsv" else ",")
                q = quoting if quoting != "auto" else ("none" if fmt == "tsv" else "minimal")
                state = {"names": None}
                yield from _chunks(path, _delimited_rows(path, f, delim, q, header, state), chunk_rows,
                                   lambda: state["names"] or [])
    except UnicodeDecodeError:
        decode_file(path, encoding)  # raises the error naming the line
        raise


def _parquet_chunks(path: Path, chunk_rows: int | None):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'luban[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=chunk_rows or 65_536)
        start = 1
        any_rows = False
        whole = []
        for b in batches:
            df = b.to_pandas()
            df = df.astype(object).where(df.notna(), None)
            df[LINE] = range(start, start + len(df))  # row number within the file
            start += len(df)
            df.attrs["source"] = str(path)
            any_rows = True
            if chunk_rows is None:
                whole.append(df)
            else:
                yield df
        if chunk_rows is None or not any_rows:
            names = pf.schema_arrow.names
            df = pd.concat(whole, ignore_index=True) if whole else pd.DataFrame(columns=names + [LINE])
            df.attrs["source"] = str(path)
            yield df
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def read_table(path: str | Path, fmt: str = "auto", header: bool = True, delimiter: str | None = None,
               quoting: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    given = given_table(path)  # luban.train(config, data=DataFrame): the frame stands in for the file
    if given is not None:
        return given
    path = Path(path)
    (df,) = iter_table(path, fmt, header, delimiter, quoting, encoding, chunk_rows=None)
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
    if df.attrs.get("format") == "lines" and len(cols) == 1:  # a plain text file: one text per line
        return cols[0]
    hint = ""
    if any(len(str(c)) > 40 or " " in str(c).strip() for c in cols):  # a header that looks like a data row
        hint = (" (read from the file's first line as its header; if the file has no header line, set "
                "data.header: false and name columns by index)")
        cols = [str(c)[:40] + ("…" if len(str(c)) > 40 else "") for c in cols]
    raise DataError(f"{src}: data.columns.{role}: column {ref!r} not found; columns are: "
                    f"{', '.join(map(str, cols))}{hint}")
