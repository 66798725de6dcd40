"""Explanations (issue 21 §1): exact n-gram-bag contributions, integrated gradients for neural text models, merged
onto characters; tabular features; image overlays; `luban explain` and POST /v1/explain."""

import json

import numpy as np
import pytest

import luban

from conftest import tabular_config, text_config, write_csv, zh_sentences

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def zh_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    rows = zh_sentences(100, seed=4)
    train = write_csv(root / "train.csv", rows)
    runs = {}
    cfg = text_config(root / "runs", "bag", train)
    cfg["model"] = {"type": "ngram_bag", "ngram_range": [1, 2], "weighting": "nb"}
    cfg["trainer"].update(optimizer="adam", lr=0.05, grad_clip=None)
    runs["bag"] = luban.train(cfg, quiet=True)
    runs["cnn"] = luban.train(text_config(root / "runs", "cnn", train, trainer={"epochs": 4}), quiet=True)
    return runs


@pytest.mark.parametrize("name", ["bag", "cnn"])
def test_the_sentiment_word_carries_the_prediction(zh_runs, name):
    p = luban.load(zh_runs[name], backend="torch")
    texts = ["这个酒店非常好啊", "那个手机真差了"]
    res = p.explain(texts)
    for text, e, word in zip(texts, res, ["好", "差"]):
        assert e["text"] == text and len(e["chars"]) == len(text)
        top = max(range(len(text)), key=lambda i: e["chars"][i])
        assert text[top] == word, (name, e["tokens"])
        assert all(text[t["start"]:t["end"]] == t["text"] for t in e["tokens"])
    assert res[0]["method"].startswith("exact" if name == "bag" else "integrated gradients")
    # the other class: the sentiment word now pushes away from it
    other = [label for label in p.labels if label != res[0]["label"]][0]
    e = p.explain(["这个酒店非常好啊"], target=other)[0]
    assert e["target"] == other and e["chars"][texts[0].index("好")] < 0


def test_exact_bag_contributions_sum_to_the_logit(zh_runs):
    import torch

    p = luban.load(zh_runs["bag"], backend="torch")
    text = "这个酒店非常好啊"
    e = p.explain([text])[0]
    impl = p.task_predictor
    c = impl.labels.index(e["label"])
    ids, w = impl.encoder.encode_weighted([text])
    with torch.no_grad():
        logit = impl.model(torch.as_tensor(ids[0])[None], torch.as_tensor(w[0])[None])[0, c] - impl.model.bias[c]
    assert sum(e["chars"]) == pytest.approx(float(logit), abs=1e-3)


def test_explain_cli_and_api(zh_runs, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from luban.cli import main
    from luban.serve.app import create_app

    out = tmp_path / "ex.jsonl"
    assert main(["explain", str(zh_runs["cnn"]), "--text", "这个酒店非常好啊", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "integrated gradients" in printed and "top: 好" in printed
    assert json.loads(out.read_text(encoding="utf-8"))["tokens"]
    assert main(["explain", str(zh_runs["cnn"]), "--image", "x.png"]) == 2
    with TestClient(create_app(zh_runs["bag"])) as c:
        r = c.post("/v1/explain", json={"inputs": ["那个手机真差了"]})
        assert r.status_code == 200, r.text
        e = r.json()["explanations"][0]
        assert e["label"] and max(e["tokens"], key=lambda t: t["score"])["text"] == "差"
        bad = c.post("/v1/explain", json={"inputs": ["好"], "target": "nope"})
        assert bad.status_code in (400, 422) and "nope" in bad.text
        assert c.get("/v1/models").json()["data"][0]["capabilities"]["explain"] is True


def test_tabular_features(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(float(x), float(z), "pos" if x > 0 else "neg") for x, z in rng.normal(size=(300, 2))]
    train = write_csv(tmp_path / "t.csv", rows, header=("signal", "noise", "y"))
    cfg = tabular_config(tmp_path / "runs", "tab", "tabular_classification",
                         {"train": str(train), "columns": {"label": "y"}})
    p = luban.load(luban.train(cfg, quiet=True), backend="torch")
    e = p.explain([{"signal": 2.0, "noise": 0.1}])[0]
    assert e["features"][0]["feature"] == "signal" and e["features"][0]["score"] > 0


def test_report_explains_the_most_confidently_wrong_examples(zh_runs):
    html = (zh_runs["cnn"] / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((zh_runs["cnn"] / "metrics.json").read_text(encoding="utf-8"))
    if metrics["test"]["worst_examples"]:
        assert "Why the most confidently wrong test examples" in html and "rgba(" in html
    else:
        assert "Why the most confidently wrong" not in html


def test_image_overlay(tmp_path):
    pytest.importorskip("PIL")
    from test_image_classification import image_config, write_stripes

    from luban.cli import main

    train = write_stripes(tmp_path / "train", 16, seed=1)
    run = luban.train(image_config(tmp_path / "runs", "img", train, trainer={"epochs": 2}), quiet=True)
    one = next((train / "vertical").iterdir())
    e = luban.load(run, backend="torch").explain([str(one)])[0]
    assert e["attribution"].shape == (16, 16) and np.isfinite(e["attribution"]).all()
    assert main(["explain", str(run), "--image", str(one), "--output-dir", str(tmp_path / "ov")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "ov" / "explain_1.png").size == (64, 64)
