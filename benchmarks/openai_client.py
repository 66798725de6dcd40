"""The official `openai` Python client against `luban serve` (OpenAI-compatible API), end to end.

    python benchmarks/openai_client.py                       # trains a small character GPT first
    python benchmarks/openai_client.py --run runs/char_lm_shakespeare
    python benchmarks/openai_client.py --run starter-smollm2 --embed starter-e5-small
    python benchmarks/openai_client.py --run ~/.cache/luban/models/qwen2.5-coder-0.5b-instruct

Without --run, trains examples/char_lm_shakespeare.yaml for a few steps on --data (default: tiny-shakespeare when
../shared/data/tinyshakespeare/input.txt exists, else the SST-2 training sentences, else this repository's
README). Serves it with an API key and checks, through `openai.OpenAI(base_url=.../v1)`: the model list; a chat
completion (text, usage counts, finish_reason); the same request streamed (the pieces join to the same text, the
last choice chunk carries finish_reason, the usage chunk matches); a completion with n=2 and a stop string;
seeded determinism; that errors surface as the client's typed exceptions (401, 404, 400); and what clients such as
lm-evaluation-harness need beyond text:

    logprobs       completions with echo, max_tokens 0 and token-id prompts (lm-eval's loglikelihood request): the
                   prompt's log-probabilities, the first null, the same with max_tokens 1, and (for a model folder)
                   equal to a direct transformers forward pass within 1e-3
    top_logprobs   chat with logprobs + top_logprobs 5: 5 alternatives per token, sorted, greedy = the top one
    embeddings     client.embeddings.create on --embed (a served encoder): one float vector per input, usage
    tools          chat with a get_weather tool: a model whose chat template renders tools answers a parsed
                   tool call (finish_reason tool_calls); any other model is refused with a 400 naming tools
    json_mode      response_format json_object and json_schema (constrained decoding): with finish_reason "stop" the
                   reply parses (and validates against the schema with jsonschema), streamed it joins to the same
                   text, a bad schema is a 400 naming response_format.json_schema.schema, and (on a model whose
                   template renders tools) tool_choice "required" forces a call whose arguments follow the schema

--run takes a run directory, a causal-LM model folder or a starter name (served as it is). The last line is one
JSON object: `ok: true` when every check passed, `passed: [...]` the checks that did.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def corpus(work: Path, data: str | None) -> Path:
    if data:
        return Path(data)
    shakespeare = SHARED / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        return shakespeare
    out = work / "corpus.txt"
    sst2 = SHARED / "sst2" / "train.tsv"
    if sst2.is_file():
        with open(sst2, encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        out.write_text("\n".join(r["sentence"] for r in rows[:20000]) + "\n", encoding="utf-8")
    else:
        out.write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a text-generation run (default: train a small one)")
    ap.add_argument("--data", help="a text corpus to train on (default: see the module doc)")
    ap.add_argument("--steps", type=int, default=400, help="training steps for the small run")
    ap.add_argument("--embed", help="an embedding model served beside it, for the embeddings check")
    a = ap.parse_args()

    import luban

    work = Path(tempfile.mkdtemp(prefix="luban-openai-"))
    if a.run:
        run = Path(a.run).expanduser() if Path(a.run).expanduser().exists() else Path(a.run)
    else:
        text = corpus(work, a.data)
        run = luban.train(str(ROOT / "examples" / "char_lm_shakespeare.yaml"), [
            f"data.train={text}", f"output.dir={work / 'runs'}", "output.name=char_lm", "output.tensorboard=false",
            "trainer.epochs=1", f"trainer.steps_per_epoch={a.steps}", "trainer.num_threads=1",
            "model.n_layer=2", "model.n_embd=64", "generation.sample_tokens=20"])

    from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

    port, key = free_port(), "bench-key"
    log = open(work / "server.log", "w")
    proc = start_server([str(run)], port, key, log)
    checks: dict[str, bool] = {}
    details: dict = {}
    try:
        base = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
        if not wait_ready(proc, port):
            raise SystemExit("server did not start:\n" + (work / "server.log").read_text())
        models = client.models.list()
        name = run.resolve().name if run.exists() else str(run)
        checks["models_list"] = name in [m.id for m in models.data]

        messages = [{"role": "user", "content": "ROMEO:"}]
        chat = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7, temperature=0.8)
        c0, u = chat.choices[0], chat.usage
        checks["chat_text"] = isinstance(c0.message.content, str) and c0.message.role == "assistant"
        checks["chat_usage"] = (u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
                                and (u.completion_tokens == 24 if c0.finish_reason == "length"
                                     else 0 < u.completion_tokens <= 24))
        checks["chat_finish_reason"] = c0.finish_reason in ("length", "stop")
        again = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7, temperature=0.8)
        checks["seeded"] = again.choices[0].message.content == c0.message.content

        pieces, finish, usage, chunks = [], None, None, 0
        stream = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7,
                                                temperature=0.8, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            chunks += 1
            for ch in chunk.choices:
                if ch.delta.content:
                    pieces.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
            if chunk.usage:
                usage = chunk.usage
        checks["stream_text"] = "".join(pieces) == c0.message.content and chunks > 3
        checks["stream_finish_reason"] = finish == c0.finish_reason
        checks["stream_usage"] = usage is not None and usage.completion_tokens == u.completion_tokens \
            and usage.prompt_tokens == u.prompt_tokens

        comp = client.completions.create(model=name, prompt="ROMEO:", max_tokens=12, n=2, seed=3)
        checks["completion_n"] = [c.index for c in comp.choices] == [0, 1] and comp.usage.completion_tokens > 0
        greedy = client.completions.create(model=name, prompt="ROMEO:", max_tokens=40, temperature=0)
        text = greedy.choices[0].text
        at = text[10:12] if len(text) >= 12 and text[10:12].strip() else None
        if at:
            cut = client.completions.create(model=name, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[at])
            checks["stop"] = cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(at)]

        def raises(exc, fn):
            try:
                fn()
            except exc:
                return True
            except Exception:  # noqa: BLE001
                return False
            return False

        checks["error_401"] = raises(AuthenticationError, lambda: OpenAI(base_url=base, api_key="wrong",
                                                                          max_retries=0).models.list())
        checks["error_404"] = raises(NotFoundError, lambda: client.chat.completions.create(
            model="no-such-model", messages=messages))
        checks["error_400"] = raises(BadRequestError, lambda: client.chat.completions.create(
            model=name, messages=messages, max_tokens=10**7))
        details = {"chat": c0.message.content, "usage": u.model_dump(), "finish_reason": c0.finish_reason,
                   "stream_chunks": chunks}
        details.update(logprob_checks(client, name, run, checks))
        details.update(tool_check(client, name, checks, raises))
        details.update(json_mode_check(client, name, checks))
        details.update(embedding_check(a.embed, key, work, checks))
    finally:
        stop(proc)
        log.close()
    failed = [k for k, v in checks.items() if not v]
    for k, v in checks.items():
        print(f"{'ok  ' if v else 'FAIL'} {k}")
    emit({"ok": not failed, "passed": [k for k, v in checks.items() if v], "failed": failed, "checks": len(checks),
          "run": str(run), **details})


def logprob_checks(client, name: str, run: Path, checks: dict) -> dict:
    """lm-evaluation-harness' loglikelihood request (token ids, echo, max_tokens 0/1, logprobs 1, temperature 0)
    and chat top_logprobs."""
    out: dict = {}
    try:
        text = client.completions.create(model=name, prompt="The capital of France is Paris", echo=True,
                                         max_tokens=0, logprobs=1)
        lp = text.choices[0].logprobs
        ok = (text.choices[0].text == "The capital of France is Paris" and lp.token_logprobs[0] is None
              and all(x <= 0 for x in lp.token_logprobs[1:]) and len(lp.tokens) == len(lp.text_offset))
        ids = ids_of(client, name, lp.tokens, run)
        one = client.completions.create(model=name, prompt=[ids], echo=True, max_tokens=1, logprobs=1, temperature=0)
        lp1 = one.choices[0].logprobs
        ok = ok and len(lp1.token_logprobs) == len(ids) + 1 and all(
            abs(x - y) < 1e-4 for x, y in zip(lp1.token_logprobs[1:len(ids)], lp.token_logprobs[1:], strict=True))
        greedy = max(lp1.top_logprobs[-1].values())  # the generated token is the most likely one (temperature 0)
        ok = ok and abs(lp1.token_logprobs[-1] - greedy) < 1e-4
        out["prompt_logprob_sum"] = round(sum(lp.token_logprobs[1:]), 4)
        diff = reference_diff(run, ids, lp1.token_logprobs[1:len(ids)])
        if diff is not None:
            out["logprobs_max_abs_diff_vs_transformers"] = diff
            ok = ok and diff < 1e-3
        checks["logprobs"] = ok
    except Exception as e:  # noqa: BLE001 - a failed check, reported
        checks["logprobs"], out["logprobs_error"] = False, f"{type(e).__name__}: {e}"[:300]
    try:
        chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hello."}],
                                              max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
        content = chat.choices[0].logprobs.content
        checks["top_logprobs"] = bool(content) and all(
            len(c.top_logprobs) == 5 and [t.logprob for t in c.top_logprobs] == sorted(
                [t.logprob for t in c.top_logprobs], reverse=True) and abs(c.logprob - c.top_logprobs[0].logprob) < 1e-5
            and isinstance(c.bytes, list) for c in content)
    except Exception as e:  # noqa: BLE001
        checks["top_logprobs"], out["top_logprobs_error"] = False, f"{type(e).__name__}: {e}"[:300]
    return out


def ids_of(client, name: str, tokens: list[str], run: Path) -> list[int]:
    """The prompt's token ids (as lm-eval's tokenizer gives them): from the model folder's tokenizer when there is
    one, else the scored prompt's own tokens mapped through a second echo."""
    folder = hf_folder(run)
    if folder is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return tok("The capital of France is Paris")["input_ids"]
    import luban

    return luban.load(run).score_prompt("The capital of France is Paris")["ids"]


