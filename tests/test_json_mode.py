"""JSON-constrained decoding (luban.generation.constrained, llguidance): a tiny random causal LM forced to JSON
writes parseable JSON, and schema-valid objects under a schema, alone, under continuous batching beside free rows
and streamed; OpenAI's response_format (json_object, json_schema) and forced tool calls through the `openai`
client; 400 for a bad schema; `luban generate --json-object / --json-schema`."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

pytest.importorskip("llguidance")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import luban  # noqa: E402
from luban import cli  # noqa: E402
from luban.serve.app import create_app  # noqa: E402
from luban.serve.settings import ServeSettings  # noqa: E402

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 4},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pet": {"enum": ["cat", "dog", "none"]},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
          "required": ["name", "age", "pet", "tags"], "additionalProperties": False}

SMALL = {"type": "object", "properties": {"pet": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
         "required": ["pet", "ok"], "additionalProperties": False}

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                              "parameters": {"type": "object",
                                                             "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                                            "days": {"type": "integer",
                                                                                     "minimum": 1, "maximum": 7}},
                                                             "required": ["city", "days"],
                                                             "additionalProperties": False}}},
           {"type": "function", "function": {"name": "get_time", "parameters": {
               "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
               "additionalProperties": False}}}]

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _valid(obj, schema) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(obj, schema)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_chat):
    """The tiny random LLaMA (conftest) served from its folder as it is, its template rendering tools."""
    from luban.hub.model_run import model_run

    tmp = tmp_path_factory.mktemp("json_mode")
    folder = shutil.copytree(tiny_llama_chat, tmp / "chat")
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    conf["chat_template"] = TOOLS_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    if (folder / "chat_template.jinja").exists():
        (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return model_run(str(folder), root=tmp / "runs")


@pytest.fixture(scope="module")
def predictor(run):
    return luban.load(run, device="cpu")


@pytest.fixture(scope="module")
def client(run):
    app = create_app(settings=ServeSettings(runs=[str(run)], max_wait_ms=2.0))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def oai(client):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


@pytest.mark.usefixtures("one_thread")  # tiny models decode faster on one torch thread
def test_a_random_model_forced_to_a_schema_writes_valid_objects(predictor):
    free = predictor.generate_text("the cat", max_new_tokens=20, temperature=1.0, seed=0)
    with pytest.raises(json.JSONDecodeError):  # the random model left alone does not write JSON
        json.loads(free["text"])
    for seed in range(2):
        r = predictor.generate_text("the cat", max_new_tokens=80, temperature=1.0, seed=seed, json_schema=PERSON)
        assert r["finish_reason"] == "eos", r  # the grammar ends the object; OpenAI's "stop"
        _valid(json.loads(r["text"]), PERSON)
        assert list(json.loads(r["text"])) == list(PERSON["properties"])  # written in the schema's order
    greedy = predictor.generate_text("hello", max_new_tokens=80, do_sample=False, json_schema=PERSON)
    _valid(json.loads(greedy["text"]), PERSON)
    streamed = "".join(predictor.stream_text("hello", max_new_tokens=80, do_sample=False, json_schema=PERSON))
    assert streamed == greedy["text"]


@pytest.mark.usefixtures("one_thread")  # tiny models decode faster on one torch thread
def test_any_json_object_and_the_length_limit(predictor):
    done = 0
    for seed in range(4):
        r = predictor.generate_text("hi", max_new_tokens=24, temperature=1.0, seed=seed,
                                    json_schema={"type": "object"})
        assert r["text"].startswith("{")
        if r["finish_reason"] == "length":  # cut by max_new_tokens: a prefix of some JSON object
            continue
        assert isinstance(json.loads(r["text"]), dict)
        done += 1
    cut = predictor.generate_text("hi", max_new_tokens=3, temperature=1.0, seed=0, json_schema=PERSON)
    assert cut["finish_reason"] == "length" and cut["tokens"] == 3
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut["text"])
    with pytest.raises(luban.LubanError, match="json_schema"):
        predictor.generate_text("hi", json_schema={"type": "nonsense"})
    with pytest.raises(luban.LubanError, match="beam search"):
        predictor.generate_text("hi", json_schema=PERSON, num_beams=2)


@pytest.mark.usefixtures("one_thread")  # tiny models decode faster on one torch thread
def test_constrained_and_free_rows_share_a_batch_each_as_it_is_alone(predictor):
    requests = [{"prompt": "the cat", "max_new_tokens": 10, "temperature": 1.0, "seed": 1},
                {"prompt": "the cat", "max_new_tokens": 40, "temperature": 1.0, "seed": 2, "json_schema": SMALL},
                {"prompt": "hello world", "max_new_tokens": 20, "do_sample": False, "json_schema": {"type": "object"}}]
    gen = predictor.task_predictor.generator
    batch = gen.batch(requests)
    texts, sizes = {i: "" for i in range(len(requests))}, []
    while not batch.done:
        for i, ev in batch.step():
            assert not isinstance(ev, Exception), ev
            texts[i] += ev["text"]
        sizes += batch.forward_sizes
    assert max(sizes) >= 3  # rows advanced together in one forward
    for i, r in enumerate(requests):
        alone = gen.run(**{k: v for k, v in r.items()})
        assert texts[i] == alone["text"], i
    _valid(json.loads(texts[1]), SMALL)


def test_openai_response_format_json_object_and_json_schema(oai, client):
    msgs = [{"role": "user", "content": "a person as JSON"}]
    r = oai.chat.completions.create(model="chat", messages=msgs, max_tokens=80, seed=3,
                                    response_format={"type": "json_schema", "json_schema": {
                                        "name": "person", "schema": PERSON, "strict": True}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    _valid(json.loads(choice.message.content), PERSON)
    r = oai.chat.completions.create(model="chat", messages=msgs, max_tokens=40, temperature=0, n=1,
                                    response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].finish_reason == "length"
    cut = oai.chat.completions.create(model="chat", messages=msgs, max_tokens=2, seed=0,
                                      response_format={"type": "json_schema", "json_schema": {
                                          "name": "person", "schema": PERSON}})
    assert cut.choices[0].finish_reason == "length"
    # streamed: the pieces join to the same schema-valid object as the whole answer
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    whole = oai.chat.completions.create(model="chat", messages=msgs, max_tokens=80, temperature=0,
                                        response_format=fmt).choices[0].message.content
    chunks = list(oai.chat.completions.create(model="chat", messages=msgs, max_tokens=80, temperature=0,
                                              response_format=fmt, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    _valid(json.loads(whole), PERSON)
    # /v1/completions takes response_format too (a luban extension)
    body = {"model": "chat", "prompt": "the cat", "max_tokens": 80, "seed": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}
    comp = client.post("/v1/completions", json=body).json()
    assert comp["choices"][0]["finish_reason"] == "stop"
    _valid(json.loads(comp["choices"][0]["text"]), PERSON)


def test_concurrent_constrained_and_free_requests_are_served_together(oai):
    out: dict[int, object] = {}

    def ask(i):
        fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}} if i % 2 else None
        kw = {"response_format": fmt} if fmt else {}
        out[i] = oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"n{i}"}],
                                             max_tokens=120 if fmt else 15, seed=i, **kw).choices[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (1,):
        assert out[i].finish_reason == "stop", out[i].message.content
        _valid(json.loads(out[i].message.content), PERSON)


def test_bad_schemas_are_400s_naming_the_field(client):
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for fmt, param in [({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                        "response_format.json_schema.schema"),
                       ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
                        "response_format.json_schema.schema"),
                       ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
                       ({"type": "json_schema"}, "response_format.json_schema"),
                       ({"type": "xml"}, "response_format")]:
        r = client.post("/v1/chat/completions", json={**chat, "response_format": fmt})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and "Traceback" not in err["message"], err
    r = client.post("/v1/completions", json={"model": "chat", "prompt": "a", "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": 3}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema", r.text
    r = client.post("/v1/chat/completions", json={**chat, "tools": WEATHER, "tool_choice": {
        "type": "function", "function": {"name": "nope"}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text
    assert client.post("/v1/chat/completions", json={**chat, "response_format": {"type": "text"}}).status_code == 200


def test_forced_tool_calls_follow_the_parameters_schema(oai):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    for choice, names in [("required", {"get_weather", "get_time"}),
                          ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})]:
        for seed in range(2):
            r = oai.chat.completions.create(model="chat", messages=msgs, tools=WEATHER, tool_choice=choice,
                                            max_tokens=60, seed=seed).choices[0]
            assert r.finish_reason == "tool_calls", r
            call = r.message.tool_calls[0].function
            assert call.name in names
            params = next(t for t in WEATHER if t["function"]["name"] == call.name)["function"]["parameters"]
            _valid(json.loads(call.arguments), params)
    stream = list(oai.chat.completions.create(model="chat", messages=msgs, tools=WEATHER, tool_choice="required",
                                              max_tokens=60, seed=0, stream=True))
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "tool_calls"


def test_cli_generate_json_object_and_schema(run, tmp_path, capsys):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--json-schema", str(schema),
                     "--max-new-tokens", "80", "--seed", "0"]) in (0, None)
    out = capsys.readouterr().out.strip()
    _valid(json.loads(out), PERSON)
    assert cli.main(["generate", str(run), "--prompt", "hi", "--json-object", "--json", "--max-new-tokens", "30",
                     "--greedy"]) in (0, None)
    r = json.loads(capsys.readouterr().out.strip())
    assert r["text"].startswith("{") and r["finish_reason"] in ("eos", "length")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "nonsense"}')
    assert cli.main(["generate", str(run), "--prompt", "hi", "--json-schema", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--json-schema" in err and str(bad) in err and "Traceback" not in err
    assert cli.main(["generate", str(run), "--prompt", "hi", "--json-schema", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


class _Chars:
    """A character vocabulary (luban's char tokenizer's shape: no Hugging Face object), id 0 the end token."""

    def __init__(self):
        self.chars = ["<eos>"] + list('{}[]",:. -0123456789abcdefghijklmnopqrstuvwxyz')
        self.vocab_size, self.eos_id, self.bos_id, self.pad_id = len(self.chars), 0, None, None

    def encode_text(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i)


@pytest.mark.usefixtures("one_thread")  # tiny models decode faster on one torch thread
def test_a_luban_gpt_with_a_character_vocabulary_batched_and_past_its_window():
    import torch

    from luban.generation.batch import BatchDecoder
    from luban.generation.constrained import Grammars
    from luban.generation.decoding import GenerationConfig
    from luban.models.gpt import GPT, GPTSizes

    chars = _Chars()
    torch.manual_seed(0)
    model = GPT(GPTSizes(vocab_size=chars.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()
    grammars = Grammars(chars, [0], lambda ids: [(chars.decode([i]), chars.decode([i]).encode()) for i in ids])
    cfg = GenerationConfig(max_new_tokens=120, temperature=1.0, eos_token_id=0, json_schema=PERSON)
    rows = [(chars.encode_text("a cat"), cfg.model_copy(update={"seed": s})) for s in range(2)]
    rows.append((chars.encode_text("a"), GenerationConfig(max_new_tokens=8, seed=9, eos_token_id=0)))
    dec = BatchDecoder(model, rows, chars.decode, constrain=lambda c: grammars.constraint(c.json_schema))
    texts, finish = ["" for _ in rows], [None] * len(rows)
    while not dec.done:
        for r, _, piece, why in dec.step():
            texts[r] += piece
            finish[r] = why or finish[r]
    for r in range(2):  # the objects outgrow the 24-token window: those rows slide, still constrained
        assert finish[r] == "eos", texts[r]
        _valid(json.loads(texts[r]), PERSON)
    assert len(max(texts[:2], key=len)) > 24
