"""Train / validation / test splitting: given files, or a seeded (stratified) split of the training file."""

from __future__ import annotations

import pandas as pd

from luban.errors import DataError
from luban.training.progress import say


def holdout(df: pd.DataFrame, fraction: float, seed: int, stratify_col: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `fraction` of the rows; stratified by `stratify_col` when every class has 2+ rows."""
    from sklearn.model_selection import train_test_split  # training only: a predictor never imports it

    if len(df) < 4:
        raise DataError(f"{df.attrs.get('source', 'data')}: only {len(df)} rows; too few to split off a "
                        "validation/test set (give data.validation / data.test files)")
    strat = None
    src = df.attrs.get("source", "data")
    if stratify_col is not None and df[stratify_col].value_counts().min() >= 2:
        strat = df[stratify_col]
    n_hold = max(1, round(len(df) * fraction))
    if strat is not None:
        n_hold = max(n_hold, strat.nunique())
    if n_hold >= len(df):
        raise DataError(f"{src}: {len(df)} rows; holding out {n_hold} for validation/test leaves none to train on "
                        "(lower data.split.validation / data.split.test, or give data.validation / data.test files)")
    keep, hold = train_test_split(df, test_size=n_hold, random_state=seed, shuffle=True, stratify=strat)
    keep, hold = keep.reset_index(drop=True), hold.reset_index(drop=True)
    keep.attrs, hold.attrs = dict(df.attrs), dict(df.attrs)
    return keep, hold


def warn_single_examples(df: pd.DataFrame, column: str) -> None:
    """A warning naming the classes with one example: they cannot be in every split (nor stratified)."""
    counts = df[column].value_counts()
    single = [str(c) for c in counts.index[counts < 2]]
    if not single:
        return
    shown = ", ".join(repr(c) for c in single[:10]) + (f" and {len(single) - 10} more" if len(single) > 10 else "")
    many = len(single) > 1
    say(f"warning: {df.attrs.get('source', 'data')}: class{'es' * many} {shown} {'have' if many else 'has'} a "
        f"single example, so {'they' if many else 'it'} cannot be in every split (train, validation, test) and "
        "the split is not stratified; add examples, or give data.validation / data.test files")


def make_splits(frames: dict[str, pd.DataFrame | None], validation: float, test: float, seed: int,
                stratify_col: str | None) -> dict[str, pd.DataFrame]:
    """frames has 'train' and optionally 'validation'/'test'; missing ones are carved out of train."""
    train = frames["train"]
    if stratify_col is not None and (frames.get("test") is None or frames.get("validation") is None):
        warn_single_examples(train, stratify_col)
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
