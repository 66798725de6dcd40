"""Text → chunks at sentence boundaries (Chinese 。！？；…, English .!?; and line breaks), packed to a token budget
with overlap; every chunk keeps its character offsets [start, end) in the unit's cleaned text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# a sentence ends after Chinese 。！？；… (with closing quotes/brackets), after English .!?; followed by a space,
# or at a line break
_END = re.compile(r"[。！？；!?;…]+[”’」』）)\"']*|(?<=[.!?])[\"')\]]*(?=\s)|\n+")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    end: int


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per Chinese character, about 1.3 per other word (subword pieces)."""
    han = len(_HAN.findall(text))
    words = len(_WORD.findall(_HAN.sub(" ", text)))
    return han + int(words * 1.3 + 0.5)


def sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the sentences of text, whitespace trimmed, covering every non-space character."""
    spans, pos = [], 0
    for m in _END.finditer(text):
        spans.append((pos, m.end()))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def _split_long(text: str, s: int, e: int, budget: int, count: Callable[[str], int]) -> list[tuple[int, int]]:
    """A sentence over the budget, cut into pieces that fit (by characters, halving until they do)."""
    n = max(1, (e - s) * budget // max(count(text[s:e]), 1))
    pieces, pos = [], s
    while pos < e:
        end = min(e, pos + n)
        while end - pos > 1 and count(text[pos:end]) > budget:
            end = pos + max(1, (end - pos) // 2)
        pieces.append((pos, end))
        pos = end
    return pieces


def chunk(text: str, max_tokens: int = 256, overlap_tokens: int = 32,
          count: Callable[[str], int] = estimate_tokens) -> list[Chunk]:
    """Sentences packed greedily into chunks of at most max_tokens (by `count`, the embedder's tokenizer when it has
    one); each next chunk starts with the last sentences of the previous one worth up to overlap_tokens."""
    if max_tokens <= 0 or overlap_tokens < 0 or overlap_tokens >= max_tokens:
        raise ValueError("chunking needs max_tokens > overlap_tokens >= 0")
    spans: list[tuple[int, int]] = []
    for s, e in sentences(text):
        spans.extend(_split_long(text, s, e, max_tokens, count) if count(text[s:e]) > max_tokens else [(s, e)])
    sizes = [count(text[s:e]) for s, e in spans]
    chunks, i = [], 0
    while i < len(spans):
        j, used = i, 0
        while j < len(spans) and (j == i or used + sizes[j] <= max_tokens):
            used += sizes[j]
            j += 1
        start, end = spans[i][0], spans[j - 1][1]
        chunks.append(Chunk(text[start:end], start, end))
        if j >= len(spans):
            break
        back, kept = j, 0  # overlap: whole sentences from the end of this chunk
        while back - 1 > i and kept + sizes[back - 1] <= overlap_tokens:
            back -= 1
            kept += sizes[back]
        i = back
    return chunks
