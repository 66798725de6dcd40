"""What the OpenAI routes add around a generation: log-probabilities in OpenAI's two shapes, tool calls parsed from
the model's text, `response_format` and forced tool calls as the JSON schema decoding follows (constrained decoding,
luban.generation.constrained), and the refusal (400 naming the field) of request fields luban does not implement — a
field that changes what the answer means is never accepted and silently ignored.

Log-probabilities are the log-softmax of the model's raw logits (before repetition penalty, temperature, top-k /
top-p), as OpenAI and vLLM report them. /v1/completions uses the legacy shape
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` (with `echo`, the prompt's tokens first, the very first
token's log-probability null: nothing predicts it); /v1/chat/completions uses
`{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`.
"""

from __future__ import annotations

import json
import re
import uuid

from luban.errors import LubanError
from luban.serve.errors import bad_request

MAX_TOP_LOGPROBS = 20  # OpenAI: top_logprobs 0-20


def _name(text: str, raw: bytes) -> str:
    """A token's name in a logprobs listing: its text, or (part of a multi-byte character) OpenAI's "bytes:\\xNN"."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Logprobs:
    """Turns (token id, {"logprob", "top": [(id, logprob)]}) entries into OpenAI's shapes for one model."""

    def __init__(self, pieces):
        self.pieces = pieces  # ids -> [(text, bytes)] (the predictor's token_pieces)
        self._cache: dict[int, tuple[str, bytes]] = {}

    def _piece(self, ids: list[int]) -> list[tuple[str, bytes]]:
        todo = sorted({i for i in ids if i not in self._cache})
        if todo:
            self._cache.update((i, (_name(text, raw), raw))
                               for i, (text, raw) in zip(todo, self.pieces(todo), strict=True))
        return [self._cache[i] for i in ids]

    def completion(self, entries: list[tuple[int, dict | None]], offset: int = 0) -> dict:
        """The legacy shape; text_offset counts from `offset` (the returned text's start)."""
        pieces = self._piece([t for t, _ in entries])
        texts = [p[0] for p in pieces]
        tops = []
        for t, e in entries:
            if e is None:
                tops.append(None)
                continue
            top: dict[str, float] = {}
            names = self._piece([t for t, _ in e["top"]] + [t])
            for name, lp in zip(names, [lp for _, lp in e["top"]] + [e["logprob"]], strict=True):
                top.setdefault(name[0], lp)  # most likely first; the chosen token always in (as vLLM does)
            tops.append(top)
        offsets, raw = [], b""  # characters before each token (a token inside a character: where it starts)
        for _, b in pieces:
            offsets.append(offset + len(raw.decode("utf-8", errors="ignore")))
            raw += b
        self.end = offset + len(raw.decode("utf-8", errors="ignore"))
        return {"tokens": texts, "token_logprobs": [None if e is None else e["logprob"] for _, e in entries],
                "top_logprobs": tops, "text_offset": offsets}

    def chat(self, entries: list[tuple[int, dict | None]]) -> dict:
        content = []
        for (t, e), (text, raw) in zip(entries, self._piece([t for t, _ in entries]), strict=True):
            tops = [{"token": n[0], "logprob": lp, "bytes": list(n[1])}
                    for n, (_, lp) in zip(self._piece([i for i, _ in e["top"]]), e["top"], strict=True)]
            content.append({"token": text, "logprob": e["logprob"], "bytes": list(raw), "top_logprobs": tops})
        return {"content": content, "refusal": None}

    @staticmethod
    def merge(a: dict | None, b: dict) -> dict:
        """Two legacy-shape blocks one after the other (the echoed prompt's, then the completion's)."""
        if a is None:
            return b
        return {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def completion_top(logprobs) -> int | None:
    """/v1/completions' `logprobs` (an int 0-20: the chosen token's log-probability and that many alternatives)."""
    if logprobs is None or logprobs is False:
        return None
    if logprobs is True or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} on /v1/completions "
                          f"(found {logprobs!r})", "logprobs", "invalid_value")
    return int(logprobs)


def chat_top(logprobs, top_logprobs) -> int | None:
    """/v1/chat/completions' `logprobs` (true/false) and `top_logprobs` (0-20, needs logprobs: true)."""
    if logprobs not in (None, True, False):
        raise bad_request(f"logprobs is true or false on /v1/chat/completions (found {logprobs!r}); "
                          "top_logprobs says how many alternatives", "logprobs", "invalid_value")
    if top_logprobs is not None:
        if not logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) \
                or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} (found {top_logprobs!r})",
                              "top_logprobs", "invalid_value")
    return (top_logprobs or 0) if logprobs else None


# ------------------------------------------------------------------------------------------------ refusals

def _set(v) -> bool:
    return v not in (None, 0, 0.0, {}, [], "")


def refuse_unsupported(extra: dict, chat: bool) -> None:
    """400 for a request field that would change the answer and that luban does not implement."""
    for name in ("presence_penalty", "frequency_penalty"):
        if _set(extra.get(name)):
            raise bad_request(f"{name} is not supported (luban's repetition_penalty is)", name,
                              "unsupported_parameter")
    if _set(extra.get("logit_bias")):
        raise bad_request("logit_bias is not supported", "logit_bias", "unsupported_parameter")
    for name in ("functions", "function_call"):
        if _set(extra.get(name)):
            raise bad_request(f"{name} (the deprecated form of tools) is not supported; send tools", name,
                              "unsupported_parameter")
    modalities = extra.get("modalities")
    if modalities not in (None, ["text"]):
        raise bad_request("only text output is supported (modalities: [\"text\"])", "modalities",
                          "unsupported_parameter")
    if _set(extra.get("audio")):
        raise bad_request("audio output is not supported", "audio", "unsupported_parameter")
    if not chat:
        for name in ("tools", "tool_choice"):
            if _set(extra.get(name)):
                raise bad_request(f"{name} is a /v1/chat/completions field", name, "unsupported_parameter")


