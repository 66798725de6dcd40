"""`luban serve`: every route's happy path and its 4xx paths (with the JSON error body), auth, micro-batching,
fair generation scheduling, OpenAI-compatible completions with SSE streaming, limits and back-pressure, a
schemathesis pass over the OpenAPI spec, the playground in headless Chromium, and graceful shutdown of the CLI
server. The models are tiny runs trained here in seconds (one per kind of input the server handles)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from conftest import deep_update, speech_config, tabular_config, write_csv, write_jsonl  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import luban  # noqa: E402
from luban.serve.app import create_app  # noqa: E402
from luban.serve.batching import MicroBatcher, QueueFull  # noqa: E402
from luban.serve.settings import ServeSettings  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ZH = ["这个手机非常好", "那个酒店真差啊", "我的电影特别好呢", "今天的服务十分差了"]


# ------------------------------------------------------------------------------------------------ tiny runs


def _common(out: Path, name: str) -> dict:
    return {"output": {"dir": str(out), "name": name, "tensorboard": False},
            "evaluation": {"baseline": False}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_text_run) -> dict:
    """One tiny run per kind of input the server handles: text (the shared run), text generation, images,
    audio, JSON records (tabular), recommendation, image generation."""
    sf = pytest.importorskip("soundfile")
    from PIL import Image

    root = tmp_path_factory.mktemp("serve_runs")
    out = root / "runs"
    quick = {"num_threads": 1, "precision": "fp32", "device": "cpu", "log_every": 100000}
    found = {"text": trained_text_run["run"]}

    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    found["lm"] = luban.train(deep_update(_common(out, "lm"), {
        "task": "text_generation", "seed": 1, "data": {"train": str(corpus)},
        "preprocessing": {"tokenizer": {"type": "char"}},
        "model": {"type": "gpt", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "trainer": {"epochs": 2, "steps_per_epoch": 30, "batch_size": 16, "lr": 3e-3, "scheduler": "constant",
                    **quick},
        "generation": {"sample_prompts": ["the"], "sample_tokens": 5, "max_new_tokens": 40}}), quiet=True)

    rng = np.random.default_rng(0)
    for label, axis in (("horizontal", 0), ("vertical", 1)):
        (root / "img" / label).mkdir(parents=True)
        for i in range(12):
            a = np.zeros((16, 16), np.uint8)
            idx = [slice(None), slice(None)]
            idx[axis] = slice(int(rng.integers(0, 8)), None, 4)
            a[tuple(idx)] = 255
            Image.fromarray(np.stack([a] * 3, -1)).save(root / "img" / label / f"{i}.png")
    found["image"] = luban.train(deep_update(_common(out, "stripes"), {
        "task": "image_classification", "seed": 5, "data": {"train": str(root / "img"), "split": {"validation": 0.25}},
        "preprocessing": {"image": {"size": 16, "resize": 16, "augment": {"hflip": False}}},
        "model": {"type": "resnet", "widths": [8], "blocks": [1]},
        "trainer": {"epochs": 2, "batch_size": 8, "lr": 0.01, **quick}}), quiet=True)

    rate = 8000
    rows = []
    for i in range(16):
        word = "ab"[i % 2]
        t = np.arange(int(0.3 * rate)) / rate
        wave = 0.5 * np.sin(2 * np.pi * (500.0 if word == "a" else 1500.0) * t)
        sf.write(str(root / f"u{i}.wav"), wave.astype(np.float32), rate)
        rows.append((f"u{i}.wav", word))
    manifest = write_csv(root / "audio.csv", rows, header=("audio", "text"))
    found["audio"] = luban.train(speech_config(out, "speech", manifest, evaluation={"baseline": False},
                                               trainer={"epochs": 2, **quick}), quiet=True)

    found["tabular"] = luban.train(tabular_config(out, "wine", "tabular_classification", {"builtin": "wine"},
                                                  trainer={"epochs": 2}), quiet=True)

    lines = ["user_id,item_id,ts"]
    r = random.Random(0)
    for u in range(20):
        lo = 0 if u < 10 else 10
        for t, i in enumerate(r.sample(range(lo, lo + 10), 6)):
            lines.append(f"u{u},i{i},{1000 + t}")
    (root / "rec.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    found["rec"] = luban.train(deep_update(_common(out, "rec"), {
        "task": "recommendation", "seed": 3, "data": {"train": str(root / "rec.csv")},
        "model": {"type": "bpr", "factors": 4}, "recommendation": {"k": 5, "ks": [5]},
        "trainer": {"epochs": 2, "batch_size": 64, "lr": 0.02, **quick}}), quiet=True)

    found["gan"] = luban.train(deep_update(_common(out, "gan"), {
        "task": "image_generation", "seed": 5, "data": {"builtin": "digits", "train_limit": 200},
        "preprocessing": {"image": {"size": 8}},
        "model": {"type": "dcgan", "latent_dim": 8, "base_channels": 8, "eval_samples": 50,
                  "classifier_epochs": 1},
        "trainer": {"epochs": 1, "batch_size": 32, "lr": 0.001, "scheduler": "constant", **quick}}), quiet=True)
    return found


@pytest.fixture(scope="module")
def client(runs):
    """One server for every run (7 models), as `luban serve RUN RUN ...` starts it."""
    app = create_app(settings=ServeSettings(runs=[str(p) for p in runs.values()], max_wait_ms=2.0))
    with TestClient(app) as c:
        yield c


def png_bytes(side=20, vertical=True) -> bytes:
    from PIL import Image

    a = np.zeros((side, side), np.uint8)
    if vertical:
        a[:, ::4] = 255
    else:
        a[::4, :] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds=0.3, rate=16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def assert_error(r, status: int, code: str | None = None, contains: str | None = None, param: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if contains is not None:
        assert contains in err["message"], err
    if param is not None:
        assert err["param"] == param, err
    return err


def sse_events(text: str) -> list:
    """Parse a server-sent-event stream strictly: `data: ...` blocks separated by blank lines, ending in [DONE]."""
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    blocks = text.split("\n\n")
    assert blocks[-1] == ""
    events = []
    for b in blocks[:-2]:
        assert b.startswith("data: ") and "\n" not in b, b
        events.append(json.loads(b[len("data: "):]))
    return events


# ------------------------------------------------------------------------------------------------ legacy routes


def test_legacy_routes_still_answer_like_the_python_api(trained_text_run):
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
    assert client.get("/static/app.js").status_code == 200


# ------------------------------------------------------------------------------------------------ models, ops


def test_models_health_ready_metrics_docs(client, runs):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    models = {m["id"]: m for m in data["data"]}
    assert set(models) == {Path(p).name for p in runs.values()}
    caps = {k: m["capabilities"] for k, m in models.items()}
    assert caps["zh"]["inputs"] == "text" and caps["zh"]["predict"] and not caps["zh"]["generate_text"]
    assert caps["lm"]["generate_text"] and caps["lm"]["chat"]
    assert caps["stripes"]["inputs"] == "image" and caps["speech"]["inputs"] == "audio"
    assert caps["wine"]["inputs"] == "json" and caps["rec"]["recommend"] and caps["rec"]["similar_items"]
    assert caps["gan"]["generate_images"] and not caps["gan"]["predict"]
    assert models["zh"]["labels"] == ["negative", "positive"] and "accuracy" in models["zh"]["test_metrics"]
    assert client.get("/v1/models/zh").json()["id"] == "zh"
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/v1/predict", json={"model": "zh", "inputs": ZH[:2]})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("luban_requests_total", "luban_request_seconds_bucket", "luban_batch_size_bucket",
                 "luban_queue_depth", "luban_inflight_requests", "luban_ready 1.0"):
        assert name in metrics.text, name
    assert 'route="/v1/predict"' in metrics.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/predict", "/v1/completions", "/v1/chat/completions", "/v1/recommend",
                 "/v1/images/generations", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.delete("/v1/models"), 405)


# ------------------------------------------------------------------------------------------------ predict


def test_predict_json_batch_and_its_4xx(client, runs):
    r = client.post("/v1/predict", json={"model": "zh", "inputs": ZH})
    assert r.status_code == 200
    assert r.json() == {"model": "zh", "predictions": luban.load(runs["text"]).predict(ZH)}
    top = client.post("/v1/predict", json={"model": "zh", "inputs": ZH[:1], "top_k": 1}).json()["predictions"][0]
    assert len(top["probabilities"]) == 1
    one = client.post("/v1/predict", json={"model": "zh", "inputs": ZH[0]}).json()  # a single input
    assert len(one["predictions"]) == 1
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": []}), 422, "empty_inputs", param="inputs")

    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": ["  "]}), 422, "invalid_input",
                 "input 1: empty text")
    assert_error(client.post("/v1/predict", json={"model": "nope", "inputs": ["x"]}), 404, "model_not_found")
    assert_error(client.post("/v1/predict", json={"inputs": ["x"]}), 400, "model_required")
    assert_error(client.post("/v1/predict", json={"model": "gan", "inputs": ["x"]}), 400, "model_not_supported")
    assert_error(client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "json_invalid")
    assert_error(client.post("/v1/predict", json=["x"]), 422, "invalid_body")
    assert_error(client.post("/v1/predict", json={"model": "zh", "input": ["x"]}), 422, "unknown_field")
    assert_error(client.post("/v1/predict", json={"model": "zh"}), 422, "missing")
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": 5}), 422, "invalid_type")
    assert_error(client.post("/v1/predict", json={"model": 5, "inputs": ["x"]}), 422, "invalid_type")
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": ["x"], "top_k": 0}), 422, "invalid_value")
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": ["x"] * 300}), 422, "batch_too_large")
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": ["好" * 20001]}), 422, "text_too_long")
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": [5]}), 422, "invalid_input",
                 "expected text")
    assert_error(client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    assert_error(client.post("/v1/predict", json={"model": "wine", "inputs": [{}], "top_k": 2}), 422,
                 "unsupported_option")


def test_predict_records_and_generation_through_predict(client, runs):
    from sklearn.datasets import load_wine

    X = load_wine(as_frame=True).frame.drop(columns=["target"]).head(3)
    records = X.to_dict(orient="records")
    r = client.post("/v1/predict", json={"model": "wine", "inputs": records})
    assert r.status_code == 200 and r.json()["predictions"] == luban.load(runs["tabular"]).predict(records)
    assert_error(client.post("/v1/predict", json={"model": "wine", "inputs": [{"alcohol": 1}]}), 422,
                 "invalid_input", "missing feature column")
    assert_error(client.post("/v1/predict", json={"model": "wine", "inputs": ["x"]}), 422, "invalid_input")


def test_predict_uploads_images_and_audio(client, runs):
    files = [("files", ("v.png", png_bytes(vertical=True), "image/png")),
             ("files", ("h.png", png_bytes(vertical=False), "image/png"))]
    r = client.post("/v1/predict", data={"model": "stripes", "top_k": "1"}, files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["image"] for p in preds] == ["v.png", "h.png"] and all(len(p["probabilities"]) == 1 for p in preds)
    # the same images as base64 JSON (a data: URL and plain base64) give the same labels
    b64 = [f"data:image/png;base64,{base64.b64encode(png_bytes(vertical=True)).decode()}",
           base64.b64encode(png_bytes(vertical=False)).decode()]
    js = client.post("/v1/predict", json={"model": "stripes", "inputs": b64}).json()["predictions"]
    assert [p["label"] for p in js] == [p["label"] for p in preds] and js[0]["image"] == "input 1"
    assert_error(client.post("/v1/predict", data={"model": "stripes"},
                             files=[("files", ("x.png", b"not an image", "image/png"))]), 422, "bad_image", "x.png")
    assert_error(client.post("/v1/predict", json={"model": "stripes", "inputs": ["%%%"]}), 422, "invalid_input",
                 "base64")
    assert_error(client.post("/v1/predict", json={"model": "stripes", "inputs": ["/etc/passwd"]}), 422)
    assert_error(client.post("/v1/predict", data={"model": "stripes", "colour": "red"},
                             files=[("files", ("v.png", png_bytes(), "image/png"))]), 422, "unknown_field")

    a = client.post("/v1/predict", data={"model": "speech"}, files=[("files", ("a.wav", wav_bytes(), "audio/wav"))])
    assert a.status_code == 200, a.text
    out = a.json()["predictions"][0]
    assert isinstance(out["text"], str) and out["audio_seconds"] == pytest.approx(0.3, abs=0.01)
    wav64 = base64.b64encode(wav_bytes()).decode()
    assert client.post("/v1/predict", json={"model": "speech", "inputs": [wav64]}).json()["predictions"][0]["text"] \
        == out["text"]
    assert_error(client.post("/v1/predict", data={"model": "speech"},
                             files=[("files", ("long.wav", wav_bytes(seconds=121, rate=8000), "audio/wav"))]),
                 422, "audio_too_long")
    assert_error(client.post("/v1/predict", data={"model": "speech"},
                             files=[("files", ("b.wav", b"RIFF....WAVEjunk", "audio/wav"))]), 422, "bad_audio")


def test_image_pixel_and_body_limits(runs):
    app = create_app(settings=ServeSettings(runs=[str(runs["image"])], max_image_pixels=100, max_body_bytes=4000))
    with TestClient(app) as c:
        assert_error(c.post("/v1/predict", files=[("files", ("big.png", png_bytes(side=20), "image/png"))]), 422,
                     "image_too_large", "400 pixels")
        assert c.post("/v1/predict", files=[("files", ("ok.png", png_bytes(side=10), "image/png"))]).status_code \
            == 200
        assert_error(c.post("/v1/predict", json={"inputs": ["A" * 5000]}), 413, "body_too_large")


# ------------------------------------------------------------------------------------------------ recommend, images


def test_recommend_and_similar_items(client):
    r = client.post("/v1/recommend", json={"model": "rec", "user": "u1", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == "u1" and len(body["items"]) == 3 and body["strategy"]
    new = client.post("/v1/recommend", json={"user": "someone-new", "history": ["i1", "i2"]}).json()
    assert new["items"] and new["user"] == "someone-new"
    sim = client.post("/v1/recommend", json={"item": "i1", "k": 2}).json()
    assert sim["item"] == "i1" and len(sim["items"]) == 2
    assert_error(client.post("/v1/recommend", json={"user": "u1", "item": "i1"}), 422, "invalid_value")
    assert_error(client.post("/v1/recommend", json={}), 422, "invalid_value")
    assert_error(client.post("/v1/recommend", json={"item": "no-such-item"}), 422, "invalid_input", "unknown item")
    assert_error(client.post("/v1/recommend", json={"user": "u1", "k": 0}), 422, "greater_than_equal", param="k")
    assert_error(client.post("/v1/recommend", json={"user": "u1", "k": 5000}), 422, "k_too_large")
    assert_error(client.post("/v1/recommend", json={"model": "zh", "user": "u1"}), 400, "model_not_supported")
    assert_error(client.post("/v1/recommend", json={"user": "u1", "colour": 1}), 422, "extra_forbidden")


def test_image_generation(client):
    from PIL import Image

    r = client.post("/v1/images/generations", json={"n": 4, "label": "3", "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 1 and body["label"] == "3" and len(body["data"]) == 4
    im = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert im.size == (8, 8)
    again = client.post("/v1/images/generations", json={"n": 4, "label": "3", "seed": 1}).json()
    assert again["data"] == body["data"]  # same seed, same images
    assert client.post("/v1/images/generations", json={"n": 2}).json()["seed"] >= 0
    assert_error(client.post("/v1/images/generations", json={"n": 1000}), 422, "n_too_large")
    assert_error(client.post("/v1/images/generations", json={"n": 2, "label": "tiger"}), 422, "invalid_input",
                 "unknown label")
    assert_error(client.post("/v1/images/generations", json={"n": 0}), 422, "greater_than_equal")


# ------------------------------------------------------------------------------------------------ OpenAI API


def test_chat_and_completions(client):
    chat = {"model": "lm", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 12, "seed": 3}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "lm" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    u = body["usage"]
    assert u["completion_tokens"] == 12 and u["prompt_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert client.post("/v1/chat/completions", json=chat).json()["choices"] == body["choices"]  # seeded
    two = client.post("/v1/chat/completions", json={**chat, "n": 2, "temperature": 1.5}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1] and two["usage"]["completion_tokens"] == 24
    parts = client.post("/v1/chat/completions", json={**chat, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "cat"}]}]})
    assert parts.status_code == 200

    greedy = {"model": "lm", "prompt": "the cat sat on the", "max_tokens": 30, "temperature": 0}
    full = client.post("/v1/completions", json=greedy).json()
    assert full["object"] == "text_completion" and full["choices"][0]["finish_reason"] == "length"
    text = full["choices"][0]["text"]
    stop = text[6:8]
    c = client.post("/v1/completions", json={**greedy, "stop": [stop]}).json()
    assert c["choices"][0]["finish_reason"] == "stop" and c["choices"][0]["text"] == text[:text.index(stop)]
    echo = client.post("/v1/completions", json={"prompt": ["the", "a"], "max_tokens": 3, "echo": True}).json()
    assert len(echo["choices"]) == 2 and echo["choices"][0]["text"].startswith("the")
    assert echo["choices"][1]["text"].startswith("a")

    assert_error(client.post("/v1/chat/completions", json={**chat, "max_tokens": 100000}), 400,
                 "max_tokens_too_large", param="max_tokens")
    assert_error(client.post("/v1/chat/completions", json={**chat, "temperature": 5}), 400, param="temperature")
    assert_error(client.post("/v1/chat/completions", json={**chat, "model": "nope"}), 404, "model_not_found")
    assert_error(client.post("/v1/chat/completions", json={**chat, "model": "zh"}), 400, "model_not_supported")
    assert_error(client.post("/v1/chat/completions", json={**chat, "messages": []}), 400, param="messages")
    assert_error(client.post("/v1/chat/completions", json={**chat, "messages": [{"role": "x", "content": "y"}]}),
                 400)
    assert_error(client.post("/v1/chat/completions", json={**chat, "n": 50}), 400, "n_too_large")
    assert_error(client.post("/v1/chat/completions", json={**chat, "response_format": {"type": "yaml"}}), 400,
                 "invalid_value", param="response_format")  # never accepted and ignored
    assert_error(client.post("/v1/chat/completions", json={**chat, "stop": [""]}), 400, param="stop")
    assert_error(client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
                 400, "json_invalid")
    assert_error(client.post("/v1/completions", json={"prompt": "x" * 20001}), 400, "context_length_exceeded")
    assert_error(client.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400, "unsupported_parameter")


def test_streaming_is_well_formed_sse_and_matches_the_plain_answer(client):
    req = {"model": "lm", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 15, "seed": 7}
    plain = client.post("/v1/chat/completions", json=req).json()
    with client.stream("POST", "/v1/chat/completions",
                       json={**req, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = sse_events(text)
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert content == plain["choices"][0]["message"]["content"]
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]

    with client.stream("POST", "/v1/completions", json={"prompt": "the", "max_tokens": 5, "n": 2, "stream": True,
                                                        "seed": 1}) as r:
        events = sse_events("".join(r.iter_text()))
    assert {e["choices"][0]["index"] for e in events} == {0, 1}
    assert sum(1 for e in events if e["choices"][0]["finish_reason"]) == 2
    bad = client.post("/v1/completions", json={"prompt": "the", "stream": True, "max_tokens": 10**6})
    assert_error(bad, 400, "max_tokens_too_large")  # refused before the stream starts


def test_generation_is_scheduled_fairly(runs):
    """Two long generations and a short one at once: all run interleaved (the short one is not queued behind)."""
    app = create_app(settings=ServeSettings(runs=[str(runs["lm"])], max_active_generations=4))
    results = {}
    with TestClient(app) as c:
        def go(name, n):
            t0 = time.perf_counter()
            r = c.post("/v1/completions", json={"prompt": "the", "max_tokens": n, "seed": 1})
            results[name] = (r.status_code, time.perf_counter() - t0, r.json()["usage"]["completion_tokens"])

        threads = [threading.Thread(target=go, args=(f"long{i}", 300)) for i in range(2)]
        threads.append(threading.Thread(target=go, args=("short", 5)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        model = app.state.registry.models["lm"]
    assert all(code == 200 for code, _, _ in results.values())
    assert results["short"][2] == 5 and results["long0"][2] == 300
    assert model.generation.max_active_seen >= 2
    assert results["short"][1] < max(results["long0"][1], results["long1"][1])


def test_concurrent_generations_are_decoded_together_each_as_if_alone(runs):
    """Requests that arrive together share forward passes (one batch, per-row sampling settings) and each gets
    exactly the text it gets alone, through the server or the Python API."""
    reqs = [{"prompt": p, "max_tokens": n, "seed": s, "temperature": t, "top_k": k}
            for p, n, s, t, k in [("the", 12, 1, 0.8, None), ("a cat", 30, 2, 1.0, 5), ("the dog sat", 7, 3, 0.0, None),
                                  ("t", 20, 4, 1.2, 10), ("the cat the dog", 25, 5, 0.7, None), ("d", 16, 6, 0.9, 3)]]
    alone = luban.load(runs["lm"])
    expected = [alone.generate_text(r["prompt"], max_new_tokens=r["max_tokens"], seed=r["seed"],
                                    temperature=r["temperature"], top_k=r["top_k"])["text"] for r in reqs]
    app = create_app(settings=ServeSettings(runs=[str(runs["lm"])], max_active_generations=8))
    got = {}
    with TestClient(app) as c:
        start = threading.Barrier(len(reqs))

        def go(i):
            start.wait()
            got[i] = c.post("/v1/completions", json={k: v for k, v in reqs[i].items() if v is not None}).json()

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gen = app.state.registry.models["lm"].generation
        metrics = c.get("/metrics").text
    assert [got[i]["choices"][0]["text"] for i in range(len(reqs))] == expected
    assert gen.sequence_steps > gen.forwards  # some forward passes advanced several requests
    assert "luban_generation_batch_size_bucket" in metrics


# ------------------------------------------------------------------------------------------------ auth, CORS


def test_api_keys(trained_text_run, tmp_path):
    from luban.serve.settings import read_api_keys

    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\nalpha-key\n\nbeta-key\n", encoding="utf-8")
    keys = read_api_keys(keys_file)
    assert keys == ["alpha-key", "beta-key"]
    app = create_app(settings=ServeSettings(runs=[str(trained_text_run["run"])], api_keys=keys))
    c = TestClient(app)
    body = {"inputs": ZH[:1]}
    err = assert_error(c.post("/v1/predict", json=body), 401, "missing_api_key")
    assert err["type"] == "authentication_error"
    r = c.post("/v1/predict", json=body, headers={"authorization": "Bearer wrong"})
    assert_error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(c.post("/v1/predict", json=body, headers={"authorization": "Basic alpha-key"}), 401)
    for key in keys:
        assert c.post("/v1/predict", json=body, headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert_error(c.get("/v1/models"), 401)
    assert_error(c.get("/metrics"), 401)
    assert c.post("/predict", json=body).status_code == 401
    for open_path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json", "/static/app.js"):
        assert c.get(open_path).status_code == 200, open_path
    spec = c.get("/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    # CORS is off unless configured
    pre = {"origin": "http://example.com", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in c.options("/v1/predict", headers=pre).headers
    cors = TestClient(create_app(settings=ServeSettings(runs=[str(trained_text_run["run"])],
                                                        cors_origins=["http://example.com"])))
    assert cors.options("/v1/predict", headers=pre).headers["access-control-allow-origin"] == "http://example.com"
    with pytest.raises(Exception, match="no keys"):
        (tmp_path / "empty.txt").write_text("# none\n", encoding="utf-8")
        read_api_keys(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------------------------ hostile input


@pytest.fixture(scope="module")
def zh_predictor(trained_text_run):
    """The text run, loaded once for the apps below (each built with its own settings)."""
    return luban.load(trained_text_run["run"])


def text_app(trained_text_run, zh_predictor, **settings):
    run = str(trained_text_run["run"])
    return create_app(settings=ServeSettings(runs=[run], warmup=False, **settings), predictors={run: zh_predictor})


def test_deeply_nested_json_is_a_4xx_on_every_json_route(client):
    from luban.serve.limits import json_depth

    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = [deep, b'{"inputs": ' + deep + b"}", b'{"messages": [{"role": "user", "content": ' + deep + b"}]}"]
    for path in ("/v1/predict", "/predict", "/v1/chat/completions", "/v1/completions", "/v1/recommend",
                 "/v1/images/generations"):
        for body in bodies:
            for ctype in ({"content-type": "application/json"}, {}):  # FastAPI parses a body without a type too
                assert_error(client.post(path, content=body, headers=ctype), 400, "json_too_deep", "64 levels")
    # 60 levels pass the guard and get the route's own answer, never a 500
    nested = json.loads("[" * 60 + "1" + "]" * 60)
    for path, body in (("/v1/predict", {"model": "wine", "inputs": [{"alcohol": nested}]}),
                       ("/v1/predict", {"model": "zh", "inputs": [nested]}), ("/predict", {"inputs": nested}),
                       ("/v1/chat/completions", {"model": "lm", "messages": [
                           {"role": "user", "content": [{"type": "text", "text": nested}]}]}),
                       ("/v1/completions", {"model": "lm", "prompt": nested}),
                       ("/v1/recommend", {"model": "rec", "user": "u1", "features": {"a": nested}}),
                       ("/v1/images/generations", {"model": "gan", "label": nested})):
        r = client.post(path, json=body)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
    # brackets inside strings are text, not nesting
    assert client.post("/v1/predict", json={"model": "zh", "inputs": ["[{" * 200]}).status_code == 200
    for text in (r'["[[[", {"a": "\\"}, [["\\"]]]', r'["\"[[[", [[0]]]', r'[{"\\\"[": [1]}]'):
        # escaped backslashes and quotes: the same depth as the parser finds
        assert json_depth(text.encode()) == 3, text
        assert json.loads(text)


def test_empty_inputs_are_a_4xx_on_every_route_that_takes_a_list(client):
    assert_error(client.post("/v1/predict", json={"model": "zh", "inputs": []}), 422, "empty_inputs")
    assert_error(client.post("/v1/predict", files={"model": (None, "stripes")}), 422, "empty_inputs")  # multipart
    legacy = client.post("/predict", json={"inputs": [], "model": "zh"})
    assert legacy.status_code == 422 and "no inputs" in legacy.json()["detail"]
    assert_error(client.post("/v1/chat/completions", json={"model": "lm", "messages": []}), 400)
    assert_error(client.post("/v1/completions", json={"model": "lm", "prompt": []}), 400, "invalid_value")


def test_host_header_is_checked_against_the_bind_address():
    from luban.serve.origins import allowed_hosts, host_name

    assert [host_name(h) for h in ("[::1]:8000", "LocalHost.", "10.0.0.5:80", "::1")] == \
        ["::1", "localhost", "10.0.0.5", "::1"]
    assert allowed_hosts("127.0.0.1", []) == ["127.0.0.1", "::1", "localhost"]
    assert allowed_hosts("10.0.0.5", ["api.example.com"]) == ["10.0.0.5", "127.0.0.1", "::1", "api.example.com",
                                                               "localhost"]
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("::", []) is None  # wildcard: any Host
    assert "models.example.com" in allowed_hosts("0.0.0.0", ["models.example.com"])
    assert allowed_hosts(None, []) is None and allowed_hosts("127.0.0.1", ["*"]) is None


def test_dns_rebinding_and_cross_origin_posts_are_refused(trained_text_run, zh_predictor):
    app = text_app(trained_text_run, zh_predictor, host="127.0.0.1", allowed_hosts=["*.example.org"])
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    body = {"inputs": ZH[:1]}
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "api.example.org"):
        assert c.get("/v1/models", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8000", "127.0.0.1.nip.io:8000", "example.org"):  # a rebinding page's Host
        assert_error(c.get("/v1/models", headers={"host": host}), 421, "invalid_host", "--allowed-host")
        assert_error(c.post("/v1/predict", json=body, headers={"host": host}), 421, "invalid_host")
    # cross-origin writes: a form post (multipart, urlencoded, text/plain) or fetch from another page
    evil = {"origin": "http://evil.example"}
    for kw in ({"files": {"inputs": (None, ZH[0])}}, {"data": {"inputs": ZH[0]}},
               {"content": b"x", "headers": {"content-type": "text/plain"}}, {"json": body}):
        headers = {**evil, **kw.pop("headers", {})}
        err = assert_error(c.post("/v1/predict", headers=headers, **kw), 403, "cross_origin", "--cors-origin")
        assert err["type"] == "permission_error"
    assert_error(c.post("/v1/predict", json=body, headers={"origin": "null"}), 403, "cross_origin")
    assert_error(c.post("/v1/predict", json=body, headers={"sec-fetch-site": "cross-site"}), 403, "cross_origin")
    # the server's own origin (the playground), clients without Origin (curl, SDKs), and reads pass
    own = c.post("/v1/predict", json=body, headers={"origin": "http://127.0.0.1:8000",
                                                     "sec-fetch-site": "same-origin"})
    assert own.status_code == 200 and own.json()["predictions"] == zh_predictor.predict(ZH[:1])
    assert c.post("/v1/predict", json=body).status_code == 200
    assert c.get("/v1/models", headers=evil).status_code == 200  # the browser keeps it from the page (no CORS)
    # --cors-origin lets that origin post, forms included
    cors = TestClient(text_app(trained_text_run, zh_predictor, host="127.0.0.1",
                               cors_origins=["http://evil.example"]), base_url="http://127.0.0.1:8000")
    r = cors.post("/v1/predict", files={"inputs": (None, ZH[0])}, headers=evil)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://evil.example"
    # bound to every interface with no --allowed-host: any Host is answered (documented)
    wide = TestClient(text_app(trained_text_run, zh_predictor, host="0.0.0.0"), base_url="http://10.1.2.3:8000")
    assert wide.get("/v1/models", headers={"host": "models.lan"}).status_code == 200


def _http(host, port, head: bytes, body: bytes = b"", timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(head + body)
    return s


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        out += b"<timeout: still open>"
    return out


def test_stalled_uploads_get_408_and_are_disconnected(trained_text_run, zh_predictor, monkeypatch):
    from luban.serve.protocol import HeaderDeadline

    monkeypatch.setattr(HeaderDeadline, "timeout", 1.0)  # what `luban serve --body-timeout 1` sets
    app = text_app(trained_text_run, zh_predictor, host="127.0.0.1", body_timeout=1.0)
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    with running(app, http=HeaderDeadline) as (host, port):
        start = time.time()
        stalled = [_http(host, port, head, b'{"inputs": ["') for _ in range(30)]  # a slowloris: bodies never end
        replies = [_read_all(s) for s in stalled]
        elapsed = time.time() - start
        for r in replies:  # each is answered 408 and closed by the server (recv saw the end of the stream)
            assert r.startswith(b"HTTP/1.1 408 ") and b"connection: close" in r.lower() and b"body_timeout" in r, r
        assert elapsed < 8, elapsed
        # a body trickling in, one byte a second, is cut at the same deadline
        trickle = _http(host, port, head)
        for ch in b'{"inputs": ["':
            try:
                trickle.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.3)
        assert _read_all(trickle).startswith(b"HTTP/1.1 408 ")
        # the server still answers complete requests, at once
        ok = json.dumps({"inputs": ZH[:1]}).encode()
        head = head.replace(b"200", str(len(ok)).encode()).replace(b"Host:", b"Connection: close\r\nHost:")
        whole = _http(host, port, head, ok)
        assert _read_all(whole).startswith(b"HTTP/1.1 200 ")
        # headers that never end (the classic slowloris), a connection that sends nothing, and a second request
        # on a kept-alive connection that stalls in its headers: each closed without an answer
        start = time.time()
        silent = [_http(host, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ") for _ in range(20)]
        silent.append(_http(host, port, b""))
        kept = _http(host, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert all(_read_all(s) == b"" for s in silent + [kept])
        assert time.time() - start < 8
        for s in stalled + silent + [trickle, whole, kept]:
            s.close()


# ------------------------------------------------------------------------------------------------ batching


def test_concurrent_requests_share_forward_passes_and_get_their_own_results(trained_text_run):
    p = luban.load(trained_text_run["run"])
    texts = [f"{a}{n}{w}" for a in ("这个", "那个", "我的", "他们的") for n in ("手机", "酒店", "电影", "餐厅")
             for w in ("很好", "真差")]
    expected = {t: p.predict([t])[0] for t in texts}
    app = create_app(settings=ServeSettings(runs=[str(trained_text_run["run"])], max_wait_ms=30.0,
                                            max_batch_size=64))
    results, batch_sizes = {}, []
    with TestClient(app) as c:
        def call(t):
            r = c.post("/v1/predict", json={"inputs": [t]})
            results[t] = r.json()["predictions"]
            batch_sizes.append(int(r.headers["x-batch-size"]))

        threads = [threading.Thread(target=call, args=(t,)) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = app.state.registry.models[trained_text_run["run"].name].batcher.stats
        metrics = c.get("/metrics").text
    assert max(batch_sizes) > 1 and stats.max_requests > 1, batch_sizes
    assert stats.batches < len(texts)
    for t in texts:
        got = results[t]
        assert len(got) == 1 and got[0]["label"] == expected[t]["label"]
        assert got[0]["probabilities"] == pytest.approx(expected[t]["probabilities"], abs=1e-5)
    assert "luban_batch_requests_bucket" in metrics


def test_batcher_attributes_errors_queues_and_drops_cancelled_callers():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def fn(inputs, options):
        calls.append(list(inputs))
        time.sleep(0.02)
        for i, x in enumerate(inputs):
            if x == "bad":
                raise ValueError(f"input {i + 1}: bad")
        return [{"x": x, "name": f"input {i + 1}", **options} for i, x in enumerate(inputs)]

    async def main():
        b = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch_size=8, max_wait_ms=20, max_queue=6)
        ok = asyncio.ensure_future(b.submit(["a", "b"]))
        bad = asyncio.ensure_future(b.submit(["c", "bad"]))
        other = asyncio.ensure_future(b.submit(["d"], {"top_k": 1}))  # other options: not merged
        res = await asyncio.gather(ok, bad, other, return_exceptions=True)
        assert res[0][0] == [{"x": "a", "name": "input 1"}, {"x": "b", "name": "input 2"}]
        assert isinstance(res[1], ValueError) and str(res[1]) == "input 2: bad"  # the caller's own index
        assert res[2][0] == [{"x": "d", "name": "input 1", "top_k": 1}]
        assert calls[0] == ["a", "b", "c", "bad"]  # merged first, then each request alone
        merged = await asyncio.gather(b.submit(["e"]), b.submit(["f"]))
        assert merged[1][0] == [{"x": "f", "name": "input 1"}] and merged[1][1] == 2  # renamed to its own index
        # a full queue refuses at once; a caller that gives up is dropped before its forward pass
        first = asyncio.ensure_future(b.submit(["g"] * 5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(["h"] * 3)
        slow = asyncio.ensure_future(b.submit(["never"]))
        await asyncio.sleep(0)
        slow.cancel()
        await first
        await asyncio.sleep(0.05)
        assert ["never"] not in calls and not any("never" in c for c in calls)
        await b.close()

    asyncio.run(main())


class _Slow:
    """A predictor that takes its time (to fill queues and hit timeouts)."""

    def __init__(self, p, seconds):
        self._p, self._seconds = p, seconds

    def __getattr__(self, name):
        return getattr(self._p, name)

    def predict(self, inputs, **kw):
        time.sleep(self._seconds)
        return self._p.predict(inputs, **kw)


def test_back_pressure_503_and_timeouts_504(trained_text_run):
    run = str(trained_text_run["run"])
    slow = _Slow(luban.load(run), 0.3)
    app = create_app(settings=ServeSettings(runs=[run], max_batch_size=1, max_queue=2, max_wait_ms=0, warmup=False),
                     predictors={run: slow})
    codes, retry = [], []
    with TestClient(app) as c:
        def call():
            r = c.post("/v1/predict", json={"inputs": ["很好"]})
            codes.append(r.status_code)
            if r.status_code == 503:
                retry.append(r.headers.get("retry-after"))
                assert_error(r, 503, "queue_full")

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 'luban_rejected_total{model="zh"}' in c.get("/metrics").text
    assert 200 in codes and 503 in codes and all(r and int(r) >= 1 for r in retry)

    app = create_app(settings=ServeSettings(runs=[run], request_timeout=0.05, warmup=False), predictors={run: slow})
    with TestClient(app) as c:
        assert_error(c.post("/v1/predict", json={"inputs": ["很好"]}), 504, "timeout")


# ------------------------------------------------------------------------------------------------ schemathesis


def test_schemathesis_finds_no_server_errors(runs):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(settings=ServeSettings(runs=[str(p) for p in runs.values()], max_tokens=8, max_n=2,
                                            max_images=4, max_k=20, max_inputs=8, max_text_chars=200,
                                            max_image_pixels=10_000, max_audio_seconds=2.0))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen, calls, statuses = 0, [0], set()
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=20, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            calls[0] += 1
            statuses.add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.status_code,
                                                response.text[:500])

        check()
        seen += 1
    assert seen >= 10 and calls[0] >= 5 * seen, (seen, calls)
    assert {200, 422} <= statuses and 400 in statuses, statuses  # it reached the models and their checks


# ------------------------------------------------------------------------------------------------ playground


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, **config):
    """`app` served by uvicorn on a free local port in a thread; yields (host, port)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_playground_in_headless_chromium(runs):
    playwright = pytest.importorskip("playwright.sync_api")

    from test_token_classification import ner_config, ner_rows

    out = runs["lm"].parent
    tagger = luban.train(ner_config(out, "ner", write_jsonl(out.parent / "ner.jsonl", ner_rows(200, 0))), quiet=True)
    app = create_app(settings=ServeSettings(runs=[str(runs["text"]), str(runs["lm"]), str(tagger)],
                                            api_keys=["pw-key"], host="127.0.0.1"))  # Host and Origin checked
    outside = []
    with running(app) as (host, port):
        base = f"http://{host}:{port}"
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            own = (base, f"http://localhost:{port}/", "data:", "blob:")
            page.on("request", lambda r: None if r.url.startswith(own) else outside.append(r.url))
            page.goto(base + "/")
            page.wait_for_selector("#error:not([hidden])")  # the key is missing: the page says so
            page.fill("#api-key", "pw-key")
            page.dispatch_event("#api-key", "change")
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("article.model").count() == 3
            card = page.locator("#model-zh")
            assert card.locator("[data-panel=text]").count() == 1
            card.locator("textarea").fill("这个手机非常好\n那个酒店真差啊")
            card.locator("button", has_text="Predict").click()
            page.wait_for_selector("#model-zh .prediction >> nth=1")
            shown = card.locator(".out").inner_text()
            expected = luban.load(runs["text"]).predict(["这个手机非常好", "那个酒店真差啊"])
            for p in expected:
                assert p["label"] in shown and f"{p['score'] * 100:.1f}%" in shown
            ner = page.locator("#model-ner")  # entities marked in the text, with their types
            ner.locator("textarea").fill("jordan flew to  georgia today")
            ner.locator("button", has_text="Predict").click()
            page.wait_for_selector("#model-ner .tagged mark >> nth=1")
            marks = ner.locator(".tagged mark")
            assert [marks.nth(i).get_attribute("data-type") for i in range(2)] == ["PER", "LOC"]
            assert marks.nth(1).inner_text().startswith("georgia")
            assert ner.locator(".tagged").inner_text().replace("\n", "").startswith("jordanPER flew to")
            chat = page.locator("#model-lm")
            assert chat.locator("[data-panel=chat] input[type=range]").count() == 5
            # the sliders start at the run's own generation settings (max_new_tokens 40, temperature 0.8)
            assert chat.locator("input[name=max_tokens]").input_value() == "40"
            assert chat.locator("input[name=temperature]").input_value() == "0.8"
            chat.locator("textarea").fill("the cat")
            chat.locator("button", has_text="Send").click()
            page.wait_for_selector("#model-lm .usage:has-text('tokens')", timeout=30000)
            assert chat.locator(".msg.assistant .reply").inner_text().strip()
            page.goto(base + "/docs")  # Swagger UI renders from the app's own files (no CDN)
            page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/v1/predict']", timeout=30000)
            assert "luban" in page.locator(".swagger-ui .info .title").inner_text()
            # a page of another origin (localhost is not 127.0.0.1 to a browser) posting a form to the API: 403
            page.goto(f"http://localhost:{port}/healthz")
            page.evaluate("""url => { const f = document.createElement("form"); f.method = "POST"; f.action = url;
                f.enctype = "multipart/form-data"; const i = document.createElement("input"); i.name = "inputs";
                i.value = "这个手机非常好"; f.appendChild(i); document.body.appendChild(f); f.submit(); }""",
                          base + "/v1/predict")
            page.wait_for_url(base + "/v1/predict")
            assert "cross_origin" in page.content() and "--cors-origin" in page.content()
            browser.close()
    assert not outside, outside


