"""`luban.train(config, data=...)`: pandas DataFrames (or paths) in place of the config's data files.

The frames are handed to the readers under a stand-in path ("train DataFrame", ...), so every task that reads a
table (`read_table`) takes them exactly as it takes a file: same column mapping, cleaning and checks. A frame gets
the `_line` column the readers add; it holds the 0-based row position (as `df.iloc` counts), and errors name
"train DataFrame row N" instead of a file and line.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from pathlib import Path

LINE = "_line"  # the column every reader adds: a row's line in its file (its 0-based position in a DataFrame)
SPLITS = ("train", "validation", "test")
SUFFIX = " DataFrame"
_GIVEN: ContextVar[dict | None] = ContextVar("luban_given_frames", default=None)


def source_name(split: str) -> str:
    return f"{split}{SUFFIX}"


def as_table(df, name: str):
    """A user's DataFrame in the readers' shape: string column names, missing cells None, a `_line` column."""
    import pandas as pd

    from luban.errors import DataError

    if len(df) == 0:
        raise DataError(f"{name}: no data rows")
    out = df.reset_index(drop=True)
    out.columns = [str(c) for c in out.columns]
    if LINE in out.columns:
        raise DataError(f"{name}: column {LINE!r} is reserved for row numbers; rename it")
    if len(set(out.columns)) != len(out.columns):
        dup = sorted({c for c in out.columns if list(out.columns).count(c) > 1})
        raise DataError(f"{name}: duplicate column names {dup}")
    for c in out.columns:  # dates as text, as a file would hold them (recommendation timestamps parse them)
        if pd.api.types.is_datetime64_any_dtype(out[c]):
            out[c] = out[c].map(lambda t: None if pd.isna(t) else t.isoformat())
    out = out.astype(object).where(out.notna(), None)
    out[LINE] = range(len(out))
    out.attrs["source"] = name
    return out


def given_table(path):
    """The DataFrame standing in for `path` while `luban.train(data=...)` runs; None for a real path."""
    given = _GIVEN.get()
    key = str(path)
    if given and key in given:
        frame = given[key].copy()
        frame.attrs = dict(given[key].attrs)
        return frame
    if key.endswith(SUFFIX) and key[: -len(SUFFIX)] in SPLITS and not Path(path).exists():
        from luban.errors import DataError

        raise DataError(f"{key}: this run was trained on an in-memory DataFrame; pass it again with "
                        f"luban.train(config, data=...) or point data.{key[: -len(SUFFIX)]} at a file")
    return None


def _normalize(data) -> dict:
    import pandas as pd

    from luban.errors import ConfigError

    if isinstance(data, (pd.DataFrame, str, Path)):
        data = {"train": data}
    if not isinstance(data, dict):
        raise ConfigError(f"data=: expected a DataFrame, a path, or a dict of them with keys {', '.join(SPLITS)} "
                          f"(got {type(data).__name__})")
    unknown = [k for k in data if k not in SPLITS]
    if unknown:
        raise ConfigError(f"data=: unknown split {unknown[0]!r}; the keys are {', '.join(SPLITS)}")
    if data.get("train") is None:
        raise ConfigError("data=: give the training data (data=df or data={'train': df, ...})")
    for k, v in data.items():
        if v is not None and not isinstance(v, (pd.DataFrame, str, Path)):
            raise ConfigError(f"data[{k!r}]: expected a pandas DataFrame or a path (got {type(v).__name__})")
    return data


def train_on(data, config, overrides, as_config, train, **kw):
    """Run `train(cfg, **kw)` with the config's data sources replaced by `data`: a DataFrame or path (the training
    data; validation/test are split off per data.split) or {"train": ..., "validation": ..., "test": ...}."""
    from luban.errors import ConfigError, DataError

    data = _normalize(data)
    frames = {source_name(s): as_table(v, source_name(s)) for s, v in data.items()
              if v is not None and not isinstance(v, (str, Path))}
    extra = ["data.builtin=null"]
    for s in SPLITS:
        v = data.get(s)
        where = source_name(s) if source_name(s) in frames else (str(v) if v is not None else None)
        extra.append(f"data.{s}={json.dumps(where)}")  # a JSON string is a YAML string: no quoting surprises
    if hasattr(config, "model_dump"):  # a RunConfig: back to a tree, so the overrides apply
        config = config.model_dump(mode="json")
    cfg = as_config(config, list(overrides or []) + extra)
    if frames and cfg.trainer.distributed.backend == "ray":
        raise ConfigError("trainer.distributed: Ray workers cannot read in-memory DataFrames; write them to "
                          "Parquet (df.to_parquet) and pass the paths")
    token = _GIVEN.set(frames)
    try:
        return train(cfg, **kw)
    except DataError as e:
        msg = str(e)
        for name in frames:  # "train DataFrame: line 3: ..." -> "train DataFrame row 3: ..."
            msg = re.sub(rf"(?<![\w/]){re.escape(name)}: line (\d+)", rf"{name} row \1", msg)
        if msg == str(e):
            raise
        raise DataError(msg) from None
    finally:
        _GIVEN.reset(token)
