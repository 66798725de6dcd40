"""Row-aligned prediction over a file: every input row gets exactly one output row, streamed in chunks.

`luban predict RUN --input F --output O` and `Predictor.predict_file(F)` both run `predict_rows`: the file is read
in chunks (memory stays flat in its size), each chunk is turned into the task's inputs (`frame_inputs`) and
predicted, and every row comes back in input order carrying what joins it to the input (the id column, else its
0-based row number, plus any kept input columns). A row the model cannot take (an empty text, a missing image)
becomes an error row ({"row": 11015, "error": "empty text"}), is skipped with a count (`skip-row`), or stops the
command with the file, line and field (`fail`) — never a silent drop.

Task predictors take part through two optional hooks: `frame_inputs(frame) -> (inputs, field)` (the raw inputs of
a chunk, one per row, and the column they came from) and `input_problem(x) -> str | None` (why one input cannot be
predicted). A predictor without `frame_inputs` is read whole through its `read_inputs(path)`; rows its `predict`
refuses (a DataError) are found by bisecting the chunk, so they too become error rows.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from luban.errors import DataError, LubanError

ON_ERROR = ("error-row", "skip-row", "fail")
OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                  ".pq": "parquet"}
CHUNK_ROWS = 2048
_POSITION = re.compile(r"^(?:.*?: )?(?:line \d+: |input \d+: )(?:field '[^']*': )?")


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise LubanError(f"on_error must be one of {', '.join(ON_ERROR)} (got {on_error!r})")
    return on_error


# predicting one chunk ---------------------------------------------------------------------------------------------
def _size(inputs) -> int:
    return len(inputs)


def _is_frame(inputs) -> bool:
    """A pandas DataFrame? (Without importing pandas: inputs that are not one need no pandas.)"""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(inputs, pd.DataFrame)


def _take(inputs, idx: list[int]):
    if _is_frame(inputs):
        part = inputs.iloc[idx].reset_index(drop=True)
        part.attrs = dict(inputs.attrs)
        return part
    return [inputs[i] for i in idx]


def _items(inputs):
    if _is_frame(inputs):
        return [None] * len(inputs)  # a table's rows are checked by the task's predict (bisected on error)
    return inputs


def _reason(message: str) -> str:
    """A DataError's message without its position (the output row already says which row it is)."""
    return _POSITION.sub("", message, count=1) or message


def predict_chunk(impl, inputs, **kw) -> list:
    """One result per input, in order: the task's output dict, or a string saying why the input was refused.
    Inputs the task's `input_problem` rejects are not sent to the model; a DataError from `predict` is narrowed
    down to the rows that cause it by bisection, so the rest of the chunk is still predicted together."""
    out: list = [impl.input_problem(x) for x in _items(inputs)]

    def run(idx: list[int]):
        if not idx:
            return
        try:
            res = impl.predict(_take(inputs, idx), **kw)
        except DataError as e:
            if len(idx) == 1:
                out[idx[0]] = _reason(str(e))
                return
            mid = len(idx) // 2
            run(idx[:mid])
            run(idx[mid:])
            return
        if len(res) != len(idx):
            raise LubanError(f"internal error: task {impl.task} returned {len(res)} outputs for "
                             f"{len(idx)} inputs")
        for i, r in zip(idx, res):
            out[i] = r

    run([i for i, p in enumerate(out) if p is None])
    return out


def local_runner(impl, kw: dict):
    def run(frame):
        inputs, col = impl.frame_inputs(frame)
        return predict_chunk(impl, inputs, **kw), col
    return run