# ------------------------------------------------------------------------------------------------ the CLI server


def test_cli_serve_loads_then_reports_ready_and_drains_on_sigterm(runs, tmp_path):
    import signal

    import httpx

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "luban", "serve", str(runs["lm"]), str(runs["text"]),
                             "--port", str(port), "--graceful-timeout", "20"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the server never became ready: " + (tmp_path / "server.log").read_text())
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        got = {}

        def long_stream():
            with httpx.stream("POST", base + "/v1/completions", timeout=60,
                              json={"model": "lm", "prompt": "the", "max_tokens": 1500, "stream": True,
                                    "temperature": 0}) as r:
                got["status"] = r.status_code
                got["text"] = "".join(r.iter_text())
                got["end"] = time.time()

        t = threading.Thread(target=long_stream)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # graceful: the stream in flight finishes
        sent = time.time()
        t.join(60)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert got["status"] == 200 and got["end"] > sent  # it was in flight when the signal came, and completed
    events = sse_events(got["text"])
    assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop") and len(events) > 100
    out = (tmp_path / "server.log").read_text()
    assert "ready: 2 model(s)" in out


def test_cli_serve_errors(tmp_path, capsys):
    from luban.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--api-keys-file", str(tmp_path / "nope.txt")]) == 2
    assert "--api-keys-file" in capsys.readouterr().err


