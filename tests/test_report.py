"""report.html: matplotlib charts inlined as SVG, the noise-aware verdict against the baseline, ROC / PR /
calibration for binary classifiers, predicted-vs-true for regression, and a page even without matplotlib."""

import json
import re
import sys

import numpy as np
import pytest

import luban
from luban.config import RunConfig
from luban.evaluate import charts
from luban.evaluate import significance as sig
from luban.evaluate.metrics import classification_metrics, classification_with_worst, regression_metrics, scalars
from luban.evaluate.report import write_report
from luban.evaluate.significance import BEATS, TIE, WORSE, compare_to_baseline

from conftest import tabular_config, text_config, write_csv

AXES = re.compile(r'id="c\d+-matplotlib\.axis_2"')  # matplotlib's y axis group (ids get a per-chart prefix)
LEGEND = re.compile(r'id="c\d+-legend_1"')


def _flip(y, right_share, rng, k=2):
    """Predictions that are right on about `right_share` of the rows."""
    return np.where(rng.random(len(y)) < right_share, y, (y + 1) % k)


def _page(tmp_path, test, baseline=None, history=None, task="text_classification", main="accuracy"):
    metrics = {"task": task, "main_metric": main, "validation": {}, "test": test, "baseline": baseline,
               "vs_baseline": compare_to_baseline(test, baseline, main, 0), "best_epoch": 2, "epochs_run": 3,
               "stopped_early": False, "data": {"splits": {"train": 10}},
               "timings": {"fit_seconds": 1.0}, "environment": {"device": "cpu", "precision": "fp32", "threads": 1},
               "parameters": {"total": 10}}
    columns = {"label": "y"} if task.startswith("tabular") else {"text": "text", "label": "label"}
    cfg = RunConfig.model_validate({"task": task, "data": {"train": "x.csv", "columns": columns},
                                    "output": {"name": "r"}})
    hist = history if history is not None else [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, f"val_{main}": 0.8 + e / 100} for e in (1, 2, 3)]
    path = tmp_path / "report.html"
    write_report(path, cfg, metrics, hist)
    json.dumps(metrics)  # the per-row predictions never reach metrics.json
    return path.read_text(encoding="utf-8"), metrics


def _scored(y, probs, labels):
    """Metrics from probabilities, as the classification tasks compute them (with the rows and probabilities)."""
    return classification_with_worst(probs, y, labels, 3, lambda i: {"line": i + 1, "text": f"行 {i}"})