def hf_folder(run: Path) -> Path | None:
    if (run / "config.json").is_file():
        return run
    from luban.hub.catalog import CATALOG, cached

    if str(run) in CATALOG:
        return cached(str(run))
    return run / "model" / "hf" if (run / "model" / "hf" / "config.json").is_file() else None


def reference_diff(run: Path, ids: list[int], got: list[float]) -> float | None:
    """Largest gap between the served prompt log-probabilities and a direct transformers forward pass."""
    folder = hf_folder(run)
    if folder is None:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    return round(max(abs(a - b) for a, b in zip(ref, got, strict=True)), 6)


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}]


def tool_check(client, name: str, checks: dict, raises) -> dict:
    import json

    from openai import BadRequestError

    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    try:
        r = client.chat.completions.create(model=name, messages=messages, tools=WEATHER, max_tokens=64, temperature=0)
    except BadRequestError as e:
        refused = "tools" in str(e)
        checks["tools"] = refused
        return {"tools_mode": "refused with 400 (the chat template does not render tools)" if refused else str(e)}
    c = r.choices[0]
    calls = c.message.tool_calls or []
    ok = c.finish_reason == "tool_calls" and bool(calls) and calls[0].function.name == "get_weather"
    try:
        args = json.loads(calls[0].function.arguments) if calls else None
    except ValueError:
        args = None
    checks["tools"] = ok and isinstance(args, dict) and "paris" in json.dumps(args).lower()
    return {"tools_mode": "called", "tool_call": calls[0].function.model_dump() if calls else c.message.content}


