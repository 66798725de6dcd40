"""Tabular regression and classification: numeric + categorical columns -> a value or a label: gradient-boosted
trees (gbdt, LightGBM: the default, fitted by LightGBM in `fit_model`) or an MLP (trained by the engine)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import luban.processor as processor
from luban.capabilities import Evaluates, Explains, Predicts, TaskPredictor
from luban.data.cleaning import label_text, missing_label_error
from luban.data.readers import LINE, resolve_column
from luban.data.splits import make_splits
from luban.data.tabular import TabularPreprocessor
from luban.errors import ConfigError, DataError, ExportError
from luban.evaluate.baselines import tabular_baselines
from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars
from luban.models.registry import build_model
from luban.tasks.base import (Batches, ExportSpec, LabelMap, Task, read_file, run_model, sample_rows,
                              to_device)
from luban.training.progress import say


SMALL_TABLE = 100_000  # training rows below which LightGBM boosts on one thread (faster there)


def _columns(cfg, frame: pd.DataFrame) -> tuple[list[str], list[str], str]:
    cols = cfg.data.columns
    label = resolve_column(frame, cols.label, "label")
    cat = [resolve_column(frame, c, "categorical") for c in cols.categorical]
    if cols.features is not None:
        feats = [resolve_column(frame, c, "features") for c in cols.features]
    else:
        feats = [c for c in frame.columns if c not in (LINE, label)]
    if label in feats:
        raise ConfigError(f"data.columns.features: the label column {label!r} cannot also be a feature")
    if not feats:
        raise ConfigError("data.columns.features: no feature columns")
    return [c for c in feats if c not in cat], [c for c in feats if c in cat], label


def _drop_missing_labels(frame: pd.DataFrame, label: str, clean) -> pd.DataFrame:
    missing = pd.Series([label_text(v, clean) is None for v in frame[label]], index=frame.index)
    if missing.any():
        if not clean.drop_missing_label:
            first = frame[missing].iloc[0]
            raise missing_label_error(frame.attrs.get('source', 'data'), first[LINE], label, first[label])
        say(f"cleaning {frame.attrs.get('source', 'data')}: dropped {int(missing.sum())} rows with a missing "
            f"{label!r}")
        attrs = frame.attrs
        frame = frame[~missing].reset_index(drop=True)
        frame.attrs = attrs
    return frame


def _no_single_row_class(train: pd.DataFrame, label: str) -> None:
    """A class with one training row can be neither learned nor held out for evaluation: one clear error."""
    counts = train["label"].value_counts()
    single = [c for c, n in counts.items() if n == 1]
    if single:
        row = train[train["label"] == single[0]].iloc[0]
        more = f" (and {len(single) - 1} more)" if len(single) > 1 else ""
        raise DataError(f"{train.attrs.get('source', 'train')}: line {row[LINE]}: field {label!r}: class "
                        f"{single[0]!r} has a single row{more}; classification needs at least two rows per class "
                        "(add rows, merge the class into another, or drop it)")


class Target(ABC):
    """What sets the two tabular tasks apart (TARGETS[task]): how the label column is fitted and encoded, the
    model's output size and what its raw outputs mean (loss, metrics, predictions, contributions). Training fits
    it; a run's processor.json holds its state (the scaling, the classes) and the predictor rebuilds it."""

    kind: str  # the baselines' kind (luban.evaluate.baselines.tabular_baselines)
    main_metric: str
    mode: str
    regression = False
    center, scale = 0.0, 1.0  # the target's standardization (regression; identity otherwise)
    labels: list | None = None  # the classes in the model's output order (classification)
    label_map: LabelMap | None = None

    @classmethod
    @abstractmethod
    def from_saved(cls, saved: dict) -> "Target":
        """The fitted target of a run (its processor.json parts)."""

    def state(self) -> dict:
        """Its part of processor.json's preprocessing (the classes are the `labels` part)."""
        return {"y_center": self.center, "y_scale": self.scale}

    def fit_frame(self, train: pd.DataFrame, label: str) -> None:
        """Before the split: what the raw training labels fix (the classes)."""

    def fit_encoded(self, y: torch.Tensor) -> None:
        """After encoding the training split (the scaling)."""

    def stratify(self, label: str, cfg) -> str | None:
        return None

    @abstractmethod
    def out_dim(self) -> int: ...

    @abstractmethod
    def encode(self, frame: pd.DataFrame, label: str) -> torch.Tensor: ...

    @abstractmethod
    def outputs(self, raw: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict: ...

    @abstractmethod
    def loss(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def boosted(self, y: torch.Tensor) -> np.ndarray:
        """The target LightGBM boosts on."""
        return y.numpy()

    @abstractmethod
    def round_metrics(self, r: dict) -> dict:
        """One boosting round's validation loss and main metric (history.jsonl)."""

    @abstractmethod
    def rows(self, out: list) -> list[dict]:
        """predict()'s dict per row from outputs()."""

    @abstractmethod
    def contributions(self, values, one) -> list[dict]:
        """Per row, the gbdt's contributions (values: rows x outputs x (features + 1)), each output through
        one(its values, scale, units, bias shift)."""


class RegressionTarget(Target):
    """tabular_regression: a numeric label, standardized with the training split's mean and std (the model's
    outputs are scaled back); rmse, lower is better."""

    kind, main_metric, mode, regression = "regression", "rmse", "min", True

    def __init__(self, center: float = 0.0, scale: float = 1.0):
        self.center, self.scale = center, scale

    @classmethod
    def from_saved(cls, saved):
        return cls(saved["preprocessing"]["y_center"], saved["preprocessing"]["y_scale"])

    def fit_encoded(self, y):
        self.center, self.scale = float(y.mean()), float(y.std()) or 1.0

    def out_dim(self):
        return 1

    def encode(self, frame, label):
        y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(y).all():
            i = int(np.flatnonzero(~np.isfinite(y))[0])
            raise DataError(f"{frame.attrs.get('source', 'data')}: line {frame[LINE].iloc[i]}: field {label!r}: "
                            f"{frame[label].iloc[i]!r} is not a {'finite ' * bool(np.isinf(y[i]))}number")
        return torch.tensor(y, dtype=torch.float32)

    def outputs(self, raw):
        return raw.squeeze(-1) * self.scale + self.center

    def metrics(self, out, y):
        return regression_metrics(y.numpy(), out.numpy())

    def loss(self, raw, y):
        return F.mse_loss(raw.squeeze(-1).float(), (y - self.center) / self.scale)

    def boosted(self, y):
        return (y.numpy() - self.center) / self.scale

    def round_metrics(self, r):
        return {"val_loss": r["loss"], "val_rmse": float(np.sqrt(r["loss"])) * self.scale}

    def rows(self, out):
        return [{"value": round(float(v), 6)} for v in out]

    def contributions(self, values, one):
        return [one(r[0], self.scale, "target", self.center) for r in values]


class ClassTarget(Target):
    """tabular_classification: the label column's classes (each needs two training rows); accuracy."""

    kind, main_metric, mode = "classification", "accuracy", "max"

    def __init__(self, label_map: LabelMap | None = None):
        self.label_map = label_map

    @classmethod
    def from_saved(cls, saved):
        return cls(LabelMap(saved["labels"]))

    @property
    def labels(self):
        return self.label_map.labels

    def fit_frame(self, train, label):
        tr = train.assign(label=[str(v).strip() for v in train[label]])
        self.label_map = LabelMap.fit(tr, label)
        _no_single_row_class(tr, label)

    def stratify(self, label, cfg):
        return label if cfg.data.split.stratify else None

    def out_dim(self):
        return len(self.labels)

    def encode(self, frame, label):
        labelled = frame.assign(label=[str(v).strip() for v in frame[label]])
        return torch.tensor(self.label_map.encode(labelled, label))

    def outputs(self, raw):
        return torch.softmax(raw, dim=-1)

    def metrics(self, out, y):
        m = classification_metrics(y.numpy(), out.argmax(-1).numpy(), self.labels)
        m.rows["probs"] = out.numpy()  # for the report's ROC / calibration charts
        return m

    def loss(self, raw, y):
        return F.cross_entropy(raw, y)

    def round_metrics(self, r):
        return {"val_loss": r["loss"], "val_accuracy": 1.0 - r["error"]}

    def rows(self, out):
        labels = self.labels
        return [{"label": labels[int(np.argmax(r))], "score": round(max(r), 6),
                 "probabilities": {labels[j]: round(p, 6) for j, p in enumerate(r)}} for r in out]

    def contributions(self, values, one):
        labels = self.labels
        if values.shape[1] == 1:
            return [one(r[0], 1.0, f"log-odds of {labels[1]!r}", 0.0) for r in values]
        return [{"classes": {labels[k]: one(r[k], 1.0, "raw score (softmax logit)", 0.0)
                             for k in range(len(labels))}} for r in values]


TARGETS: dict[str, type[Target]] = {"tabular_regression": RegressionTarget, "tabular_classification": ClassTarget}


class _TabularModelUser:
    cfg = None
    device = torch.device("cpu")
    target: Target

    @property
    def regression(self) -> bool:
        return self.target.regression

    @property
    def label_map(self) -> LabelMap | None:
        return self.target.label_map

    def batches(self, x_num, x_cat, y, order: list[list[int]]) -> Batches:
        def collate(idx):
            t = torch.as_tensor(idx)
            b = {"num": x_num[t], "cat": x_cat[t], "index": t, "size": len(idx)}
            if y is not None:
                b["y"] = y[t]
            return b

        return Batches(order, collate)

    def raw_outputs(self, model, x_num, x_cat) -> torch.Tensor:
        n = len(x_num)
        bs = 1024
        order = [list(range(i, min(n, i + bs))) for i in range(0, n, bs)]
        return run_model(model, self.batches(x_num, x_cat, None, order), self.batch_logits, n)

    def batch_logits(self, model, batch):
        b = to_device(batch, self.device)
        return model(b["num"], b["cat"])

    def export_spec(self) -> ExportSpec:
        return ExportSpec(["numeric", "categorical"], ["output"],
                          {"numeric": {0: "batch"}, "categorical": {0: "batch"}, "output": {0: "batch"}})

    def outputs(self, model, x_num, x_cat) -> torch.Tensor:
        return self.target.outputs(self.raw_outputs(model, x_num, x_cat))


class TabularTask(Task, _TabularModelUser):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.target = TARGETS[cfg.task]()
        self.name = cfg.task
        self.main_metric, self.mode = self.target.main_metric, self.target.mode
        if cfg.model.trained_by_library:  # gbdt: the validation curve is over boosting rounds
            self.history_unit, self.more_training = "boosting round", "model.n_estimators (or model.learning_rate)"

    def prepare(self, frames):
        cfg = self.cfg
        numeric, categorical, label = _columns(cfg, frames["train"])
        self.label = label
        for split, frame in frames.items():
            if frame is not None:
                for c in numeric + categorical + [label]:
                    resolve_column(frame, c, "features")
                frames[split] = _drop_missing_labels(frame, label, cfg.data.clean)
        self.target.fit_frame(frames["train"], label)
        splits = make_splits(frames, cfg.data.split.validation, cfg.data.split.test,
                             cfg.data.split.seed if cfg.data.split.seed is not None else cfg.seed,
                             self.target.stratify(label, cfg))
        self.pre = TabularPreprocessor(numeric, categorical, cfg.preprocessing.numeric).fit(splits["train"])
        self.data, self.lines = {}, {s: f[LINE].tolist() for s, f in splits.items()}
        for s, f in splits.items():
            self.data[s] = (*self.pre.transform(f), self.target.encode(f, label))
        self.target.fit_encoded(self.data["train"][2])

    def data_summary(self):
        return {"splits": {s: len(d[0]) for s, d in self.data.items()}, "numeric": self.pre.numeric,
                "categorical": self.pre.categorical, "label": self.label,
                **({} if self.target.labels is None else {"labels": self.target.labels})}

    def build_model(self):
        return build_model(self.cfg.model, self.cfg.task, n_numeric=len(self.pre.numeric),
                           cardinalities=self.pre.cardinalities(), out_dim=self.target.out_dim())

    def train_step(self):
        # gbdt: LightGBM boosts it (fit_model), not gradient steps in the engine
        return None if self.cfg.model.trained_by_library else super().train_step()

    def fit_model(self, model, workdir, on_epoch_end=None):
        """Boost the trees on the training split with early stopping on validation (LightGBM); history.jsonl gets
        each round's validation loss and main metric (rounds are the curve's epochs)."""
        import json
        import time

        from luban.training.engine import FitResult
        from luban.training.progress import stage

        x_num, x_cat, y = self.data["train"]
        v_num, v_cat, v_y = self.data["validation"]
        if len(v_y) == 0:
            raise ConfigError("data.split.validation: the gbdt model stops early on the validation split, which is "
                              "empty; give data.validation or a validation fraction")
        scale = self.target.boosted
        # LightGBM's OpenMP threads spin-wait: on a small table (or a busy machine) more than one thread is slower,
        # 50x on 115 rows with two busy cores; trainer.num_threads set explicitly wins
        threads = self.cfg.trainer.num_threads or (torch.get_num_threads() if len(y) >= SMALL_TABLE else 1)
        t0 = time.perf_counter()
        with stage("boosting (LightGBM)", total=self.cfg.model.n_estimators, unit="rounds") as p:
            rounds = model.fit((x_num, x_cat, scale(y)), (v_num, v_cat, scale(v_y)), regression=self.regression,
                               threads=threads, seed=self.cfg.seed,
                               feature_names=self.pre.numeric + self.pre.categorical,
                               early_stopping=self.cfg.trainer.keep == "best",
                               on_round=lambda i, n: p.advance())
        seconds = time.perf_counter() - t0
        history = []
        for r in rounds:
            history.append({"epoch": r["round"], "step": r["round"], **self.target.round_metrics(r)})
        (workdir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
        best = model.rounds()
        gain = model.importance("gain")
        self.importance = {"gain": dict(zip(self.pre.numeric + self.pre.categorical, gain.tolist()))}
        if on_epoch_end is not None and history:
            on_epoch_end(history[best - 1])
        main = history[best - 1].get(f"val_{self.main_metric}", float("nan")) if history else float("nan")
        return FitResult(history=history, best_epoch=best, best_value=main,
                         stopped_early=len(history) < self.cfg.model.n_estimators, train_seconds=seconds,
                         epochs_run=len(history), samples_per_second=len(y) * len(history) / max(seconds, 1e-9))

    def train_batches(self, epoch):
        x_num, x_cat, y = self.data["train"]
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(y), generator=g).tolist()
        bs = self.cfg.trainer.batch_size
        return self.batches(x_num, x_cat, y, [perm[i:i + bs] for i in range(0, len(perm), bs)])

    def loss(self, model, batch):
        return self.target.loss(self.batch_logits(model, batch), batch["y"].to(self.device))

    def loss_batches(self, split):
        x_num, x_cat, y = self.data[split]
        bs = 1024
        return self.batches(x_num, x_cat, y, [list(range(i, min(len(y), i + bs))) for i in range(0, len(y), bs)])

    def batch_labels(self, batch):
        if self.regression:
            raise ExportError("distillation is for classification tasks; tabular_regression has no soft targets")
        return batch["y"].to(self.device)

    def split_inputs(self, split, limit=None, batch_size=32):
        x_num, x_cat, _ = self.data[split]
        rows = sample_rows(len(x_num), limit, self.cfg.seed)
        return [(x_num[rows[i:i + batch_size]], x_cat[rows[i:i + batch_size]])
                for i in range(0, len(rows), batch_size)]

    def split_logits(self, model, split):
        x_num, x_cat, _ = self.data[split]
        return self.raw_outputs(model, x_num, x_cat)

    def evaluate(self, model, split, detailed=False):
        x_num, x_cat, y = self.data[split]
        m = self.target.metrics(self.outputs(model, x_num, x_cat), y)
        return m if detailed else scalars(m)

    def split_lines(self, split):
        return self.lines[split]

    def baseline(self):
        x = {s: self.pre.one_hot(d[0], d[1]) for s, d in self.data.items()}
        y = {s: d[2].numpy() for s, d in self.data.items()}
        return tabular_baselines(self.target.kind, x["train"], y["train"],
                                 {s: (x[s], y[s]) for s in ("validation", "test")}, self.target.labels, self.cfg.seed)

    def report_sections(self, workdir, final):
        """gbdt: the features the trees split on, by total gain (LightGBM's importance)."""
        imp = getattr(self, "importance", None)
        if not imp:
            return []
        from luban.evaluate import charts
        from luban.evaluate.report import NO_CHARTS

        gain = imp["gain"]
        total = sum(gain.values()) or 1.0
        chart = (charts.bar_chart("feature importance (share of split gain)", list(gain),
                                  [v / total for v in gain.values()], xlabel="share of total gain")
                 if charts.available() else NO_CHARTS)
        return ["<h2>Feature importance</h2>", f"<div class=charts>{chart}</div>",
                "<p class=muted>Each feature's share of the loss reduction of all the splits on it (LightGBM's "
                "gain importance). Per-prediction contributions: <code>predict(rows, contributions=True)</code>.</p>"]

    def save(self, folder, model):
        meta = {"preprocessor": self.pre.state(), "label": self.label, **self.target.state()}
        processor.save(folder, self.cfg.task, preprocessing=meta, labels=self.target.label_map)


class TabularPredictor(TaskPredictor, _TabularModelUser, Predicts, Evaluates, Explains):
    input_kind = "json"  # what the server sends predict(): see TaskPredictor.capabilities
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        self.task = cfg.task
        saved = processor.load(folder)
        meta = saved["preprocessing"]
        self.pre = TabularPreprocessor.from_state(meta["preprocessor"])
        self.label = meta["label"]
        self.target = TARGETS[cfg.task].from_saved(saved)
        self.model = self.load_model(lambda: build_model(cfg.model, cfg.task, n_numeric=len(self.pre.numeric),
                                                         cardinalities=self.pre.cardinalities(),
                                                         out_dim=self.target.out_dim()))

    def class_labels(self):
        return self.target.labels

    def _frame(self, inputs) -> pd.DataFrame:
        return self.pre.input_frame(inputs)

    def predict_inputs(self, inputs, contributions: bool = False) -> list[dict]:
        """One dict per row: {"value"} (regression) or {"label", "score", "probabilities"}; with
        `contributions=True` (gbdt) also each row's feature contributions (see `contributions`)."""
        frame = self._frame(inputs)
        x = self.pre.transform(frame)
        rows = self.target.rows(self.outputs(self.model, *x).tolist())
        if contributions:
            for row, c in zip(rows, self._contributions(*x)):
                row["contributions"] = c
        return rows

    def contributions(self, inputs) -> list[dict]:
        """Per-prediction feature contributions (exact tree SHAP values, LightGBM's pred_contrib) of a gbdt run:
        for each row {"bias": expected value, "features": {column: contribution}, "units": ...}; bias + the
        contributions = the model's raw output for the row. Regression: in target units (they add up to the
        predicted value); binary classification: log-odds of the second class; more classes: one such dict per
        class under "classes". An MLP run raises an ExportError (its model has no exact attribution)."""
        return self._contributions(*self.pre.transform(self._frame(inputs)))

    def _contributions(self, x_num, x_cat) -> list[dict]:
        explain = getattr(self.model, "contributions", None)
        if explain is None:
            raise ExportError(f"per-prediction contributions need a gbdt run (this one is {self.cfg.model.type}; "
                              "an ONNX-backed run: load it with backend='torch')")
        values = explain(x_num, x_cat)  # rows x outputs x (features + 1)
        names = self.pre.numeric + self.pre.categorical

        def one(v, scale, units, shift):
            return {"bias": round(float(v[-1]) * scale + shift, 6),
                    "features": {n: round(float(c) * scale, 6) for n, c in zip(names, v[:-1])}, "units": units}

        return self.target.contributions(values, one)

    def explain(self, inputs, target=None):
        from luban.explain import explain_rows, needs_torch

        needs_torch(self)
        return explain_rows(self, [inputs] if isinstance(inputs, dict) else list(inputs), target)

    def read_inputs(self, path):
        return self._frame(read_file(self.cfg, Path(path)))

    def frame_inputs(self, frame):
        return self._frame(frame), None  # a row's bad cell is a DataError from predict, narrowed to the row

    def parity_rows(self, path):
        return self.read_inputs(path)

    def evaluate_file(self, path):
        frame = self._frame(read_file(self.cfg, Path(path)))
        if self.label not in frame.columns:
            raise DataError(f"{path}: label column {self.label!r} not found")
        frame = _drop_missing_labels(frame, self.label, self.cfg.data.clean)
        y = self.target.encode(frame, self.label)
        return self.target.metrics(self.outputs(self.model, *self.pre.transform(frame)), y)
