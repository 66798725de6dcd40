"""Pre-flight checks: the mistakes a user makes most (a typo in the config, a missing data file, a misnamed
column) reported in a second, before torch, pandas and the rest are imported.

The CLI runs these before a verb imports its heavy modules. They read the config (pydantic only), check that
every data file it names exists, and read only the header (CSV/TSV), the first records (JSON Lines) or the
schema (Parquet) of each file to check the configured columns are there. They are conservative: whatever they
cannot judge cheaply (a folder of images, a plain-text corpus, an undecodable first line) is left to the full
reader, which reports it with file and line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from luban.config import RunConfig, apply_overrides, load_config, read_yaml, validate
from luban.errors import DataError

SPLITS = ("train", "validation", "test")
JSONL_RECORDS = 200  # records read to learn a JSON Lines file's keys


def _table_format(path: Path, fmt: str) -> str | None:
    """csv / tsv / jsonl / parquet when the file is unambiguously such a table, else None (not checked here)."""
    if fmt in ("csv", "tsv", "jsonl", "parquet"):
        return fmt
    if fmt != "auto":
        return None
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())


def file_columns(path: Path, fmt: str, header: bool = True, delimiter: str | None = None,
                 encoding: str = "utf-8", quoting: str = "auto") -> list[str] | None:
    """The column names of a table file from its first record(s) only; None when that cannot be told cheaply
    (the full reader then decides). Header-less delimited files have columns "0", "1", ..."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                return None
            return [str(n) for n in pq.read_schema(path).names]
        with open(path, encoding=enc, newline="") as f:
            if fmt == "jsonl":
                keys: dict[str, None] = {}
                seen = 0
                for line in f:
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        return None
                    keys.update(dict.fromkeys(map(str, obj)))
                    seen += 1
                    if seen >= JSONL_RECORDS:
                        break
                return list(keys) if seen else None
            none = quoting == "none" or (quoting == "auto" and fmt == "tsv")  # as data.quoting: tsv unquoted
            quote = csv.QUOTE_NONE if none else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter=delimiter or ("\t" if fmt == "tsv" else ","), quoting=quote)
            for rec in reader:
                if rec and not (len(rec) == 1 and rec[0].strip() == ""):
                    return [c.strip() for c in rec] if header else [str(i) for i in range(len(rec))]
            return None
    except (OSError, UnicodeError, LookupError, ValueError, csv.Error):
        return None  # unreadable, undecodable, bad JSON: the full reader names the line
    except Exception:  # noqa: BLE001 - e.g. pyarrow's errors on a corrupt file; the reader reports it
        return None


# the data.columns roles each task reads from its train / validation / test tables (others, e.g. token
# classification's `text` for raw-text prediction inputs, are not in those files)
TABLE_ROLES = {
    "text_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
    "tabular_regression": ("label", "features", "categorical"),
    "tabular_classification": ("label", "features", "categorical"),
    "image_classification": ("image", "label"),
    "image_generation": ("image", "label"),
    "translation": ("source", "target"),
    "summarization": ("source", "target"),
    "text_generation": ("text", "prompt", "response", "messages", "chosen", "rejected"),
    "speech_recognition": ("audio", "text"),
    "audio_classification": ("audio", "label"),
    "recommendation": ("user", "item", "rating", "timestamp"),
}


def configured_columns(cfg: RunConfig) -> list[tuple[str, str | int]]:
    """(YAML path, column) for every column the config names explicitly that the task reads from its tables."""
    out = []
    for role in TABLE_ROLES.get(cfg.task, ()):
        ref = getattr(cfg.data.columns, role)
        for r in ref if isinstance(ref, list) else [ref]:
            if r is not None:
                out.append((f"data.columns.{role}", r))
    from luban.evaluate.slices import slice_columns

    return out + slice_columns(cfg)


def check_columns(path: Path, columns: list[str], wanted: list[tuple[str, str | int]], role: str) -> None:
    for where, ref in wanted:
        if isinstance(ref, int):
            if not 0 <= ref < len(columns):
                raise DataError(f"{where}: column index {ref} is out of range: {role} file {path} has "
                                f"{len(columns)} columns")
        elif ref not in columns:
            raise DataError(f"{where}: column {ref!r} not found in {role} file {path}; its columns are: "
                            f"{', '.join(columns)}")


def check_data(cfg: RunConfig, files: dict[str, Path] | None = None) -> None:
    """Every data file exists and has the configured columns. `files` maps a YAML path (e.g. "data.train") to a
    file; default: the config's train/validation/test files."""
    d = cfg.data
    if files is None:
        files = {f"data.{s}": getattr(d, s) for s in SPLITS if getattr(d, s) is not None}
        if cfg.task == "recommendation" and cfg.model.reads_features:
            for role in ("user", "item"):
                p = getattr(cfg.recommendation, f"{role}_features").path
                if p is not None and not Path(p).exists():
                    raise DataError(f"recommendation.{role}_features.path: {p}: file not found")
    wanted = configured_columns(cfg)
    for where, p in files.items():
        p = Path(p)
        if not p.exists():
            hint = "" if p.is_absolute() else f" (relative to {Path.cwd()} or the config's folder)"
            raise DataError(f"{where}: {p}: file not found{hint}")
        if p.is_dir() or not wanted:
            continue
        fmt = _table_format(p, d.format)
        if fmt is None:
            continue
        columns = file_columns(p, fmt, d.header, d.delimiter, d.encoding_for(p), d.quoting)
        if columns is not None:
            check_columns(p, columns, wanted, where.rsplit(".", 1)[-1])


def check_train(config: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """`luban train / tune / cv CONFIG`: the config validates and its data files have the configured columns."""
    cfg = load_config(config, overrides)
    from luban.hub.catalog import check_model_path

    check_model_path(cfg)  # a starter-catalog name that is not pulled yet: the error before torch loads
    check_data(cfg)
    return cfg


def check_evaluate(run: str | Path, data: str | Path, overrides: list[str] | None = None) -> None:
    """`luban evaluate RUN --data FILE`: the run is finished and FILE has the run's columns."""
    from luban.rundir import check_finished

    run = check_finished(run)
    saved = run / "config.yaml"
    cfg = validate(apply_overrides(read_yaml(saved), overrides), str(saved))
    check_data(cfg, {"--data": Path(data)})


def check_runs(runs: list[str | Path], files: dict[str, str | Path] | None = None) -> None:
    """Verbs that take finished runs (predict, serve, export, ...): each run is finished and each named input
    file exists (e.g. {"--input": path}), before the run's model and libraries are loaded."""
    from luban.rundir import check_finished

    for r in runs:
        check_finished(r)
    _check_files(files)


def check_runs_or_models(runs: list[str | Path]) -> None:
    """`luban generate / serve`: each source a finished run, or a causal-LM model folder or pulled starter name
    (used as it is, luban.hub.model_run)."""
    from luban.hub.model_run import causal_lm_folder, is_run

    check_runs([r for r in runs if is_run(r) or causal_lm_folder(str(r)) is None])


def _check_files(files: dict[str, str | Path] | None) -> None:
    for flag, f in (files or {}).items():
        if str(f) != "-" and not Path(f).exists():  # "-": standard input
            raise DataError(f"{flag}: {f}: file not found")
