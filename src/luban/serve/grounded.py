"""`luban serve RUN --kb KB`: chat completions answered from a knowledge base (luban.kb.answer).

Every chat request to a chat model is grounded: the conversation's last user turns are searched in the knowledge
base, the numbered chunks go into the prompt, and the response carries them as an extra `citations` field
(index, source, page, start, end, score, cosine, text, cited) beside the [n] markers of the answer. Streaming
sends the citations in a first chunk with no choices (OpenAI clients ignore it), and a closing marker delta when
the model wrote none. Below the retrieval score the model is not called: the answer says the documents do not
answer it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from luban.errors import LubanError
from luban.kb.answer import cited, finish, ground
from luban.serve.errors import bad_request


class Grounder:
    def __init__(self, settings):
        from luban.kb.base import KnowledgeBase, read_meta
        from luban.kb.cli import load_encoder

        meta = read_meta(settings.kb)
        self.encoder = load_encoder(meta["embedder"]["ref"])
        self.kb = KnowledgeBase.open(settings.kb)
        from luban.kb.base import check_encoder

        check_encoder(self.kb.meta, self.encoder, settings.kb)
        self.k, self.mode, self.min_score = settings.kb_k, settings.kb_mode, settings.kb_min_score

    def info(self) -> dict:
        i = self.kb.info()
        return {"path": i["path"], "chunks": i["chunks"], "sources": i["sources"], "embedder": i["embedder"]["name"],
                "k": self.k, "mode": self.mode, "min_score": self.min_score if self.min_score is not None
                else i["min_score"]}

    async def complete(self, m, req, messages: list[dict], run):
        loop = asyncio.get_running_loop()
        try:
            g = await loop.run_in_executor(None, lambda: ground(self.kb, self.encoder, messages, self.k, self.mode,
                                                                self.min_score))
        except LubanError as e:
            raise bad_request(str(e), "messages", "invalid_value") from None
        if g.messages is None:
            return _refusal(m.name, g.refusal, req.stream)
        out = await run(m, req, [(None, g.messages)], chat=True)
        if not req.stream:
            cites = g.citations
            for choice in out["choices"]:
                choice["message"]["content"], cites = finish(choice["message"]["content"], g.citations)
            out["citations"] = cites
            return out
        return _stream_with_citations(out, g.citations)


def _refusal(model: str, text: str, stream: bool):
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not stream:
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "citations": []}
    from fastapi.responses import StreamingResponse

    def chunk(delta, finish_reason=None, **extra):
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})

    async def events():
        yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "citations": []})
        yield chunk({"role": "assistant", "content": text})
        yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _stream_with_citations(response, citations: list[dict]):
    """The run's event stream with the citations first and, when the answer has no [n] marker, one before the end."""
    inner = response.body_iterator

    async def events():
        yield _sse({"object": "chat.completion.chunk", "choices": [], "citations": citations})
        text, buffer, closed = [], b"", False
        async for part in inner:
            buffer += part if isinstance(part, bytes) else part.encode("utf-8")
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event[6:] if event.startswith(b"data: ") else None
                if data is not None and data != b"[DONE]":
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        obj = {}
                    for c in obj.get("choices") or []:
                        text.append((c.get("delta") or {}).get("content") or "")
                        if c.get("finish_reason") and not closed:
                            closed = True
                            answer = "".join(text)
                            marked, cites = finish(answer, citations)
                            if marked != answer:
                                extra = {**obj, "choices": [{"index": c.get("index", 0),
                                                             "delta": {"content": marked[len(answer):]},
                                                             "finish_reason": None}]}
                                yield _sse(extra)
                            yield _sse({"object": "chat.completion.chunk", "choices": [],
                                        "citations": cites})
                yield event + b"\n\n"

    from fastapi.responses import StreamingResponse

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


__all__ = ["Grounder", "cited"]
