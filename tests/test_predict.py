"""A finished run directory round-trips: Python predict, CLI predict/evaluate, evaluate == metrics.json."""

import json

import pytest

import luban
from luban.cli import main
from luban.errors import DataError, RunError

from conftest import write_csv, write_jsonl


def test_predict_returns_label_and_probabilities(trained_text_run):
    p = luban.load(trained_text_run["run"])
    assert p.task == "text_classification"
    out = p.predict(["这个手机非常好", "那个酒店真差啊", "  今天的 服务   特别好  "])
    assert [r["label"] for r in out] == ["positive", "negative", "positive"]
    for r in out:
        assert set(r["probabilities"]) == {"negative", "positive"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == max(r["probabilities"].values())
        assert r["score"] > 0.5
    assert p.predict("房间很好")[0]["label"] == "positive"  # a bare string is one input
    assert p.predict([]) == []


def test_predict_top_k_and_bad_inputs(trained_text_run):
    p = luban.load(trained_text_run["run"])
    assert len(p.predict(["质量很好"], top_k=1)[0]["probabilities"]) == 1
    with pytest.raises(DataError, match="input 2: empty text"):
        p.predict(["很好", "   "])
    with pytest.raises(DataError, match="input 1: expected text"):
        p.predict([3])


def test_predict_file(trained_text_run, tmp_path):
    p = luban.load(trained_text_run["run"])
    f = write_csv(tmp_path / "inputs.csv", [["我的电脑十分好"], ["这个快递很差"]], header=("text",))
    assert [r["label"] for r in p.predict_file(f)] == ["positive", "negative"]


def test_predictions_match_training_metrics(trained_text_run):
    """evaluate() on the test file gives exactly the test metrics written at training time."""
    m = luban.load(trained_text_run["run"]).evaluate(trained_text_run["test"])
    saved = trained_text_run["metrics"]["test"]
    for k in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert m[k] == saved[k], k
    assert m["confusion_matrix"] == saved["confusion_matrix"]
    assert saved["accuracy"] >= 0.9


def test_cli_predict_text(trained_text_run, capsys):
    assert main(["predict", str(trained_text_run["run"]), "--text", "这个手机非常好", "--text", "房间真差"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in lines] == ["positive", "negative"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in lines)


def test_cli_predict_input_file_to_output(trained_text_run, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "价格非常好"}, {"text": "那个屏幕特别差呢"},
                                              {"text": "他们的餐厅挺好"}])
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(trained_text_run["run"]), "--input", str(inp), "--output", str(out)]) == 0
    assert "wrote 3 predictions" in capsys.readouterr().err
    rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative", "positive"]


def test_cli_predict_needs_input(trained_text_run, capsys):
    assert main(["predict", str(trained_text_run["run"])]) == 2
    assert capsys.readouterr().err.startswith("error: predict: give --text")


def test_cli_evaluate_matches_metrics_json(trained_text_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_text_run["run"]), "--data", str(trained_text_run["test"]),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "per class:" in printed
    m = json.loads(out.read_text(encoding="utf-8"))
    assert m["accuracy"] == trained_text_run["metrics"]["test"]["accuracy"]
    assert m["per_class"]["positive"]["support"] + m["per_class"]["negative"]["support"] == 60


def test_load_missing_or_unfinished_run(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        luban.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("task: x\n")
    with pytest.raises(RunError, match="metrics.json is missing"):
        luban.load(tmp_path / "half")
    (tmp_path / "cut.partial").mkdir()
    with pytest.raises(RunError, match="did not finish"):
        luban.load(tmp_path / "cut")


def test_existing_run_is_not_overwritten(trained_text_run):
    import yaml

    run = trained_text_run["run"]
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    before = (run / "metrics.json").read_text(encoding="utf-8")
    with pytest.raises(RunError, match="already exists"):
        luban.train(cfg, quiet=True)
    assert (run / "metrics.json").read_text(encoding="utf-8") == before
    assert not run.with_name(run.name + ".partial").exists()


def test_tabular_cli_predict_and_evaluate(out_dir, tmp_path, capsys):
    from conftest import tabular_config

    rows = [[str(a), str(b), "big" if a + b > 10 else "small"] for a in range(11) for b in range(11)]
    train = write_csv(tmp_path / "t.csv", rows, header=("a", "b", "size"))
    run = luban.train(tabular_config(out_dir, "tab", "tabular_classification",
                                     {"train": str(train), "columns": {"label": "size"}},
                                     trainer={"epochs": 40, "batch_size": 16}), quiet=True)
    inp = write_csv(tmp_path / "in.csv", [["0", "1"], ["10", "9"]], header=("a", "b"))
    assert main(["predict", str(run), "--input", str(inp)]) == 0
    preds = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in preds] == ["small", "big"]
    assert main(["evaluate", str(run), "--data", str(train)]) == 0
    assert "accuracy" in capsys.readouterr().out
    m = luban.load(run).evaluate(train)
    assert m["accuracy"] >= 0.85


def test_predict_file_with_empty_text_names_file_and_line(trained_text_run, tmp_path):
    from luban.errors import DataError

    bad = tmp_path / "inputs.csv"
    bad.write_text("text,label\n这个手机非常好,positive\n   ,negative\n", encoding="utf-8")
    p = luban.load(trained_text_run["run"])
    with pytest.raises(DataError, match=r"inputs.csv: line 3: field 'text': empty text"):
        p.predict_file(bad, on_error="fail")
    rows = p.predict_file(bad)  # the default: an error row in its place
    assert rows[1] == {"row": 1, "error": "empty text"} and rows[0]["row"] == 0 and len(rows) == 2
