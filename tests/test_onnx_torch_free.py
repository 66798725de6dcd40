"""`--backend onnx` without torch: a run exported to ONNX predicts from onnxruntime + NumPy and its saved
tokenizer / vocabulary / labels / preprocessor, in a fresh process that never imports torch (nor pandas or
scikit-learn where the task does not need them), and predicts what the torch backend predicts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import luban
from luban.cli import main
from tests.conftest import en_sentences, tabular_config, text_config, write_csv

pytest.importorskip("onnxruntime")

HEAVY = ("torch", "pandas", "sklearn", "transformers", "pyarrow")
TEXTS = ["这个手机非常好", "那个酒店真差啊", "今天的服务特别好", "我的电脑十分差呢"]


def _exported(run: Path) -> Path:
    assert main(["export", str(run), "--format", "onnx"]) == 0
    return run


def _fresh(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter (this tree first on the path); it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(luban.__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


API = """import json, sys, luban
p = luban.load(sys.argv[1], backend="onnx")
rows = p.predict(json.loads(sys.argv[2]))
print(json.dumps({"rows": rows, "backend": p.backend, "labels": p.labels,
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _cli_imports(*argv: str) -> tuple[list[dict], set[str]]:
    """`python -X importtime -m luban ARGV`: its output rows and every module it imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(luban.__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "luban", *argv], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    return [json.loads(line) for line in p.stdout.splitlines()], modules


def _tolerance(run: Path) -> float:
    return json.loads((run / "model" / "onnx" / "export.json").read_text(encoding="utf-8"))["parity"]["tolerance"]


def _same(onnx_rows: list[dict], torch_rows: list[dict], tol: float) -> None:
    assert len(onnx_rows) == len(torch_rows)
    for a, b in zip(onnx_rows, torch_rows):
        assert a.keys() == b.keys()
        if "label" in b:
            assert a["label"] == b["label"]
            assert a["probabilities"].keys() == b["probabilities"].keys()
            assert np.allclose([a["probabilities"][k] for k in b["probabilities"]],
                               list(b["probabilities"].values()), atol=tol)
        else:
            assert abs(a["value"] - b["value"]) <= tol * max(1.0, abs(b["value"]))


def _check_text(run: Path, texts: list[str], allowed: tuple[str, ...] = ()) -> None:
    torch_rows = luban.load(run, backend="torch").predict(texts)
    res = _fresh(API, str(run), json.dumps(texts))
    assert res["backend"] == "onnx"
    assert [m for m in res["heavy"] if m not in allowed] == []
    _same(res["rows"], torch_rows, _tolerance(run))
    rows, modules = _cli_imports("predict", str(run), "--backend", "onnx", *[a for t in texts for a in ("--text", t)])
    assert not {m for m in HEAVY if m not in allowed} & modules
    assert rows == res["rows"]  # the CLI and the API agree


@pytest.fixture
def text_run(trained_text_run, tmp_path) -> Path:
    return _exported(Path(shutil.copytree(trained_text_run["run"], tmp_path / "runs" / "zh")))


def test_text_classification_predicts_without_torch(text_run, tmp_path):
    _check_text(text_run, TEXTS)
    # a file streams through the same predictor: reading it needs pandas, never torch
    src = write_csv(tmp_path / "in.csv", [(t, "") for t in TEXTS] + [("\u3000\u3000", "")])
    rows, modules = _cli_imports("predict", str(text_run), "--backend", "onnx", "--input", str(src))
    assert "torch" not in modules
    assert [r["row"] for r in rows] == [0, 1, 2, 3, 4] and rows[4] == {"row": 4, "error": "empty text"}
    torch_rows = luban.load(text_run, backend="torch").predict(TEXTS)
    assert [r["label"] for r in rows[:4]] == [r["label"] for r in torch_rows]


@pytest.mark.parametrize("model,tokenizer", [
    ({"type": "ngram_bag", "ngram_range": [1, 2]}, None),
    ({"type": "ngram_bag", "analyzer": "word", "hash_buckets": 4096}, None),
    ({"type": "rnn", "embedding_dim": 16, "hidden_size": 16}, {"type": "wordpiece", "vocab_size": 200}),
    ({"type": "transformer", "d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32},
     {"type": "whitespace"}),
])
def test_other_text_models_predict_without_torch(model, tokenizer, out_dir, tmp_path):
    rows = en_sentences(40, seed=4)
    extra = {"model": model, "trainer": {"epochs": 1}}
    if tokenizer:
        extra["preprocessing"] = {"tokenizer": tokenizer}
    cfg = text_config(out_dir, model["type"], write_csv(tmp_path / "train.csv", rows), **extra)
    cfg["model"] = model  # the model alone, without the TextCNN settings of text_config
    run = _exported(luban.train(cfg, quiet=True))
    texts = [t for t, _ in rows[:5]] + ["an unseen sentence entirely"]
    # n-gram bags look their n-grams up in a pandas hash table (which may bring pyarrow along)
    _check_text(run, texts, allowed=("sklearn", "pandas", "pyarrow") if model["type"] == "ngram_bag" else ())


def test_pretrained_text_model_predicts_without_torch(out_dir, tmp_path, tiny_bert):
    rows = en_sentences(40, seed=5)
    cfg = text_config(out_dir, "bert", write_csv(tmp_path / "train.csv", rows), trainer={"epochs": 1})
    cfg["model"] = {"type": "pretrained", "path": str(tiny_bert)}
    cfg["preprocessing"] = {"tokenizer": {"type": "pretrained", "max_length": 16}}
    run = _exported(luban.train(cfg, quiet=True))
    long = " ".join(t for t, _ in rows[:8])  # truncated to max_length, as transformers truncates
    _check_text(run, [t for t, _ in rows[:4]] + [long])


@pytest.mark.parametrize("task", ["tabular_classification", "tabular_regression"])
def test_tabular_predicts_without_torch(task, out_dir, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(160, 2))
    y = np.where(x[:, 0] > x[:, 1], "up", "down") if task == "tabular_classification" else x[:, 0] * 3 + 1
    lines = ["a,b,city,y"] + [f"{a:.4f},{b:.4f},{c},{t}" for (a, b), c, t
                               in zip(x, rng.choice(["bj", "sh", "gz"], 160), y)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = tabular_config(out_dir, "tab", task, {"train": str(tmp_path / "t.csv"),
                                                "columns": {"label": "y", "categorical": ["city"]}},
                         trainer={"epochs": 2})
    run = _exported(luban.train(cfg, quiet=True))
    records = [{"a": 0.5, "b": -1.0, "city": "bj"}, {"a": "", "b": "2.5", "city": "unseen"},
               {"a": -0.3, "b": 0.1, "city": None}]
    torch_rows = luban.load(run, backend="torch").predict(records)
    res = _fresh(API, str(run), json.dumps(records))
    assert res["backend"] == "onnx" and "torch" not in res["heavy"]  # pandas reads the records, as at training
    assert res["labels"] == (None if task == "tabular_regression" else ["down", "up"])
    _same(res["rows"], torch_rows, _tolerance(run))
    rows, modules = _cli_imports("predict", str(run), "--backend", "onnx", "--input", str(tmp_path / "t.csv"))
    assert "torch" not in modules and [r["row"] for r in rows] == list(range(160))


SERVE = """import json, sys
from fastapi.testclient import TestClient
from luban.serve.app import create_app
from luban.serve.settings import ServeSettings
settings = ServeSettings(runs=[sys.argv[1]], backend="onnx", threads=1, max_wait_ms=1.0)
with TestClient(create_app(settings=settings)) as c:
    ready = c.get("/readyz").status_code
    r = c.post("/v1/predict", json={"inputs": json.loads(sys.argv[2])})
    backend = c.get("/v1/models").json()["data"][0]["backend"]
print(json.dumps({"ready": ready, "rows": r.json()["predictions"], "backend": backend,
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def test_serve_onnx_backend_without_torch(text_run):
    pytest.importorskip("fastapi")
    res = _fresh(SERVE, str(text_run), json.dumps(TEXTS))
    assert res["ready"] == 200 and res["backend"] == "onnx" and res["heavy"] == []
    _same(res["rows"], luban.load(text_run, backend="torch").predict(TEXTS), _tolerance(text_run))


def test_onnx_backend_errors_and_fallbacks(text_run, trained_text_run):
    from luban.data import cleaning, readers

    assert cleaning.LINE == readers.LINE  # cleaning keeps its own copy so that checking a text needs no pandas
    p = luban.load(text_run)  # auto: the export, torch-free
    assert p.backend == "onnx" and type(p.task_predictor).__module__ == "luban.compress.onnx_tasks"
    assert p.capabilities()["predict_options"] == ["top_k"]
    assert list(p.predict(TEXTS[:1], top_k=1)[0]["probabilities"]) == [p.predict(TEXTS[:1])[0]["label"]]
    m = p.evaluate(trained_text_run["test"])  # evaluation goes through the task's own predictor, same numbers
    assert m["accuracy"] == trained_text_run["metrics"]["test"]["accuracy"]
    with pytest.raises(luban.LubanError, match="input 2: empty text"):
        p.predict(["好", "  "])
    assert p.predict(["好", "  "], on_error="error-row")[1] == {"error": "empty text"}
    shutil.rmtree(text_run / "model" / "onnx")
    with pytest.raises(luban.LubanError, match="no ONNX export to run"):
        luban.load(text_run, backend="onnx")


def test_image_classification_predicts_without_torch(out_dir, tmp_path):
    from tests.test_image_classification import image_config, write_stripes

    train = write_stripes(tmp_path / "train", 12, seed=1)
    cfg = image_config(out_dir, "stripes", train, trainer={"epochs": 1},
                       preprocessing={"image": {"size": 16, "resize": 20}})  # resized, then center-cropped
    run = _exported(luban.train(cfg, quiet=True))
    images = sorted(str(p) for p in (train / "vertical").glob("*.png"))[:2] + \
        sorted(str(p) for p in (train / "horizontal").glob("*.png"))[:2]
    torch_rows = luban.load(run, backend="torch").predict(images)
    res = _fresh(API, str(run), json.dumps(images))
    assert res["backend"] == "onnx" and res["heavy"] == []
    _same(res["rows"], torch_rows, _tolerance(run))
    assert [r["image"] for r in res["rows"]] == images
    rows, modules = _cli_imports("predict", str(run), "--backend", "onnx", "--input", str(train / "vertical"))
    assert not set(HEAVY) & modules and len(rows) == 12
    p = luban.load(run)
    arr = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(images[0]))  # arrays take the same path
    assert p.predict([arr])[0]["label"] == torch_rows[0]["label"]
