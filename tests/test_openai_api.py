"""The OpenAI API where clients need more than text: log-probabilities (completions' legacy shape with echo and
max_tokens 0, as lm-evaluation-harness sends; chat's content shape; streamed), checked against a direct forward
pass of the model and under continuous batching; tools through the chat template; refusals (400 naming the field)
of what luban does not implement; chat on a model without a chat template as plain completion; the playground's
generation defaults. Tiny random Hugging Face models (conftest), served from their folders as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("transformers")
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import luban  # noqa: E402
from luban.serve.app import create_app  # noqa: E402
from luban.serve.openai_extras import parse_tool_calls  # noqa: E402
from luban.serve.settings import ServeSettings  # noqa: E402

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                              "parameters": {"type": "object",
                                                             "properties": {"city": {"type": "string"}}}}}]


def _copy(src: Path, dst: Path, template: str | None = None, generation: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    if template is not None:
        conf = json.loads((dst / "tokenizer_config.json").read_text())
        conf["chat_template"] = template
        (dst / "tokenizer_config.json").write_text(json.dumps(conf))
        if (dst / "chat_template.jinja").exists():
            (dst / "chat_template.jinja").write_text(template)
    if generation:
        conf = json.loads((dst / "generation_config.json").read_text())
        (dst / "generation_config.json").write_text(json.dumps({**conf, **generation}))
    return dst


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_chat, tiny_gpt2):
    """Three tiny random models served straight from their folders (luban.hub.model_run: no training)."""
    from luban.hub.model_run import model_run

    tmp = tmp_path_factory.mktemp("openai_models")
    folders = {"chat": _copy(tiny_llama_chat, tmp / "chat", generation={
                   "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 30, "max_new_tokens": 24}),
               "plain": _copy(tiny_gpt2, tmp / "plain"),
               "tools": _copy(tiny_llama_chat, tmp / "tools", template=TOOLS_TEMPLATE)}
    runs = {k: model_run(str(v), root=tmp / "runs") for k, v in folders.items()}
    app = create_app(settings=ServeSettings(runs=[str(r) for r in runs.values()], max_wait_ms=2.0))
    with TestClient(app) as client:
        yield client, {k: luban.load(v, device="cpu") for k, v in runs.items()}


def _forward_logprobs(predictor, ids):
    model = predictor.task_predictor.model
    with torch.no_grad():
        logits = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0].float(), -1)


def _error(r, status=400, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param, err
    assert "Traceback" not in err["message"]
    return err


def test_echo_prompt_logprobs_match_a_forward_pass_as_lm_eval_asks(served):
    client, loaded = served
    p = loaded["plain"]
    # lm-evaluation-harness' loglikelihood request: token ids, echo, max_tokens 0 or 1, logprobs 1, greedy
    ids = p.score_prompt("the cat sat on the mat")["ids"]
    for max_tokens in (0, 1):
        r = client.post("/v1/completions", json={"model": "plain", "prompt": [ids, ids[:4]], "echo": True,
                                                 "max_tokens": max_tokens, "logprobs": 1, "temperature": 0})
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert len(choices) == 2
        lp = choices[0]["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + max_tokens and lp["token_logprobs"][0] is None
        ref = _forward_logprobs(p, ids)
        want = [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(want, abs=1e-4)
        assert all(1 <= len(t) <= 2 for t in lp["top_logprobs"][1:])  # the top one, and the token itself
        best = [float(ref[i].max()) for i in range(len(ids) - 1)]
        assert [max(t.values()) for t in lp["top_logprobs"][1:len(ids)]] == pytest.approx(best, abs=1e-4)
        assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
        assert "".join(lp["tokens"][:len(ids)]) == choices[0]["text"][:len("".join(lp["tokens"][:len(ids)]))]
        if max_tokens == 1:  # the generated (greedy) token is the most likely one after the prompt
            full = _forward_logprobs(p, ids)
            assert lp["token_logprobs"][-1] == pytest.approx(float(full[-1].max()), abs=1e-4)
    text = client.post("/v1/completions", json={"model": "plain", "prompt": "the cat", "echo": True, "max_tokens": 0,
                                                "logprobs": 0}).json()["choices"][0]
    assert text["text"] == "the cat" and text["finish_reason"] == "length"
    assert all(t is None for t in text["logprobs"]["top_logprobs"][:1])


def test_generated_logprobs_are_the_models_raw_distribution_alone_and_batched(served):
    client, loaded = served
    p = loaded["chat"]
    prompt = "hello there"
    base = {"model": "chat", "prompt": prompt, "max_tokens": 6, "logprobs": 3, "temperature": 1.3, "top_k": 5,
            "seed": 11, "repetition_penalty": 1.3}
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(4) as pool:  # four at once: decoded together by the continuous-batching scheduler
        outs = list(pool.map(lambda s: client.post("/v1/completions", json={**base, "seed": s}).json(), range(4)))
    prompt_ids = p.score_prompt(prompt)["ids"]
    for out in outs:
        c = out["choices"][0]
        lp = c["logprobs"]
        n = out["usage"]["completion_tokens"]
        assert len(lp["token_logprobs"]) == n == len(lp["tokens"]) == len(lp["top_logprobs"])
        for entry, value in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True):
            assert 1 <= len(entry) <= 4 and max(entry.values()) >= value - 1e-6  # top 3 (+ the chosen one)
    # exact check on one: greedy, the chosen ids known from a direct decode
    r = client.post("/v1/completions", json={"model": "chat", "prompt": prompt, "max_tokens": 5, "logprobs": 2,
                                             "temperature": 0}).json()["choices"][0]["logprobs"]
    ids = list(prompt_ids)
    for value, top in zip(r["token_logprobs"], r["top_logprobs"], strict=True):
        ref = _forward_logprobs(p, ids)[-1]
        assert value == pytest.approx(float(ref.max()), abs=1e-4)
        assert sorted(top.values(), reverse=True)[:2] == pytest.approx(ref.topk(2).values.tolist(), abs=1e-4)
        ids.append(int(ref.argmax()))


def _stream(client, body):
    chunks = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    return chunks


def test_streamed_completion_logprobs_with_echo_equal_the_whole_answer(served):
    client, _ = served
    body = {"model": "plain", "prompt": "the cat sat", "echo": True, "logprobs": 2, "max_tokens": 4,
            "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    tokens, values, text = [], [], ""
    for c in _stream(client, body):
        for ch in c["choices"]:
            text += ch["text"]
            if ch["logprobs"]:
                tokens += ch["logprobs"]["tokens"]
                values += ch["logprobs"]["token_logprobs"]
    assert text == whole["text"] and tokens == whole["logprobs"]["tokens"]
    assert values[0] is None and values[1:] == pytest.approx(whole["logprobs"]["token_logprobs"][1:], abs=1e-5)
    scored = _stream(client, {**body, "max_tokens": 0})  # the echo, then the finish
    assert [c["choices"][0]["finish_reason"] for c in scored] == [None, "length"]
    assert scored[0]["choices"][0]["text"] == "the cat sat"


def test_chat_logprobs_and_streamed_logprobs(served):
    client, loaded = served
    req = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0,
           "logprobs": True, "top_logprobs": 2}
    out = client.post("/v1/chat/completions", json=req).json()
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    for c in content:
        assert set(c) == {"token", "logprob", "bytes", "top_logprobs"} and len(c["top_logprobs"]) == 2
        assert c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"], abs=1e-5)  # greedy: the top one
        assert isinstance(c["bytes"], list)
    streamed = []
    with client.stream("POST", "/v1/chat/completions", json={**req, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for ch in json.loads(line[6:])["choices"]:
                    if ch.get("logprobs"):
                        streamed += ch["logprobs"]["content"]
    assert [c["logprob"] for c in streamed] == pytest.approx([c["logprob"] for c in content], abs=1e-5)
    no = client.post("/v1/chat/completions", json={**req, "logprobs": False, "top_logprobs": None}).json()
    assert no["choices"][0]["logprobs"] is None


def test_bad_logprobs_context_and_unsupported_fields_are_400s_naming_the_field(served):
    client, loaded = served
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    _error(client.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 21}),
           param="top_logprobs")
    _error(client.post("/v1/chat/completions", json={**chat, "top_logprobs": 2}), param="top_logprobs")
    _error(client.post("/v1/completions", json={"model": "chat", "prompt": "a", "logprobs": 99}), param="logprobs")
    _error(client.post("/v1/completions", json={"model": "chat", "prompt": [10**7]}), param="prompt")
    window = loaded["chat"].context_length()
    err = _error(client.post("/v1/completions", json={"model": "chat", "prompt": "hello " * (window + 5)}),
                 param="prompt")
    assert "context window" in err["message"]
    for field, value in [("response_format", {"type": "xml"}), ("logit_bias", {"5": 10}),
                         ("presence_penalty", 0.5), ("functions", [{"name": "f"}])]:
        _error(client.post("/v1/chat/completions", json={**chat, field: value}), param=field)
    assert client.post("/v1/chat/completions", json={**chat, "response_format": {"type": "text"},
                                                     "presence_penalty": 0}).status_code == 200
    err = _error(client.post("/v1/chat/completions", json={**chat, "tools": WEATHER}), param="tools")
    assert "template" in err["message"]
    _error(client.post("/v1/chat/completions", json={**chat, "model": "tools", "tools": WEATHER,
                                                     "tool_choice": "always"}), param="tool_choice")


def test_tools_render_through_the_chat_template_and_calls_are_parsed(served):
    client, loaded = served
    msgs = [{"role": "user", "content": "hi"}]
    plain = client.post("/v1/chat/completions", json={"model": "tools", "messages": msgs, "max_tokens": 4}).json()
    with_tools = client.post("/v1/chat/completions", json={"model": "tools", "messages": msgs, "max_tokens": 4,
                                                            "tools": WEATHER}).json()
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # the tools are in the prompt
    assert with_tools["choices"][0]["finish_reason"] in ("length", "stop", "tool_calls")
    # a conversation that carries a call and its result renders too
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"a\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    r = client.post("/v1/chat/completions", json={"model": "tools", "messages": follow, "max_tokens": 3,
                                                  "tools": WEATHER})
    assert r.status_code == 200, r.text
    content, calls = parse_tool_calls('ok <tool_call>\n{"name": "get_weather", "arguments": {"city": "巴黎"}}\n'
                                      '</tool_call>')
    assert content == "ok" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "巴黎"}
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    # the tags left out (as Qwen2.5-Coder-0.5B does): a reply that is only calls of the given tools
    content, calls = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Paris"}}', {"get_weather"})
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_tool_calls('{"name": "x", "arguments": {}}', {"get_weather"})[1] == []  # not one of the tools
    assert parse_tool_calls('{"a": 1}', {"get_weather"}) == ('{"a": 1}', [])


def test_chat_without_a_template_is_plain_completion(served):
    client, loaded = served
    p = loaded["plain"]
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "the cat sat"}]
    chat = client.post("/v1/chat/completions", json={"model": "plain", "messages": msgs, "max_tokens": 5,
                                                     "temperature": 0}).json()
    comp = client.post("/v1/completions", json={"model": "plain", "prompt": "the cat sat", "max_tokens": 5,
                                                "temperature": 0}).json()
    assert chat["choices"][0]["message"]["content"] == comp["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == comp["usage"]["prompt_tokens"] == len(p.score_prompt("the cat sat")["ids"])


def test_models_list_the_runs_generation_defaults_for_the_playground(served):
    client, _ = served
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    g = models["chat"]["generation"]
    assert g["temperature"] == 0.7 and g["top_p"] == 0.9 and g["top_k"] == 30 and g["max_tokens"] == 24
    assert models["chat"]["capabilities"]
    js = (Path(luban.__file__).parent / "serve" / "static" / "app.js").read_text(encoding="utf-8")
    assert "m.generation" in js


def test_a_real_model_folder_served_as_it_is_scores_like_transformers(tmp_path):
    """SmolLM2-135M-Instruct (the starter, when pulled): served straight from its folder, its echo logprobs equal a
    direct transformers forward pass and its greedy chat answer is sensible."""
    from luban.hub.catalog import cached
    from luban.hub.model_run import model_run

    folder = cached("starter-smollm2")
    if folder is None:
        pytest.skip("starter-smollm2 is not pulled (luban models pull starter-smollm2)")
    run = model_run("starter-smollm2", root=tmp_path)
    assert (run / "model" / "hf").resolve() == folder.resolve() and model_run("starter-smollm2", root=tmp_path) == run
    app = create_app(settings=ServeSettings(runs=[str(run)], max_wait_ms=2.0, warmup=False))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok("The capital of France is Paris")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    want = [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    with TestClient(app) as client:
        out = client.post("/v1/completions", json={"prompt": "The capital of France is Paris", "echo": True,
                                                   "max_tokens": 0, "logprobs": 1}).json()["choices"][0]
        assert out["logprobs"]["token_logprobs"][0] is None
        assert out["logprobs"]["token_logprobs"][1:] == pytest.approx(want, abs=1e-3)
        chat = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16,
            "temperature": 0}).json()
        assert "Paris" in chat["choices"][0]["message"]["content"]


def test_a_chat_template_that_does_not_render_is_one_clear_error(tiny_llama_chat, tiny_gpt2):
    from luban.config import TokenizerConfig
    from luban.data.chat import ChatFormatter
    from luban.data.tokenizers import build_encoder
    from luban.errors import DataError

    enc = build_encoder(TokenizerConfig(type="pretrained"), str(tiny_llama_chat))
    enc.tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    f = ChatFormatter(enc)
    with pytest.raises(DataError, match="chat template does not render.*no system role"):
        f.reply_prompt([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(DataError, match="tools"):
        ChatFormatter(build_encoder(TokenizerConfig(type="pretrained"), str(tiny_gpt2))).reply_prompt(
            [{"role": "user", "content": "b"}], tools=WEATHER)


def test_ignore_eos_generates_max_tokens_alone_and_batched(served):
    """vLLM's ignore_eos (load tests send it): every request decodes exactly max_tokens, alone or batched with
    others; it makes no sense beside a JSON schema (400)."""
    from luban.config import GenerationSettings
    from luban.tasks.text_generation import generation_config

    assert generation_config(GenerationSettings(), {"ignore_eos": True}, 2).eos_token_id is None
    assert generation_config(GenerationSettings(), {}, 2).eos_token_id == 2
    client, _ = served
    body = {"model": "chat", "prompt": "hello there", "max_tokens": 7, "temperature": 0, "ignore_eos": True}
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(4) as pool:  # decoded together by the continuous-batching scheduler
        outs = list(pool.map(lambda s: client.post("/v1/completions", json={**body, "prompt": s}).json(),
                             ["hello there", "a", "the cat sat", "x y"]))
    for out in outs:
        assert out["usage"]["completion_tokens"] == 7 and out["choices"][0]["finish_reason"] == "length"
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True,
            "response_format": {"type": "json_object"}}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 400 and "ignore_eos" in r.json()["error"]["message"]
