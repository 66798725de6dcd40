"""The Python API as the ecosystem uses it: luban.train(config, data=DataFrame), quiet=True, and a Predictor that is
called like a pipeline, has predict_proba / labels for classifiers and a readable repr."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pandas as pd
import pytest

import luban
from luban.data.readers import read_table
from luban.errors import ConfigError, DataError, LubanError

from conftest import assert_no_run, tabular_config, text_config, zh_sentences


def _text_cfg(out_dir, name, **extra):
    cfg = text_config(out_dir, name, "unused.csv", **extra)
    del cfg["data"]["train"]  # the data comes from data=
    return cfg


@pytest.fixture(scope="module")
def zh_frames():
    rows = zh_sentences(130, seed=5)
    return {"train": pd.DataFrame(rows[:200], columns=["text", "label"]),
            "test": pd.DataFrame(rows[200:260], columns=["text", "label"])}


@pytest.fixture(scope="module")
def frame_run(zh_frames, tmp_path_factory):
    """A text run trained from DataFrames: train + test frames, validation split off train per data.split."""
    out = tmp_path_factory.mktemp("api") / "runs"
    run = luban.train(_text_cfg(out, "frames"), data={"train": zh_frames["train"], "test": zh_frames["test"]},
                      quiet=True)
    return run


def test_train_on_dataframes_reads_them_like_files(frame_run, zh_frames):
    m = json.loads((frame_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["accuracy"] >= 0.9  # 好/差 decides the label: the frames were read with their labels
    sources = json.dumps(m["data"], ensure_ascii=False)
    assert "train DataFrame" in sources and "test DataFrame" in sources
    # the saved config names the stand-ins; re-running it asks for the frames instead of "file not found"
    saved = (frame_run / "config.yaml").read_text(encoding="utf-8")
    assert "train DataFrame" in saved and "test DataFrame" in saved
    with pytest.raises(DataError, match=r"train DataFrame: this run was trained on an in-memory DataFrame"):
        read_table("train DataFrame")


def test_same_frames_same_metrics_as_the_same_file(zh_frames, tmp_path):
    """A DataFrame and the CSV holding the same rows give the same model (same seed -> same metrics)."""
    train_csv = tmp_path / "train.csv"
    zh_frames["train"].to_csv(train_csv, index=False)
    a = luban.train(_text_cfg(tmp_path / "runs", "df", trainer={"epochs": 1}), data=zh_frames["train"], quiet=True)
    b = luban.train(_text_cfg(tmp_path / "runs", "csv", trainer={"epochs": 1}), data=str(train_csv), quiet=True)
    ma, mb = (json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in (a, b))
    assert ma["test"]["accuracy"] == mb["test"]["accuracy"]
    assert ma["validation"]["accuracy"] == mb["validation"]["accuracy"]


def test_dataframe_errors_name_the_frame_row_and_field(zh_frames, tmp_path):
    bad = zh_frames["test"].copy()
    bad.loc[7, "text"] = "   "
    cfg = _text_cfg(tmp_path / "runs", "bad", data={"clean": {"drop_empty": False}})
    with pytest.raises(DataError, match=r"^test DataFrame row 7: field 'text': empty text"):
        luban.train(cfg, data={"train": zh_frames["train"], "test": bad}, quiet=True)
    with pytest.raises(DataError, match=r"train DataFrame: data.columns.text: column 'text' not found; "
                                        r"columns are: sentence, label"):
        luban.train(cfg, data=zh_frames["train"].rename(columns={"text": "sentence"}), quiet=True)
    with pytest.raises(DataError, match=r"train DataFrame: no data rows"):
        luban.train(cfg, data=zh_frames["train"].iloc[:0], quiet=True)
    with pytest.raises(ConfigError, match=r"unknown split 'dev'"):
        luban.train(cfg, data={"train": zh_frames["train"], "dev": zh_frames["test"]}, quiet=True)
    with pytest.raises(ConfigError, match=r"give the training data"):
        luban.train(cfg, data={"test": zh_frames["test"]}, quiet=True)
    assert_no_run(tmp_path / "runs", "bad")


def test_tabular_dataframe_with_numbers_and_missing_cells(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "city": rng.choice(["bj", "sh"], 240),
                       "y": np.where(x[:, 0] + x[:, 1] > 0, "up", "down")})
    df.loc[3, "b"] = np.nan  # imputed, as an empty cell of a file is
    df.index = df.index + 1000  # the frame's own index does not matter: rows are positions
    cfg = tabular_config(tmp_path / "runs", "tab", "tabular_classification",
                         {"columns": {"label": "y", "categorical": ["city"]}, "split": {"validation": 0.2,
                                                                                        "test": 0.2}})
    run = luban.train(cfg, data=df, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["accuracy"] >= 0.85
    p = luban.load(run)
    assert p.labels == ["down", "up"]  # tabular classifiers report their classes too
    proba = p.predict_proba(df.drop(columns="y").iloc[:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    bad = df.copy()
    bad["a"] = bad["a"].astype(object)
    bad.iloc[10, 0] = "many"
    with pytest.raises(DataError, match=r"^train DataFrame row 10: field 'a'"):
        luban.train(cfg, ["output.name=tab_bad"], data=bad, quiet=True)  # (tab exists: refused before reading)


def test_recommendation_reads_an_interactions_frame(tmp_path):
    rows = [(f"u{u}", f"i{(u * 7 + t) % 25}", 1000 + t) for u in range(30) for t in range(6)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    cfg = {"task": "recommendation", "seed": 0, "model": {"type": "popularity"},
           "recommendation": {"k": 5, "ks": [5]}, "trainer": {"num_threads": 1, "device": "cpu"},
           "output": {"dir": str(tmp_path / "runs"), "name": "rec", "tensorboard": False}}
    run = luban.train(cfg, data=df, quiet=True)
    rec = luban.load(run).recommend("u1", k=3)
    assert rec["strategy"] == "model" and len(rec["items"]) == 3
    df.loc[4, "user_id"] = None
    with pytest.raises(DataError, match=r"^train DataFrame row 4: field 'user_id': missing user id"):
        luban.train(cfg, ["output.name=rec_bad"], data=df, quiet=True)


def test_quiet_prints_nothing(zh_frames, tmp_path, capfd):
    cfg = _text_cfg(tmp_path / "runs", "quiet", trainer={"epochs": 2, "log_every": 1},
                    evaluation={"baseline": True})
    luban.train(cfg, data=zh_frames["train"], quiet=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    # the streams are back afterwards, and a loud run does print
    luban.train(cfg, data=zh_frames["train"], overrides=["output.overwrite=true"])
    out, err = capfd.readouterr()
    assert "quiet" in out + err


def test_quiet_mutes_only_its_own_thread(zh_frames, tmp_path, capfd):
    """A quiet training on a worker thread (as tune --jobs runs trials) leaves the main thread's output alone."""
    done = threading.Event()

    def work():
        luban.train(_text_cfg(tmp_path / "runs", "bg", trainer={"epochs": 1}), data=zh_frames["train"], quiet=True)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        print("main thread still talks", flush=True)
        done.wait(0.2)
    t.join()
    print("after", file=sys.stderr)
    out, err = capfd.readouterr()
    assert "main thread still talks" in out and err == "after\n"
    assert sys.stdout.__class__.__name__ != "_Gate" and sys.stderr.__class__.__name__ != "_Gate"


