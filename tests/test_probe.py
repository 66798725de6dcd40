"""The bad-input and fault probe of issue 17 (section 7), kept as tests: nothing is lost (interrupted runs,
checkpoint commits and overwrite swaps killed half-way), nothing escapes as a traceback, nothing is accepted
silently. Kill simulations build the intermediate directory states by hand and check the recovery."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import luban
from luban.cli import main
from luban.config import validate
from luban.errors import ConfigError, DataError, LubanError, RunError, TrainingDiverged
from luban.rundir import RunDir, check_finished
from luban.training import checkpoint

from conftest import assert_no_run, tabular_config, text_config, write_csv, zh_sentences
from test_bad_input import train_fails
from test_resume import interrupt_after_epoch


def metrics(run):
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def interrupted(cfg, monkeypatch, after_epoch: int = 1):
    """Train `cfg` until the checkpoint of `after_epoch` is written, then stop it as Ctrl-C would."""
    with monkeypatch.context() as mp:
        interrupt_after_epoch(mp, after_epoch)
        with pytest.raises(KeyboardInterrupt):
            luban.train(cfg, quiet=True)
    partial = Path(cfg["output"]["dir"]) / (cfg["output"]["name"] + ".partial")
    assert (partial / "checkpoints" / "last").is_dir()
    return partial


def write_config(path, cfg):
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str))), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- data loss


def test_rerun_refuses_to_delete_an_interrupted_run_until_told(out_dir, zh_data, monkeypatch, tmp_path, capsys):
    cfg = text_config(out_dir, "cut", zh_data["train"], trainer={"epochs": 2})
    partial = interrupted(cfg, monkeypatch)
    before = sorted(p.name for p in (partial / "checkpoints").iterdir())

    with pytest.raises(RunError, match="interrupted run") as e:
        luban.train(cfg, quiet=True)
    assert "--resume" in str(e.value) and "--restart" in str(e.value) and "1 epoch" in str(e.value)
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == before  # nothing deleted

    path = write_config(tmp_path / "cut.yaml", cfg)
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--restart" in err and "Traceback" not in err
    assert (partial / "checkpoints" / "last").is_dir()
    assert main(["train", str(path), "--resume", "--restart"]) == 2
    assert "exclude each other" in capsys.readouterr().err

    assert main(["train", str(path), "--restart"]) == 0  # discards the interrupted run explicitly
    run = out_dir / "cut"
    assert not partial.exists() and metrics(run)["epochs_run"] == 2
    assert not (run / "checkpoints").exists()  # output.keep_checkpoints is off: the kept weights are in model/
    assert (run / "model" / "model.safetensors").is_file()


def test_restart_in_python_and_keep_checkpoints(out_dir, zh_data, monkeypatch):
    cfg = text_config(out_dir, "keep", zh_data["train"], trainer={"epochs": 2},
                      output={"keep_checkpoints": True})
    interrupted(cfg, monkeypatch)
    run = luban.train(cfg, restart=True, quiet=True)
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last" / "state.pt").is_file()
    assert luban.load(run).predict(["这个手机很好"])[0]["label"] in ("positive", "negative")


def make_checkpoint(folder, tag: str, state: bool = True):
    folder.mkdir(parents=True)
    (folder / checkpoint.WEIGHTS).write_text(tag)
    if state:
        (folder / checkpoint.STATE).write_text(tag)
    return folder


def test_checkpoint_commit_killed_between_the_renames_is_recovered(tmp_path):
    last = tmp_path / "last"
    old, tmp = tmp_path / "last.old", tmp_path / "last.tmp"
    # killed after `last -> last.old`, before `last.tmp -> last`: the new checkpoint (tmp) is complete
    make_checkpoint(old, "epoch 1")
    make_checkpoint(tmp, "epoch 2")
    checkpoint.recover(last)
    assert (last / checkpoint.STATE).read_text() == "epoch 2" and not old.exists() and not tmp.exists()
    # the same, but tmp lacks a file: the previous checkpoint comes back
    shutil.rmtree(last)
    make_checkpoint(old, "epoch 1")
    make_checkpoint(tmp, "epoch 2", state=False)
    checkpoint.recover(last)
    assert (last / checkpoint.STATE).read_text() == "epoch 1" and not old.exists() and not tmp.exists()
    # killed while deleting last.old / while writing a new last.tmp: the committed checkpoint stays
    make_checkpoint(old, "epoch 0")
    make_checkpoint(tmp, "half", state=False)
    checkpoint.recover(last)
    assert (last / checkpoint.STATE).read_text() == "epoch 1" and not old.exists() and not tmp.exists()
    # a first checkpoint still being written: no checkpoint
    first = tmp_path / "best"
    make_checkpoint(tmp_path / "best.tmp", "half", state=False)
    checkpoint.recover(first)
    assert not first.exists() and not (tmp_path / "best.tmp").exists()


def test_resume_after_a_kill_mid_commit(out_dir, zh_data, monkeypatch):
    cfg = text_config(out_dir, "mid", zh_data["train"], trainer={"epochs": 2})
    partial = interrupted(cfg, monkeypatch)
    last = partial / "checkpoints" / "last"
    shutil.copytree(last, last.with_name("last.tmp"))  # the state a kill between the two renames leaves
    os.replace(last, last.with_name("last.old"))
    best = partial / "checkpoints" / "best"
    os.replace(best, best.with_name("best.old"))  # killed between the renames of the best weights: no tmp yet
    run = luban.train(cfg, resume=True, quiet=True)
    m = metrics(run)
    assert m["epochs_run"] == 2 and 1 <= m["best_epoch"] <= 2


def fake_run(folder, tag: str, finished: bool = True):
    folder.mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "config.yaml").write_text(tag)
    if finished:
        (folder / "metrics.json").write_text(tag)
    return folder


def test_overwrite_swap_keeps_the_old_run_until_the_new_one_is_in_place(tmp_path):
    rd = RunDir(tmp_path, "r")
    fake_run(rd.final, "old")
    work = rd.start(overwrite=True, resume=False)
    (work / "config.yaml").write_text("new")
    (work / "metrics.json").write_text("new")
    (work / "model").mkdir()
    assert rd.finish() == rd.final and (rd.final / "config.yaml").read_text() == "new"
    assert not rd.replaced.exists() and not rd.work.exists()


def test_overwrite_swap_killed_after_moving_the_old_run_aside(tmp_path):
    rd = RunDir(tmp_path, "r")
    # killed after `r -> r.replaced`, before `r.partial -> r`, the new run finished: the swap completes
    fake_run(rd.replaced, "old")
    fake_run(rd.work, "new")
    assert (check_finished(rd.final) / "config.yaml").read_text() == "new"
    assert not rd.replaced.exists() and not rd.work.exists()
    # the same with an unfinished new run: the old run is put back
    shutil.rmtree(rd.final)
    fake_run(rd.replaced, "old")
    fake_run(rd.work, "new", finished=False)
    with pytest.raises(RunError, match="already exists"):
        RunDir(tmp_path, "r").start(overwrite=False, resume=False)
    assert (rd.final / "config.yaml").read_text() == "old" and not rd.replaced.exists()
    # killed after `r.partial -> r`, while deleting r.replaced: the new run stays, the old one goes
    shutil.rmtree(rd.work)
    fake_run(rd.replaced, "older")
    RunDir(tmp_path, "r").start(overwrite=True, resume=False)
    assert (rd.final / "config.yaml").read_text() == "old" and not rd.replaced.exists()


def test_a_partial_without_checkpoints_is_replaced_with_a_note(tmp_path, capsys):
    rd = RunDir(tmp_path, "r")
    rd.work.mkdir()
    (rd.work / "config.yaml").write_text("killed before the first epoch")
    assert rd.start(overwrite=False, resume=False) == rd.work and not (rd.work / "config.yaml").exists()
    assert "no checkpoint to resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- tracebacks


def test_split_fractions_summing_to_one_are_a_config_error(tmp_path, capsys):
    cfg = text_config(tmp_path, "s", tmp_path / "t.csv", data={"split": {"validation": 0.5, "test": 0.5}})
    with pytest.raises(ConfigError) as e:
        validate(cfg, "c.yaml")
    assert "data.split" in str(e.value) and "validation (0.5) + test (0.5)" in str(e.value)
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "Traceback" not in err


def test_inf_in_a_numeric_column_names_file_line_and_field(tmp_path, out_dir):
    rows = [(i, i * 0.5, "a" if i % 2 else "b") for i in range(40)]
    rows[6] = (6, "inf", "b")  # line 8 of the file
    f = write_csv(tmp_path / "t.csv", rows, header=("x", "y", "label"))
    msg = train_fails(tabular_config(out_dir, "inf", "tabular_classification",
                                     {"train": str(f), "columns": {"label": "label"}}), out_dir)
    assert str(f) in msg and "line 8" in msg and "field 'y'" in msg and "not a finite number" in msg
    numeric = [(i, i * 0.5, i * 2.0) for i in range(40)]
    numeric[6] = (6, 3.0, "1e999")
    g = write_csv(tmp_path / "r.csv", numeric, header=("x", "y", "target"))
    msg = train_fails(tabular_config(out_dir, "inf", "tabular_regression",
                                     {"train": str(g), "columns": {"label": "target"}}), out_dir)
    assert "line 8" in msg and "field 'target'" in msg and "not a finite number" in msg
    import numpy as np
    import pandas as pd

    from luban.data.interactions import parse_numbers

    with pytest.raises(DataError, match=r"r\.csv: line 3: field 'rating': rating '-inf' is not a finite number"):
        parse_numbers(pd.Series(["4", "-inf"]), np.array([2, 3]), "r.csv", "rating", "rating")


def test_a_diverging_loss_is_one_error_line_exit_2(tmp_path, out_dir, zh_data, monkeypatch, capsys):
    import torch

    from luban.tasks.text_classification import TextClassificationTask

    monkeypatch.setattr(TextClassificationTask, "loss",
                        lambda self, model, batch: torch.tensor(float("nan"), requires_grad=True))
    cfg = text_config(out_dir, "nan", zh_data["train"])
    with pytest.raises(TrainingDiverged) as e:
        luban.train(cfg, quiet=True)
    assert isinstance(e.value, LubanError) and isinstance(e.value, FloatingPointError)  # luban tune catches it
    msg = str(e.value)
    assert "epoch 1, batch 1" in msg and "trainer.lr" in msg and "trainer.grad_clip" in msg and "fp32" in msg
    assert_no_run(out_dir, "nan")
    assert main(["train", str(write_config(tmp_path / "nan.yaml", cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training diverged") and not any("Traceback" in ln for ln in err)


# ----------------------------------------------------------------------------------------------- silent acceptance


def missing_label_rows(tmp_path):
    rows = zh_sentences(40, seed=3)
    rows[2] = (rows[2][0], "NaN")  # line 4
    rows[5] = (rows[5][0], "null")
    rows[7] = (rows[7][0], "None")
    rows[9] = (rows[9][0], "")
    return write_csv(tmp_path / "labels.csv", rows)


def test_nan_null_none_labels_are_missing_labels_not_classes(tmp_path, out_dir):
    from luban.config import CleanConfig
    from luban.data.cleaning import clean_text_frame
    from luban.data.readers import read_table

    f = missing_label_rows(tmp_path)
    out, rep = clean_text_frame(read_table(f), "text", "label", CleanConfig())
    assert set(out["label"]) == {"positive", "negative"}
    assert rep.dropped["missing label"] == [4, 7, 9, 11]
    assert "dropped 4 missing label" in rep.summary()
    msg = train_fails(text_config(out_dir, "lab", f, data={"clean": {"drop_missing_label": False}}), out_dir)
    assert str(f) in msg and "line 4" in msg and "field 'label'" in msg and "'NaN'" in msg
    assert "data.clean.missing_labels" in msg
    kept, _ = clean_text_frame(read_table(f), "text", "label", CleanConfig(missing_labels=[]))
    assert {"NaN", "null", "None"} <= set(kept["label"])  # [] keeps them as classes on purpose


def test_tabular_label_null_is_dropped_with_a_count(tmp_path, out_dir, capsys):
    rows = [(i, (i * 7) % 11, "yes" if i % 3 else "no") for i in range(60)]
    rows[4] = (4, 1, "null")
    f = write_csv(tmp_path / "t.csv", rows, header=("x", "y", "label"))
    cfg = tabular_config(out_dir, "tab", "tabular_classification", {"train": str(f), "columns": {"label": "label"}},
                         trainer={"epochs": 1})
    run = luban.train(cfg)  # (quiet=True prints nothing at all)
    assert json.loads((run / "model" / "processor.json").read_text())["parts"]["labels"] == ["no", "yes"]
    assert "dropped 1 rows with a missing 'label'" in capsys.readouterr().err


def test_a_class_with_a_single_example_gets_a_warning(tmp_path, capsys):
    from luban.data.readers import read_table
    from luban.data.splits import make_splits

    rows = zh_sentences(20, seed=4) + [("这个屏幕一般", "neutral")]
    frame = read_table(write_csv(tmp_path / "one.csv", rows))
    splits = make_splits({"train": frame, "validation": None, "test": None}, 0.1, 0.1, 0, "label")
    assert sum(len(s) for s in splits.values()) == len(rows)
    err = capsys.readouterr().err
    assert "warning" in err and "'neutral'" in err and "single example" in err and "every split" in err
    make_splits({"train": read_table(write_csv(tmp_path / "ok.csv", rows[:-1])), "validation": None, "test": None},
                0.1, 0.1, 0, "label")
    assert "single example" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/tmp/x", "a\\b", "x.partial"])
def test_output_name_cannot_leave_output_dir(tmp_path, name):
    with pytest.raises(ConfigError, match="output.name"):
        validate(text_config(tmp_path, name, tmp_path / "t.csv"), "c.yaml")
    with pytest.raises(RunError, match="plain folder name"):
        RunDir(tmp_path, name if name != "x.partial" else "../y")


# ----------------------------------------------------------------------------------------------- smaller


def gbk_copy(src, dst):
    dst.write_bytes(src.read_text(encoding="utf-8").encode("gbk"))
    return dst


def test_evaluate_takes_set_for_the_file_encoding(trained_text_run, tmp_path, capsys):
    run, test = trained_text_run["run"], trained_text_run["test"]
    gbk = gbk_copy(test, tmp_path / "test_gbk.csv")
    assert main(["evaluate", str(run), "--data", str(gbk)]) == 2
    assert "data.encoding" in capsys.readouterr().err
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--data", str(gbk), "--set", "data.encoding=gbk", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(trained_text_run["metrics"]["test"]["accuracy"])
    assert main(["evaluate", str(run), "--data", str(gbk), "--set", "trainer.lr=1"]) == 2
    assert "data.* settings" in capsys.readouterr().err


def test_encoding_per_file(tmp_path, zh_data):
    from luban.tasks.base import read_frames

    gbk = gbk_copy(zh_data["test"], tmp_path / "test_gbk.csv")
    cfg = validate(text_config(tmp_path, "enc", zh_data["train"], data={"test": str(gbk),
                                                                       "encoding": {"test": "gbk"}}))
    frames = read_frames(cfg)
    assert frames["test"]["text"].tolist() == [t for t, _ in zh_data["rows"][200:260]]
    assert cfg.data.encoding_for(zh_data["train"]) == "utf-8" and cfg.data.encoding_for(gbk) == "gbk"
    with pytest.raises(ConfigError, match="data.encoding"):
        validate(text_config(tmp_path, "enc", zh_data["train"], data={"encoding": {"tset": "gbk"}}))


def test_csv_fields_longer_than_131072_characters(tmp_path):
    from luban.data.readers import read_table

    long = "很好" * 100_000  # 200,000 characters, above the csv module's default field limit
    f = write_csv(tmp_path / "long.csv", [(long, "positive"), ("差", "negative")])
    assert read_table(f)["text"][0] == long


def test_resumed_run_reports_the_whole_runs_time_and_throughput(out_dir, zh_data, monkeypatch):
    cfg = text_config(out_dir, "time", zh_data["train"], trainer={"epochs": 2})
    interrupted(cfg, monkeypatch, after_epoch=2)  # every epoch done before the interruption
    run = luban.train(cfg, resume=True, quiet=True)
    t = metrics(run)["timings"]
    epochs = [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines()]
    assert len(epochs) == 2
    trained = sum(e["epoch_seconds"] for e in epochs)
    assert t["train_seconds"] == pytest.approx(trained, abs=0.01)
    assert t["fit_seconds"] >= t["train_seconds"] > 0
    assert t["samples_per_second"] > 0
