"""Train / validation / test splitting: given files, or a seeded (stratified) split of the training file."""

from __future__ import annotations

import pandas as pd

from luban.errors import DataError


def holdout(df: pd.DataFrame, fraction: float, seed: int, stratify_col: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `fraction` of the rows; stratified by `stratify_col` when every class has 2+ rows."""
    from sklearn.model_selection import train_test_split  # training only: a predictor never imports it

    if len(df) < 4:
        raise DataError(f"{df.attrs.get('source', 'data')}: only {len(df)} rows; too few to split off a "
                        "validation/test set (give data.validation / data.test files)")
    strat = None
    if stratify_col is not None:
        counts = df[stratify_col].value_counts()
        if counts.min() >= 2:
            strat = df[stratify_col]
    n_hold = max(1, round(len(df) * fraction))
    if strat is not None:
        n_hold = max(n_hold, strat.nunique())
    keep, hold = train_test_split(df, test_size=n_hold, random_state=seed, shuffle=True, stratify=strat)
    keep, hold = keep.reset_index(drop=True), hold.reset_index(drop=True)
    keep.attrs, hold.attrs = dict(df.attrs), dict(df.attrs)
    return keep, hold


def make_splits(frames: dict[str, pd.DataFrame | None], validation: float, test: float, seed: int,
                stratify_col: str | None) -> dict[str, pd.DataFrame]:
    """frames has 'train' and optionally 'validation'/'test'; missing ones are carved out of train."""
    train = frames["train"]
    out = {}
    if frames.get("test") is None:
        train, out["test"] = holdout(train, test, seed, stratify_col)
        out["test"].attrs["split_from"] = "train"
    else:
        out["test"] = frames["test"]
    if frames.get("validation") is None:
        train, out["validation"] = holdout(train, validation / max(1e-9, 1 - (0 if frames.get("test") is not None else test)),
                                           seed + 1, stratify_col)
        out["validation"].attrs["split_from"] = "train"
    else:
        out["validation"] = frames["validation"]
    out["train"] = train
    return {k: out[k] for k in ("train", "validation", "test")}
