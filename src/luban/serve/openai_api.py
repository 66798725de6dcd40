"""OpenAI-compatible text generation: `POST /v1/completions` and `POST /v1/chat/completions`.

Works with the official `openai` client (`OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY)`): temperature,
top_p, max_tokens (or max_completion_tokens), stop, n, seed, stream (server-sent events ending with
`data: [DONE]`, with `stream_options.include_usage`), usage counts and finish_reason; luban's own top_k and
repetition_penalty are accepted too. Text-generation runs add logprobs / top_logprobs (completions' echo with
max_tokens 0 and token-id prompts: lm-evaluation-harness' loglikelihood request), tools through the chat
template, and response_format / forced tool calls by JSON-constrained decoding (openai_extras: the shapes, tool-call
parsing, the schemas, and the 400 for fields luban does not implement). Errors use
OpenAI's shape and status codes (400 for a bad request, 401, 404 for an unknown model, 503 + Retry-After when the
generation queue is full).

Each choice is one job of the model's generation scheduler (fair round-robin decoding, see generation.py). A model
that generates text but does not chat (translation, summarization) answers a chat request from its last user
message.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from luban.capabilities import DecodesTogether, ScoresTokens, StreamsTokens
from luban.errors import LubanError
from luban.serve.auth import require_key
from luban.serve.batching import QueueFull
from luban.serve.errors import INPUT_ERRORS, ApiError, bad_request, overloaded
from luban.serve.generation import Job
from luban.serve.models import Registry, ServedModel, registry
from luban.serve.openai_extras import (Logprobs, chat_top, check_tools, completion_top, forced_call_schema,
                                       parse_tool_calls, refuse_unsupported, response_schema, template_messages)
from luban.serve.settings import ServeSettings

FINISH = {"eos": "stop", "stop": "stop", "length": "length", None: "stop"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields luban ignores (user, metadata, ...)
    model: str | None = Field(None, description="a served model's id (optional when one model generates text)")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate at most (default: the run's "
                                   "generation.max_new_tokens; 0 with echo: score the prompt only)")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=100000, description="luban extension: keep the k most likely tokens")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="luban extension")
    stop: str | list[str] | None = Field(None, description="up to 16 stop strings (cut from the output)")
    n: int = Field(1, ge=1, description="choices to generate")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same text (choice i uses seed+i)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = Field(None, description="completions: 0-20 alternatives per token; chat: true")
    ignore_eos: bool | None = Field(None, description="vLLM extension: generate max_tokens tokens whatever the "
                                    "model's end-of-sequence says (load tests)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad_request("only text content parts are supported ({\"type\": \"text\", \"text\": ...})",
                                  "messages", "unsupported_content")
            parts.append(p["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    top_logprobs: int | None = Field(None, description="0-20 most likely alternatives per token (logprobs: true)")
    tools: list[dict[str, Any]] | None = Field(None, description="functions the model may call (models whose chat "
                                               "template renders tools)")
    tool_choice: str | dict[str, Any] | None = Field(None, description="\"auto\" (default with tools), \"none\", "
                                                     "\"required\" or a named function (forced by constrained "
                                                     "decoding)")


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a prompt, a list of prompts (one choice set each), or token ids (a list, or a list of them)")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


router = APIRouter(dependencies=[Depends(require_key)], tags=["OpenAI-compatible"])


def knobs_for(req: _Sampling, m: ServedModel, top: int | None = None) -> dict:
    """The decoding knobs of a request; `top`: log-probabilities with that many alternatives (None: none)."""
    s = m.settings
    refuse_unsupported(req.model_extra or {}, isinstance(req, ChatRequest))
    if top is not None and not m.predictor.supports(ScoresTokens):
        raise bad_request(f"model {m.name!r} does not give log-probabilities", "logprobs", "unsupported_parameter")
    if req.ignore_eos and not m.predictor.supports(ScoresTokens):
        raise bad_request(f"model {m.name!r} does not take ignore_eos (causal language models do)", "ignore_eos",
                          "unsupported_parameter")
    if req.n > s.max_n:
        raise bad_request(f"n = {req.n} is over the limit of {s.max_n}", "n", "n_too_large")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and max_tokens > s.max_tokens:
        raise bad_request(f"{param} = {max_tokens} is over the limit of {s.max_tokens}", param,
                          "max_tokens_too_large")
    if max_tokens is None:
        max_tokens = min(m.predictor.default_max_new_tokens() or 256, s.max_tokens)
    knobs = {"max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
             "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "stop": req.stop, "logprobs": top,
             "json_schema": json_schema(req, m), "ignore_eos": req.ignore_eos or None}
    return {k: v for k, v in knobs.items() if v is not None}


def json_schema(req: _Sampling, m: ServedModel) -> dict | None:
    """The schema decoding follows: response_format (chat, and on /v1/completions as a luban extension), or a
    tool call forced by tool_choice (openai_extras)."""
    fmt = response_schema((req.model_extra or {}).get("response_format"))
    forced = forced_call_schema(check_tools(req.tools, req.tool_choice), req.tool_choice) \
        if isinstance(req, ChatRequest) else None
    if fmt is not None and forced is not None:
        raise bad_request("response_format does not combine with a forced tool call (tool_choice \"required\" or "
                          "a named function)", "response_format", "invalid_value")
    schema = fmt if fmt is not None else forced
    if schema is not None and not m.predictor.supports(ScoresTokens):
        raise bad_request(f"model {m.name!r} does not decode under a JSON grammar (causal language models do)",
                          "response_format" if fmt is not None else "tool_choice", "unsupported_parameter")
    return schema


def check_chars(s: ServeSettings, text: str, param: str):
    if len(text) > s.max_text_chars:
        raise bad_request(f"{param} of {len(text)} characters is over the limit of {s.max_text_chars}", param,
                          "context_length_exceeded")


def make_job(m: ServedModel, prompt: str | None, messages: list[dict] | None, knobs: dict, seed: int | None):
    """(start it alone, the request for decoding it together with others — None where the model cannot)"""
    p = m.predictor
    kw = dict(knobs)
    if seed is not None:
        kw["seed"] = seed
    request = ({**kw, **({"messages": messages} if messages is not None else {"prompt": prompt})}
               if p.supports(DecodesTogether) else None)
    if p.supports(StreamsTokens):
        return (lambda: p.stream_events(prompt, messages, **kw)), request

    def whole():  # no step events: one call gives the text with its token count and finish reason
        res = p.chat(messages, **kw) if messages is not None else p.generate_text(prompt, **kw)
        yield {"text": res.get("text", ""), "token": None, "finish_reason": res.get("finish_reason") or "stop",
               "tokens": res.get("tokens")}
    return whole, request


async def prompt_tokens(m: ServedModel, prompt, messages, tools=None) -> int:
    s = m.settings
    loop = asyncio.get_running_loop()
    kw = {"tools": tools} if tools else {}
    try:
        n = await asyncio.wait_for(loop.run_in_executor(m.executor, lambda: m.predictor.prompt_tokens(
            prompt, messages, **kw)), s.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, f"the request took longer than {s.request_timeout:g} s", "timeout", None,
                       "timeout") from None
    except (LubanError,) + INPUT_ERRORS as e:
        raise bad_request(str(e), "messages" if messages is not None else "prompt", "invalid_prompt") from None
    window = m.predictor.context_length()
    if window and n and n > window:
        param = "messages" if messages is not None else "prompt"
        raise bad_request(f"{param}: {n} tokens, longer than the model's context window of {window} tokens",
                          param, "context_length_exceeded")
    return int(n or 0)


def submit(m: ServedModel, makes) -> list[Job]:
    try:
        return m.generation.submit_many([make for make, _ in makes], [request for _, request in makes])
    except QueueFull as e:
        m.metrics.rejected.labels(m.name).inc()
        raise overloaded(f"model {m.name!r} is busy ({e.depth} generation requests waiting); retry shortly",
                         int(e.retry_after + 0.999)) from None


async def next_event(job: Job, it, timeout: float):
    try:
        return await asyncio.wait_for(it.__anext__(), timeout)
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        job.cancel()
        raise ApiError(504, f"no progress for {timeout:g} s", "timeout", None, "timeout") from None
    except (LubanError,) + INPUT_ERRORS as e:
        job.cancel()
        raise bad_request(str(e), None, "invalid_generation_request") from None


async def collect(job: Job, timeout: float) -> dict:
    it = job.__aiter__()
    text, tokens, finish, logprobs = [], 0, None, []
    try:
        while (ev := await next_event(job, it, timeout)) is not None:
            text.append(ev.get("text") or "")
            tokens += ev.get("tokens") or (1 if ev.get("token") is not None else 0)
            finish = ev.get("finish_reason") or finish
            if ev.get("logprob") is not None:
                logprobs.append((ev["token"], ev["logprob"]))
    finally:
        job.cancel()
    return {"text": "".join(text), "tokens": tokens, "finish_reason": FINISH.get(finish, "stop"),
            "logprobs": logprobs}


async def echoed(m: ServedModel, prompt, top: int | None, text: str | None = None) -> tuple[str, dict | None]:
    """The prompt's text as echoed (`text`, else token-id prompts decoded) and, with `top`, its tokens'
    log-probabilities."""
    if isinstance(prompt, str):
        text = prompt
    if top is None and text is not None:
        return text, None
    try:
        scored = await m.call(m.predictor.score_prompt, prompt, top or 0)
        ids = scored["ids"]
        if text is None:
            text = b"".join(b for _, b in m.predictor.token_pieces(ids)).decode("utf-8", errors="replace")
    except (LubanError,) + INPUT_ERRORS as e:
        raise bad_request(str(e), "prompt", "invalid_prompt") from None
    if top is None:
        return text, None
    return text, Logprobs(m.predictor.token_pieces).completion(list(zip(ids, scored["logprobs"], strict=True)))


def tool_message(text: str, finish: str, tools: list[dict]) -> tuple[dict, str]:
    """The assistant message of a request with tools: its tool calls parsed from the text (finish "tool_calls")."""
    content, calls = parse_tool_calls(text, {t["function"]["name"] for t in tools})
    if not calls:
        return {"role": "assistant", "content": text}, finish
    return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"


async def run(m: ServedModel, req: _Sampling, prompts: list[tuple[str | None, list[dict] | None]], chat: bool,
              echo: bool = False, tools: list[dict] | None = None, texts: list[str | None] | None = None):
    top = (chat_top(req.logprobs, req.top_logprobs) if chat else completion_top(req.logprobs))
    knobs = knobs_for(req, m, top)
    if tools:
        knobs["tools"] = tools
    counts = [await prompt_tokens(m, p, msgs, tools) for p, msgs in prompts]
    rid, created = _new_id("chatcmpl" if chat else "cmpl"), int(time.time())
    texts = texts or [None] * len(prompts)
    echoes = ([await echoed(m, p, top, t) for (p, _), t in zip(prompts, texts, strict=True)] if echo
              else [("", None)] * len(prompts))
    makes, where = [], []
    for pi, (p, msgs) in enumerate(prompts):
        for c in range(req.n):
            seed = None if req.seed is None else req.seed + c
            makes.append(make_job(m, p, msgs, knobs, seed))
            where.append(pi)
    if knobs["max_new_tokens"] == 0:  # nothing to generate: the prompt is only read (echo: scored)
        results = [{"text": "", "tokens": 0, "finish_reason": "length", "logprobs": []} for _ in makes]
    else:
        jobs = submit(m, makes)
        if req.stream:
            return await stream(m, req, jobs, where, prompts, counts, rid, created, chat, echo, top, echoes, tools)
        try:
            results = await asyncio.gather(*(collect(j, m.settings.request_timeout) for j in jobs))
        finally:
            for j in jobs:
                j.cancel()
    if req.stream:  # max_tokens 0: the echo and the finish, as a stream
        return await stream(m, req, [], where, prompts, counts, rid, created, chat, echo, top, echoes, tools,
                            results)
    shapes = Logprobs(m.predictor.token_pieces) if top is not None else None
    choices = []
    for i, r in enumerate(results):
        if chat:
            message, finish = ({"role": "assistant", "content": r["text"]}, r["finish_reason"]) if not tools \
                else tool_message(r["text"], r["finish_reason"], tools)
            choices.append({"index": i, "message": message, "finish_reason": finish,
                            "logprobs": shapes.chat(r["logprobs"]) if shapes else None})
        else:
            prefix, prompt_lp = echoes[where[i]]
            lp = None
            if shapes:
                lp = Logprobs.merge(prompt_lp, shapes.completion(r["logprobs"], len(prefix)))
            choices.append({"index": i, "text": prefix + r["text"], "finish_reason": r["finish_reason"],
                            "logprobs": lp})
    completion = sum(r["tokens"] for r in results)
    prompt_total = sum(counts)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": m.name, "system_fingerprint": None, "choices": choices,
            "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion,
                      "total_tokens": prompt_total + completion}}


async def stream(m: ServedModel, req, jobs: list[Job], where, prompts, counts, rid, created, chat, echo,
                 top=None, echoes=None, tools=None, finished: list[dict] | None = None):
    """Server-sent events. `finished`: results already whole (max_tokens 0), streamed as they are. With log-
    probabilities each chunk carries those of the tokens decoded since the last chunk; with tools the reply is
    held to its end (a tool call is only known once its text is complete) and sent as one delta."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    timeout = m.settings.request_timeout
    iters = [j.__aiter__() for j in jobs]
    # the first step of every choice runs before the response starts, so a bad request is still a clean 4xx
    try:
        firsts = [await next_event(j, it, timeout) for j, it in zip(jobs, iters, strict=True)]
    except BaseException:
        for j in jobs:
            j.cancel()
        raise
    shapes = Logprobs(m.predictor.token_pieces) if top is not None else None
    width = len(jobs) if finished is None else len(finished)
    offsets = [len(echoes[where[i]][0]) if echo else 0 for i in range(width)]

    def logprobs_of(i, entries):
        if shapes is None:
            return None
        if chat:
            return shapes.chat(entries)
        block = shapes.completion(entries, offsets[i])
        offsets[i] = shapes.end
        return block

    def chunk(i, text=None, finish=None, role=False, logprobs=None, delta=None):
        if chat:
            if delta is None:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        return _sse({"id": rid, "object": obj, "created": created, "model": m.name, "system_fingerprint": None,
                     "choices": [choice]})

    async def events():
        queue: asyncio.Queue = asyncio.Queue()
        tokens = [0] * width
        pending: list[list] = [[] for _ in range(width)]  # logprob entries not yet sent
        held = [[] for _ in range(width)]  # with tools: the whole reply

        async def pump(i):
            ev = firsts[i]
            try:
                while ev is not None:
                    await queue.put((i, ev))
                    if ev.get("finish_reason"):
                        break
                    ev = await next_event(jobs[i], iters[i], timeout)
                await queue.put((i, None))
            except ApiError as e:
                await queue.put((i, e))

        tasks: list[asyncio.Future] = []
        try:
            for i in range(width):
                if chat:
                    yield chunk(i, role=True)
                elif echo:
                    yield chunk(i, echoes[where[i]][0], logprobs=echoes[where[i]][1] if shapes else None)
            if finished is not None:
                for i, r in enumerate(finished):
                    yield chunk(i, None, r["finish_reason"])
            tasks = [asyncio.ensure_future(pump(i)) for i in range(len(jobs))]
            done, finish = (0, [None] * width) if finished is None else (width, [])
            while done < width:
                i, ev = await queue.get()
                if isinstance(ev, ApiError):
                    yield _sse(ev.body())
                    done += 1
                    continue
                if ev is None:
                    reason = FINISH.get(finish[i], "stop")
                    rest = logprobs_of(i, pending[i]) if pending[i] else None
                    if tools:
                        message, reason = tool_message("".join(held[i]), reason, tools)
                        delta = {"content": message["content"]} if message.get("content") else {}
                        if message.get("tool_calls"):
                            delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(message["tool_calls"])]
                        yield chunk(i, delta=delta, logprobs=rest)
                        rest = None
                    elif rest is not None:
                        yield chunk(i, "", logprobs=rest)
                    yield chunk(i, None, reason)
                    done += 1
                    continue
                tokens[i] += ev.get("tokens") or (1 if ev.get("token") is not None else 0)
                if ev.get("finish_reason"):
                    finish[i] = ev["finish_reason"]
                if ev.get("logprob") is not None:
                    pending[i].append((ev["token"], ev["logprob"]))
                if tools:
                    held[i].append(ev.get("text") or "")
                elif ev.get("text"):
                    entries, pending[i] = pending[i], []
                    yield chunk(i, ev["text"], logprobs=logprobs_of(i, entries) if entries else None)
            if req.stream_options and req.stream_options.include_usage:
                completion = sum(tokens)
                yield _sse({"id": rid, "object": obj, "created": created, "model": m.name, "choices": [],
                            "usage": {"prompt_tokens": sum(counts), "completion_tokens": completion,
                                      "total_tokens": sum(counts) + completion}})
            yield b"data: [DONE]\n\n"
            for t in tasks:
                await t
        finally:  # the client went away, or we are done: free the decoding slots
            for j in jobs:
                j.cancel()
            for t in tasks:
                t.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions", summary="chat completion (OpenAI-compatible, streaming with stream: true)")
