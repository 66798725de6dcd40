"""Models learn small separable datasets; the baseline is reported; the same seed gives the same metrics."""

import json

import numpy as np
import pytest

import luban

from conftest import tabular_config, text_config, write_csv


def read_metrics(run):
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def test_chinese_text_classification_learns(out_dir, zh_data):
    cfg = text_config(out_dir, "zh", zh_data["train"], data={"test": str(zh_data["test"])})
    run = luban.train(cfg, quiet=True)
    assert run == out_dir / "zh"
    assert not (out_dir / "zh.partial").exists()
    for f in ("config.yaml", "metrics.json", "report.html", "history.jsonl", "model/model.safetensors",
              "model/processor.json", "model/tokenizer/vocab.json"):
        assert (run / f).exists(), f
    m = read_metrics(run)
    assert m["task"] == "text_classification" and m["main_metric"] == "accuracy"
    assert m["test"]["accuracy"] >= 0.9
    assert m["data"]["splits"]["test"] == 60
    assert m["data"]["labels"] == ["negative", "positive"]
    assert m["epochs_run"] == 3 and 1 <= m["best_epoch"] <= 3
    assert m["baseline"] is None
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_english_whitespace_text_classification_learns(out_dir, en_data):
    cfg = text_config(out_dir, "en", en_data["train"], data={"test": str(en_data["test"])},
                      preprocessing={"tokenizer": {"type": "whitespace", "lowercase": True}})
    m = read_metrics(luban.train(cfg, quiet=True))
    assert m["test"]["accuracy"] >= 0.9
    assert m["data"]["tokenizer"] == "whitespace"
    p = luban.load(out_dir / "en").predict(["the hotel was very good", "my phone was so bad"])
    assert [r["label"] for r in p] == ["positive", "negative"]


def test_text_baseline_is_reported(out_dir, en_data):
    cfg = text_config(out_dir, "base", en_data["train"], evaluation={"baseline": True}, trainer={"epochs": 1})
    m = read_metrics(luban.train(cfg, quiet=True))
    b = m["baseline"]
    assert b["name"] == "word 1-2-gram TF-IDF + logistic regression"  # English: words, a fair baseline
    assert 0.0 <= b["test"]["accuracy"] <= 1.0 and "f1_macro" in b["test"]
    assert b["test"]["accuracy"] >= 0.9  # the task is trivially separable for TF-IDF too


def test_text_baseline_units_follow_the_script():
    from luban.evaluate.baselines import text_analyzer

    assert text_analyzer(["the film was great", "a dull, lifeless movie"]) == "word"
    assert text_analyzer(["房间很干净，服务也很周到", "质量太差了"]) == "char"
    assert text_analyzer(["ホテルはとても良かった", "最悪の映画"]) == "char"
    assert text_analyzer(["Это был хороший фильм"]) == "word"


def test_tabular_regression_learns_linear_target(out_dir, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] + 10 + rng.normal(scale=0.1, size=300)
    rows = [[f"{a:.5f}", f"{b:.5f}", f"{c:.5f}", f"{t:.5f}"] for (a, b, c), t in zip(x, y)]
    train = write_csv(tmp_path / "lin.csv", rows, header=("x1", "x2", "x3", "y"))
    cfg = tabular_config(out_dir, "lin", "tabular_regression",
                         {"train": str(train), "columns": {"label": "y"}}, trainer={"epochs": 30})
    run = luban.train(cfg, quiet=True)
    m = read_metrics(run)
    assert m["main_metric"] == "rmse"
    assert m["test"]["r2"] >= 0.9
    assert m["test"]["rmse"] < 1.2  # std of y is ~3.6
    assert m["data"]["numeric"] == ["x1", "x2", "x3"]
    pred = luban.load(run).predict([{"x1": 1.0, "x2": 0.0, "x3": 0.0}, {"x1": 0.0, "x2": 1.0, "x3": 0.0}])
    assert pred[0]["value"] == pytest.approx(13.0, abs=1.5)
    assert pred[1]["value"] == pytest.approx(8.0, abs=1.5)


def test_tabular_classification_builtin_with_baseline(out_dir):
    cfg = tabular_config(out_dir, "wine", "tabular_classification", {"builtin": "wine"},
                         trainer={"epochs": 30, "batch_size": 16}, evaluation={"baseline": True})
    run = luban.train(cfg, quiet=True)
    m = read_metrics(run)
    assert m["test"]["accuracy"] >= 0.85
    assert len(m["data"]["labels"]) == 3
    assert sum(m["data"]["splits"].values()) == 178
    b = m["baseline"]
    assert b["name"] in ("logistic regression", "gradient boosting")
    assert set(b["all"]) == {"logistic_regression", "gradient_boosting"}
    assert b["test"]["accuracy"] >= 0.8
    assert m["vs_baseline"]["rows"] == m["data"]["splits"]["test"]  # tables get the noise-aware verdict too
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "baseline: " + b["name"] in report
    p = luban.load(run).predict({k: 13.0 for k in m["data"]["numeric"]})
    assert p[0]["label"] in m["data"]["labels"]
    assert sum(p[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_same_seed_same_metrics(out_dir, zh_data):
    runs = [luban.train(text_config(out_dir, f"seed{i}", zh_data["train"], trainer={"epochs": 2}), quiet=True)
            for i in range(2)]
    a, b = (read_metrics(r) for r in runs)
    assert a["test"] == b["test"]
    assert a["validation"] == b["validation"]
    ha, hb = ((runs[i] / "history.jsonl").read_text().splitlines() for i in range(2))
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k not in ("samples_per_s", "epoch_seconds")}
                           for l in lines]  # noqa: E731
    assert strip(ha) == strip(hb)


def test_tabular_same_seed_same_metrics(out_dir):
    runs = [luban.train(tabular_config(out_dir, f"bc{i}", "tabular_classification", {"builtin": "breast_cancer"},
                                       trainer={"epochs": 3}), quiet=True) for i in range(2)]
    a, b = (read_metrics(r) for r in runs)
    assert a["test"] == b["test"]
    assert a["test"]["accuracy"] >= 0.9