CITY = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40},
    "population_millions": {"type": "integer", "minimum": 0, "maximum": 1000},
    "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1, "maxItems": 3}},
    "required": ["city", "country", "population_millions", "landmarks"], "additionalProperties": False}


def json_mode_check(client, name: str, checks: dict) -> dict:
    """response_format json_object / json_schema by constrained decoding, streamed and not, a bad schema's 400,
    and a tool call forced by tool_choice "required" (where the chat template renders tools)."""
    import json

    from openai import BadRequestError

    out: dict = {}
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    ask = [{"role": "user", "content": "Describe Paris as JSON: the city, its country, its population in millions "
                                       "and up to three landmarks."}]
    try:
        t0 = time.perf_counter()
        obj = client.chat.completions.create(model=name, messages=ask, max_tokens=120, temperature=0,
                                             response_format={"type": "json_object"})
        c = obj.choices[0]
        ok = c.finish_reason == "length" or isinstance(json.loads(c.message.content), dict)
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
        t1 = time.perf_counter()
        r = client.chat.completions.create(model=name, messages=ask, max_tokens=120, temperature=0,
                                           response_format=fmt)
        t2 = time.perf_counter()
        s = r.choices[0]
        value = json.loads(s.message.content) if s.finish_reason == "stop" else None
        if value is not None and jsonschema is not None:
            jsonschema.validate(value, CITY)
        ok = ok and value is not None
        pieces = [ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
            model=name, messages=ask, max_tokens=120, temperature=0, response_format=fmt, stream=True) if ch.choices]
        ok = ok and "".join(pieces) == s.message.content
        try:
            client.chat.completions.create(model=name, messages=ask, max_tokens=8, response_format={
                "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}})
            ok = False
        except BadRequestError as e:
            ok = ok and "response_format.json_schema.schema" in str(e)
        out.update({"json_object": c.message.content, "json_object_finish": c.finish_reason,
                    "json_schema_reply": value if value is not None else s.message.content,
                    "json_schema_finish": s.finish_reason, "json_schema_tokens": r.usage.completion_tokens,
                    "json_schema_seconds": round(t2 - t1, 2), "json_object_seconds": round(t1 - t0, 2)})
        try:
            forced = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
                tools=WEATHER, tool_choice="required", max_tokens=64, temperature=0).choices[0]
            calls = forced.message.tool_calls or []
            args = json.loads(calls[0].function.arguments) if calls else None
            ok = ok and forced.finish_reason == "tool_calls" and isinstance(args, dict) and "city" in args
            out["forced_tool_call"] = calls[0].function.model_dump() if calls else forced.message.content
        except BadRequestError as e:  # the chat template does not render tools
            out["forced_tool_call"] = f"refused: {e}"[:200]
            ok = ok and "tools" in str(e)
        checks["json_mode"] = ok
    except Exception as e:  # noqa: BLE001 - a failed check, reported
        checks["json_mode"], out["json_mode_error"] = False, f"{type(e).__name__}: {e}"[:300]
    return out


def start_server(sources: list[str], port: int, key: str, log):
    return subprocess.Popen([sys.executable, "-m", "luban", "serve", *sources, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LUBAN_API_KEYS": key})


def wait_ready(proc, port: int, limit: float = 600) -> bool:
    """/readyz: 200 once the models are loaded and warm; False when the server exits or takes too long."""
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 while loading
            pass
        if proc.poll() is not None or time.time() - t0 > limit:
            return False
        time.sleep(0.5)


def embedding_check(embed: str | None, key: str, work: Path, checks: dict) -> dict:
    """/v1/embeddings on --embed (an encoder run or folder), served by a server of its own."""
    from openai import OpenAI

    if not embed:
        checks["embeddings"] = False
        return {"embeddings_error": "no --embed model given"}
    model = Path(embed).expanduser().resolve().name if Path(embed).expanduser().exists() else embed
    port = free_port()
    log = open(work / "embed_server.log", "w")
    proc = start_server([embed], port, key, log)
    try:
        if not wait_ready(proc, port):
            checks["embeddings"] = False
            return {"embeddings_error": "the server did not start: "
                    + (work / "embed_server.log").read_text()[-300:].strip()}
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=300)
        r = client.embeddings.create(model=model, input=["今天天气很好", "the weather is nice today"])
        vecs = [d.embedding for d in r.data]
        checks["embeddings"] = (len(vecs) == 2 and len(vecs[0]) == len(vecs[1]) > 0
                                and all(isinstance(x, float) for x in vecs[0]) and r.usage.prompt_tokens > 0
                                and [d.index for d in r.data] == [0, 1])
        return {"embedding_dim": len(vecs[0])}
    except Exception as e:  # noqa: BLE001
        checks["embeddings"] = False
        return {"embeddings_error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        stop(proc)
        log.close()


if __name__ == "__main__":
    main()
