"""The run's notes (luban.evaluate.verdict): lost to its baseline, still improving at the end, best epoch first."""

from luban.evaluate.report import _notes
from luban.evaluate.verdict import run_notes


def history(values, metric="accuracy"):
    return [{"epoch": i + 1, f"val_{metric}": v} for i, v in enumerate(values)]


def kinds(notes):
    return [n["kind"] for n in notes]


def test_still_improving_at_the_last_epoch():
    m = {"main_metric": "accuracy", "best_epoch": 6, "stopped_early": False, "test": {"accuracy": 0.8}}
    notes = run_notes(m, history([0.60, 0.66, 0.70, 0.73, 0.76, 0.79]))
    assert kinds(notes) == ["still_improving"] and "raise trainer.epochs" in notes[0]["text"]
    gb = run_notes({**m, "main_metric": "rmse"}, history([9, 8, 7, 6, 5, 4], "rmse"), unit="boosting round",
                   more="model.n_estimators")
    assert "boosting round" in gb[0]["text"] and "model.n_estimators" in gb[0]["text"]


def test_flat_or_stopped_curves_say_nothing():
    m = {"main_metric": "accuracy", "best_epoch": 4, "stopped_early": True, "test": {"accuracy": 0.8}}
    assert run_notes(m, history([0.6, 0.7, 0.75, 0.8, 0.79, 0.78, 0.78])) == []
    assert run_notes({**m, "stopped_early": False}, history([0.8, 0.8001, 0.8002])) == []


def test_best_epoch_first_of_many():
    m = {"main_metric": "accuracy", "best_epoch": 1, "stopped_early": False, "test": {"accuracy": 0.8}}
    notes = run_notes(m, history([0.8, 0.7, 0.69, 0.68, 0.66, 0.65]))
    assert kinds(notes) == ["best_first"] and "lower the learning rate" in notes[0]["text"]


def test_lost_to_the_baseline_with_and_without_a_noise_test():
    base = {"name": "ridge", "test": {"rmse": 50.0}}
    m = {"main_metric": "rmse", "best_epoch": 2, "stopped_early": True, "test": {"rmse": 55.0}, "baseline": base}
    notes = run_notes(m, history([60, 55, 56], "rmse"))
    assert kinds(notes) == ["lost_to_baseline"] and "not tested for noise" in notes[0]["text"]
    tested = {**m, "vs_baseline": {"verdict": "worse than the baseline", "metric": "rmse", "difference": 5.0,
                                   "ci95": [2.0, 8.0]}}
    assert "beyond noise" in run_notes(tested, [])[0]["text"]
    tie = {**m, "vs_baseline": {"verdict": "not distinguishable from the baseline", "metric": "rmse",
                                "difference": 1.0, "ci95": [-1.0, 3.0]}}
    assert run_notes(tie, []) == []
    html = "".join(_notes(notes))
    assert "Read this first" in html and "verdict lose" in html
