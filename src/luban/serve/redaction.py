"""`luban serve --redact`: PII replaced in JSON requests before a route sees them and in JSON responses before they
leave (luban.data.redact). Every string value of the body is redacted except the few that name things rather than
carry text (model, role, type, ...); base64 payloads (images, audio) pass through unchanged. Streamed responses
(text/event-stream) are not buffered, so they pass through as generated: redact the prompt side, or do not stream.
"""

from __future__ import annotations

import asyncio
import json

# keys whose string values are identifiers or options, never user text
KEEP = {"model", "role", "type", "name", "object", "id", "finish_reason", "response_format", "tool_choice",
        "encoding_format", "label", "method", "kind"}


def _walk(value, texts: list[str], put):
    """Collect the redactable strings of a JSON value (with a setter each)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                if k not in KEEP and not _binary(v):
                    texts.append(v)
                    put.append((value, k))
            else:
                _walk(v, texts, put)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                if not _binary(v):
                    texts.append(v)
                    put.append((value, i))
            else:
                _walk(v, texts, put)


def _binary(s: str) -> bool:
    return s.startswith("data:") or (len(s) > 256 and " " not in s)  # a data: URL or a base64 file


def redact_json(doc, redactor):
    texts, put = [], []
    _walk(doc, texts, put)
    if texts:
        new, _ = redactor.redact_many(texts)
        for (holder, key), v in zip(put, new):
            holder[key] = v
    return doc


class RedactMiddleware:
    """Pure ASGI middleware: JSON request bodies and JSON responses of POST requests, redacted."""

    def __init__(self, app, redactor):
        self.app, self.redactor = app, redactor

    async def _redact(self, body: bytes) -> bytes | None:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None  # not JSON: the route answers it as it would
        doc = await asyncio.to_thread(redact_json, doc, self.redactor)
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if b"application/json" in headers.get(b"content-type", b""):
            client_receive = receive
            chunks, more = [], True
            while more:
                msg = await client_receive()
                if msg["type"] != "http.request":
                    return await self.app(scope, _replay(msg, client_receive), send)  # the client went away
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            new = await self._redact(body) if body else None
            receive = _replay({"type": "http.request", "body": new if new is not None else body,
                               "more_body": False}, client_receive)
        start = None
        buffered: list[bytes] = []

        async def send_redacted(msg):
            nonlocal start
            if msg["type"] == "http.response.start":
                ctype = dict((k.lower(), v) for k, v in msg.get("headers", [])).get(b"content-type", b"")
                if b"application/json" in ctype:
                    start = msg
                    return
                return await send(msg)
            if msg["type"] == "http.response.body" and start is not None:
                buffered.append(msg.get("body", b""))
                if msg.get("more_body", False):
                    return
                body = b"".join(buffered)
                new = await self._redact(body)
                body = new if new is not None else body
                hdrs = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                hdrs.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": hdrs})
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            return await send(msg)

        return await self.app(scope, receive, send_redacted)


def _replay(first: dict, rest):
    """A receive() that returns `first`, then what `rest` returns."""
    done = False

    async def receive():
        nonlocal done
        if not done:
            done = True
            return first
        return await rest()

    return receive
