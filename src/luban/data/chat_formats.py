"""Instruction-tuning data layouts beside luban's own columns (OpenAI `messages`, `prompt`/`response`): the two that
LLaMA-Factory and most published SFT sets use, read as LLaMA-Factory reads them.

- **Alpaca**: `instruction`, optional `input` (appended to the instruction after a blank line), `output`; optional
  `system` and `history` (earlier turns as `[[question, answer], ...]`). Preference rows have `chosen`/`rejected`
  instead of `output`.
- **ShareGPT**: `conversations`, a list of `{"from": human | gpt | system, "value": text}` turns (also `user` /
  `assistant`), optional `system`; the `messages` variant with `{"role", "content"}` turns reads the same way.
  Preference rows end the conversation with a human turn and hold the replies in `chosen`/`rejected` (a turn
  `{"from": "gpt", "value": ...}` or plain text).

Every layout becomes one canonical frame: a `messages` column (lists of {role, content}) and, for preference data,
`chosen`/`rejected` text; the conversation is checked strictly (known roles, no empty turn, user and assistant
alternating after an optional system turn) and a bad row is named by file, line and field.
"""

from __future__ import annotations

import json

import pandas as pd

from luban.data.readers import LINE
from luban.errors import DataError

FORMATTINGS = ("auto", "columns", "alpaca", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def detect(fields) -> str | None:
    """The layout a table's fields show: alpaca, sharegpt (also OpenAI `messages`), or None (luban's columns)."""
    f = set(map(str, fields))
    if "conversations" in f or "messages" in f:
        return "sharegpt"
    if "instruction" in f and ({"output", "chosen"} & f):
        return "alpaca"
    return None


def _json(value, where: str):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg})") from None
    return value


