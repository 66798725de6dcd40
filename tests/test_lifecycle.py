"""Lifecycle: hyperparameter search (grid finds the planted best, resume keeps finished trials), k-fold splits,
ensembles, MLflow tracking, and (marked slow) a 2-worker Ray run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tabular_config, text_config, write_csv

import luban
from luban.errors import ConfigError

pytest.importorskip("optuna")


@pytest.fixture
def linear_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 2))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + rng.normal(scale=0.1, size=240)
    rows = [[f"{a:.5f}", f"{b:.5f}", f"{t:.5f}"] for (a, b), t in zip(x, y, strict=True)]
    return write_csv(tmp_path / "lin.csv", rows, header=("x1", "x2", "y"))


def tune_config(tmp_path: Path, data: Path, space: dict, **search) -> Path:
    cfg = tabular_config(tmp_path / "runs", "lin", "tabular_regression",
                         {"train": str(data), "columns": {"label": "y"}},
                         trainer={"epochs": 6, "scheduler": "constant"})
    cfg["search"] = {"space": space, "sampler": "grid", "pruner": "none", **search}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


LR_GRID = {"trainer.lr": {"type": "choice", "values": [1e-6, 1e-5, 1e-4, 0.03]}}


def test_grid_search_finds_the_planted_best_and_writes_a_trainable_config(tmp_path, linear_data, capsys):
    from luban.lifecycle.tune import tune

    out = tune(tune_config(tmp_path, linear_data, LR_GRID), trials=4)
    printed = capsys.readouterr()
    assert "epoch 1:" not in printed.err + printed.out  # trials train silently ...
    assert sum(line.startswith("trial ") for line in printed.out.splitlines()) == 4  # ... one line each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] == 4 and summary["direction"] == "minimize" and summary["metric"] == "rmse"
    assert summary["best_params"] == {"trainer.lr": 0.03}  # the only rate that learns in 6 epochs
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["trainer"]["lr"] == 0.03 and "search" not in best
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 5
    assert "Trials" in (out / "report.html").read_text()
    run = luban.train(out / "best.yaml", quiet=True)
    assert json.loads((run / "metrics.json").read_text())["validation"]["rmse"] == pytest.approx(
        summary["best_value"], rel=1e-6)  # same config, same seed -> the trial's result


def test_cross_validated_objective_is_the_mean_over_disjoint_folds(tmp_path, linear_data):
    """search.cv_folds: every trial trains once per fold (train + validation rows pooled, each row held out once)
    and scores the mean held-out metric; the same folds for every trial; the best is still the planted rate."""
    import optuna

    from luban.lifecycle.tune import tune

    grid = {"trainer.lr": {"type": "choice", "values": [1e-5, 0.03]}}  # one rate that learns, one that does not
    path = tune_config(tmp_path, linear_data, grid, cv_folds=3)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["test"] = str(linear_data)  # a CSV test file beside the JSON-lines folds: read in its own format
    path.write_text(yaml.safe_dump(cfg))
    out = tune(path, trials=2, quiet=True)
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_params"] == {"trainer.lr": 0.03}
    assert summary["best_user_attrs"]["test_rmse"] < 0.5  # the fold models' mean on the test file
    for t in study.trials:
        runs = t.user_attrs["fold_runs"]
        assert len(runs) == 3 and t.user_attrs["validation_rows"] == 240
        folds = [json.loads((Path(r) / "metrics.json").read_text())["validation"]["rmse"] for r in runs]
        assert t.value == pytest.approx(sum(folds) / 3) and t.user_attrs["fold_values"] == pytest.approx(folds)
        curves = [[json.loads(x)["val_rmse"] for x in (Path(r) / "history.jsonl").read_text().splitlines()]
                  for r in runs]
        mean = [sum(c[i] for c in curves) / 3 for i in range(min(map(len, curves)))]
        assert t.user_attrs["best_epoch"] == mean.index(min(mean)) + 1  # the mean curve's best epoch
    held = [set(map(str, (out / "folds" / f"fold{k}_test.jsonl").read_text().splitlines())) for k in range(3)]
    assert sum(map(len, held)) == 240 and not (held[0] & held[1]) and not (held[1] & held[2])
    with pytest.raises(ConfigError, match="cv_folds runs with the local backend"):
        tune(tune_config(tmp_path, linear_data, LR_GRID, cv_folds=3), trials=5, resume=True, backend="ray",
             quiet=True)


def test_interrupted_study_resumes_without_redoing_trials(tmp_path, linear_data):
    import optuna

    from luban.lifecycle.tune import tune

    cfg = tune_config(tmp_path, linear_data, LR_GRID)
    out = tune(cfg, trials=2, quiet=True)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()}
    assert len(first) == 2
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask()  # a trial left RUNNING with its parameters, as a killed process leaves it
    killed.suggest_categorical("trainer.lr", LR_GRID["trainer.lr"]["values"])
    with pytest.raises(ConfigError, match="already exists"):
        tune(cfg, trials=4, quiet=True)
    tune(cfg, trials=4, resume=True, quiet=True)
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1  # the stale one was re-queued
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir() if p.name in first} == first


def test_conditional_space_and_bad_paths(tmp_path, linear_data):
    from luban.lifecycle.tune import tune

    bad = tune_config(tmp_path, linear_data, {"trainer.lrr": {"type": "uniform", "low": 0.1, "high": 0.2}},
                      sampler="random")
    with pytest.raises(ConfigError, match=r"(?s)search.space.trainer.lrr = 0.1 .*unknown key .did you mean .lr"):
        tune(bad, trials=1, quiet=True)
    space = {"model.batch_norm": {"type": "choice", "values": [True, False]},
             "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3, "when": {"model.batch_norm": True}}}
    out = tune(tune_config(tmp_path, linear_data, space, sampler="random", seed=3), trials=3, quiet=True)
    import optuna

    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    for t in study.trials:
        assert ("model.dropout" in t.params) == t.params["model.batch_norm"]


@pytest.mark.parametrize("best, noise", [(0.94, True), (0.96, False)])
def test_a_gain_within_the_validation_noise_is_flagged(best, noise):
    """ChnSentiCorp's case: your config 0.9383 on 1,200 validation rows has a sampling error of
    sqrt(0.9383 * 0.0617 / 1200) = 0.00695, so a best of 0.9400 (+2 rows) is within noise; 0.9600 is not."""
    import optuna

    from luban.lifecycle.tune import _noise_note, _start_summary

    study = optuna.create_study(direction="maximize")
    for value, attrs in ((0.9383, {"start": "config", "validation_rows": 1200}), (best, {"validation_rows": 1200})):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs, params={}, distributions={}))
    s = _start_summary(study, study.trials, "accuracy")
    assert s["start_trial"] == 0 and s["start_gain"] == pytest.approx(best - 0.9383)
    assert s["validation_se"] == pytest.approx(0.00695, abs=1e-5) and s["within_noise"] is noise
    assert ("within twice the validation set's sampling error (±0.0069 on 1200 rows)" in _noise_note(s)) is noise
    assert "validation_se" not in _start_summary(study, study.trials, "rmse")  # not a proportion
    alone = optuna.create_study(direction="maximize")
    alone.add_trial(optuna.trial.create_trial(value=0.9383, user_attrs={"start": "config", "validation_rows": 1200},
                                              params={}, distributions={}))
    assert _noise_note(_start_summary(alone, alone.trials, "accuracy")) == ""  # your config is the best: no note


def test_search_starts_from_the_configs_own_values(tmp_path, linear_data):
    import optuna

    from luban.lifecycle.search_space import config_point
    from luban.lifecycle.tune import tune

    space = {"trainer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1},
             "model.hidden_sizes": {"type": "choice", "values": [[8], [32], [16, 16]]},
             "trainer.batch_size": {"type": "int", "low": 64, "high": 128},  # the config's 32 is outside
             "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3, "when": {"model.batch_norm": True}}}
    out = tune(tune_config(tmp_path, linear_data, space, sampler="tpe"), trials=2, quiet=True)
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    first = study.trials[0].params
    assert first["trainer.lr"] == 0.01 and first["model.hidden_sizes"] == 1  # the list choice by its index
    assert 64 <= first["trainer.batch_size"] <= 128 and "model.dropout" not in first  # sampled; condition unmet
    runs = sorted((out / "trials").iterdir())
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["model"]["hidden_sizes"] == [32]
    assert study.trials[1].params["trainer.lr"] != 0.01  # then the sampler takes over
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start_trial"] == 0 and summary["start_value"] == study.trials[0].value  # to compare with
    assert f"your config (trial 0) {study.trials[0].value:.4f}" in (out / "report.html").read_text()
    assert summary["start_gain"] == pytest.approx(abs(study.best_value - study.trials[0].value))
    from luban.config import SearchConfig

    point, outside = config_point({"trainer": {"lr": 0.5}}, SearchConfig(space=space).space)
    assert point == {} and outside == ["trainer.lr", "model.hidden_sizes", "trainer.batch_size"]


def test_parallel_trials_run_each_trial_once(tmp_path, linear_data):
    import optuna

    from luban.lifecycle.tune import tune

    space = {"trainer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}}
    out = tune(tune_config(tmp_path, linear_data, space, sampler="random", pruner="none"), trials=5, jobs=2,
               quiet=True)
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5  # the queued trial 0 too, trained once
    assert study.trials[0].params["trainer.lr"] == 0.01
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-{i:03d}" for i in range(5)]


def test_keep_last_ends_with_the_last_epochs_weights(tmp_path, linear_data):
    cfg = tabular_config(tmp_path / "runs", "last", "tabular_regression",
                         {"train": str(linear_data), "columns": {"label": "y"}},
                         trainer={"epochs": 4, "lr": 1.0, "scheduler": "constant", "keep": "last"})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text())
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert m["best_epoch"] == 4 and m["validation"]["rmse"] == pytest.approx(history[-1]["val_rmse"], rel=1e-5)
    assert min(r["val_rmse"] for r in history) < history[-1]["val_rmse"]  # lr 1.0 overshoots: "best" keeps another


def test_retrain_fits_the_best_config_on_train_plus_validation(tmp_path, linear_data):
    from luban.lifecycle.tune import tune

    rows = linear_data.read_text().splitlines()
    train = tmp_path / "train.csv"
    val = tmp_path / "val.csv"
    train.write_text("\n".join(rows[:181]) + "\n")  # header + 180 rows
    val.write_text("\n".join([rows[0]] + rows[181:]) + "\n")  # header + 60 rows
    cfg = tabular_config(tmp_path / "runs", "lin", "tabular_regression",
                         {"train": str(train), "validation": str(val), "test": str(val), "columns": {"label": "y"}},
                         trainer={"epochs": 6, "scheduler": "constant"})
    cfg["search"] = {"space": LR_GRID, "sampler": "grid", "pruner": "none", "retrain": True}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tune(path, trials=4, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    final = out.parent / "lin-best"
    used = yaml.safe_load((final / "config.yaml").read_text())
    assert used["trainer"]["lr"] == 0.03 and used["trainer"]["keep"] == "last"
    assert used["trainer"]["epochs"] == summary["best_user_attrs"]["best_epoch"]
    combined = Path(used["data"]["train"]).read_text().splitlines()
    assert combined[0] == rows[0] and combined[1:] == rows[1:]  # one header, then train and validation rows
    m = json.loads((final / "metrics.json").read_text())
    assert m["best_epoch"] == m["epochs_run"] == used["trainer"]["epochs"]
    assert m["test"]["rmse"] < 1.0  # the retrained model learned the planted relation (target std ~3.6)


def test_kfold_splits_are_disjoint_cover_and_stratify():
    from luban.lifecycle.cv import fold_indices

    labels = np.array(["a"] * 30 + ["b"] * 10)
    folds = fold_indices(40, 5, seed=0, labels=labels)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(40))  # disjoint and covering
    assert all((labels[f] == "b").sum() == 2 for f in folds)  # 10 b's spread 2 per fold
    plain = fold_indices(10, 3, seed=1)
    assert sorted(np.concatenate(plain).tolist()) == list(range(10)) and [len(f) for f in plain] == [4, 3, 3]


def test_cross_validation_runs_every_fold(tmp_path, linear_data):
    from luban.lifecycle.cv import cross_validate

    cfg = tabular_config(tmp_path / "runs", "cvlin", "tabular_regression",
                         {"train": str(linear_data), "columns": {"label": "y"}}, trainer={"epochs": 5})
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = cross_validate(path, folds=3, quiet=True)
    cv = json.loads((out / "cv.json").read_text())
    assert [r["test_rows"] for r in cv["per_fold"]] == [80, 80, 80]
    assert cv["mean"]["rmse"] == pytest.approx(np.mean([r["rmse"] for r in cv["per_fold"]]))
    assert cv["std"]["rmse"] >= 0 and "mean ± std" in (out / "report.html").read_text()


def test_ensemble_averages_member_probabilities(zh_data, out_dir):
    runs = [luban.train(text_config(out_dir, f"m{s}", zh_data["train"], seed=s,
                                    data={"test": str(zh_data["test"])}), quiet=True) for s in (1, 2)]
    from luban.lifecycle.ensemble import create_ensemble

    ens = create_ensemble(runs, out_dir / "ens")
    texts = ["这个手机很好", "服务太差了"]
    members = [luban.load(r).predict(texts) for r in runs]
    combined = luban.load(ens).predict(texts)
    for i, row in enumerate(combined):
        for label, p in row["probabilities"].items():
            expected = (members[0][i]["probabilities"][label] + members[1][i]["probabilities"][label]) / 2
            assert p == pytest.approx(expected, abs=2e-6)
    m = json.loads((ens / "metrics.json").read_text())
    assert 0 <= m["test"]["accuracy"] <= 1 and len(m["members"]) == 2
    assert luban.load(ens).evaluate(zh_data["test"])["accuracy"] == pytest.approx(m["test"]["accuracy"])
    # `luban evaluate ENS --set data.encoding=gbk`: every member reads the file through a validated copy
    gbk = out_dir / "test_gbk.csv"
    gbk.write_bytes(zh_data["test"].read_text(encoding="utf-8").encode("gbk"))
    p = luban.load(ens)
    p.override_data(["data.encoding=gbk"], "ens with --set")
    assert p.evaluate(gbk)["accuracy"] == pytest.approx(m["test"]["accuracy"])


def test_cli_tune_cv_and_ensemble(zh_data, out_dir, tmp_path, capsys):
    from luban.cli import main

    cfg = text_config(out_dir, "zh", zh_data["train"], data={"test": str(zh_data["test"])})
    cfg["search"] = {"space": {"trainer.lr": {"type": "choice", "values": [0.003, 0.01]}}, "sampler": "grid",
                     "pruner": "none"}
    path = tmp_path / "zh.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert main(["tune", str(path), "--trials", "2", "--timeout", "600"]) == 0
    assert "best: trial" in capsys.readouterr().out
    assert yaml.safe_load((out_dir / "zh-tune" / "best.yaml").read_text())["trainer"]["lr"] in (0.003, 0.01)
    assert main(["cv", str(path), "--folds", "3", "--stratified"]) == 0
    cv = json.loads((out_dir / "zh-cv" / "cv.json").read_text())
    assert len(cv["per_fold"]) == 3 and 0 <= cv["mean"]["accuracy"] <= 1
    members = [str(p) for p in sorted((out_dir / "zh-tune" / "trials").iterdir())]
    assert main(["ensemble", *members, "--out", str(out_dir / "ens"), "--weighting", "validation"]) == 0
    assert luban.load(out_dir / "ens").predict(["这个手机很好"])[0]["label"] in ("positive", "negative")


def test_mlflow_tracking_logs_params_metrics_and_artifacts(tmp_path, linear_data):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = tabular_config(tmp_path / "runs", "tracked", "tabular_regression",
                         {"train": str(linear_data), "columns": {"label": "y"}}, trainer={"epochs": 3, "log_every": 4})
    cfg["tracking"] = {"mlflow": uri, "experiment": "luban-test"}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    run = luban.train(cfg, quiet=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["luban-test"], output_format="list")
    assert len(found) == 1
    data = found[0].data
    m = json.loads((run / "metrics.json").read_text())
    assert data.metrics["final_test_rmse"] == pytest.approx(m["test"]["rmse"])
    history = mlflow.MlflowClient().get_metric_history(found[0].info.run_id, "val_rmse")
    assert [h.step for h in history] == [1, 2, 3]
    steps = mlflow.MlflowClient().get_metric_history(found[0].info.run_id, "step_train_loss")  # as logging_steps
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])["step"]
    assert [h.step for h in steps] == list(range(4, last + 1, 4)) and all(h.value > 0 for h in steps)
    assert data.params["trainer.epochs"] == "3"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(found[0].info.run_id)}
    assert {"report.html", "metrics.json", "model"} <= artifacts


@pytest.mark.slow
def test_two_ray_workers_train_a_tiny_model(zh_data, out_dir):
    pytest.importorskip("ray")
    cfg = text_config(out_dir, "ray2", zh_data["train"], trainer={"distributed": {"backend": "ray", "workers": 2}})
    run = luban.train(cfg, quiet=True)
    single = luban.train(text_config(out_dir, "single", zh_data["train"]), quiet=True)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert a["epochs_run"] == b["epochs_run"] and abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 0.05
    assert luban.load(run).predict(["这个手机很好"])[0]["label"] in ("positive", "negative")
    assert not list(run.glob(".rank*"))


@pytest.mark.slow
def test_ray_tune_trials_share_the_study_and_start_from_the_config(tmp_path, linear_data):
    pytest.importorskip("ray")
    import optuna

    from luban.lifecycle.tune import tune

    space = {"trainer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}}
    out = tune(tune_config(tmp_path, linear_data, space, sampler="tpe", pruner="none"), trials=3, backend="ray",
               quiet=True)
    study = optuna.load_study(study_name="lin", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and done[0].params["trainer.lr"] == 0.01  # trial 0 = the config's own lr
    assert all(Path(t.user_attrs["run_dir"]).is_dir() and t.user_attrs["best_epoch"] >= 1 for t in done)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] == 3 and "test_rmse" in summary["best_user_attrs"] and (out / "best.yaml").is_file()


@pytest.mark.slow
def test_ray_batch_predict_keeps_order_and_matches_predict(zh_data, out_dir, tmp_path):
    pytest.importorskip("ray")
    import pandas as pd

    from luban.lifecycle.batch_predict import ray_predict

    run = luban.train(text_config(out_dir, "zh", zh_data["train"]), quiet=True)
    texts = [f"{a}{b}" for a in ("这个手机", "那个酒店", "我的电影", "他们的餐厅") for b in ("很好", "真差", "一般")] * 25
    texts[100] = "\u3000\u3000"  # a whitespace-only row: an error row in its place, not a dropped row
    pd.DataFrame({"text": texts, "id": [f"r{i}" for i in range(len(texts))]}).to_parquet(tmp_path / "big.parquet")
    s = ray_predict(run, tmp_path / "big.parquet", tmp_path / "out.jsonl", workers=2, batch_size=64,
                    id_column="id")
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert s.rows == len(texts) == len(got) and s.errors == 1
    assert [g["id"] for g in got] == [f"r{i}" for i in range(len(texts))]
    assert got[100] == {"id": "r100", "error": "empty text"}
    del texts[100], got[100]
    expected = luban.load(run).predict(texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected]  # row order preserved
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_quiet_tune_still_counts_its_trials(tmp_path, linear_data, capsys):
    """tune(quiet=True) prints no per-trial line, but its progress stage counts the trials (a quiet run once showed
    "0/20 trials" for eleven minutes while every trial finished)."""
    from luban.lifecycle import tune as tune_module

    seen = []
    real = tune_module._trial_line

    class Spy(real):
        def close(self):
            seen.append(self.stage.done)
            super().close()

    tune_module._trial_line = Spy
    try:
        tune_module.tune(tune_config(tmp_path, linear_data, LR_GRID), trials=2, quiet=True)
    finally:
        tune_module._trial_line = real
    assert seen == [2]
    assert "trial 0 (" not in capsys.readouterr().out
