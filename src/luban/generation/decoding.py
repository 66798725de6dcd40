"""Decoding loops for causal language models, independent of any one model class.

A model only has to offer::

    next_token_logits(ids: LongTensor (1, t), cache) -> (logits (1, vocab), new_cache)

feeding the new ids after whatever ``cache`` holds (``None`` = start from nothing), and optionally a
``max_context`` attribute (the longest window it can attend over). ``luban.models.gpt.GPT`` does this natively;
``HFCausalLM`` wraps any Hugging Face ``AutoModelForCausalLM``.

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


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100
    temperature: float = 1.0          # 0 means greedy
    top_k: int | None = None          # keep the k most likely tokens (None or 0: off)
    top_p: float | None = None        # keep the smallest set of tokens whose probability reaches p (None or 1: off)
    repetition_penalty: float = 1.0   # > 1 discourages tokens already in the context (CTRL / HF convention)
    do_sample: bool = True            # False: greedy whatever the temperature
    stop: Sequence[str] = ()          # stop strings, matched on decoded text and cut from the output
    eos_token_id: int | Sequence[int] | None = None
    seed: int | None = None           # seeds the sampler's own torch.Generator; global RNG is untouched
    use_cache: bool = True            # False recomputes the whole window every step (slow; for checking)

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

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


def choose_token(logits: torch.Tensor, cfg: GenerationConfig, context: Sequence[int],
                 generator: torch.Generator | None) -> int:
    """One decoding step on 1-D logits (vocab,) -> the next token id."""
    logits = apply_repetition_penalty(logits.float(), context, cfg.repetition_penalty)
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
                   generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (no stop-string or eos handling; see ``stream``/``generate``).
    `generator`: a sampler state to continue (default: a fresh one seeded by cfg.seed)."""
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
            token = choose_token(logits[0], cfg, context, generator)
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
    that could still become a stop string or finish a broken character. push(token) -> (piece, finish | None)."""

    def __init__(self, cfg: GenerationConfig, decode: Callable[[list[int]], str]):
        self.cfg, self.decode = cfg, decode
        self.eos = {cfg.eos_token_id} if isinstance(cfg.eos_token_id, int) else set(cfg.eos_token_id or ())
        self.generated: list[int] = []
        self.text, self.emitted = "", 0

    def push(self, token: int) -> tuple[str, str | None]:
        if token in self.eos:
            return self.text[self.emitted:], "eos"
        self.generated.append(token)
        self.text = text = self.decode(self.generated)
        hits = [i for i in (text.find(s) for s in self.cfg.stop) if i >= 0]
        if hits:
            return text[self.emitted:max(self.emitted, min(hits))], "stop"
        safe = len(text) - _held_back(text, self.cfg.stop)
        piece = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece, None

    def rest(self) -> str:
        """What is still held back when decoding ends at the length limit."""
        return self.text[self.emitted:]


def step_events(model, prompt_ids, cfg: GenerationConfig, decode: Callable[[list[int]], str]):
    """Yield (token_id | None, text_piece, finish_reason | None); the last event carries the finish reason."""
    tracker = TextTracker(cfg, decode)
    for token in iter_token_ids(model, prompt_ids, cfg):
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
             decode: Callable[[list[int]], str]) -> GenerationResult:
    """Run decoding to the end and return the text, the token ids and why it stopped."""
    began = time.perf_counter()
    pieces, ids, reason = [], [], "length"
    for token, piece, finish in step_events(model, prompt_ids, cfg, decode):
        if token is not None:
            ids.append(token)
        pieces.append(piece)
        if finish:
            reason = finish
    seconds = time.perf_counter() - began
    return GenerationResult("".join(pieces), ids, reason, seconds, len(ids) / seconds if seconds > 0 else 0.0)


class HFCausalLM:
    """Adapter giving a Hugging Face causal LM (``AutoModelForCausalLM``) the ``next_token_logits`` interface."""

    def __init__(self, model):
        self.model = model
        conf = model.config
        self.max_context = getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def next_token_logits(self, ids, cache=None):
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values

    def next_token_logits_batch(self, ids, cache, key_mask, positions):
        return hf_batch_logits(self.model, ids, cache, key_mask, positions)


def hf_batch_logits(hf_model, ids, cache, key_mask, positions):
    """Batched decoding step of a Hugging Face causal LM: left-padded ids with their attention mask and position
    ids (the model hides padding itself) -> last-position logits (batch, vocab) and the cache."""
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=key_mask.long(), position_ids=positions,
                       past_key_values=cache, use_cache=True)
    return out.logits[:, -1, :], out.past_key_values


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


def causal_beam_search(model, prompt_ids: Sequence[int], num_beams: int, max_new_tokens: int,
                       eos_ids: int | Sequence[int] | None, length_penalty: float = 1.0,
                       repetition_penalty: float = 1.0) -> list[int]:
    """Beam search for one prompt on any model with ``next_token_logits`` (batched over beams, KV cache kept).
    The prompt is cut from the left so prompt + output fit the model's context."""
    from luban.generation.beam import beam_search

    eos = eos_ids[0] if isinstance(eos_ids, (list, tuple)) else eos_ids
    max_context = getattr(model, "max_context", None)
    prompt = [int(i) for i in prompt_ids]
    if max_context:
        max_new_tokens = min(max_new_tokens, max_context - 1)
        prompt = prompt[-(max_context - max_new_tokens):]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            out = beam_search(lambda ids, cache: model.next_token_logits(ids, cache),
                              torch.tensor([prompt], device=_model_device(model)), num_beams, max_new_tokens, eos,
                              length_penalty=length_penalty, reorder=_reorder_cache,
                              repetition_penalty=repetition_penalty)
    finally:
        if was_training:
            model.train()
    return out[0]