def _text(value, where: str, required: bool = True) -> str:
    if value is None or (isinstance(value, float) and value != value):  # missing cell (NaN)
        if required:
            raise DataError(f"{where}: missing text")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: expected text, found {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{where}: empty text")
    return value


def check_turns(messages: list[dict], where: str, last: str) -> list[dict]:
    """An optional system turn, then user and assistant alternating from a user turn, ending with `last`."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise DataError(f"{where}: no user turn")
    for i, m in enumerate(body):
        want = ("user", "assistant")[i % 2]
        if m["role"] != want:
            n = i + 1 + (len(messages) - len(body))
            raise DataError(f"{where}: turn {n} is {m['role']!r} where {want!r} was expected (after an optional "
                            "system turn, user and assistant turns alternate, starting with user)")
    if body[-1]["role"] != last:
        raise DataError(f"{where}: the conversation must end with {'an assistant' if last == 'assistant' else 'a user'}"
                        f" turn ({'the reply trained on' if last == 'assistant' else 'the chosen and rejected replies answer it'})")
    return messages


def _sharegpt_turns(value, where: str) -> list[dict]:
    turns = _json(value, where)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: expected a non-empty list of turns")
    out = []
    for i, t in enumerate(turns):
        w = f"{where}: turn {i + 1}"
        if not isinstance(t, dict):
            raise DataError(f"{w}: expected {{\"from\", \"value\"}} (or {{\"role\", \"content\"}}), found "
                            f"{str(t)[:80]}")
        role, content = (t.get("from"), t.get("value")) if "from" in t else (t.get("role"), t.get("content"))
        if role not in SHAREGPT_ROLES:
            raise DataError(f"{w}: unknown role {role!r}; use human, gpt or system (or user, assistant)"
                            + ("; tool turns are not trained on" if role in ("function_call", "observation", "tool")
                               else ""))
        out.append({"role": SHAREGPT_ROLES[role], "content": _text(content, w)})
    return out


def _reply(value, where: str) -> str:
    """A preference reply: text, or a ShareGPT/OpenAI turn by the assistant."""
    value = _json(value, where) if isinstance(value, str) and value.lstrip().startswith("{") else value
    if isinstance(value, dict):
        role = value.get("from", value.get("role"))
        if SHAREGPT_ROLES.get(role) != "assistant":
            raise DataError(f"{where}: the reply's role is {role!r}; expected gpt (or assistant)")
        value = value.get("value", value.get("content"))
    return _text(value, where)


def _alpaca_messages(row, src: str, line: int, reply_field: str | None) -> list[dict]:
    where = f"{src}: line {line}: field"
    msgs = []
    if "system" in row.index:
        system = _text(row["system"], f"{where} 'system'", required=False)
        if system.strip():
            msgs.append({"role": "system", "content": system})
    if "history" in row.index:
        hist = _json(row["history"], f"{where} 'history'")
        if hist is not None and not (isinstance(hist, float) and hist != hist):
            if not isinstance(hist, list):
                raise DataError(f"{where} 'history': expected a list of [question, answer] pairs")
            for i, pair in enumerate(hist):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise DataError(f"{where} 'history': item {i + 1}: expected [question, answer]")
                msgs.append({"role": "user", "content": _text(pair[0], f"{where} 'history': item {i + 1}")})
                msgs.append({"role": "assistant", "content": _text(pair[1], f"{where} 'history': item {i + 1}")})
    instruction = _text(row["instruction"], f"{where} 'instruction'")
    extra = _text(row["input"], f"{where} 'input'", required=False) if "input" in row.index else ""
    msgs.append({"role": "user", "content": instruction + ("\n\n" + extra if extra.strip() else "")})
    if reply_field is not None:
        msgs.append({"role": "assistant", "content": _text(row[reply_field], f"{where} {reply_field!r}")})
    return msgs


def to_canonical(frame: pd.DataFrame, formatting: str) -> pd.DataFrame:
    """`frame` (alpaca or sharegpt rows) as `messages` (+ `chosen`, `rejected`) with its line numbers and attrs."""
    src = frame.attrs.get("source", "data")
    fields = set(map(str, frame.columns))
    pref = "chosen" in fields or "rejected" in fields
    if pref and not {"chosen", "rejected"} <= fields:
        raise DataError(f"{src}: preference data needs both fields 'chosen' and 'rejected'")
    if formatting == "alpaca":
        missing = [f for f in ("instruction",) + (() if pref else ("output",)) if f not in fields]
        conv = None
    else:
        conv = "conversations" if "conversations" in fields else "messages"
        missing = [] if conv in fields else ["conversations"]
    if missing:
        raise DataError(f"{src}: {formatting} data needs the field(s) {', '.join(missing)}; the file has "
                        f"{', '.join(sorted(fields))}")
    rows = []
    for _, row in frame.iterrows():
        line = int(row[LINE])
        out = {LINE: line}
        if formatting == "alpaca":
            msgs = _alpaca_messages(row, src, line, None if pref else "output")
        else:
            where = f"{src}: line {line}: field {conv!r}"
            msgs = _sharegpt_turns(row[conv], where)
            if "system" in fields and msgs[0]["role"] != "system":
                system = _text(row["system"], f"{src}: line {line}: field 'system'", required=False)
                if system.strip():
                    msgs.insert(0, {"role": "system", "content": system})
        check_turns(msgs, f"{src}: line {line}: field {conv or 'instruction'!r}", "user" if pref else "assistant")
        out["messages"] = msgs
        if pref:
            for side in ("chosen", "rejected"):
                out[side] = _reply(row[side], f"{src}: line {line}: field {side!r}")
        rows.append(out)
    canon = pd.DataFrame(rows, columns=[LINE, "messages"] + (["chosen", "rejected"] if pref else []))
    canon.attrs = dict(frame.attrs)
    return canon


def resolve(formatting: str, named: dict, frame: pd.DataFrame) -> tuple[str, dict]:
    """The layout of a table with no columns named (formatting auto): alpaca, sharegpt, or luban's own columns
    found by their names (prompt + response, or prompt + chosen + rejected); `named`: every role, None."""
    if formatting in ("alpaca", "sharegpt"):
        return formatting, {}
    fields = set(map(str, frame.columns))
    found = detect(fields)
    if found is not None:
        return found, {}
    cols = dict(named)
    if {"prompt", "chosen", "rejected"} <= fields:
        cols.update(prompt="prompt", chosen="chosen", rejected="rejected")
    elif {"prompt", "response"} <= fields:
        cols.update(prompt="prompt", response="response")
    else:
        raise DataError(f"{frame.attrs.get('source', 'data')}: cannot tell the data layout from its fields "
                        f"({', '.join(sorted(fields))}); name the columns (data.columns.prompt + response, "
                        "messages, or text) or set data.formatting: alpaca | sharegpt")
    return "columns", cols


def canonical_columns(pref: bool) -> dict:
    return {"prompt": None, "response": None, "messages": "messages",
            "chosen": "chosen" if pref else None, "rejected": "rejected" if pref else None}