# the read -> predict -> shape loop ------------------------------------------------------------------------------
@dataclass
class Summary:
    """What happened to the input rows: counted and said on stderr, never silent."""

    source: str
    rows: int = 0
    predicted: int = 0
    errors: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_lines: list = field(default_factory=list)

    def add(self, row: dict, res, on_error: str, where: str, line) -> dict | None:
        """Count one input row and return its output row (`row` holds its id and kept columns), or None when it
        is skipped; `res` is the task's output dict or the reason the row was refused."""
        self.rows += 1
        if not isinstance(res, str):
            self.predicted += 1
            row.update(res)
            return row
        if on_error == "fail":
            raise DataError(f"{where}: {res} (--on-error error-row writes an error row instead; skip-row "
                            "skips it)")
        self.reasons[res] += 1
        if len(self.first_lines) < 5:
            self.first_lines.append(line)
        if on_error == "skip-row":
            self.skipped += 1
            return None
        self.errors += 1
        row["error"] = res
        return row

    def message(self, written_to: str | None = None) -> str:
        """"wrote 3 predictions to out.jsonl", or with the rows refused: counted, why, and where."""
        to = f" to {written_to}" if written_to else ""
        bad = self.errors + self.skipped
        if not bad:
            return f"wrote {_n(self.predicted, 'prediction')}{to}" if written_to else f"{_n(self.rows, 'row')}"
        why = ", ".join(f"{r} ×{n}" for r, n in self.reasons.most_common(3))
        where = ", ".join(map(str, self.first_lines)) + (", ..." if bad > len(self.first_lines) else "")
        lines = all(isinstance(x, int) for x in self.first_lines)  # file lines, or "input N" of a listing
        detail = f"{why}; {self.source} {'line' + ('s' if bad > 1 else '') + ' ' if lines else ''}{where}"
        if self.errors:
            head = f"wrote {_n(self.rows, 'row')}{to}" if written_to else _n(self.rows, "row")
            return f"{head}: {_n(self.predicted, 'prediction')}, {_n(self.errors, 'error row')} ({detail})"
        head = f"wrote {_n(self.predicted, 'prediction')}{to}" if written_to else _n(self.predicted, "prediction")
        return f"{head}; skipped {_n(self.skipped, 'row')} of {self.rows} (--on-error skip-row: {detail})"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _id_values(frame, id_column, start: int):
    from luban.data.readers import resolve_column

    if id_column is None:
        return "row", range(start, start + len(frame))
    col = resolve_column(frame, id_column, "id")
    return str(col), list(frame[col])


def _input_format(cfg, path: Path) -> str:
    fmt = cfg.data.format
    if fmt == "auto" and path.suffix.lower() == ".txt":
        return "lines"  # a plain text file to predict on: one text per line, no header
    return fmt


def iter_frames(cfg, path: Path, chunk_rows: int):
    from luban.data.readers import iter_table

    d = cfg.data
    yield from iter_table(path, _input_format(cfg, path), d.header, d.delimiter, d.quoting, d.encoding_for(path),
                          chunk_rows)


def _keep_columns(frame, keep_columns, keep_input) -> list[str]:
    from luban.data.readers import LINE, resolve_column

    if keep_input:
        return [c for c in frame.columns if c != LINE]
    return [resolve_column(frame, c, "keep") for c in keep_columns or []]


def predict_rows(predictor, path: str | Path, on_error: str = "error-row", id_column=None, keep_columns=None,
                 keep_input: bool = False, chunk_rows: int = CHUNK_ROWS, runner_map=None, summary: Summary = None,
                 **kw):
    """Yield lists of output rows (one list per chunk, rows in input order) for the input file `path`.

    `predictor`: a luban Predictor. `runner_map(frames)` -> (frame, (results, column)) pairs in order may
    replace the local predict loop (Ray actors)."""
    check_on_error(on_error)
    impl = predictor
    path = Path(path)
    cfg = predictor.config
    id_column = id_column if id_column is not None else getattr(cfg.data.columns, "id", None)
    summary = summary if summary is not None else Summary(str(path))
    if impl.frame_inputs is None or path.is_dir() or path.suffix.lower() in impl.media_suffixes:
        yield from _predict_whole(impl, path, on_error, summary, chunk_rows, kw)
        return
    from luban.data.readers import LINE  # here: a folder of images, or inputs given in memory, need no pandas

    frames = iter_frames(cfg, path, chunk_rows)
    run = local_runner(impl, kw)
    chunks = runner_map(frames) if runner_map is not None else ((f, run(f)) for f in frames)
    start = 0
    for frame, (results, col) in chunks:
        id_key, ids = _id_values(frame, id_column, start)
        keep = _keep_columns(frame, keep_columns, keep_input)
        start += len(frame)
        kept = {c: list(frame[c]) for c in keep}
        field_at = f": field {col!r}" if col is not None else ""
        out = []
        for j, (res, line) in enumerate(zip(results, frame[LINE])):
            row = {_input_name(id_key): _plain(ids[j])} if id_column is not None else {"row": ids[j]}
            for c in keep:
                row[_input_name(c)] = _plain(kept[c][j])
            row = summary.add(row, res, on_error, f"{path}: line {line}{field_at}", line)
            if row is not None:
                out.append(row)
        yield out
    if summary.rows == 0:
        raise DataError(f"{path}: no data rows")


