"""Metrics equal values computed by hand."""

import math

import numpy as np
import pytest

from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars


def test_classification_metrics_match_hand_computed():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    # per class: a: P 1/2 R 1/2 F1 1/2; b: P 2/3 R 1 F1 4/5; c: P 1 R 1/2 F1 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["f1_micro"] == pytest.approx(4 / 6)  # single-label: micro F1 == accuracy
    assert m["f1_weighted"] == pytest.approx(m["f1_macro"])  # equal supports
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classification_metrics_weighted_uses_support():
    # class 0 support 3, class 1 support 1; everything predicted 0
    m = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0], ["x", "y"])
    f1_x = 2 * 0.75 * 1.0 / 1.75
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx(f1_x / 2)
    assert m["f1_weighted"] == pytest.approx(f1_x * 3 / 4)
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_perfect_predictions():
    m = classification_metrics(np.array([1, 0, 1]), np.array([1, 0, 1]), ["neg", "pos"])
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0
    assert m["confusion_matrix"] == [[1, 0], [0, 2]]


def test_regression_metrics_match_hand_computed():
    m = regression_metrics([1, 2, 3, 4], [1.5, 2, 2.5, 5])
    # errors 0.5, 0, -0.5, 1 ; SS_res 1.5 ; mean 2.5 -> SS_tot 5
    assert m["mse"] == pytest.approx(0.375)
    assert m["rmse"] == pytest.approx(math.sqrt(0.375))
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 1.5 / 5)


def test_regression_single_row_r2_is_nan():
    m = regression_metrics([3.0], [2.0])
    assert m["rmse"] == pytest.approx(1.0)
    assert math.isnan(m["r2"])


def test_scalars_keeps_only_numbers():
    m = classification_metrics([0, 1], [0, 1], ["a", "b"])
    s = scalars(m)
    assert "per_class" not in s and "confusion_matrix" not in s
    assert s["accuracy"] == 1.0


def test_macro_average_ignores_classes_absent_from_truth_and_predictions():
    # an evaluation file holding only class 'pos', all predicted right: every average is 1, not 0.5
    m = classification_metrics([1, 1, 1], [1, 1, 1], ["neg", "pos"])
    assert m["accuracy"] == 1.0
    assert m["f1_macro"] == 1.0 and m["precision_macro"] == 1.0 and m["recall_macro"] == 1.0
    assert m["per_class"]["neg"]["support"] == 0
    assert m["confusion_matrix"] == [[0, 0], [0, 3]]


def test_macro_average_counts_a_class_that_is_only_predicted():
    # 'c' never occurs in truth but is predicted once: it is a real false positive and stays in the macro average
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "c"])
    f1_a = 2 * 1.0 * 0.5 / 1.5
    assert m["f1_macro"] == pytest.approx((f1_a + 1.0 + 0.0) / 3)
