"""OpenAI-compatible text generation: `POST /v1/completions` and `POST /v1/chat/completions`.

Works with the official `openai` client (`OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY)`): temperature,
top_p, max_tokens (or max_completion_tokens), stop, n, seed, stream (server-sent events ending with
`data: [DONE]`, with `stream_options.include_usage`), usage counts and finish_reason; luban's own top_k and
repetition_penalty are accepted too. Errors use OpenAI's shape and status codes (400 for a bad request, 401, 404
for an unknown model, 503 + Retry-After when the generation queue is full).

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

from luban.capabilities import DecodesTogether, StreamsTokens
from luban.errors import LubanError
from luban.serve.auth import require_key
from luban.serve.batching import QueueFull
from luban.serve.errors import INPUT_ERRORS, ApiError, bad_request, overloaded
from luban.serve.generation import Job
from luban.serve.models import Registry, ServedModel, registry
from luban.serve.settings import ServeSettings

FINISH = {"eos": "stop", "stop": "stop", "length": "length", None: "stop"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields luban ignores (user, metadata, ...)
    model: str | None = Field(None, description="a served model's id (optional when one model generates text)")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most (default: the run's "
                                   "generation.max_new_tokens)")
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
    logprobs: bool | int | None = None

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


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(..., description="a prompt, or a list of prompts (one choice set each)")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


router = APIRouter(dependencies=[Depends(require_key)], tags=["OpenAI-compatible"])


def knobs_for(req: _Sampling, m: ServedModel) -> dict:
    s = m.settings
    if req.logprobs:
        raise bad_request("logprobs are not supported", "logprobs", "unsupported_parameter")
    if req.n > s.max_n:
        raise bad_request(f"n = {req.n} is over the limit of {s.max_n}", "n", "n_too_large")
    max_tokens = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if max_tokens is not None and max_tokens > s.max_tokens:
        raise bad_request(f"{param} = {max_tokens} is over the limit of {s.max_tokens}", param,
                          "max_tokens_too_large")
    if max_tokens is None:
        max_tokens = min(m.predictor.default_max_new_tokens() or 256, s.max_tokens)
    knobs = {"max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
             "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "stop": req.stop}
    return {k: v for k, v in knobs.items() if v is not None}


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


async def prompt_tokens(m: ServedModel, prompt, messages) -> int:
    s = m.settings
    loop = asyncio.get_running_loop()
    try:
        n = await asyncio.wait_for(loop.run_in_executor(m.executor, m.predictor.prompt_tokens, prompt, messages),
                                   s.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, f"the request took longer than {s.request_timeout:g} s", "timeout", None,
                       "timeout") from None
    except (LubanError,) + INPUT_ERRORS as e:
        raise bad_request(str(e), "messages" if messages is not None else "prompt", "invalid_prompt") from None
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
    text, tokens, finish = [], 0, None
    try:
        while (ev := await next_event(job, it, timeout)) is not None:
            text.append(ev.get("text") or "")
            tokens += ev.get("tokens") or (1 if ev.get("token") is not None else 0)
            finish = ev.get("finish_reason") or finish
    finally:
        job.cancel()
    return {"text": "".join(text), "tokens": tokens, "finish_reason": FINISH.get(finish, "stop")}


async def run(m: ServedModel, req: _Sampling, prompts: list[tuple[str | None, list[dict] | None]], chat: bool,
              echo: bool = False):
    knobs = knobs_for(req, m)
    counts = [await prompt_tokens(m, p, msgs) for p, msgs in prompts]
    makes, where = [], []
    for pi, (p, msgs) in enumerate(prompts):
        for c in range(req.n):
            seed = None if req.seed is None else req.seed + c
            makes.append(make_job(m, p, msgs, knobs, seed))
            where.append(pi)
    jobs = submit(m, makes)
    rid, created = _new_id("chatcmpl" if chat else "cmpl"), int(time.time())
    if req.stream:
        return await stream(m, req, jobs, where, prompts, counts, rid, created, chat, echo)
    try:
        results = await asyncio.gather(*(collect(j, m.settings.request_timeout) for j in jobs))
    finally:
        for j in jobs:
            j.cancel()
    choices = []
    for i, r in enumerate(results):
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": r["text"]},
                            "finish_reason": r["finish_reason"], "logprobs": None})
        else:
            prefix = prompts[where[i]][0] if echo else ""
            choices.append({"index": i, "text": prefix + r["text"], "finish_reason": r["finish_reason"],
                            "logprobs": None})
    completion = sum(r["tokens"] for r in results)
    prompt_total = sum(counts)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": m.name, "system_fingerprint": None, "choices": choices,
            "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion,
                      "total_tokens": prompt_total + completion}}


async def stream(m: ServedModel, req, jobs: list[Job], where, prompts, counts, rid, created, chat, echo):
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

    def chunk(i, text=None, finish=None, role=False):
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}
        return _sse({"id": rid, "object": obj, "created": created, "model": m.name, "system_fingerprint": None,
                     "choices": [choice]})

    async def events():
        queue: asyncio.Queue = asyncio.Queue()
        tokens = [0] * len(jobs)

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
            for i in range(len(jobs)):
                if chat:
                    yield chunk(i, role=True)
                elif echo:
                    yield chunk(i, prompts[where[i]][0])
            tasks = [asyncio.ensure_future(pump(i)) for i in range(len(jobs))]
            done, finish = 0, [None] * len(jobs)
            while done < len(jobs):
                i, ev = await queue.get()
                if isinstance(ev, ApiError):
                    yield _sse(ev.body())
                    done += 1
                    continue
                if ev is None:
                    yield chunk(i, None, FINISH.get(finish[i], "stop"))
                    done += 1
                    continue
                tokens[i] += ev.get("tokens") or (1 if ev.get("token") is not None else 0)
                if ev.get("finish_reason"):
                    finish[i] = ev["finish_reason"]
                if ev.get("text"):
                    yield chunk(i, ev["text"])
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
    messages = [{"role": "system" if x.role == "developer" else x.role, "content": x.text()}
                for x in req.messages]
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
    return await run(m, req, prompts, chat=True)


@router.post("/v1/completions", summary="text completion (OpenAI-compatible, streaming with stream: true)")
async def completions(req: CompletionRequest, reg: Registry = Depends(registry)):
    m = reg.model_for(req.model, "generate_text")
    s = m.settings
    if req.suffix:
        raise bad_request("suffix is not supported", "suffix", "unsupported_parameter")
    if req.best_of not in (None, req.n):
        raise bad_request("best_of is not supported (leave it out, or equal to n)", "best_of",
                          "unsupported_parameter")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise bad_request("prompt: give at least one prompt", "prompt", "invalid_value")
    if len(prompts) * req.n > s.max_n * 4:
        raise bad_request(f"{len(prompts)} prompts x n = {req.n} is too many choices for one request", "prompt",
                          "too_many_choices")
    for p in prompts:
        check_chars(s, p, "prompt")
    if req.echo and req.stream and len(prompts) > 1:
        raise bad_request("echo with several prompts is not supported when streaming", "echo",
                          "unsupported_parameter")
    return await run(m, req, [(p, None) for p in prompts], chat=False, echo=req.echo)