# fields a task's output row may hold: an input column of the same name is written as input_<name>
OUTPUT_FIELDS = {"row", "error", "label", "score", "probabilities", "value", "text", "tokens", "tags", "entities",
                 "words", "image", "audio", "boxes", "finish_reason", "seconds", "tokens_per_second", "items", "user",
                 "strategy"}


def _input_name(column: str) -> str:
    return f"input_{column}" if column in OUTPUT_FIELDS else column


def _predict_whole(impl, path: Path, on_error: str, summary: Summary, chunk_rows: int, kw: dict):
    """Tasks that read their input files their own way (a folder of images, audio manifests): read whole, then
    predicted in chunks with the same per-row accounting."""
    inputs = impl.read_inputs(path)
    n = _size(inputs)
    for s in range(0, n, chunk_rows):
        idx = list(range(s, min(n, s + chunk_rows)))
        rows = [summary.add({"row": i}, res, on_error, f"{path}: input {i + 1}", f"input {i + 1}")
                for i, res in zip(idx, predict_chunk(impl, _take(inputs, idx), **kw))]
        yield [r for r in rows if r is not None]


def _plain(v):
    """A cell as a JSON value (numpy scalars from Parquet become Python numbers)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return str(v)
    return v


# writers --------------------------------------------------------------------------------------------------------
def output_format(path: str | Path, formats: dict = OUTPUT_FORMATS,
                  names: str = ".jsonl, .csv, .tsv or .parquet") -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise LubanError(f"--output {path}: cannot tell the format from {suffix or 'a name without an extension'}; "
                         f"use {names}")
    return formats[suffix]


def _cell(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, ensure_ascii=False)
    return v


class _Writer:
    """Rows to a file written beside it and renamed into place on success: a failed run leaves nothing."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.columns: list[str] | None = None
        self.pending: list[dict] = []

    def write(self, rows: list[dict]) -> None:
        if self.columns is None:
            self.pending += rows
            ok = next((r for r in self.pending if "error" not in r), None)
            if ok is None:
                return  # all error rows so far: wait for a prediction to fix the columns
            keys = list(ok)
            for r in self.pending:  # error rows and their extra keys (e.g. "error") come after
                keys += [k for k in r if k not in keys]
            if "error" not in keys:
                keys.append("error")
            self.columns = keys
            rows, self.pending = self.pending, []
            self.open()
        for r in rows:
            extra = [k for k in r if k not in self.columns]
            if extra:
                raise LubanError(f"internal error: output row has fields {extra} beyond the columns "
                                 f"{self.columns} fixed by the first rows")
        self.rows(rows)

    def finish(self) -> None:
        if self.columns is None:  # nothing but error rows (or nothing)
            keys: list[str] = []
            for r in self.pending:
                keys += [k for k in r if k not in keys]
            self.columns = keys or ["row", "error"]
            rows, self.pending = self.pending, []
            self.open()
            self.rows(rows)
        self.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def open(self): ...
    def rows(self, rows: list[dict]): ...
    def close(self): ...


