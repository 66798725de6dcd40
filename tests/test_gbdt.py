"""The gbdt model (LightGBM) for tables: the tabular default, early stopping on validation, LightGBM's text model
in the run, predict / contributions, the report's importance chart, the run's notes, and its bad input."""

import json

import numpy as np
import pytest

import luban
from luban.errors import DataError

from conftest import tabular_config, write_csv

pytest.importorskip("lightgbm")


def gbdt_config(out_dir, name, task, data, **extra):
    cfg = tabular_config(out_dir, name, task, data, **extra)
    cfg["model"] = {"type": "gbdt", "n_estimators": 300, "learning_rate": 0.1, "min_child_samples": 5,
                    "early_stopping_rounds": 20, **extra.get("model", {})}
    return cfg


def metrics(run):
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    city = rng.choice(["a", "b", "c"], size=400)
    y = 3 * np.sin(x[:, 0]) + np.where(x[:, 1] > 0, 2.0, -2.0) + np.select([city == "a", city == "b"], [5, -5], 0)
    y = y + 10 + rng.normal(scale=0.1, size=400)
    rows = [[f"{a:.5f}", f"{b:.5f}", f"{c:.5f}", k, f"{t:.5f}"] for (a, b, c), k, t in zip(x, city, y)]
    return write_csv(tmp_path_factory.mktemp("gbdt") / "reg.csv", rows, header=("x1", "x2", "x3", "city", "y"))


def test_gbdt_is_the_tabular_default():
    from luban.config import validate

    cfg = validate({"task": "tabular_regression", "data": {"builtin": "diabetes"}}, "t")
    assert cfg.model.type == "gbdt"
    assert cfg.trainer.early_stopping.patience == 3  # early stopping is on by default for supervised tasks
    off = validate({"task": "tabular_regression", "data": {"builtin": "diabetes"},
                    "trainer": {"early_stopping": {"patience": None}}}, "t")
    assert off.trainer.early_stopping.patience is None


def test_gbdt_regression_run_predict_contributions(out_dir, regression_data):
    cfg = gbdt_config(out_dir, "reg", "tabular_regression",
                      {"train": str(regression_data), "columns": {"label": "y", "categorical": ["city"]}},
                      evaluation={"baseline": True})
    run = luban.train(cfg, quiet=True)
    m = metrics(run)
    assert m["test"]["r2"] >= 0.9 and m["stopped_early"] in (True, False)
    assert (run / "model" / "gbdt.txt").is_file() and not (run / "model" / "model.safetensors").exists()
    assert (run / "model" / "gbdt.txt").read_text()[:4] == "tree"  # LightGBM's text format, not a pickle
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == m["epochs_run"] and 1 <= m["best_epoch"] <= len(history)
    assert "val_rmse" in history[0] and history[m["best_epoch"] - 1]["val_rmse"] <= history[0]["val_rmse"]
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Feature importance" in report
    assert isinstance(m["notes"], list)
    p = luban.load(run)
    rows = [{"x1": 0.5, "x2": 1.0, "x3": 0.0, "city": "a"}, {"x1": 0.5, "x2": -1.0, "x3": 0.0, "city": "b"}]
    out = p.predict(rows, contributions=True)
    assert out[0]["value"] - out[1]["value"] == pytest.approx(14.0, abs=2.0)  # city +10, x2 step +4
    for r in out:
        c = r["contributions"]
        assert c["bias"] + sum(c["features"].values()) == pytest.approx(r["value"], abs=1e-3)
        assert set(c["features"]) == {"x1", "x2", "x3", "city"}
    assert abs(out[0]["contributions"]["features"]["city"]) > abs(out[0]["contributions"]["features"]["x3"])