def test_predictor_call_proba_labels_repr(frame_run):
    p = luban.load(frame_run)
    texts = ["这个手机很好", "那个房间真差了"]
    assert p(texts) == p.predict(texts)
    assert p(texts, top_k=1) == p.predict(texts, top_k=1)
    assert p.labels == ["negative", "positive"]
    proba = p.predict_proba(texts)
    assert isinstance(proba, np.ndarray) and proba.shape == (2, 2)
    for row, pred in zip(proba, p.predict(texts), strict=True):
        assert np.isclose(row.sum(), 1.0, atol=1e-5)
        assert p.labels[int(row.argmax())] == pred["label"]
        assert row.tolist() == [pred["probabilities"][c] for c in p.labels]
    assert proba[0].argmax() == 1 and proba[1].argmax() == 0
    r = repr(p)
    for part in ("task='text_classification'", "model='textcnn'", "labels=['negative', 'positive']",
                 "backend='torch'", str(frame_run)):
        assert part in r


def test_predict_proba_refused_without_classes(tmp_path):
    cfg = tabular_config(tmp_path / "runs", "reg", "tabular_regression", {"builtin": "diabetes"},
                         trainer={"epochs": 1})
    p = luban.load(luban.train(cfg, quiet=True))
    assert p.labels is None and "labels=" not in repr(p)
    with pytest.raises(LubanError, match="tabular_regression has no class probabilities; use predict"):
        p.predict_proba([{"age": 0.0}])


def test_readme_snippet_yaml_config_with_a_dataframe(zh_frames, tmp_path):
    """The README's quickstart in Python: the demo's YAML (a built-in dataset) trained on a DataFrame instead."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "examples" / "demo_zh_sentiment.yaml"
    df = zh_frames["train"].rename(columns={"text": "review"})
    run = luban.train(demo, data=df, quiet=True,
                      overrides=["data.columns.text=review", "data.columns.label=label", "trainer.epochs=1",
                                 f"output.dir={tmp_path / 'runs'}", "evaluation.baseline=false"])
    assert run.name == "demo_zh_sentiment"
    clf = luban.load(run)
    assert clf.labels == ["negative", "positive"]
    assert clf.predict_proba(["这个手机很好"]).shape == (1, 2)


def test_token_classification_reads_list_cells_of_a_frame(tmp_path):
    from test_token_classification import ner_config, ner_rows

    df = pd.DataFrame(ner_rows(120, 0))  # tokens: a list per cell, tags: a space-separated string
    cfg = ner_config(tmp_path / "runs", "ner", "unused.jsonl", trainer={"epochs": 1}, evaluation={"baseline": False})
    run = luban.train(cfg, data=df, quiet=True)
    out = luban.load(run).predict([{"tokens": ["jordan", "flew", "to", "paris"]}])
    assert len(out[0]["tags"]) == 4
    df.at[5, "tags"] = "O"  # one tag for several tokens
    with pytest.raises(DataError, match=r"^train DataFrame row 5: field 'tags'"):
        luban.train(cfg, ["output.name=tags_bad"], data=df, quiet=True)


def test_load_returns_the_task_predictor_itself(frame_run):
    """luban.load gives the task's own predictor: its capabilities hold with isinstance on it, and it carries the
    public API (luban.Predictor is its base)."""
    from luban.capabilities import Evaluates, GeneratesText, Predicts, TaskPredictor
    from luban.tasks.text_classification import TextClassificationPredictor

    p = luban.load(frame_run)
    assert type(p) is TextClassificationPredictor and isinstance(p, luban.Predictor)
    assert luban.Predictor is TaskPredictor and p.task_predictor is p
    assert isinstance(p, Predicts) and isinstance(p, Evaluates) and not isinstance(p, GeneratesText)
    assert str(p.run_dir) == str(frame_run) and p.config is p.cfg and p.task == "text_classification"
    with pytest.raises(LubanError, match="does not generate text"):
        p.generate_text("hi")
    assert p.default_max_new_tokens() is None and p.context_length() is None and not p.chat_tools()