class JsonlWriter(_Writer):
    def __init__(self, path, stream=None):
        super().__init__(path)
        self.f = stream if stream is not None else open(self.tmp, "w", encoding="utf-8")
        self.columns = []  # JSON lines need no fixed columns

    def write(self, rows):
        for r in rows:
            self.f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def finish(self):
        self.close()
        if self.f is not sys.stdout:
            os.replace(self.tmp, self.path)

    def abort(self):
        self.close()
        if self.f is not sys.stdout:
            self.tmp.unlink(missing_ok=True)

    def close(self):
        if self.f is not sys.stdout and not self.f.closed:
            self.f.close()
        elif self.f is sys.stdout:
            self.f.flush()


class DelimitedWriter(_Writer):
    def __init__(self, path, delimiter: str):
        super().__init__(path)
        self.delimiter, self.f = delimiter, None

    def open(self):
        import csv

        self.f = open(self.tmp, "w", encoding="utf-8", newline="")
        self.w = csv.writer(self.f, delimiter=self.delimiter)
        self.w.writerow(self.columns)

    def rows(self, rows):
        self.w.writerows([["" if r.get(c) is None else _cell(r.get(c)) for c in self.columns] for r in rows])

    def close(self):
        if self.f is not None and not self.f.closed:
            self.f.close()


class ParquetWriter(_Writer):
    """Real Parquet (pyarrow): one row group per chunk; nested values (probabilities, entities) as JSON text."""

    def __init__(self, path):
        super().__init__(path)
        self.writer = None

    def _type(self, values):
        import pyarrow as pa

        seen = [v for v in values if v is not None]
        if seen and all(isinstance(v, bool) for v in seen):
            return pa.bool_()
        if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
            return pa.int64()
        if seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            return pa.float64()
        return pa.string()

    def open(self):
        self.schema = None

    def _table(self, rows):
        import pyarrow as pa

        cols = {c: [_cell(r.get(c)) for r in rows] for c in self.columns}
        if self.schema is None:
            self.schema = pa.schema([(c, self._type(v)) for c, v in cols.items()])
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        arrays = []
        for f in self.schema:
            vals = cols[f.name]
            if pa.types.is_string(f.type):
                vals = [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in vals]
            elif pa.types.is_floating(f.type) or pa.types.is_integer(f.type):
                vals = [None if v is None or v == "" else v for v in vals]
            try:
                arrays.append(pa.array(vals, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                raise LubanError(f"--output {self.path}: column {f.name!r} holds a value that does not fit the type "
                                 f"{f.type} set by the first rows ({e}); write .jsonl instead") from None
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def rows(self, rows):
        table = self._table(rows)  # the first call also opens the file with the schema
        self.writer.write_table(table)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_writer(path: str | Path | None):
    if path is None:
        return JsonlWriter(Path("-"), stream=sys.stdout)
    fmt = output_format(path)
    if fmt == "jsonl":
        return JsonlWriter(Path(path))
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise LubanError("--output .parquet needs pyarrow: pip install 'luban[parquet]'") from None
        return ParquetWriter(Path(path))
    return DelimitedWriter(Path(path), "," if fmt == "csv" else "\t")


class _RowProgress:
    """Rows predicted so far and the rate: a rich bar on a terminal, else a log line every 30 s (stderr).
    (Local helper; the project's progress module may take it over.)"""

    def __init__(self, label: str, every: float = 30.0):
        import time

        self.label, self.every, self.n, self.t0 = label, every, 0, time.monotonic()
        self.last, self.bar = self.t0, None
        if sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                TextColumn("{task.completed} rows"), TimeElapsedColumn(), transient=True,
                                console=None)
            self.bar.start()
            self.task = self.bar.add_task(label, total=None)

    def advance(self, k: int) -> None:
        import time

        self.n += k
        if self.bar is not None:
            self.bar.update(self.task, advance=k)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.label}: {self.n} rows, {self.n / (now - self.t0):.0f} rows/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def write_predictions(chunks, output: str | Path | None, label: str = "predict") -> int:
    """Write chunks of output rows to `output` (stdout when None), with progress on stderr; returns the number
    of rows written. On any error the partly written file is removed and the error re-raised."""
    writer = open_writer(output)
    progress = _RowProgress(label) if output is not None else None
    n = 0
    try:
        for rows in chunks:
            writer.write(rows)
            n += len(rows)
            if progress is not None:
                progress.advance(len(rows))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    return n
