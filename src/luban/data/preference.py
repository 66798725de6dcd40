"""Preference data: a prompt (or a conversation ending with a user turn) with a chosen and a rejected reply, each
encoded like a supervised fine-tuning example (loss only on the reply), for DPO-style training."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from luban.data.chat import IGNORE, ChatFormatter, Example, parse_messages
from luban.data.readers import LINE
from luban.errors import DataError


@dataclass
class Pair:
    chosen: Example
    rejected: Example
    line: int

    @property
    def length(self) -> int:
        return max(len(self.chosen.ids), len(self.rejected.ids))


def _reply(row, col: str, where: str) -> str:
    v = row[col]
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: field {col!r}: {'empty' if isinstance(v, str) else 'missing'} reply")
    return v


def _context(row, prompt_col: str | None, messages_col: str | None, where: str):
    if messages_col is not None:
        messages = parse_messages(row[messages_col], f"{where}: field {messages_col!r}")
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: field {messages_col!r}: the conversation must end with a user turn (the "
                            "chosen and rejected replies answer it)")
        return messages
    v = row[prompt_col]
    if not isinstance(v, str):
        raise DataError(f"{where}: field {prompt_col!r}: missing prompt text")
    return v


def preference_pairs(formatter: ChatFormatter, frame: pd.DataFrame, prompt_col: str | None,
                     messages_col: str | None, chosen_col: str, rejected_col: str,
                     max_length: int) -> tuple[list[Pair], int]:
    """Encoded pairs (each side cut to max_length) and how many were dropped for losing every reply token."""
    src = frame.attrs.get("source", "data")
    out, dropped = [], 0
    for _, row in frame.iterrows():
        line = int(row[LINE])
        where = f"{src}: line {line}"
        context = _context(row, prompt_col, messages_col, where)
        chosen, rejected = _reply(row, chosen_col, where), _reply(row, rejected_col, where)
        if chosen == rejected:
            raise DataError(f"{where}: fields {chosen_col!r} and {rejected_col!r} are the same text; a preference "
                            "pair needs two different replies")
        sides = []
        for reply in (chosen, rejected):
            ids, labels = (formatter.encode_reply(context, reply) if isinstance(context, list)
                           else formatter.encode_pair(context, reply))
            sides.append(Example(ids[:max_length], labels[:max_length], line))
        if any(all(x == IGNORE for x in e.labels[1:]) for e in sides):
            dropped += 1
            continue
        out.append(Pair(sides[0], sides[1], line))
    if not out:
        raise DataError(f"{src}: no preference pair keeps a reply token within {max_length} tokens; raise the "
                        "context length (preprocessing.tokenizer.max_length)")
    return out, dropped


def pad_examples(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (ids without the last) and next-token targets (IGNORE where masked or padded), right-padded."""
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        x[row, : len(e.ids) - 1] = torch.as_tensor(e.ids[:-1])
        y[row, : len(e.labels) - 1] = torch.as_tensor(e.labels[1:])
    return x, y


def pair_batch(pairs: list[Pair], idx: list[int], pad_id: int) -> dict:
    """The chosen sides of the pairs `idx`, then their rejected sides, as one batch; `index` looks up the
    reference model's log-probabilities."""
    rows = [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx]
    x, y = pad_examples(rows, pad_id)
    return {"x": x, "y": y, "index": torch.as_tensor(idx), "size": len(idx)}