def test_gbdt_classification_binary_and_multiclass(out_dir, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    three = np.where(x[:, 0] > 0.5, "hi", np.where(x[:, 0] < -0.5, "lo", "mid"))
    f = write_csv(tmp_path / "c.csv", [[f"{a:.4f}", f"{b:.4f}", t, "yes" if b > 0 else "no"]
                                       for (a, b), t in zip(x, three)], header=("a", "b", "three", "two"))
    for label, other in (("three", "two"), ("two", "three")):
        cfg = gbdt_config(out_dir, label, "tabular_classification",
                          {"train": str(f), "columns": {"label": label, "features": ["a", "b"]},
                           "split": {"stratify": True}})
        run = luban.train(cfg, quiet=True)
        m = metrics(run)
        assert m["test"]["accuracy"] >= 0.9, label
        p = luban.load(run).predict({"a": 2.0, "b": 1.0}, contributions=True)[0]
        assert p["label"] == ("hi" if label == "three" else "yes")
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        c = p["contributions"]
        assert ("classes" in c) == (label == "three")


def test_mlp_still_an_option_and_has_no_contributions(out_dir, regression_data):
    cfg = tabular_config(out_dir, "mlp", "tabular_regression",
                         {"train": str(regression_data), "columns": {"label": "y", "categorical": ["city"]}},
                         trainer={"epochs": 3})
    p = luban.load(luban.train(cfg, quiet=True))
    from luban.errors import ExportError

    with pytest.raises(ExportError, match="gbdt"):
        p.predict({"x1": 0, "x2": 0, "x3": 0, "city": "a"}, contributions=True)


def test_single_row_class_is_one_clear_error(out_dir, tmp_path):
    rows = [[str(i), "a" if i % 2 else "b"] for i in range(30)]
    rows[7][1] = "rare"
    f = write_csv(tmp_path / "one.csv", rows, header=("x", "y"))
    cfg = gbdt_config(out_dir, "single", "tabular_classification", {"train": str(f), "columns": {"label": "y"}})
    with pytest.raises(DataError) as e:
        luban.train(cfg, quiet=True)
    msg = str(e.value)
    assert str(f) in msg and "line 9" in msg and "field 'y'" in msg and "'rare' has a single row" in msg
    assert not (out_dir / "single").exists()


def test_string_in_numeric_column_names_file_row_column(out_dir, tmp_path):
    rows = [[str(i), str(i % 7), "a" if i % 2 else "b"] for i in range(40)]
    rows[15][1] = "n/a?"
    f = write_csv(tmp_path / "t.csv", rows, header=("x", "z", "y"))
    cfg = gbdt_config(out_dir, "str", "tabular_classification", {"train": str(f), "columns": {"label": "y"}})
    with pytest.raises(DataError) as e:
        luban.train(cfg, quiet=True)
    assert str(f) in str(e.value) and "line 17" in str(e.value) and "field 'z'" in str(e.value)


@pytest.mark.parametrize("builtin,task", [("wine", "tabular_classification"), ("diabetes", "tabular_regression")])
def test_gbdt_onnx_export_and_torch_free_predictor(out_dir, builtin, task):
    pytest.importorskip("onnxmltools")
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_run

    run = luban.train(gbdt_config(out_dir, builtin, task, {"builtin": builtin}), quiet=True)
    meta = export_run(run, quiet=True)
    assert meta["exporter"] == "onnxmltools.convert_lightgbm" and meta["parity"]["max_abs_diff"] < 1e-3
    row = {c: 0.1 * i for i, c in enumerate(metrics(run)["data"]["numeric"])}
    a = luban.load(run, backend="torch").predict([row])[0]
    b = luban.load(run, backend="onnx").predict([row])[0]
    key = "value" if task == "tabular_regression" else "score"
    assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3)
    assert a.get("label") == b.get("label")


def test_empty_search_space_is_one_clear_error(tmp_path):
    pytest.importorskip("optuna")
    import yaml

    from luban.errors import ConfigError
    from luban.lifecycle.tune import tune

    cfg = gbdt_config(tmp_path, "empty", "tabular_classification", {"builtin": "wine"})
    cfg["search"] = {"space": {}}
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ConfigError, match="search.space is empty"):
        tune(str(path), 2, quiet=True)
    assert not (tmp_path / "empty-tune").exists()
