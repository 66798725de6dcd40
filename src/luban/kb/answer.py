"""Grounded answers: retrieve chunks from a knowledge base, number them in the prompt, generate, and return the
answer with its citations (source, page, offsets, score) and [n] markers.

- Retrieval query (multi-turn): the last user turn, joined with the user turn before it when there is one (the
  follow-up "那运费呢？" is searched together with the question it follows). No model rewrites the question: on a
  small CPU model a rewrite costs a second generation and invents words.
- The gate: when the best retrieved chunk's cosine is below the knowledge base's min_score (or --min-score), the
  model is not asked: the answer says the documents do not answer the question, with no citations.
- Markers: the model is asked to cite with [n]; when its answer has no marker, the chunk it overlaps most (shared
  characters) is cited at the end, so every grounded answer names its source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from luban.errors import ConfigError, DataError

NO_ANSWER_ZH = "抱歉，知识库中的文档没有回答这个问题。"
NO_ANSWER_EN = "Sorry, the documents in the knowledge base do not answer this question."
SYSTEM_ZH = ("你是一个严谨的助手，只根据下面编号的资料回答问题。回答时在用到的资料后标注编号，例如 [1]。"
             "如果资料里没有答案，就说资料中没有答案，不要编造。")
SYSTEM_EN = ("You answer only from the numbered documents below. Cite the documents you use with their number, "
             "e.g. [1]. If they do not contain the answer, say so; do not invent one.")
_HAN = re.compile(r"[\u3400-\u9fff]")
_MARK = re.compile(r"\[(\d{1,3})\]")


def _zh(text: str) -> bool:
    return bool(_HAN.search(text))


@dataclass
class Grounding:
    """What retrieval gives a chat turn: the messages to send (None: do not generate), the citations, the query."""

    query: str
    messages: list[dict] | None
    citations: list[dict] = field(default_factory=list)
    refusal: str | None = None


def retrieval_query(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user" and str(m.get("content", "")).strip()]
    if not users:
        raise DataError("messages: no user message to answer")
    return "\n".join(users[-2:]) if len(users) > 1 else users[-1]


def citation(n: int, hit) -> dict:
    return {"index": n, "id": hit.id, "source": hit.source, "page": hit.page, "start": hit.start, "end": hit.end,
            "score": round(hit.score, 6), "cosine": None if hit.cosine is None else round(hit.cosine, 6),
            "text": hit.text}


def ground(kb, encoder, messages: list[dict], k: int = 4, mode: str = "hybrid",
           min_score: float | None = None) -> Grounding:
    """Retrieve for the conversation and build the prompt (or the refusal)."""
    query = retrieval_query(messages)
    hits = kb.search(query, encoder, k=k, mode=mode)
    threshold = kb.min_score if min_score is None else min_score
    cosines = [h.cosine for h in hits if h.cosine is not None]
    best = max(cosines) if cosines else (hits[0].score if hits and mode == "lexical" else None)
    last = messages[-1]["content"] if messages[-1].get("role") == "user" else query
    if not hits or best is None or best < threshold:
        return Grounding(query, None, [], NO_ANSWER_ZH if _zh(last) else NO_ANSWER_EN)
    cites = [citation(i + 1, h) for i, h in enumerate(hits)]
    zh = _zh(last)
    docs = "\n".join(f"[{c['index']}] {c['text']}" for c in cites)
    head = "资料：" if zh else "Documents:"
    ask = "问题：" if zh else "Question:"
    history = [m for m in messages[:-1] if m.get("role") in ("user", "assistant")]
    out = [{"role": "system", "content": SYSTEM_ZH if zh else SYSTEM_EN}, *history,
           {"role": "user", "content": f"{head}\n{docs}\n\n{ask}{last}"}]
    return Grounding(query, out, cites)


def cited(answer: str, citations: list[dict]) -> list[int]:
    """The citation numbers an answer's [n] markers name (in order, valid ones only)."""
    valid = {c["index"] for c in citations}
    seen: list[int] = []
    for m in _MARK.finditer(answer):
        n = int(m.group(1))
        if n in valid and n not in seen:
            seen.append(n)
    return seen


