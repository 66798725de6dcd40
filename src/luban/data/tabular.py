"""Tabular features: numeric scaling, mean imputation and categorical vocabularies, fit on the training split and
saved with the run (model/processor.json). Torch-free: the ONNX backend preprocesses with it too."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

import luban.processor as processor
from luban.data.readers import LINE
from luban.errors import DataError

if TYPE_CHECKING:
    import torch


class TabularPreprocessor(processor.Processor):
    """Numeric scaling (fit on train), mean imputation, categorical vocabularies (0 = unknown/missing): the template
    of luban.processor.Processor (fit on the train rows, encode rows, state as JSON)."""

    def __init__(self, numeric: list[str], categorical: list[str], scaling: str):
        self.numeric, self.categorical, self.scaling = numeric, categorical, scaling
        self.center: dict[str, float] = {}
        self.scale: dict[str, float] = {}
        self.fill: dict[str, float] = {}
        self.vocab: dict[str, list[str]] = {}

    def _numbers(self, frame: pd.DataFrame, col: str) -> np.ndarray:
        raw = frame[col]
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(vals) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{frame.attrs.get('source', 'data')}: line {frame[LINE].iloc[i]}: field {col!r}: "
                            f"{raw.iloc[i]!r} is not a number (list the column in data.columns.categorical "
                            "if it is a category)")
        if np.isinf(vals).any():  # inf / 1e999 would turn the loss into NaN: name the cell instead
            i = int(np.flatnonzero(np.isinf(vals))[0])
            raise DataError(f"{frame.attrs.get('source', 'data')}: line {frame[LINE].iloc[i]}: field {col!r}: "
                            f"{raw.iloc[i]!r} is not a finite number (leave the cell empty for a missing value)")
        return vals

    def fit(self, frame: pd.DataFrame) -> "TabularPreprocessor":
        for col in self.numeric:
            v = self._numbers(frame, col)
            if np.isnan(v).all():
                raise DataError(f"{frame.attrs.get('source', 'data')}: field {col!r}: no numeric values in training")
            self.fill[col] = float(np.nanmean(v))
            if self.scaling == "standard":
                self.center[col], self.scale[col] = self.fill[col], float(np.nanstd(v)) or 1.0
            elif self.scaling == "minmax":
                lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
                self.center[col], self.scale[col] = lo, (hi - lo) or 1.0
            else:
                self.center[col], self.scale[col] = 0.0, 1.0
        for col in self.categorical:
            self.vocab[col] = sorted({str(x) for x in frame[col] if x is not None and str(x).strip() != ""})
        return self

    def transform(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        num, cat = self.arrays(frame)
        return torch.from_numpy(num), torch.from_numpy(cat)

    encode = transform

    def arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(numeric float32, categorical int64) model inputs of a frame's rows, without torch (the ONNX backend)."""
        num = np.zeros((len(frame), len(self.numeric)), dtype=np.float32)
        for j, col in enumerate(self.numeric):
            v = self._numbers(frame, col)
            v = np.where(np.isnan(v), self.fill[col], v)
            num[:, j] = (v - self.center[col]) / self.scale[col]
        cat = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, col in enumerate(self.categorical):
            index = {v: i + 1 for i, v in enumerate(self.vocab[col])}
            cat[:, j] = [index.get(str(x), 0) if x is not None else 0 for x in frame[col]]
        return num, cat

    def one_hot(self, numeric: torch.Tensor, categorical: torch.Tensor) -> np.ndarray:
        """Features for the classical baselines."""
        parts = [numeric.numpy()]
        for j, col in enumerate(self.categorical):
            parts.append(np.eye(len(self.vocab[col]) + 1, dtype=np.float32)[categorical[:, j].numpy()])
        return np.concatenate(parts, axis=1)

    def input_frame(self, inputs) -> pd.DataFrame:
        """Inputs to predict on (a frame, a mapping of column -> value, or a list of them) as a frame with the
        feature columns and _line; a missing feature column or a row that is not a mapping is a DataError."""
        if isinstance(inputs, pd.DataFrame):
            frame = inputs.copy()
        else:
            if isinstance(inputs, dict):
                inputs = [inputs]
            bad = [i for i, r in enumerate(inputs) if not isinstance(r, dict)]
            if bad:
                raise DataError(f"input {bad[0] + 1}: expected a mapping of column -> value")
            frame = pd.DataFrame.from_records(list(inputs))
        if LINE not in frame.columns:
            frame[LINE] = range(1, len(frame) + 1)
        frame.attrs.setdefault("source", "input")
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise DataError(f"{frame.attrs['source']}: missing feature column(s) {missing}")
        return frame

    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 1 for c in self.categorical]

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("numeric", "categorical", "scaling", "center", "scale", "fill", "vocab")}

    @classmethod
    def from_state(cls, d: dict, folder=None, name: str = "") -> "TabularPreprocessor":
        p = cls(d["numeric"], d["categorical"], d["scaling"])
        for k in ("center", "scale", "fill", "vocab"):
            setattr(p, k, d[k])
        return p
