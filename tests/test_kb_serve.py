"""Grounded answers end to end: `luban serve RUN --kb KB` (OpenAI chat with a `citations` field, streaming and not,
the refusal below the score) and `luban ask KB --model HF_FOLDER` (tiny random models, a tiny hash encoder)."""

import json
from pathlib import Path

import pytest
from kb_fixtures import HashEncoder, base, kb_cli, kb_config, main  # skips without bm25s / faiss

pytest.importorskip("fastapi")

import luban  # noqa: E402

DOC = ("退货政策：收到商品七天内可以无理由退货。退货运费由买家承担。\n"
       "发票：下单后可在订单页面申请电子发票，三个工作日内开出。\n"
       "the cat sat on the mat. the cat likes the mat.")


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb_serve")
    (root / "faq.txt").write_text(DOC, encoding="utf-8")
    return base.build(kb_config({"docs": [str(root / "faq.txt")], "embedder": "hash", "out": str(root / "kb"),
                                 "chunk_tokens": 30, "overlap_tokens": 0, "min_score": 0.2}), HashEncoder())


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb_lm")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    quick = {"num_threads": 1, "precision": "fp32", "device": "cpu", "log_every": 100000}
    return luban.train({"task": "text_generation", "seed": 1, "data": {"train": str(corpus)},
                        "output": {"dir": str(root / "runs"), "name": "lm", "tensorboard": False},
                        "evaluation": {"baseline": False}, "preprocessing": {"tokenizer": {"type": "char"}},
                        "model": {"type": "gpt", "block_size": 512, "n_layer": 1, "n_head": 2, "n_embd": 32},
                        "trainer": {"epochs": 1, "steps_per_epoch": 5, "batch_size": 8, **quick},
                        "generation": {"sample_prompts": ["the"], "sample_tokens": 5, "max_new_tokens": 20}},
                       quiet=True)


def test_serve_chat_completions_carry_citations(kb_dir, lm_run, monkeypatch):
    from fastapi.testclient import TestClient

    from luban.serve.app import create_app
    from luban.serve.settings import ServeSettings

    monkeypatch.setattr(kb_cli, "load_encoder", lambda ref: HashEncoder())
    app = create_app(settings=ServeSettings(runs=[str(lm_run)], kb=str(kb_dir), kb_k=2))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "the cat on the mat?"}],
                                                 "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        cites = body["citations"]
        assert 1 <= len(cites) <= 2 and "cat" in cites[0]["text"]
        assert {"index", "source", "page", "start", "end", "score", "cited"} <= set(cites[0])
        assert Path(cites[0]["source"]).read_text(encoding="utf-8")[cites[0]["start"]:cites[0]["end"]] == \
            cites[0]["text"]
        content = body["choices"][0]["message"]["content"]
        assert all(f"[{x['index']}]" in content for x in cites if x["cited"])
        # streaming: citations in a chunk without choices, then the usual deltas
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "the cat on the mat?"}], "max_tokens": 6,
                "temperature": 0, "stream": True}) as s:
            events = [json.loads(line[6:]) for line in s.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        assert events[0]["choices"] == [] and events[0]["citations"][0]["text"] == cites[0]["text"]
        assert any(e.get("choices") for e in events[1:])
        # nothing near the question: no generation, the documents do not answer
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "量子引力的弦论？"}]})
        assert r.json()["citations"] == [] and "没有回答" in r.json()["choices"][0]["message"]["content"]


def test_ask_with_an_hf_folder(kb_dir, tiny_llama_chat, monkeypatch, capsys):
    monkeypatch.setattr(kb_cli, "load_encoder", lambda ref: HashEncoder())
    assert main(["ask", str(kb_dir), "发票怎么申请？", "--model", str(tiny_llama_chat), "--max-new-tokens", "5",
                 "--json"]) == 0
    out = capsys.readouterr()
    r = json.loads(out.out.strip().splitlines()[-1])
    assert r["grounded"] and "发票" in r["citations"][0]["text"]
    assert main(["ask", str(kb_dir), "x", "--model", str(kb_dir)]) == 2
    assert "neither a luban run nor a Hugging Face model folder" in capsys.readouterr().err
    assert main(["serve", "run", "--kb", str(kb_dir / "missing")]) == 2


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_playground_shows_clickable_sources(kb_dir, lm_run, monkeypatch, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    import os

    from test_serve import running

    from luban.serve.app import create_app
    from luban.serve.settings import ServeSettings

    monkeypatch.setattr(kb_cli, "load_encoder", lambda ref: HashEncoder())
    app = create_app(settings=ServeSettings(runs=[str(lm_run)], kb=str(kb_dir), kb_k=2, host="127.0.0.1"))
    with running(app) as (host, port):
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://{host}:{port}/")
            page.wait_for_selector("body[data-ready='1']")
            chat = page.locator("#model-lm")
            chat.locator("textarea").fill("the cat on the mat?")
            chat.locator("button", has_text="Send").click()
            page.wait_for_selector("#model-lm .usage:has-text('tokens')", timeout=30000)
            sources = chat.locator(".sources details")
            assert sources.count() >= 1
            assert "faq.txt" in sources.first.locator("summary").inner_text()
            assert not sources.first.evaluate("d => d.open")
            marker = chat.locator("a.marker")
            if marker.count():
                marker.first.click()  # the answer's [n] opens its source
            else:
                sources.first.locator("summary").click()
            assert chat.locator(".sources details[open] blockquote").first.inner_text().strip()
            shot = os.environ.get("LUBAN_KB_SCREENSHOT")
            page.screenshot(path=shot or str(tmp_path / "kb_playground.png"), full_page=True)
            browser.close()