def attribute(answer: str, citations: list[dict]) -> int | None:
    """The citation whose text shares the most characters (bigrams) with the answer."""
    def grams(t):
        t = re.sub(r"\s+", "", t.lower())
        return {t[i:i + 2] for i in range(len(t) - 1)}

    a = grams(answer)
    if not a or not citations:
        return None
    best = max(citations, key=lambda c: (len(a & grams(c["text"])), -c["index"]))
    return best["index"] if a & grams(best["text"]) else None


def finish(answer: str, citations: list[dict]) -> tuple[str, list[dict]]:
    """The answer with [n] markers (added when the model wrote none) and the citations, each with `cited`."""
    marks = cited(answer, citations)
    if not marks and citations:
        n = attribute(answer, citations)
        if n is not None:
            answer = answer.rstrip() + f" [{n}]"
            marks = [n]
    return answer, [{**c, "cited": c["index"] in marks} for c in citations]


# ------------------------------------------------------------------------------------------------ the generator


class ChatModel:
    """A chat model for grounded answers: a luban text-generation run, or a Hugging Face causal-LM folder (e.g.
    the imported Qwen2.5-Coder-0.5B-Instruct) decoded by the same Generator."""

    def __init__(self, ref: str, device: str = "auto"):
        from luban.capabilities import Chats

        path = Path(ref)
        if (path / "manifest.json").is_file() or (path / "config.yaml").is_file():
            from luban.predictor import load

            p = load(ref, device=device)
            if not isinstance(p, Chats):
                raise ConfigError(f"--model {ref}: a {p.task} run does not chat; give a text_generation run or an "
                                  "HF causal-LM folder")
            self.name, self._p = path.name, p
            return
        from luban.data.tokenizers import resolve_pretrained

        folder = Path(resolve_pretrained(ref, False, "--model"))
        if not (folder / "config.json").is_file():
            raise ConfigError(f"--model {ref}: neither a luban run nor a Hugging Face model folder (no config.json)")
        from luban.config import GenerationSettings
        from luban.config_base import TokenizerConfig
        from luban.data.chat import ChatFormatter
        from luban.data.tokenizers import PretrainedEncoder
        from luban.models.causal_lm import load_exported
        from luban.tasks.text_generation import Generator
        from luban.training.hardware import select_device

        enc = PretrainedEncoder(TokenizerConfig(type="pretrained", max_length=4096), str(folder))
        model = load_exported(folder, select_device(device))
        fmt = ChatFormatter(enc)
        fmt.uses_chat = True
        self.name = folder.name
        self._p = None
        self._gen = Generator(model, enc, fmt, GenerationSettings(max_new_tokens=200, temperature=0.0))

    def stream(self, messages: list[dict], **knobs) -> Iterator[str]:
        if self._p is not None:
            return self._p.stream_chat(messages, **knobs)
        return self._gen.stream(messages=messages, **knobs)


def answer(kb, encoder, model: ChatModel, messages: list[dict], k: int = 4, mode: str = "hybrid",
           min_score: float | None = None, on_piece=None, **knobs) -> dict:
    """One grounded turn: {"answer", "citations", "query", "grounded"}; on_piece(text) sees the answer stream."""
    g = ground(kb, encoder, messages, k, mode, min_score)
    if g.messages is None:
        if on_piece:
            on_piece(g.refusal)
        return {"answer": g.refusal, "citations": [], "query": g.query, "grounded": False}
    pieces = []
    for piece in model.stream(g.messages, **knobs):
        pieces.append(piece)
        if on_piece:
            on_piece(piece)
    text, cites = finish("".join(pieces), g.citations)
    if on_piece and text != "".join(pieces):
        on_piece(text[len("".join(pieces)):])
    return {"answer": text, "citations": cites, "query": g.query, "grounded": True}