def test_cli_serve_on_a_corrupt_run_is_one_error_line_and_exit_code_2(trained_text_run, tmp_path, capsys):
    from luban.cli import main

    bad_config = tmp_path / "bad_config"
    shutil.copytree(trained_text_run["run"], bad_config)
    (bad_config / "config.yaml").write_text("task: text_classification\nmodel: {type: nope}\n", encoding="utf-8")
    assert main(["serve", str(bad_config), "--port", str(_free_port())]) == 2  # refused before the server starts
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.yaml" in err and "Traceback" not in err

    bad_model = tmp_path / "bad_model"  # valid config, damaged weights: found while loading, after the port is bound
    shutil.copytree(trained_text_run["run"], bad_model)
    for f in (bad_model / "model").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    # the server stops itself cleanly (it used to SIGTERM its own process: exit code 143)
    assert main(["serve", str(bad_model), "--port", str(_free_port())]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: loading the models failed:"), errors
    assert "corrupted model files" in errors[0]


def test_cli_serve_takes_api_keys_from_the_environment_and_warns_about_api_key(trained_text_run, tmp_path,
                                                                                capsys, monkeypatch):
    import luban.serve.app as serve_app
    from luban.cli import main
    from luban.serve.settings import env_api_keys

    assert env_api_keys({"LUBAN_API_KEYS": "a-key, b-key\nc-key\n"}) == ["a-key", "b-key", "c-key"]
    assert env_api_keys({}) == []
    with pytest.raises(luban.LubanError, match="LUBAN_API_KEYS"):
        env_api_keys({"LUBAN_API_KEYS": " , \n"})
    seen = {}
    monkeypatch.setattr(serve_app, "serve", lambda runs, host, port, settings, **kw: seen.update(
        runs=runs, host=host, settings=settings))
    monkeypatch.setenv("LUBAN_API_KEYS", "env-1,env-2")
    run = str(trained_text_run["run"])
    assert main(["serve", run, "--allowed-host", "models.lan", "--body-timeout", "5", "--max-json-depth", "20"]) == 0
    s = seen["settings"]
    assert s.api_keys == ["env-1", "env-2"] and s.allowed_hosts == ["models.lan"]
    assert (s.body_timeout, s.max_json_depth, s.max_connections) == (5.0, 20, 1024)
    assert capsys.readouterr().err == ""  # keys from the environment: nothing to warn about
    assert main(["serve", run, "--api-key", "visible"]) == 0
    assert seen["settings"].api_keys == ["env-1", "env-2", "visible"]
    err = capsys.readouterr().err
    assert err.startswith("warning: --api-key is visible") and "$LUBAN_API_KEYS" in err
    assert main(["serve", run, "--body-timeout", "0"]) == 2
    assert "--body-timeout must be > 0" in capsys.readouterr().err


def test_serving_security_doc_names_real_flags_and_codes():
    """docs/serving-security.md: each `luban serve` command parses, each flag and error code it names exists."""
    import shlex

    from luban.cli import build_parser

    doc = (Path(__file__).resolve().parent.parent / "docs" / "serving-security.md").read_text(encoding="utf-8")
    commands = [ln.split("#")[0] for ln in doc.splitlines() if ln.startswith("luban serve ")]
    assert len(commands) >= 4
    parser = build_parser()
    for cmd in commands:
        args = parser.parse_args(shlex.split(cmd)[1:])
        assert args.fn.__name__ == "_cmd_serve", cmd
    serve_flags = {o for a in parser._subparsers._group_actions[0].choices["serve"]._actions for o in a.option_strings}
    named = set(re.findall(r"`(--[a-z-]+)", doc))
    assert named and named <= serve_flags, named - serve_flags
    src = "".join(p.read_text(encoding="utf-8") for p in (Path(luban.__file__).parent / "serve").glob("*.py"))
    codes = re.findall(r"\| \d{3}[^|]*\| `([a-z_]+)`", doc)
    assert len(codes) >= 7, codes
    for code in codes:
        assert f'"{code}"' in src, code
