"""`luban embed`: a file of texts -> one vector per row, row-aligned like `luban predict`.

Reading, ids, kept columns, error rows and streaming are luban.lifecycle.predict_file's (`predict_rows`); this module
only writes the vectors: .parquet (the id / kept columns, `embedding` as a fixed-size list of float32, `tokens`),
.npy (a float32 matrix, row i for input row i; an error row is NaN), .jsonl (one JSON object per row). Each is
written beside its target and renamed into place when complete: a failed run leaves nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from luban.errors import LubanError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def output_kind(path: str | Path) -> str:
    from luban.lifecycle.predict_file import output_format

    return output_format(path, FORMATS, ".parquet, .npy or .jsonl")


class VectorWriter:
    """Chunks of output rows ({id or row, kept columns..., embedding, tokens} or {..., error}) to one file."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim = Path(path), dim
        self.kind = output_kind(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.rows = 0
        self.errors = 0
        self._pq = None
        self._columns: list[str] | None = None
        self._f = open(self.tmp, "wb") if self.kind in ("npy", "jsonl") else None

    def _matrix(self, rows: list[dict]) -> np.ndarray:
        m = np.full((len(rows), self.dim), np.nan, np.float32)
        for i, r in enumerate(rows):
            if "embedding" in r:
                m[i] = r["embedding"]
        return m

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.rows += len(rows)
        self.errors += sum("error" in r for r in rows)
        if self.kind == "npy":
            self._f.write(self._matrix(rows).tobytes())
        elif self.kind == "jsonl":
            for r in rows:
                self._f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
        else:
            self._parquet(rows)

    def _parquet(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._columns is None:
            keys: list[str] = []
            for r in rows:
                keys += [k for k in r if k not in keys and k not in ("embedding", "tokens", "error")]
            self._columns = keys
        m = self._matrix(rows)
        ok = np.array(["error" not in r for r in rows])
        arrays = {}
        for c in self._columns:
            vals = [r.get(c) for r in rows]
            arrays[c] = pa.array([None if v is None else v if isinstance(v, (int, float, str, bool)) else str(v)
                                  for v in vals])
        flat = pa.array(np.nan_to_num(m).reshape(-1), pa.float32())
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(flat, self.dim,
                                                                mask=None if ok.all() else pa.array(~ok))
        arrays["tokens"] = pa.array([r.get("tokens") for r in rows], pa.int64())
        arrays["error"] = pa.array([r.get("error") for r in rows], pa.string())
        table = pa.table(arrays)
        if self._pq is None:
            self._schema = table.schema
            self._pq = pq.ParquetWriter(self.tmp, self._schema)
        try:
            self._pq.write_table(table.cast(self._schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise LubanError(f"--output {self.path}: a column's values change type between chunks ({e}); write "
                             ".jsonl instead") from None

    def finish(self) -> None:
        if self.kind == "npy":
            self._f.close()
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
            final = self.path.with_name(f".{self.path.name}.npy-partial")
            with open(final, "wb") as out, open(self.tmp, "rb") as raw:
                np.lib.format.write_array_header_1_0(out, header)
                while block := raw.read(1 << 22):
                    out.write(block)
            self.tmp.unlink()
            os.replace(final, self.path)
            return
        if self.kind == "jsonl":
            self._f.close()
        elif self._pq is not None:
            self._pq.close()
        else:  # no rows at all: an empty table with the columns
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"row": pa.array([], pa.int64()),
                                     "embedding": pa.array([], pa.list_(pa.float32(), self.dim))}), self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        for closer in (self._f, self._pq):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - cleaning up after the real error
                pass
        for p in (self.tmp, self.path.with_name(f".{self.path.name}.npy-partial")):
            p.unlink(missing_ok=True)


def embed_file(model, path: str | Path, output: str | Path, kind: str = "passage", on_error: str = "error-row",
               id_column=None, keep_columns=None, keep_input: bool = False, chunk_rows: int | None = None,
               ray: dict | None = None):
    """Embed every row of `path` with `model` (a luban Predictor that Embeds) into `output`; returns the
    predict_file Summary (rows, vectors, error rows, skipped rows). ray={"workers", "address", "ref"}: the chunks
    are embedded on Ray actors (luban.lifecycle.ray_pool), each loading the model `ref` once, rows in input order."""
    from contextlib import nullcontext

    from luban.lifecycle.predict_file import CHUNK_ROWS, Summary, predict_rows
    from luban.training.progress import stage

    output_kind(output)
    summary = Summary(str(path))
    writer = VectorWriter(Path(output), model.encoder().dim)
    try:
        with _actors(model, kind, ray) if ray else nullcontext() as pool:
            from luban.lifecycle.ray_pool import ordered

            runner_map = (lambda frames: ordered(pool, frames, 2 * len(pool))) if pool else None
            with stage(f"embed {Path(path).name}", unit="rows") as st:
                for rows in predict_rows(model, path, on_error, id_column, keep_columns, keep_input,
                                         chunk_rows=chunk_rows or CHUNK_ROWS, runner_map=runner_map,
                                         summary=summary, kind=kind):
                    writer.write(rows)
                    st.advance(len(rows))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return summary


def _actors(model, kind: str, ray: dict):
    from luban.embedding.encoder import worker_ref
    from luban.lifecycle.ray_pool import actor_pool

    enc = model.encoder()
    args = (worker_ref(enc, ray["ref"]), enc.backend, enc.max_length, model.cfg, kind, enc.fingerprint)
    return actor_pool(_ray_runner, args, ray["workers"], ray.get("address", "local"))


def _ray_runner(ref: str, backend: str, max_length: int, cfg, kind: str, fingerprint: str):
    """A Ray actor's worker: the driver's encoder model (same backend, max_length, config) loaded once, embedding
    data frames as `luban embed` does."""
    from luban.embedding.encoder import check_same
    from luban.lifecycle.predict_file import local_runner
    from luban.predictor import load_encoder_model

    model = load_encoder_model(ref, device="cpu", backend=backend, max_length=max_length)
    check_same(model.encoder(), fingerprint, ref)
    model.cfg = cfg
    return local_runner(model, {"kind": kind})


def embed_texts(model, texts: list[str], output: str | Path | None, kind: str = "query") -> int:
    """--text: the vectors of a few texts, to `output` or as JSON lines on stdout."""
    rows = [{"row": i, **r} for i, r in enumerate(model.predict(texts, kind=kind))]
    if output is None:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        sys.stdout.flush()
        return len(rows)
    writer = VectorWriter(Path(output), model.encoder().dim)
    try:
        writer.write(rows)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return len(rows)
