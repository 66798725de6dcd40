"""No silent minute: log lines off a terminal at the trainer.log_every cadence, mid-epoch evaluation
(trainer.eval_steps), validation loss in history, the closing line's time breakdown, progress stages, and an export
whose parity sample is a bounded read (not the whole training set)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from conftest import tabular_config, text_config, write_csv

import luban
from luban.training import progress as P


def _history(run):
    return [json.loads(l) for l in (run / "history.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]


@pytest.fixture
def lin_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + rng.normal(scale=0.1, size=200)
    rows = [[f"{a:.5f}", f"{b:.5f}", f"{t:.5f}"] for (a, b), t in zip(x, y, strict=True)]
    return write_csv(tmp_path / "lin.csv", rows, header=("x1", "x2", "y"))


STEP_LINE = re.compile(r"^train: (\d+)/(\d+) batches \(\d+%\)  epoch (\d+)/(\d+)  step (\d+)  loss ([\d.]+)  "
                       r"lr ([\d.e+-]+)  (\d+) samples/s  elapsed \S+  ETA \S+$")


def test_log_lines_off_a_terminal_every_log_every_steps(zh_data, out_dir, capsys, monkeypatch):
    monkeypatch.setenv("LUBAN_LOG_SECONDS", "0")  # by steps only: the test must not depend on the clock
    cfg = text_config(out_dir, "logs", zh_data["train"], trainer={"log_every": 3, "epochs": 2},
                      output={"tensorboard": True})
    run = luban.train(cfg)  # (quiet=True prints nothing at all)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("train: ")]
    steps = [int(STEP_LINE.match(l).group(5)) for l in lines if STEP_LINE.match(l)]
    assert steps and steps == list(range(3, steps[-1] + 1, 3)), lines  # every 3rd optimizer step, each once
    total = _history(run)[-1]["step"]
    assert steps[-1] > total - 3
    m = STEP_LINE.match(lines[0])
    assert float(m.group(6)) > 0 and float(m.group(7)) > 0  # loss and lr
    assert any(l.startswith("train: done") for l in err.splitlines())
    assert re.search(r"^epoch 1: train_loss [\d.]+  val_loss [\d.]+  val_accuracy", err, re.M)
    # TensorBoard gets the step-level train loss and lr at the same cadence (HF Trainer's logging_steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "events")).Reload()
    assert [e.step for e in events.Scalars("step/train_loss")] == steps
    assert [e.step for e in events.Scalars("step/lr")] == steps
    assert all(e.value > 0 for e in events.Scalars("step/train_loss"))


def test_eval_steps_evaluates_mid_epoch_and_keeps_the_best(zh_data, out_dir, capsys):
    # 200 rows - 10% validation - 10% test ~ 160 training rows: 10 steps of 16 per epoch, evaluated every 4
    cfg = text_config(out_dir, "evsteps", zh_data["train"], trainer={"eval_steps": 4, "epochs": 2})
    run = luban.train(cfg)  # (quiet=True prints nothing at all)
    hist = _history(run)
    partial = [h for h in hist if h.get("partial")]
    full = [h for h in hist if not h.get("partial")]
    assert [h["epoch"] for h in full] == [1, 2]
    assert partial and all(h["step"] % 4 == 0 for h in partial)
    assert all(0 < h["epoch"] < 2 and h["epoch"] != int(h["epoch"]) for h in partial)
    assert all("val_accuracy" in h and "val_loss" in h for h in hist)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    best = max(hist, key=lambda h: h["val_accuracy"])
    assert m["best_epoch"] == hist[[h["val_accuracy"] for h in hist].index(best["val_accuracy"])]["epoch"]
    assert "(step " in capsys.readouterr().err  # the mid-epoch evaluation's line


def test_val_loss_recorded_for_text_and_tabular(zh_data, out_dir, lin_csv):
    run = luban.train(text_config(out_dir, "vl_text", zh_data["train"]), quiet=True)
    hist = _history(run)
    assert all(h["val_loss"] > 0 and h["train_loss"] > 0 for h in hist)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]  # it learns: the held-out loss falls

    for task, data in (("tabular_regression", {"train": str(lin_csv), "columns": {"label": "y"}}),):
        run = luban.train(tabular_config(out_dir, "vl_tab", task, data, trainer={"epochs": 5}), quiet=True)
        hist = _history(run)
        assert all(isinstance(h["val_loss"], float) for h in hist)
        assert hist[-1]["val_loss"] < hist[0]["val_loss"]


def test_closing_line_and_timings_break_down_the_wall_time(zh_data, out_dir, capsys):
    cfg = text_config(out_dir, "timed", zh_data["train"], evaluation={"baseline": True})
    run = luban.train(cfg)
    out = capsys.readouterr().out
    t = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["timings"]
    steps = ("setup_seconds", "prepare_seconds", "fit_seconds", "evaluation_seconds", "baseline_seconds",
             "saving_seconds")
    for k in (*steps, "total_seconds", "samples_per_second"):
        assert t[k] >= 0, k
    assert t["throughput_unit"] == "samples"
    parts = sum(t[k] for k in steps)
    # each figure is rounded to 1 ms: six of them may add up to 3 ms over the (rounded) total
    assert t["total_seconds"] - 0.5 < parts <= t["total_seconds"] + 0.004 and t["baseline_seconds"] > 0
    line = [l for l in out.splitlines() if l.startswith("done in ")][0]
    for word in ("setup", "prepare", "fit", "(best epoch", "evaluation", "baseline", "saving", "samples/s",
                 "report.html"):
        assert word in line, (word, line)


def test_stage_lines_count_rate_eta_and_a_heartbeat(monkeypatch, capsys):
    monkeypatch.setenv("LUBAN_PROGRESS", "lines")
    with P.stage("featurize", total=10, unit="rows", log_every=5, log_seconds=0) as st:
        for _ in range(10):
            st.advance()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("featurize: 5/10 rows (50%)") and "rows/s" in err[0] and "ETA" in err[0]
    assert err[1].startswith("featurize: 10/10 rows (100%)")
    assert err[2].startswith("featurize: done, 10 rows in ")
    # a step that makes no visible progress (one long scikit-learn fit) still says it is alive
    with P.stage("baseline", log_seconds=0.2):
        time.sleep(0.9)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("baseline: running  elapsed ") and len(err) >= 3
    assert err[-1].startswith("baseline: done in ")
    with P.silent():  # tune trials: nothing at all
        list(P.track(range(5), "quiet", log_every=1))
    assert capsys.readouterr().err == ""


def test_export_parity_reads_a_bounded_sample_not_the_training_set(zh_data, out_dir, capsys):
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_run
    from luban.data.readers import read_table
    from luban.errors import DataError

    run = luban.train(text_config(out_dir, "exp", zh_data["train"]), quiet=True)  # validation/test carved out
    # the training file grows a malformed tail after training: reading it whole (what export did to draw 128
    # parity rows: read, clean and split the whole training set again) now fails; a bounded read does not
    train = zh_data["train"]
    with open(train, "a", encoding="utf-8") as f:
        f.write("这个手机很好,positive,extra,fields\n" * 5000 + '"unterminated,negative\n')
    with pytest.raises(DataError):
        read_table(train)
    meta = export_run(run, "onnx", samples=64)
    p = meta["parity"]
    assert p["split"] == "train" and p["rows"] == 64 and p["max_abs_diff"] < 1e-4 and p["batches"] >= 4
    assert "parity on 64 train rows" in capsys.readouterr().out
    assert luban.load(run).backend == "onnx"
    assert luban.load(run).predict(["这个手机非常好"])[0]["label"] in ("positive", "negative")


def test_export_parity_prefers_the_validation_file(zh_data, out_dir, lin_csv, tmp_path):
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_run

    rows = lin_csv.read_text(encoding="utf-8").splitlines()
    val = tmp_path / "val.csv"
    val.write_text("\n".join(rows[:41]) + "\n", encoding="utf-8")  # header + 40 rows
    cfg = tabular_config(out_dir, "exp_tab", "tabular_regression",
                         {"train": str(lin_csv), "validation": str(val), "columns": {"label": "y"}},
                         trainer={"epochs": 2})
    run = luban.train(cfg, quiet=True)
    meta = export_run(run, "onnx", quiet=True)
    assert meta["parity"]["split"] == "validation" and meta["parity"]["rows"] == 40
    assert meta["parity"]["max_abs_diff"] < 1e-4


def test_tune_and_cv_say_trial_and_fold_progress(tmp_path, lin_csv, capsys):
    pytest.importorskip("optuna")
    import yaml

    from luban.lifecycle.cv import cross_validate
    from luban.lifecycle.tune import tune

    cfg = tabular_config(tmp_path / "runs", "lin", "tabular_regression",
                         {"train": str(lin_csv), "columns": {"label": "y"}}, trainer={"epochs": 2})
    cfg["search"] = {"space": {"trainer.lr": {"type": "choice", "values": [1e-4, 0.03]}}, "sampler": "grid",
                     "pruner": "none"}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    tune(path, trials=2)
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("trial ")]
    assert len(lines) == 2, out
    assert re.match(r"trial \d \(1/2\): complete val_rmse [\d.]+  \[.*\]; best [\d.]+ \(trial \d\)  elapsed \S+  "
                    r"ETA \S+$", lines[0]), lines[0]
    assert "(2/2)" in lines[1] and lines[1].endswith("ETA 0.0s")

    cross_validate(path, folds=3)
    out = capsys.readouterr().out
    done = [l for l in out.splitlines() if re.match(r"fold \d/3 done: ", l)]
    assert len(done) == 3 and all(re.search(r"test rmse [\d.]+  elapsed \S+  ETA \S+$", l) for l in done), out
    assert done[-1].endswith("ETA 0.0s")


def test_language_model_throughput_is_in_tokens(tmp_path, out_dir, capsys, monkeypatch):
    monkeypatch.setenv("LUBAN_LOG_SECONDS", "0")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 40, encoding="utf-8")
    cfg = {"task": "text_generation", "seed": 1, "data": {"train": str(corpus)},
           "preprocessing": {"tokenizer": {"type": "char"}},
           "model": {"type": "gpt", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
           "trainer": {"epochs": 1, "steps_per_epoch": 6, "batch_size": 4, "num_threads": 1, "precision": "fp32",
                       "log_every": 2},
           "generation": {"sample_tokens": 0}, "evaluation": {"baseline": False},
           "output": {"dir": str(out_dir), "name": "lm", "tensorboard": False}}
    run = luban.train(cfg)
    cap = capsys.readouterr()
    t = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["timings"]
    assert t["throughput_unit"] == "tokens" and t["tokens_per_second"] > 0 and "samples_per_second" not in t
    h = _history(run)[-1]
    assert h["tokens_per_s"] > 0 and "samples_per_s" not in h and h["val_loss"] > 0
    assert re.search(r"^train: 2/6 batches .* \d+ tokens/s  elapsed", cap.err, re.M), cap.err
    assert re.search(r"^epoch 1: train_loss [\d.]+  val_loss.* \d+ tokens/s", cap.err, re.M)
    assert "tokens/s" in [l for l in cap.out.splitlines() if l.startswith("done in ")][0]
