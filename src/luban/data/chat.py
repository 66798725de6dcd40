"""Supervised fine-tuning data: `prompt`/`response` pairs or chat `messages`, encoded with the loss masked on
everything but the responses.

With a pretrained tokenizer that has a chat template, conversations are rendered with that template (a
prompt/response pair becomes a one-turn user/assistant chat) and the trained tokens are found by rendering growing
prefixes. Otherwise a plain format is used: a prompt as is, the response after it, then the end-of-sequence token;
chat turns as ``role: content`` lines, each assistant reply followed by end-of-sequence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from luban.data.readers import LINE
from luban.errors import DataError

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE where the loss is masked (prompt, headers, padding)
    line: int


def parse_messages(value, where: str) -> list[dict]:
    """A messages cell (a list, or its JSON text) checked: roles known, contents text, an assistant turn last."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not a JSON list of messages ({e.msg})") from None
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i + 1}: expected {{\"role\": one of {', '.join(ROLES)}, "
                            f"\"content\": text}}, found {str(m)[:80]}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatFormatter:
    """Turns conversations into (ids, labels) and chat prompts into ids, for one text encoder."""

    def __init__(self, encoder, use_template: bool = True):
        self.enc = encoder
        tok = getattr(encoder, "tok", None)
        self.template = tok if use_template and getattr(tok, "chat_template", None) else None

    @property
    def eos(self) -> int | None:
        return self.enc.eos_id

    # plain format ------------------------------------------------------------------------------------------
    def _segments(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
        enc, segs = self.enc, []
        for m in messages:
            if m["role"] == "assistant":
                segs.append((enc.encode_text("assistant: "), False))
                segs.append((enc.encode_text(m["content"]) + self._eos(), True))
            else:
                segs.append((enc.encode_text(f"{m['role']}: {m['content']}\n"), False))
        return segs

    def _eos(self) -> list[int]:
        return [self.eos] if self.eos is not None else []

    def _prefix(self) -> list[int]:
        return list(getattr(self.enc, "prefix_ids", []))

    # templated format --------------------------------------------------------------------------------------
    def _render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
        try:
            text = self.template.apply_chat_template(messages, tokenize=False, tools=tools,
                                                     add_generation_prompt=add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - jinja2's TemplateError, or what the template raises itself
            raise DataError(f"messages: the chat template does not render this conversation "
                            f"({type(e).__name__}: {e})") from None
        return self.template(text, add_special_tokens=False)["input_ids"]

    def _templated(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        ids = self._render(messages, False)
        labels = [IGNORE] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                start = len(self._render(messages[:i], True)) if i else 0
                end = len(self._render(messages[: i + 1], False))
                labels[start:end] = ids[start:end]
        return ids, labels

    # public ------------------------------------------------------------------------------------------------
    def encode_pair(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        if self.template is not None:
            return self._templated([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        p = self._prefix() + self.enc.encode_text(prompt)
        r = self.enc.encode_text(response) + self._eos()
        return p + r, [IGNORE] * len(p) + r

    def encode_chat(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        if self.template is not None:
            return self._templated(messages)
        ids, labels = self._prefix(), [IGNORE] * len(self._prefix())
        for seg, trained in self._segments(messages):
            ids += seg
            labels += seg if trained else [IGNORE] * len(seg)
        return ids, labels

    def encode_reply(self, messages: list[dict], reply: str) -> tuple[list[int], list[int]]:
        """A conversation ending with a user turn, then `reply` as the assistant's answer: trained on the reply only."""
        if self.template is not None:
            ids = self._render(messages + [{"role": "assistant", "content": reply}], False)
            start = len(self._render(messages, True))
            return ids, [IGNORE] * start + ids[start:]
        p = self.chat_prompt(messages)
        r = self.enc.encode_text(reply) + self._eos()
        return p + r, [IGNORE] * len(p) + r

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The ids to continue from when the model should answer `messages` (which end with a user turn)."""
        if self.template is not None:
            return self._render(messages, True)
        ids = self._prefix()
        for seg, _ in self._segments(messages):
            ids += seg
        return ids + self.enc.encode_text("assistant: ")

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders OpenAI `tools` (it reads a `tools` variable)."""
        return self.template is not None and "tools" in (self.template.chat_template or "")

    def reply_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """What the model continues at inference to answer `messages`: the chat template's rendering (with the
        `tools` it can call, for a template that renders them), the plain role format for a model fine-tuned on
        conversations in it, else — a model that never learned a chat format — plain completion of the user
        turns' text (a role-wrapped prompt would only confuse it)."""
        if tools:
            if not self.supports_tools:
                raise DataError("tools: this model's chat template does not render tools")
            return self._render(messages, True, tools)
        if self.template is not None or self.uses_chat:
            return self.chat_prompt(messages)
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise DataError("messages: this model has no chat template; send a user message to complete")
        return self.prompt_ids("\n".join(users))

    def prompt_ids(self, prompt: str) -> list[int]:
        """A bare prompt (completion, or the prompt side of prompt/response fine-tuning)."""
        if self.template is not None and self.uses_chat:
            return self.chat_prompt([{"role": "user", "content": prompt}])
        return self._prefix() + self.enc.encode_text(prompt)

    uses_chat = False  # set by the task when it was fine-tuned on conversations

    def examples(self, frame: pd.DataFrame, prompt_col: str | None, response_col: str | None,
                 messages_col: str | None, max_length: int) -> tuple[list[Example], int]:
        """Encoded examples (cut to max_length) and how many were dropped for having no trained token left."""
        src = frame.attrs.get("source", "data")
        out, dropped = [], 0
        for _, row in frame.iterrows():
            line = row[LINE]
            if messages_col is not None:
                ids, labels = self.encode_chat(parse_messages(row[messages_col],
                                                              f"{src}: line {line}: field {messages_col!r}"))
            else:
                for col in (prompt_col, response_col):
                    if not isinstance(row[col], str) or (col == response_col and not row[col].strip()):
                        raise DataError(f"{src}: line {line}: field {col!r}: "
                                        f"{'empty' if isinstance(row[col], str) else 'missing'} text")
                ids, labels = self.encode_pair(row[prompt_col], row[response_col])
            ids, labels = ids[:max_length], labels[:max_length]
            if all(x == IGNORE for x in labels[1:]):
                dropped += 1
                continue
            out.append(Example(ids, labels, int(line)))
        if not out:
            raise DataError(f"{src}: no example keeps a response token within {max_length} tokens; raise the "
                            "context length (model.block_size / preprocessing.tokenizer.max_length)")
        return out, dropped
