"""Gradient-boosted trees (LightGBM) behind the tabular model interface: forward(numeric, categorical) -> raw scores
(regression: (n, 1) in the task's scaled target units; classification: (n, classes) logits), like the MLP, so
evaluation, prediction and serving take the same path. LightGBM trains it (`fit`), not luban's gradient engine; it
saves itself in LightGBM's text model format (model/gbdt.txt; never pickle) and explains each prediction with
LightGBM's exact tree SHAP values (`contributions`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from luban.errors import RunError

MODEL_FILE = "gbdt.txt"


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise RunError("model.type gbdt needs LightGBM: pip install lightgbm") from None
    return lightgbm


class GBDTModel(nn.Module):
    """A LightGBM booster as a module with no trainable tensors (what the pipeline, evaluation and predictors call)."""

    def __init__(self, cfg, n_numeric: int, cardinalities: list[int], out_dim: int):
        super().__init__()
        self.cfg, self.n_numeric, self.cardinalities, self.out_dim = cfg, n_numeric, list(cardinalities), out_dim
        self.booster = None
        self.best_iteration = 0

    # inputs ------------------------------------------------------------------------------------------
    def matrix(self, numeric, categorical) -> np.ndarray:
        """One float matrix: the numeric features, then the categorical codes (0 = unknown/missing)."""
        num = numeric.detach().cpu().numpy() if isinstance(numeric, torch.Tensor) else np.asarray(numeric)
        cat = categorical.detach().cpu().numpy() if isinstance(categorical, torch.Tensor) else np.asarray(categorical)
        return np.concatenate([num.astype(np.float64), cat.astype(np.float64)], axis=1)

    def categorical_indexes(self) -> list[int]:
        if self.cfg.categorical != "native":
            return []
        return list(range(self.n_numeric, self.n_numeric + len(self.cardinalities)))

    def params(self, objective: str, n_classes: int, threads: int, seed: int) -> dict:
        c = self.cfg
        p = {"objective": objective, "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
             "max_depth": c.max_depth, "min_child_samples": c.min_child_samples,
             "feature_fraction": c.feature_fraction, "bagging_fraction": c.bagging_fraction,
             "bagging_freq": c.bagging_freq, "lambda_l1": c.lambda_l1, "lambda_l2": c.lambda_l2,
             "min_split_gain": c.min_split_gain, "num_threads": threads, "seed": seed, "deterministic": True,
             "force_row_wise": True, "verbosity": -1}
        if objective == "multiclass":
            p["num_class"] = n_classes
        return p

    # training ------------------------------------------------------------------------------------------
    def fit(self, train: tuple, validation: tuple, *, regression: bool, threads: int, seed: int,
            feature_names: list[str], early_stopping: bool = True, on_round=None) -> list[dict]:
        """Boost on `train` = (numeric, categorical, target) with early stopping on `validation` (without it: all
        n_estimators rounds, as a retrain for a round count chosen before does); returns each round's validation
        metrics ({"round", "loss", "error"}: LightGBM's l2 / logloss and error rate)."""
        lgb = _lightgbm()
        n_classes = self.out_dim
        objective = "regression" if regression else ("binary" if n_classes == 2 else "multiclass")
        metrics = ["l2"] if regression else (["binary_logloss", "binary_error"] if n_classes == 2
                                             else ["multi_logloss", "multi_error"])
        params = {**self.params(objective, n_classes, threads, seed), "metric": metrics, "first_metric_only": True}
        names = [_safe_name(n) for n in feature_names]
        if len(set(names)) < len(names):  # two names that differ only in special characters
            names = [f"f{i}_{n}" for i, n in enumerate(names)]
        cats = self.categorical_indexes()
        y_tr = np.asarray(train[2], dtype=np.float64)
        d_train = lgb.Dataset(self.matrix(train[0], train[1]), label=y_tr, feature_name=names,
                              categorical_feature=cats, free_raw_data=False)
        d_val = lgb.Dataset(self.matrix(validation[0], validation[1]), label=np.asarray(validation[2], np.float64),
                            reference=d_train, feature_name=names, categorical_feature=cats)
        record: dict = {}
        callbacks = [lgb.record_evaluation(record)]
        if early_stopping:
            callbacks.append(lgb.early_stopping(self.cfg.early_stopping_rounds, first_metric_only=True,
                                                verbose=False))
        if on_round is not None:
            callbacks.append(lambda env: on_round(env.iteration + 1, self.cfg.n_estimators))
        self.booster = lgb.train(params, d_train, num_boost_round=self.cfg.n_estimators, valid_sets=[d_val],
                                 valid_names=["validation"], callbacks=callbacks)
        self.best_iteration = int((early_stopping and self.booster.best_iteration) or
                                  self.booster.current_iteration())
        val = record["validation"]
        loss = val[metrics[0]]
        error = val[metrics[1]] if len(metrics) > 1 else None
        return [{"round": i + 1, "loss": float(loss[i]), **({"error": float(error[i])} if error else {})}
                for i in range(len(loss))]

    # inference -----------------------------------------------------------------------------------------
    def _booster(self):
        if self.booster is None:
            raise RunError("the gbdt model has not been trained or loaded")
        return self.booster

    def forward(self, numeric, categorical):
        """Regression: (n, 1) predictions (scaled target units); classification: (n, classes) log-probabilities
        (a softmax of them gives LightGBM's probabilities back; the ONNX export returns the same)."""
        x = self.matrix(numeric, categorical)
        if self.out_dim == 1:
            raw = self._booster().predict(x, raw_score=True, num_iteration=self.best_iteration or None)
            return torch.from_numpy(np.asarray(raw, dtype=np.float32).reshape(-1, 1))
        p = np.asarray(self._booster().predict(x, num_iteration=self.best_iteration or None), dtype=np.float64)
        if p.ndim == 1:  # binary: the positive class's probability
            p = np.stack([1.0 - p, p], axis=1)
        return torch.from_numpy(np.log(np.clip(p, 1e-30, None)).astype(np.float32))

    def export_onnx(self, path: Path, opset: int) -> str:
        """The booster as ONNX (onnxmltools' LightGBM converter) behind the tabular interface: inputs numeric
        (float) and categorical (int64 codes), output `output` as forward() gives it. Returns the exporter name."""
        try:
            import onnx
            from onnx import helper
            from onnxmltools import convert_lightgbm
            from onnxmltools.convert.common.data_types import FloatTensorType
        except ImportError:
            raise RunError("ONNX export of a gbdt run needs onnxmltools: pip install 'luban[export]'") from None
        n = self.n_numeric + len(self.cardinalities)
        onx = convert_lightgbm(self._booster(), initial_types=[("features", FloatTensorType([None, n]))],
                               target_opset=min(opset, 15), zipmap=False)
        for imp in onx.opset_import:  # the nodes added below (Clip with a min input, Reshape) need opset >= 13
            if imp.domain in ("", "ai.onnx"):
                imp.version = max(imp.version, 13)
        g = onx.graph
        for node in g.node:  # the converter's own names must not clash with the interface's
            for names in (node.input, node.output):
                for k, name in enumerate(names):
                    if name in ("output", "numeric", "categorical"):
                        names[k] = f"lgbm_{name}"
        for o in g.output:
            if o.name in ("output", "numeric", "categorical"):
                o.name = f"lgbm_{o.name}"
        outputs = [o.name for o in g.output]
        for i in list(g.input):
            g.input.remove(i)
        g.input.extend([helper.make_tensor_value_info("numeric", onnx.TensorProto.FLOAT, ["batch", self.n_numeric]),
                        helper.make_tensor_value_info("categorical", onnx.TensorProto.INT64,
                                                      ["batch", len(self.cardinalities)])])
        front = [helper.make_node("Cast", ["categorical"], ["categorical_f"], to=onnx.TensorProto.FLOAT),
                 helper.make_node("Concat", ["numeric", "categorical_f"], ["features"], axis=1)]
        if self.out_dim == 1:
            back = [helper.make_node("Reshape", [outputs[0], "out_shape"], ["output"])]
            g.initializer.append(helper.make_tensor("out_shape", onnx.TensorProto.INT64, [2], [-1, 1]))
        else:  # probabilities -> log-probabilities, as forward()
            back = [helper.make_node("Clip", [outputs[-1], "eps"], ["p_clipped"]),
                    helper.make_node("Log", ["p_clipped"], ["output"])]
            g.initializer.append(helper.make_tensor("eps", onnx.TensorProto.FLOAT, [], [1e-30]))
        nodes = front + list(g.node) + back
        del g.node[:]
        g.node.extend(nodes)
        for o in list(g.output):
            g.output.remove(o)
        g.output.extend([helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", self.out_dim])])
        onnx.checker.check_model(onx)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(onx.SerializeToString())
        return "onnxmltools.convert_lightgbm"

    def contributions(self, numeric, categorical) -> np.ndarray:
        """Tree SHAP values (LightGBM pred_contrib) in raw-score units: (rows, outputs, features + 1), the last
        column the expected value (bias); a row's contributions plus its bias sum to its raw score. Regression and
        binary classification have one output (binary: the positive class's log-odds)."""
        out = np.asarray(self._booster().predict(self.matrix(numeric, categorical), pred_contrib=True,
                                                 num_iteration=self.best_iteration or None), dtype=np.float64)
        width = self.n_numeric + len(self.cardinalities) + 1
        return out.reshape(len(out), -1, width)

    def importance(self, kind: str = "gain") -> np.ndarray:
        return np.asarray(self._booster().feature_importance(importance_type=kind,
                                                             iteration=self.best_iteration or None), dtype=float)

    def rounds(self) -> int:
        return self.best_iteration

    # the run's model folder: LightGBM's own text format ------------------------------------------------
    def save_to(self, folder: Path) -> None:
        text = self._booster().model_to_string(num_iteration=self.best_iteration or None)
        tmp = Path(folder) / (MODEL_FILE + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(Path(folder) / MODEL_FILE)

    def load_from(self, folder: Path) -> None:
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise RunError(f"{path}: the gbdt model file is missing")
        lgb = _lightgbm()
        try:
            self.booster = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
        except Exception as e:  # LightGBM raises LightGBMError on a truncated or foreign file
            raise RunError(f"{path}: unreadable LightGBM model ({type(e).__name__}: {e})") from None
        self.best_iteration = 0  # the saved model holds the kept rounds only


def _safe_name(name: str) -> str:
    """LightGBM refuses feature names with JSON special characters; the contributions use the original names."""
    out = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))
    return out or "feature"


def build(cfg, *, n_numeric: int, cardinalities, out_dim: int, **_) -> GBDTModel:
    """The registry's builder for GBDTConfig (luban.models.gbdt_config)."""
    return GBDTModel(cfg, n_numeric, cardinalities, out_dim)