# ------------------------------------------------------------------------------------------------ tools

def check_tools(tools, tool_choice) -> list[dict] | None:
    """The request's tools as the chat template takes them (OpenAI's [{"type": "function", "function": {...}}]),
    or None when the model should not see them (no tools, or tool_choice "none")."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice", "invalid_value")
        return None
    if not isinstance(tools, list):
        raise bad_request("tools must be a list of {\"type\": \"function\", \"function\": {...}}", "tools",
                          "invalid_value")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}]: expected {{\"type\": \"function\", \"function\": {{\"name\", "
                              "\"description\", \"parameters\"}}", f"tools.{i}", "invalid_value")
    if tool_choice == "none":
        return None
    if tool_choice not in (None, "auto", "required") and _named(tool_choice) is None:
        raise bad_request("tool_choice is \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", "tool_choice", "invalid_value")
    return tools


def _named(tool_choice) -> str | None:
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) and name else None


def _checked(schema, param: str) -> dict:
    from luban.generation.constrained import compile_schema  # (torch: only a generating model's requests get here)

    try:
        compile_schema(schema)
    except ValueError as e:
        raise bad_request(f"{param}: {e}", param, "invalid_schema") from None
    except LubanError as e:  # llguidance is not installed
        raise bad_request(f"{param}: {e}", param, "unsupported_parameter") from None
    return schema


def response_schema(fmt) -> dict | None:
    """OpenAI's response_format as the JSON schema decoding follows: None for {"type": "text"} (or none), any JSON
    object for {"type": "json_object"}, the schema of {"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}} (always followed strictly). 400 naming the field when it is malformed or the schema does not compile."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        from luban.generation.constrained import ANY_OBJECT

        return dict(ANY_OBJECT)
    if kind != "json_schema":
        raise bad_request(f"response_format type {kind!r} is not one of \"text\", \"json_object\", "
                          "\"json_schema\"", "response_format", "invalid_value")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise bad_request("response_format.json_schema: expected {\"name\", \"schema\", \"strict\"}",
                          "response_format.json_schema", "invalid_value")
    if "schema" not in spec:
        raise bad_request("response_format.json_schema.schema: give the JSON schema the reply must follow",
                          "response_format.json_schema.schema", "invalid_schema")
    return _checked(spec["schema"], "response_format.json_schema.schema")


def forced_call_schema(tools: list[dict] | None, tool_choice) -> dict | None:
    """With tool_choice "required" (some call) or a named function (that call): the schema of the reply
    `{"name": ..., "arguments": {...}}`, its arguments following the function's `parameters`, so the call is
    forced by constrained decoding and always parses (parse_tool_calls reads such a bare call)."""
    name = _named(tool_choice)
    if not tools or (tool_choice != "required" and name is None):
        return None
    chosen = [(i, t) for i, t in enumerate(tools) if name is None or t["function"]["name"] == name]
    if not chosen:
        raise bad_request(f"tool_choice names {name!r}, which is not one of the tools", "tool_choice",
                          "invalid_value")
    calls = []
    for i, t in chosen:
        params = t["function"].get("parameters") or {"type": "object"}
        _checked(params, f"tools.{i}.function.parameters")
        calls.append({"type": "object", "properties": {"name": {"const": t["function"]["name"]}, "arguments": params},
                      "required": ["name", "arguments"], "additionalProperties": False})
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def template_messages(messages: list) -> list[dict]:
    """OpenAI chat messages as a tool-aware chat template reads them: tool results keep their call id, an
    assistant's tool_calls carry arguments as objects (what Hugging Face templates expect)."""
    out = []
    for x in messages:
        m = {"role": "system" if x.role == "developer" else x.role, "content": x.text()}
        extra = x.model_extra or {}
        if x.role == "tool" and extra.get("tool_call_id"):
            m["tool_call_id"] = extra["tool_call_id"]
        calls = extra.get("tool_calls")
        if x.role == "assistant" and calls:
            m["tool_calls"] = []
            for c in calls:
                fn = dict((c or {}).get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        raise bad_request("messages: a tool call's arguments are not JSON", "messages",
                                          "invalid_value") from None
                m["tool_calls"].append({"type": "function", "id": c.get("id"), "function": fn})
        out.append(m)
    return out


TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call(obj, names: set[str] | None) -> dict | None:
    """A {"name", "arguments"} object as an OpenAI tool call (None when it is not one of the tools)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"],
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[dict]]:
    """The model's reply split into its text and its calls: `<tool_call>{"name", "arguments"}</tool_call>` blocks
    (the Hermes / Qwen2.5 format their chat templates teach), or — small models often leave the tags out
    (Qwen2.5-Coder-0.5B-Instruct does) — a reply that is nothing but such JSON objects (one per line) naming one
    of the `names` tools. Blocks that are not a JSON call stay text."""
    calls, kept, last = [], [], 0
    for m in TOOL_CALL.finditer(text):
        try:
            call = _call(json.loads(m.group(1)), None)
        except json.JSONDecodeError:
            continue
        if call is None:
            continue
        calls.append(call)
        kept.append(text[last:m.start()])
        last = m.end()
    if not calls:
        bare = []
        for line in [x for x in text.strip().splitlines() if x.strip()] or [""]:
            try:
                bare.append(_call(json.loads(line), names or set()))
            except json.JSONDecodeError:
                bare = [None]
                break
        if bare and all(c is not None for c in bare):
            return None, bare
        return text, []
    kept.append(text[last:])
    rest = "".join(kept).strip()
    return (rest or None), calls