def _binary(n=300, seed=0, labels=("负面", "正面"), k=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, list(labels)


# ---- the verdict ---------------------------------------------------------------------------------------------------

def test_identical_predictions_are_not_distinguishable():
    y, probs, labels = _binary()
    m = _scored(y, probs, labels)
    v = compare_to_baseline(m, {"test": scalars(m)}, "accuracy", 0)
    assert v["verdict"] == TIE and v["difference"] == 0
    assert v["ci95"][0] <= 0 <= v["ci95"][1]
    assert v["rows"] == 300 and v["only_model_right"] == v["only_baseline_right"] == 0
    assert v["summary"] == "accuracy 0.0 points (95% CI 0.0 … 0.0): not distinguishable from the baseline"


def test_clearly_better_model_beats_and_clearly_worse_loses_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    good = classification_metrics(y, _flip(y, 0.95, rng), ["a", "b"])
    bad = classification_metrics(y, _flip(y, 0.70, rng), ["a", "b"])
    v = compare_to_baseline(good, {"test": bad}, "accuracy", 7)
    assert v["verdict"] == BEATS and v["ci95"][0] > 0 and v["mcnemar_p"] < 1e-6
    assert v["difference"] == pytest.approx(good["accuracy"] - bad["accuracy"])
    assert v["summary"].startswith(f"accuracy +{100 * v['difference']:.1f} points (95% CI +")
    assert compare_to_baseline(bad, {"test": good}, "accuracy", 7)["verdict"] == WORSE
    assert compare_to_baseline(good, {"test": bad}, "accuracy", 7) == v  # same seed, same verdict


def test_a_small_gain_on_few_rows_is_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    base = _flip(y, 0.85, rng)
    ours = base.copy()
    ours[np.flatnonzero(ours != y)[:2]] = y[np.flatnonzero(ours != y)[:2]]  # right on 2 more rows: +1 point
    v = compare_to_baseline(classification_metrics(y, ours, ["a", "b"]),
                            {"test": classification_metrics(y, base, ["a", "b"])}, "accuracy", 0)
    assert v["difference"] == pytest.approx(0.01) and v["verdict"] == TIE


def test_regression_verdict_on_errors_and_its_large_sample_path(monkeypatch):
    rng = np.random.default_rng(3)
    y = rng.normal(size=2000)
    ours = regression_metrics(y, y + rng.normal(scale=0.3, size=2000))
    theirs = regression_metrics(y, y + rng.normal(scale=0.6, size=2000))
    v = compare_to_baseline(ours, {"test": theirs}, "rmse", 0)
    assert v["metric"] == "rmse" and v["verdict"] == BEATS and v["ci95"][1] < 0
    assert v["model"] == pytest.approx(ours["rmse"]) and v["baseline"] == pytest.approx(theirs["rmse"])
    assert "row by row" in v["method"]
    assert compare_to_baseline(theirs, {"test": ours}, "rmse", 0)["verdict"] == WORSE
    assert compare_to_baseline(ours, {"test": ours}, "mae", 0)["verdict"] == TIE
    monkeypatch.setattr(sig, "EXACT_DRAWS", 0)  # the normal-limit draw gives the same interval within noise
    w = compare_to_baseline(ours, {"test": theirs}, "rmse", 0)
    assert "normal limit" in w["method"] and w["verdict"] == BEATS
    assert w["ci95"] == pytest.approx(v["ci95"], abs=0.25 * (v["ci95"][1] - v["ci95"][0]))


def test_no_verdict_without_paired_rows():
    y, probs, labels = _binary()
    m = _scored(y, probs, labels)
    assert compare_to_baseline(m, None, "accuracy", 0) is None
    assert compare_to_baseline(m, {"test": {"accuracy": 0.5}}, "accuracy", 0) is None  # e.g. read back from JSON
    other = classification_metrics(y[:-1], y[:-1], labels)
    assert compare_to_baseline(m, {"test": other}, "accuracy", 0) is None  # not the same rows


# ---- the page ------------------------------------------------------------------------------------------------------

def test_binary_report_has_curves_verdict_and_roc_pr_calibration(tmp_path):
    y, probs, labels = _binary()
    rng = np.random.default_rng(4)
    base = {"name": "char TF-IDF", "validation": {"accuracy": 0.8},
            "test": scalars(classification_metrics(y, _flip(y, 0.6, rng), labels))}
    page, metrics = _page(tmp_path, _scored(y, probs, labels), base)
    assert metrics["vs_baseline"]["verdict"] == BEATS
    assert "Beats the baseline" in page and 'class="win"' in page and "paired bootstrap" in page
    assert page.count("<svg") == 5 and "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//|url\((https?:)?//', page)  # offline: nothing fetched
    assert len(AXES.findall(page)) == 5 and len(LEGEND.findall(page)) == 5
    for text in ("train loss", "validation loss", "best epoch 2", "baseline 0.8", ">epoch<", "ROC",
                 "AUC", "precision-recall", "AP ", "calibration", "positive class 正面"):
        assert text in page, text
    assert "Noto Sans CJK SC" in page  # CJK-capable font list on the chart text


def test_multiclass_report_has_no_binary_charts_and_no_val_loss_when_absent(tmp_path):
    y, probs, labels = _binary(labels=("a", "b", "c"), k=3)
    hist = [{"epoch": e, "train_loss": 1 / e, "val_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
    page, _ = _page(tmp_path, _scored(y, probs, labels), history=hist)
    assert page.count("<svg") == 2
    assert "train loss" in page and "validation loss" not in page
    assert "ROC" not in page and "calibration" not in page and "precision-recall" not in page


def test_regression_report_has_scatter(tmp_path):
    rng = np.random.default_rng(5)
    y = rng.normal(size=5000)
    test = regression_metrics(y, y + rng.normal(scale=0.2, size=5000))
    base = {"name": "ridge", "validation": {"rmse": 0.3}, "test": regression_metrics(y, y + rng.normal(size=5000))}
    hist = [{"epoch": e, "train_loss": 1 / e, "val_rmse": 0.5 / e} for e in (1, 2, 3)]
    page, metrics = _page(tmp_path, test, base, hist, task="tabular_regression", main="rmse")
    assert "predicted vs true" in page and "y = x" in page
    assert f"{charts.MAX_SCATTER:,} of 5,000 test rows" in page  # a sample keeps the page small
    assert metrics["vs_baseline"]["verdict"] == BEATS and "RMSE −" in page
    assert "ROC" not in page


def test_y_limits_do_not_zoom_into_noise():
    lo, hi = charts.y_limits([0.912, 0.905, 0.911], "accuracy")
    assert hi - lo >= charts.MIN_RATE_SPAN and 0 <= lo and hi <= 1.01  # a 0.7-point dip is 7% of the axis
    assert charts.y_limits([0.4, 0.2], "loss")[0] == 0  # losses from 0
    lo, hi = charts.y_limits([61.6, 59.4, 60.1], "rmse")  # an error: at least 20% of its size tall
    assert hi - lo >= 0.2 * 61.6 and lo >= 0
    assert charts.y_limits([2.0, 0.1], "rmse")[0] == 0  # never below 0 when nothing is
    lo, hi = charts.y_limits([30.1, 30.3], "bleu")
    assert hi - lo >= 6.0


def test_report_is_written_without_matplotlib(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib -> ImportError
    assert not charts.available()
    y, probs, labels = _binary()
    page, _ = _page(tmp_path, _scored(y, probs, labels))
    assert "Charts need matplotlib" in page and "<svg" not in page
    assert "Confusion matrix" in page and "正面" in page


# ---- end to end ----------------------------------------------------------------------------------------------------

def test_text_run_report_and_summary_show_the_verdict(out_dir, zh_data, capsys):
    cfg = text_config(out_dir, "rep", zh_data["train"], data={"test": str(zh_data["test"])},
                      evaluation={"baseline": True}, trainer={"epochs": 2})
    run = luban.train(cfg)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    v = m["vs_baseline"]
    assert v["metric"] == "accuracy" and v["rows"] == 60 and v["verdict"] in (BEATS, TIE, WORSE)
    assert "y_true" not in (run / "metrics.json").read_text(encoding="utf-8")  # per-row predictions stay out
    assert v["model"] == pytest.approx(m["test"]["accuracy"]) and v["baseline"] == pytest.approx(
        m["baseline"]["test"]["accuracy"])
    out = " ".join(capsys.readouterr().out.split())  # a narrow console may wrap the caption
    assert v["summary"] in out and re.search(r"accuracy [+−]?\d+\.\d points \(95% CI .+ … .+\): ", out)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert v["verdict"][1:] in page
    assert len(AXES.findall(page)) >= 5 and "train loss" in page and "ROC" in page  # labels negative/positive
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert ("validation loss" in page) == any("val_loss" in h for h in history)


def test_tabular_regression_run_has_scatter_and_verdict(out_dir, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 2))
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=240)
    train = write_csv(tmp_path / "r.csv", [[f"{a:.4f}", f"{b:.4f}", f"{t:.4f}"] for (a, b), t in zip(x, y)],
                      header=("a", "b", "y"))
    cfg = tabular_config(out_dir, "reg", "tabular_regression", {"train": str(train), "columns": {"label": "y"}},
                         trainer={"epochs": 5}, evaluation={"baseline": True})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["vs_baseline"]["metric"] == "rmse" and m["vs_baseline"]["rows"] == m["data"]["splits"]["test"]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "predicted vs true" in page and "y = x" in page
