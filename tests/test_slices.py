"""evaluation.slices / evaluation.sensitive: metrics per slice value with intervals, the worst slice and the largest
gap, fairlearn's differences for a binary classifier, and the bad-input errors (issue 21 §4)."""

import json

import numpy as np
import pytest

import luban
from luban.errors import ConfigError, DataError

from conftest import assert_no_run, text_config, write_csv, zh_sentences


def _sliced_data(tmp_path):
    """Train on clean 好/差 rows; in the test file the rows of region "flipped" carry the wrong label, so the model
    is right on "north"/"south" and wrong on "flipped". The region column is not a model input."""
    rows = zh_sentences(130, seed=5)
    train = [(t, l, ["north", "south"][i % 2]) for i, (t, l) in enumerate(rows[:200])]
    flip = {"positive": "negative", "negative": "positive"}
    test = []
    for i, (t, l) in enumerate(rows[200:260]):
        region = ["north", "south", "flipped"][i % 3]
        test.append((t, flip[l] if region == "flipped" else l, region))
    header = ("text", "label", "region")
    return write_csv(tmp_path / "train.csv", train, header), write_csv(tmp_path / "test.csv", test, header)


def test_slices_worst_gap_and_fairness_in_metrics_report_and_summary(out_dir, tmp_path, capsys):
    train, test = _sliced_data(tmp_path)
    cfg = text_config(out_dir, "sliced", train, data={"test": str(test)},
                      evaluation={"slices": ["region"], "sensitive": "region"}, trainer={"epochs": 4})
    cfg["model"] = {"type": "ngram_bag", "ngram_range": [1, 2], "weighting": "nb"}
    cfg["trainer"].update(optimizer="adam", lr=0.05, grad_clip=None)
    run = luban.train(cfg)
    out = capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    s = m["slices"]
    values = s["columns"]["region"]["values"]
    assert {v: r["rows"] for v, r in values.items()} == {"flipped": 20, "north": 20, "south": 20}
    assert min(values["north"]["accuracy"], values["south"]["accuracy"]) >= 0.85
    assert values["flipped"]["accuracy"] <= 0.15
    lo, hi = values["north"]["ci95"]["accuracy"]
    assert lo <= values["north"]["accuracy"] <= hi and hi <= 1.0
    assert set(values["north"]["ci95"]) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
    assert s["worst_slice"]["column"] == "region" and s["worst_slice"]["value"] == "flipped"
    gap = s["largest_gap"]["gap"]
    assert gap == pytest.approx(max(r["accuracy"] for r in values.values()) - values["flipped"]["accuracy"],
                                abs=1e-4) and gap >= 0.7
    f = s["fairness"]
    assert f["groups"] == 3 and 0 <= f["demographic_parity_difference"] <= 1
    assert f["equalized_odds_difference"] >= 0.7  # the flipped group's TPR/FPR are the others' upside down
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Slices (test)" in report and "flipped" in report and "demographic-parity" in report
    assert "worst slice region=flipped" in out


def test_slice_metrics_intervals_regression():
    from luban.evaluate.slices import slice_metrics

    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    groups = np.asarray(["a"] * 150 + ["b"] * 150, dtype=object)
    pred = y + np.where(groups == "a", 0.1, 1.0) * rng.normal(size=300)
    s = slice_metrics({"kind": "regression", "y_true": y, "y_pred": pred}, {"g": groups}, "rmse", seed=1)
    a, b = s["columns"]["g"]["values"]["a"], s["columns"]["g"]["values"]["b"]
    assert a["rmse"] < b["rmse"] and s["worst_slice"]["value"] == "b"
    for r in (a, b):
        assert r["ci95"]["rmse"][0] <= r["rmse"] <= r["ci95"]["rmse"][1]
    assert "fairness" not in s


def test_missing_slice_column_names_the_setting_and_leaves_no_run(out_dir, tmp_path):
    train, test = _sliced_data(tmp_path)
    cfg = text_config(out_dir, "bad", train, data={"test": str(test)}, evaluation={"slices": ["city"]})
    with pytest.raises(DataError) as e:
        luban.train(cfg, quiet=True)
    assert "evaluation.slices" in str(e.value) and "'city'" in str(e.value)
    assert_no_run(out_dir, "bad")


def test_missing_slice_column_at_preflight(out_dir, tmp_path):
    from luban.preflight import check_data
    from luban.config import validate

    train, _ = _sliced_data(tmp_path)
    cfg = validate(text_config(out_dir, "bad", train, evaluation={"sensitive": "gender"}))
    with pytest.raises(DataError, match=r"evaluation.sensitive: column 'gender' not found"):
        check_data(cfg)


def test_slices_on_a_task_that_cannot_slice_is_a_config_error():
    from luban.config import validate

    tree = {"task": "token_classification", "data": {"train": "x.jsonl", "columns": {"tokens": "t", "tags": "g"}},
            "evaluation": {"slices": ["domain"]}}
    with pytest.raises(ConfigError, match=r"evaluation.slices: slicing the test rows is for"):
        validate(tree)
