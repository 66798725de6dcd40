"""Decoding loops for causal language models, independent of any one model class.

A model only has to offer::

    next_token_logits(ids: LongTensor (1, t), cache) -> (logits (1, vocab), new_cache)

feeding the new ids after whatever ``cache`` holds (``None`` = start from nothing), and optionally a
``max_context`` attribute (the longest window it can attend over). ``luban.models.gpt.GPT`` does this natively;
``luban.models.causal_lm.CausalLM`` wraps any Hugging Face ``AutoModelForCausalLM`` (for training and inference).

One sequence at a time (batch size 1). Per step: repetition penalty -> greedy (temperature 0 or do_sample=False)
or temperature -> top-k -> top-p -> sample with a seeded ``torch.Generator``. Stop strings are checked on the
decoded text, so they work whatever the tokenization; streaming holds back text that could still turn into a stop
string (or an incomplete multi-byte character) and yields the rest piece by piece.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import Field, field_validator

from luban.config import GenerationSettings


class GenerationConfig(GenerationSettings):
    """One call's decoding settings: the run's `generation:` settings (luban.config.GenerationSettings: the same
    fields, ranges and checks) with the call's knobs applied, plus what the model decides (its end-of-sequence ids)
    and the KV cache switch. Invalid values raise a ValueError (pydantic's ValidationError)."""

    max_new_tokens: int = Field(100, ge=0)
    temperature: float = Field(1.0, ge=0, description="0 means greedy")
    do_sample: bool = True            # False: greedy whatever the temperature
    stop: tuple[str, ...] = ()        # stop strings, matched on decoded text and cut from the output
    eos_token_id: int | tuple[int, ...] | None = None
    use_cache: bool = True            # False recomputes the whole window every step (slow; for checking)
    # None: no log-probabilities; k: each generated token's log-probability (the log-softmax of the model's raw
    # logits, before any sampling transform) and the k most likely tokens' (OpenAI's logprobs / top_logprobs)
    logprobs: int | None = Field(None, ge=0, le=20)
    # a JSON schema the text must follow (constrained decoding, luban.generation.constrained; {"type": "object"}:
    # any JSON object); the caller hands each sequence its JsonConstraint
    json_schema: dict | None = None
    # top_k (None or 0: off), top_p (None or 1: off), repetition_penalty (> 1 discourages tokens already in the
    # context, CTRL / HF convention) and seed (seeds the sampler's own torch.Generator; the global RNG is untouched)
    # as in GenerationSettings

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v):
        stops = (v,) if isinstance(v, str) else tuple(v)
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("eos_token_id", mode="before")
    @classmethod
    def _eos(cls, v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class GenerationResult:
    text: str                   # generated text only (prompt excluded), cut before any stop string
    token_ids: list[int]        # generated ids, including the one that completed a stop string or an eos id
    finish_reason: str          # "length", "stop" (stop string) or "eos"
    seconds: float = 0.0
    tokens_per_second: float = field(default=0.0)


# ----------------------------------------------------------------------------------------------------------------
# logits processing (each works on (..., vocab) tensors and returns a new tensor)

def apply_repetition_penalty(logits: torch.Tensor, seen_ids: Sequence[int], penalty: float) -> torch.Tensor:
    """Make already-seen tokens less likely: positive logits are divided by penalty, negative multiplied."""
    if penalty == 1.0 or not len(seen_ids):
        return logits
    logits = logits.clone()
    idx = torch.as_tensor(sorted({int(i) for i in seen_ids}), device=logits.device)
    picked = logits[..., idx]
    logits[..., idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Set all but the k largest logits to -inf (ties with the k-th are kept)."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose total probability is >= p.

    A token is dropped when the tokens ranked strictly above it already reach p; the top token is always kept.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_above >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def token_logprob(logits: torch.Tensor, token: int, top: int) -> dict:
    """The log-probability of `token` under 1-D logits (vocab,) — the model's own distribution, before repetition
    penalty, temperature or filtering — and the `top` most likely tokens: {"logprob", "top": [(id, logprob)]}."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    out = {"logprob": float(lp[token]), "top": []}
    if top:
        values, ids = torch.topk(lp, min(top, lp.shape[-1]))
        out["top"] = list(zip(ids.tolist(), values.tolist(), strict=True))
    return out


def prompt_logprobs(model, ids: Sequence[int], top: int) -> list[dict | None]:
    """Each prompt token's log-probability given the tokens before it (None for the first: nothing predicts it),
    with the `top` most likely tokens at each position: one forward over the whole prompt."""
    if not ids:
        raise ValueError("the prompt must encode to at least one token")
    max_context = getattr(model, "max_context", None)
    if max_context and len(ids) > max_context:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of {max_context}")
    x = torch.tensor([list(ids)], dtype=torch.long, device=_model_device(model))
    with torch.no_grad():
        out = model(x)
    logits = (out[0] if isinstance(out, tuple) else out)[0].float()  # (t, vocab)
    lp = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(list(ids[1:]), device=lp.device)
    chosen = lp.gather(1, target[:, None])[:, 0].tolist()
    tops = [[] for _ in chosen]
    if top and len(chosen):
        values, idx = torch.topk(lp, min(top, lp.shape[-1]), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), values.tolist(), strict=True)]
    return [None] + [{"logprob": c, "top": t} for c, t in zip(chosen, tops, strict=True)]


def choose_token(logits: torch.Tensor, cfg: GenerationConfig, context: Sequence[int],
                 generator: torch.Generator | None, constraint=None) -> int:
    """One decoding step on 1-D logits (vocab,) -> the next token id; `constraint` (a JsonConstraint) leaves only
    the tokens its grammar allows next."""
    logits = apply_repetition_penalty(logits.float(), context, cfg.repetition_penalty)
    if constraint is not None:
        logits = constraint.mask(logits)
    if cfg.greedy:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    logits = top_p_filter(top_k_filter(logits, cfg.top_k), cfg.top_p)
    probs = torch.softmax(logits, dim=-1).cpu()  # sample on the CPU so a seed gives the same draw on any device
    return int(torch.multinomial(probs, 1, generator=generator))


# ----------------------------------------------------------------------------------------------------------------
# the loops

def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def iter_token_ids(model, prompt_ids: Sequence[int], cfg: GenerationConfig,
                   generator: torch.Generator | None = None, logprobs: list | None = None,
                   constraint=None) -> Iterator[int]:
    """Yield new token ids one at a time (no stop-string or eos handling; see ``stream``/``generate``).
    `generator`: a sampler state to continue (default: a fresh one seeded by cfg.seed). With cfg.logprobs set,
    each token's `token_logprob` entry is appended to `logprobs` before the token is yielded. `constraint`: the
    JsonConstraint whose mask each step applies (the caller advances it with each yielded token)."""
    context = [int(i) for i in prompt_ids]
    if not context:
        raise ValueError("the prompt must encode to at least one token")
    if generator is None and cfg.seed is not None:
        generator = torch.Generator().manual_seed(cfg.seed)
    device = _model_device(model)
    max_context = getattr(model, "max_context", None)
    cache, cache_start, cache_end = None, 0, 0
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        for _ in range(cfg.max_new_tokens):
            start = max(0, len(context) - max_context) if max_context else 0
            if cfg.use_cache and cache is not None and start == cache_start:
                new = context[cache_end:]  # the cache holds context[cache_start:cache_end]
            else:  # first step, no caching, or the window slid: recompute the whole window
                cache, cache_start, new = None, start, context[start:]
            ids = torch.tensor([new], dtype=torch.long, device=device)
            with torch.no_grad():
                logits, new_cache = model.next_token_logits(ids, cache)
            if cfg.use_cache:
                cache, cache_end = new_cache, len(context)
            token = choose_token(logits[0], cfg, context, generator, constraint)
            if logprobs is not None and cfg.logprobs is not None:
                logprobs.append(token_logprob(logits[0], token, cfg.logprobs))
            context.append(token)
            yield token
    finally:
        if was_training:
            model.train()


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could still grow into a stop string (or finish a broken character)."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    broken = len(text) - len(text.rstrip("\ufffd"))  # byte-level tokenizers: a character split across tokens
    return max(hold, broken)


class TextTracker:
    """One sequence's generated text: eos, stop strings (cut from the output) and streaming that holds back text
    that could still become a stop string or finish a broken character. push(token) -> (piece, finish | None).
    With a `constraint` (JsonConstraint) each token advances its grammar, and the sequence ends ("eos") once the
    JSON value is complete."""

    def __init__(self, cfg: GenerationConfig, decode: Callable[[list[int]], str], constraint=None):
        self.cfg, self.decode, self.constraint = cfg, decode, constraint
        self.eos = {cfg.eos_token_id} if isinstance(cfg.eos_token_id, int) else set(cfg.eos_token_id or ())
        self.generated: list[int] = []
        self.text, self.emitted = "", 0

    def push(self, token: int) -> tuple[str, str | None]:
        if token in self.eos:
            return self.text[self.emitted:], "eos"
        if self.constraint is not None:
            self.constraint.advance(token)
        self.generated.append(token)
        self.text = text = self.decode(self.generated)
        hits = [i for i in (text.find(s) for s in self.cfg.stop) if i >= 0]
        if hits:
            return text[self.emitted:max(self.emitted, min(hits))], "stop"
        if self.constraint is not None and self.constraint.complete:
            return text[self.emitted:], "eos"
        safe = len(text) - _held_back(text, self.cfg.stop)
        piece = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece, None

    def rest(self) -> str:
        """What is still held back when decoding ends at the length limit."""
        return self.text[self.emitted:]


def step_events(model, prompt_ids, cfg: GenerationConfig, decode: Callable[[list[int]], str],
                logprobs: list | None = None, constraint=None):
    """Yield (token_id | None, text_piece, finish_reason | None); the last event carries the finish reason.
    `logprobs`: see iter_token_ids (its last entry is the yielded token's); `constraint`: a JsonConstraint."""
    tracker = TextTracker(cfg, decode, constraint)
    for token in iter_token_ids(model, prompt_ids, cfg, logprobs=logprobs, constraint=constraint):
        piece, finish = tracker.push(token)
        yield token, piece, finish
        if finish:
            return
    yield None, tracker.rest(), "length"


def stream(model, prompt_ids: Sequence[int], cfg: GenerationConfig,
           decode: Callable[[list[int]], str]) -> Iterator[str]:
    """Yield the generated text piece by piece (empty pieces skipped); joined, they equal ``generate(...).text``."""
    for _, piece, _ in step_events(model, prompt_ids, cfg, decode):
        if piece:
            yield piece


def generate(model, prompt_ids: Sequence[int], cfg: GenerationConfig,
             decode: Callable[[list[int]], str], constraint=None) -> GenerationResult:
    """Run decoding to the end and return the text, the token ids and why it stopped."""
    began = time.perf_counter()
    pieces, ids, reason = [], [], "length"
    for token, piece, finish in step_events(model, prompt_ids, cfg, decode, constraint=constraint):
        if token is not None:
            ids.append(token)
        pieces.append(piece)
        if finish:
            reason = finish
    seconds = time.perf_counter() - began
    return GenerationResult("".join(pieces), ids, reason, seconds, len(ids) / seconds if seconds > 0 else 0.0)


def _reorder_cache(cache, index: torch.Tensor):
    """Select rows of a KV cache: luban's GPT (a list of (keys, values)) or a Hugging Face Cache object."""
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(index.to(_cache_device(cache)))
        return cache
    return [(k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in cache]


def _cache_device(cache) -> torch.device:
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[0], "keys", None) if layers else None
    return keys.device if isinstance(keys, torch.Tensor) else torch.device("cpu")
