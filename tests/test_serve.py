"""The REST app serves a trained run: health, info, predictions, clear 422 on bad input, the playground page."""

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from luban.serve.app import create_app  # noqa: E402


def test_serve_predicts_like_the_python_api(trained_text_run):
    import luban

    client = TestClient(create_app(trained_text_run["run"]))
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["task"] == "text_classification" and set(info["labels"]) == {"negative", "positive"}
    texts = ["这个手机非常好", "那个酒店真差啊"]
    r = client.post("/predict", json={"inputs": texts})
    assert r.status_code == 200
    assert r.json()["predictions"] == luban.load(trained_text_run["run"]).predict(texts)
    bad = client.post("/predict", json={"inputs": ["   "]})
    assert bad.status_code == 422 and "input 1: empty text" in bad.json()["detail"]
    page = client.get("/")
    assert page.status_code == 200 and "luban playground" in page.text