async def chat_completions(req: ChatRequest, reg: Registry = Depends(registry)):
    m = reg.model_for(req.model, "generate_text")
    tools = check_tools(req.tools, req.tool_choice)
    if tools and not m.predictor.chat_tools():
        raise bad_request(f"model {m.name!r} cannot use tools: its chat template does not render them", "tools",
                          "unsupported_parameter")
    messages = template_messages(req.messages) if tools else [
        {"role": "system" if x.role == "developer" else x.role, "content": x.text()} for x in req.messages]
    check_chars(m.settings, "".join(x["content"] for x in messages), "messages")
    grounder = getattr(reg, "grounder", None)
    if grounder is not None and m.chats:  # luban serve --kb: retrieve, cite (luban.serve.grounded)
        return await grounder.complete(m, req, messages, run)
    if m.chats:
        prompts = [(None, messages)]
    else:  # translation / summarization: the last user message is the source text
        users = [x["content"] for x in messages if x["role"] == "user"]
        if not users:
            raise bad_request(f"model {m.name!r} does not chat: send a user message to transform", "messages",
                              "invalid_value")
        prompts = [(users[-1], None)]
    return await run(m, req, prompts, chat=True, tools=tools)


@router.post("/v1/completions", summary="text completion (OpenAI-compatible, streaming with stream: true)")
async def completions(req: CompletionRequest, reg: Registry = Depends(registry)):
    m = reg.model_for(req.model, "generate_text")
    s = m.settings
    if req.suffix:
        raise bad_request("suffix is not supported", "suffix", "unsupported_parameter")
    if req.best_of not in (None, req.n):
        raise bad_request("best_of is not supported (leave it out, or equal to n)", "best_of",
                          "unsupported_parameter")
    p = req.prompt
    one = isinstance(p, str) or (isinstance(p, list) and bool(p) and all(isinstance(t, int) for t in p))
    prompts = [p] if one else list(p)
    if not prompts or any(not x for x in prompts if isinstance(x, list)):
        raise bad_request("prompt: give at least one prompt (token-id prompts need at least one id)", "prompt",
                          "invalid_value")
    if len(prompts) * req.n > s.max_n * 4:
        raise bad_request(f"{len(prompts)} prompts x n = {req.n} is too many choices for one request", "prompt",
                          "too_many_choices")
    for x in prompts:
        check_chars(s, x if isinstance(x, str) else " " * len(x), "prompt")
    if req.echo and req.stream and len(prompts) > 1:
        raise bad_request("echo with several prompts is not supported when streaming", "echo",
                          "unsupported_parameter")
    texts = [x if isinstance(x, str) else None for x in prompts]
    if m.predictor.supports(ScoresTokens):  # plain completion: text prompts are never wrapped in a chat template
        try:
            prompts = [m.predictor.encode_prompt(x) if isinstance(x, str) else x for x in prompts]
        except (LubanError,) + INPUT_ERRORS as e:
            raise bad_request(str(e), "prompt", "invalid_prompt") from None
    return await run(m, req, [(p, None) for p in prompts], chat=False, echo=req.echo, texts=texts)
