"""Continuous batching: several sequences decoded in one forward pass per step, joining and leaving at any step.

Each row keeps its own GenerationConfig — temperature, top-k / top-p, repetition penalty, stop strings, eos, seed —
so its output is the one it would get alone (the same logits up to float rounding, the same seeded draws).
Prompts are left-padded; each row has its own positions and a key mask that hides the padding. Rows added later
are read in one prefill pass of their own and then merged into the running batch (caches padded on the left to one
length). A row leaves when it finishes or is cancelled. When its context outgrows the model's window it leaves the cache
for the sliding group: each step those rows' last max_context tokens are read afresh, all in one forward (what the
single-sequence loop does once its window slides). Leading cache columns that only padding uses are cut away as
rows leave.

Models: luban's GPT (a list of (keys, values) per layer) and Hugging Face causal LMs whose cache is a
DynamicCache of plain layers; a model without ``next_token_logits_batch``, or a cache of another kind, decodes
each row alone — the caller sees the same stepper either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from luban.errors import LubanError
from luban.generation.decoding import (GenerationConfig, TextTracker, _model_device, _reorder_cache, choose_token,
                                       iter_token_ids, token_logprob)

Event = tuple[int, int | None, str, str | None]  # row, token id (None on a closing event), text piece, finish reason


class _Row:
    def __init__(self, prompt: list[int], cfg: GenerationConfig, decode: Callable[[list[int]], str],
                 constraint=None):
        self.context, self.cfg, self.count = prompt, cfg, 0
        self.tracker = TextTracker(cfg, decode, constraint)
        self.generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        self.logprobs: list[dict] = []  # with cfg.logprobs: each generated token's token_logprob entry

    def solo_events(self, model):
        """The rest of this row in the single-sequence loop (sliding window), continuing its text and sampler."""
        left = self.cfg.max_new_tokens - self.count
        cfg = self.cfg.model_copy(update={"max_new_tokens": left})
        for token in iter_token_ids(model, self.context, cfg, generator=self.generator, logprobs=self.logprobs,
                                    constraint=self.tracker.constraint):
            self.context.append(token)
            piece, finish = self.tracker.push(token)
            yield token, piece, finish
            if finish:
                return
        yield None, self.tracker.rest(), "length"


class _State:
    """The batched part: rows in cache order, the cache, the key mask (rows x cache length) and last positions."""

    def __init__(self, ids: list[int], cache, key_mask: torch.Tensor, positions: torch.Tensor):
        self.ids, self.cache, self.key_mask, self.positions = ids, cache, key_mask, positions


def _left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [n, 0]
    return F.pad(x, pad)


def _plain_layers(cache):
    """The per-layer [keys, values] holders of a cache luban can pad, slice and join, or None."""
    if isinstance(cache, list):
        return None  # luban's GPT: handled as tuples
    layers = getattr(cache, "layers", None)
    if layers and all(type(layer).__name__ == "DynamicLayer" and isinstance(getattr(layer, "keys", None), torch.Tensor)
                      for layer in layers):
        return layers
    return None


def mergeable(cache) -> bool:
    return isinstance(cache, list) or _plain_layers(cache) is not None


def _map_kv(cache, fn):
    """Apply fn to every keys / values tensor (batch, heads, length, dim) of a mergeable cache."""
    if isinstance(cache, list):
        return [(fn(k), fn(v)) for k, v in cache]
    for layer in _plain_layers(cache):
        layer.keys, layer.values = fn(layer.keys), fn(layer.values)
    return cache


def _join_caches(a, b, pad_a: int, pad_b: int):
    if isinstance(a, list):
        return [(torch.cat([_left_pad(ka, pad_a, 2), _left_pad(kb, pad_b, 2)]),
                 torch.cat([_left_pad(va, pad_a, 2), _left_pad(vb, pad_b, 2)])) for (ka, va), (kb, vb) in zip(a, b)]
    for la, lb in zip(_plain_layers(a), _plain_layers(b), strict=True):
        la.keys = torch.cat([_left_pad(la.keys, pad_a, 2), _left_pad(lb.keys, pad_b, 2)])
        la.values = torch.cat([_left_pad(la.values, pad_a, 2), _left_pad(lb.values, pad_b, 2)])
    return a


class BatchDecoder:
    """step() -> this step's events for every live row; add() more rows at any step; cancel(row) drops one; done
    when every row finished. forward_sizes: the rows each model call of the last step advanced. `constrain(cfg)`:
    the JsonConstraint of a row whose cfg.json_schema is set (constrained and free rows share the batch; each row's
    logits are masked by its own grammar)."""

    def __init__(self, model, rows: Sequence[tuple[Sequence[int], GenerationConfig]],
                 decode: Callable[[list[int]], str], constrain: Callable[[GenerationConfig], object] | None = None):
        self.model, self.decode, self.constrain = model, decode, constrain
        self.device = _model_device(model)
        self.max_context = getattr(model, "max_context", None)
        self.batchable = hasattr(model, "next_token_logits_batch")
        self.rows: dict[int, _Row] = {}
        self.solo: dict[int, object] = {}
        self.state: _State | None = None
        self.joining: list[int] = []
        self.window: list[int] = []  # rows past the model's window (sliding, recomputed each step)
        self.cancelled: set[int] = set()
        self.forward_sizes: list[int] = []
        if getattr(model, "training", False):
            model.eval()
        self.add(rows)

    @property
    def done(self) -> bool:
        return not self.state and not self.joining and not self.window and not self.solo

    @property
    def batch_size(self) -> int:
        return len(self.state.ids) if self.state else 0

    def add(self, rows: Sequence[tuple[Sequence[int], GenerationConfig]]) -> list[int]:
        """More rows; they are read at the next step and then decoded with the others. Returns their row ids."""
        ids = []
        for prompt, cfg in rows:
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise ValueError("the prompt must encode to at least one token")
            i = len(self.rows)
            constraint = None
            if cfg.json_schema is not None:
                if self.constrain is None:
                    raise ValueError("json_schema: this model does not decode under a JSON grammar")
                constraint = self.constrain(cfg)
            self.rows[i] = row = _Row(prompt, cfg, self.decode, constraint)
            ids.append(i)
            if cfg.max_new_tokens == 0:
                self.solo[i] = iter([(None, "", "length")])
            elif not (self.batchable and cfg.use_cache):
                self.solo[i] = row.solo_events(self.model)
            elif not self._fits(row):  # a prompt longer than the window: straight to the sliding group
                self.window.append(i)
            elif self.state is None or mergeable(self.state.cache):
                self.joining.append(i)
            else:
                self.solo[i] = row.solo_events(self.model)
        return ids

    def cancel(self, row: int) -> None:
        self.cancelled.add(row)

    def step(self) -> list[Event]:
        self.forward_sizes = []
        self._drop_cancelled()
        events: list[Event] = []
        if self.state:
            events += self._decode()
        if self.window:
            events += self._slide()
        if self.joining:
            events += self._prefill()
        for i, it in list(self.solo.items()):
            ev = next(it, None)
            if ev is not None:
                events.append((i, *ev))
                if ev[0] is not None:
                    self.forward_sizes.append(1)
            if ev is None or ev[2]:
                del self.solo[i]
        return events

    def close(self) -> None:
        for it in self.solo.values():
            getattr(it, "close", lambda: None)()
        self.solo.clear()
        self.state, self.joining, self.window = None, [], []

    # ------------------------------------------------------------------------------------------------ internals

    def _fits(self, row: _Row) -> bool:
        """Whether the row's next input still sits inside the model's window (else it needs the sliding loop)."""
        return not self.max_context or len(row.context) <= self.max_context

    def _drop_cancelled(self) -> None:
        if not self.cancelled:
            return
        for i in self.cancelled & set(self.solo):
            getattr(self.solo.pop(i), "close", lambda: None)()
        self.joining = [i for i in self.joining if i not in self.cancelled]
        self.window = [i for i in self.window if i not in self.cancelled]
        if self.state and self.cancelled & set(self.state.ids):
            self._keep([i for i in self.state.ids if i not in self.cancelled])
        self.cancelled.clear()

    def _choose(self, ids: list[int], logits: torch.Tensor) -> tuple[list[Event], list[int]]:
        """Each row's next token from its logits row; returns the events and the rows still going."""
        events, live = [], []
        for r, i in enumerate(ids):
            row = self.rows[i]
            token = choose_token(logits[r], row.cfg, row.context, row.generator, row.tracker.constraint)
            if row.cfg.logprobs is not None:
                row.logprobs.append(token_logprob(logits[r], token, row.cfg.logprobs))
            row.context.append(token)
            row.count += 1
            piece, finish = row.tracker.push(token)
            events.append((i, token, piece, finish))
            if not finish and row.count >= row.cfg.max_new_tokens:
                events.append((i, None, row.tracker.rest(), "length"))
                finish = "length"
            if not finish:
                live.append(i)
        return events, live

    def _route(self, live: list[int]) -> list[int]:
        """Rows whose window is full move to the sliding-window group; returns those that stay in the cache."""
        full = [i for i in live if not self._fits(self.rows[i])]
        self.window += full
        return [i for i in live if i not in full] if full else live

    def _forward(self, ids: torch.Tensor, cache, key_mask: torch.Tensor, positions: torch.Tensor):
        self.forward_sizes.append(len(ids))
        with torch.no_grad():
            return self.model.next_token_logits_batch(ids, cache, key_mask, positions)

    def _decode(self) -> list[Event]:
        st = self.state
        ids = torch.tensor([[self.rows[i].context[-1]] for i in st.ids], device=self.device)
        st.key_mask = torch.cat([st.key_mask, st.key_mask.new_ones(len(st.ids), 1)], dim=1)
        st.positions = st.positions + 1
        logits, st.cache = self._forward(ids, st.cache, st.key_mask, st.positions)
        events, live = self._choose(st.ids, logits)
        stay = self._route(live)
        if stay != st.ids:
            self._keep(stay)
        return events

    def _slide(self) -> list[Event]:
        """Rows past the window: their last max_context tokens read afresh each step (as the single-sequence loop
        does once its window slides), all in one forward — every window has the same length, so no padding."""
        rows = self.window
        ids = torch.tensor([self.rows[i].context[-self.max_context:] for i in rows], device=self.device)
        self.forward_sizes.append(len(rows))
        with torch.no_grad():
            logits, _ = self.model.next_token_logits(ids, None)
        events, self.window = self._choose(rows, logits)
        return events

    def _prefill(self) -> list[Event]:
        """Read the joining rows' prompts in one pass, then merge them into the running batch."""
        rows, self.joining = self.joining, []
        prompts = [self.rows[i].context for i in rows]
        width = max(map(len, prompts))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = True
        mask = mask.to(self.device)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        logits, cache = self._forward(ids.to(self.device), None, mask, positions)
        events, live = self._choose(rows, logits)
        stay = self._route(live)
        new = _State(rows, cache, mask, positions[:, -1:])
        if stay != rows:
            new = self._select(new, stay)
        if new is not None:
            self._merge(new)
        return events

    def _merge(self, new: _State) -> None:
        old = self.state
        if old is None:
            self.state = new
            return
        if not (mergeable(old.cache) and mergeable(new.cache)):  # an unexpected cache kind: decode alone
            for i in new.ids:
                self.solo[i] = self.rows[i].solo_events(self.model)
            return
        la, lb = old.key_mask.shape[1], new.key_mask.shape[1]
        width = max(la, lb)
        old.cache = _join_caches(old.cache, new.cache, width - la, width - lb)
        old.key_mask = torch.cat([_left_pad(old.key_mask, width - la, 1), _left_pad(new.key_mask, width - lb, 1)])
        old.positions = torch.cat([old.positions, new.positions])
        old.ids = old.ids + new.ids

    def _select(self, st: _State, alive: list[int]) -> _State | None:
        """The state restricted to `alive` rows, with cache columns only padding uses cut away."""
        if not alive:
            return None
        index = torch.tensor([st.ids.index(i) for i in alive], device=self.device)
        st.cache = _reorder_cache(st.cache, index)
        st.key_mask, st.positions, st.ids = st.key_mask[index], st.positions[index], alive
        first = int(st.key_mask.any(0).long().argmax())
        if first and mergeable(st.cache):
            st.cache = _map_kv(st.cache, lambda x: x[:, :, first:])
            st.key_mask = st.key_mask[:, first:]
        return st

    def _keep(self, alive: list[int]) -> None:
        self.state = self._select(self.state, alive)


class EventBatch:
    """A BatchDecoder seen request by request, for servers: step() -> [(request index, {"text", "token",
    "finish_reason"} or the exception that request raised)]. Requests that failed before decoding (a bad prompt,
    a bad knob) report their error at the next step; the others are decoded together. add() more requests."""

    def __init__(self, prepare: Callable[[dict], tuple[list[int], GenerationConfig]],
                 make_decoder: Callable[[list], BatchDecoder]):
        self.prepare, self.make_decoder = prepare, make_decoder
        self.decoder: BatchDecoder | None = None
        self.rows: dict[int, int] = {}  # decoder row -> request index
        self.errors: dict[int, Exception] = {}
        self.n = 0

    def add(self, requests: list[dict]) -> list[int]:
        """Queue requests; returns their indexes (0, 1, ... in the order added over the batch's life)."""
        rows, index = [], []
        for request in requests:
            k = self.n
            self.n += 1
            index.append(k)
            try:
                rows.append((k, self.prepare(request)))
            except (LubanError, ValueError, TypeError) as e:  # this request's own error; the others go on
                self.errors[k] = e
        if rows:
            if self.decoder is None:
                self.decoder = self.make_decoder([r for _, r in rows])
                got = list(range(len(rows)))
            else:
                got = self.decoder.add([r for _, r in rows])
            self.rows.update({d: k for d, (k, _) in zip(got, rows, strict=True)})
        return index

    @property
    def done(self) -> bool:
        return not self.errors and (self.decoder is None or self.decoder.done)

    @property
    def forward_sizes(self) -> list[int]:
        return self.decoder.forward_sizes if self.decoder is not None else []

    def step(self) -> list[tuple[int, dict | Exception]]:
        out: list[tuple[int, dict | Exception]] = list(self.errors.items())
        self.errors = {}
        if self.decoder is not None and not self.decoder.done:
            for r, token, piece, finish in self.decoder.step():
                ev = {"text": piece, "token": token, "finish_reason": finish}
                row = self.decoder.rows[r]
                if token is not None and row.logprobs:  # the entry of the token this step chose
                    ev["logprob"] = row.logprobs[-1]
                out.append((self.rows[r], ev))
        elif self.decoder is not None:
            self.decoder.forward_sizes = []
        return out

    def cancel(self, request: int) -> None:
        self.errors.pop(request, None)
        for r, k in self.rows.items():
            if k == request and self.decoder is not None:
                self.decoder.cancel(r)

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()


class _Group:
    """Rows decoded together in lockstep (one iter_sample over their sources), each with its own TextTracker."""

    def __init__(self, members: list[tuple[int, dict]], steps, trackers: list[TextTracker]):
        self.members, self.steps, self.trackers = members, steps, trackers
        self.ended: set[int] = set()  # rows finished or cancelled

    @property
    def done(self) -> bool:
        return len(self.ended) == len(self.members)

    def step(self) -> tuple[list[tuple[int, dict]], int]:
        """One decoding step: each live row's event, and how many rows the forward advanced (0 once it ended)."""
        try:
            rows, tokens = next(self.steps)
        except StopIteration:  # the length limit: what the rows still hold back comes out with the last event
            out = [(self.members[r][0], {"text": self.trackers[r].rest(), "token": None, "finish_reason": "length"})
                   for r in range(len(self.members)) if r not in self.ended]
            self.ended.update(range(len(self.members)))
            return out, 0
        out = []
        for r, token in zip(rows, tokens, strict=True):
            if r in self.ended:
                continue
            piece, finish = self.trackers[r].push(token)
            out.append((self.members[r][0], {"text": piece, "token": None if finish == "eos" else token,
                                             "finish_reason": finish}))
            if finish:
                self.ended.add(r)
        return out, len(rows)

    def cancel(self, request: int) -> None:
        self.ended.update(r for r, (k, _) in enumerate(self.members) if k == request)

    def close(self) -> None:
        self.steps.close()


class GroupBatch:
    """For models that decode a fixed batch (seq2seq): the requests queued since the last step are grouped by their
    knobs (a request with its own seed decodes alone, so its draws are the ones it gets alone). A group decoded
    greedily or by sampling streams: all its rows advance one token per step() in one forward, each row's text
    through its own TextTracker (stop strings, held-back text), and rows that end leave the forward. A beam-search
    group is answered whole by `predict` (one call per group). step() -> [(request index, {"text", "token",
    "finish_reason"[, "tokens"]} or an exception)]. When opening a group fails, its requests are tried one by one, so
    an error reaches only the request that caused it.

    `open_stream(sources, knobs)` -> (iterator of (rows still running, their tokens), one TextTracker per source),
    or None for knobs that decode by beam search; `predict(sources, **knobs)` -> one result dict per source."""

    def __init__(self, open_stream: Callable[[list, dict], tuple | None], predict: Callable[..., list[dict]],
                 requests: list[dict]):
        self.open_stream, self.predict = open_stream, predict
        self.queue: list[tuple[int, dict]] = []
        self.groups: list[_Group] = []
        self.n = 0
        self.forward_sizes: list[int] = []
        self.add(requests)

    def add(self, requests: list[dict]) -> list[int]:
        index = list(range(self.n, self.n + len(requests)))
        self.queue += list(zip(index, requests))
        self.n += len(requests)
        return index

    @property
    def done(self) -> bool:
        return not self.queue and not self.groups

    def step(self) -> list[tuple[int, dict | Exception]]:
        self.forward_sizes = []
        out: list[tuple[int, dict | Exception]] = []
        queued, self.queue = self.queue, []
        groups: dict[str, tuple[dict, list[tuple[int, dict]]]] = {}
        for k, request in queued:
            knobs = {x: v for x, v in request.items() if x not in ("prompt", "messages")}
            key = json.dumps(knobs, sort_keys=True, default=str) + (f"#{k}" if knobs.get("seed") is not None else "")
            groups.setdefault(key, (knobs, []))[1].append((k, request))
        for knobs, members in groups.values():
            try:
                out += self._open(members, knobs)
            except (LubanError, ValueError, TypeError):
                for member in members:
                    try:
                        out += self._open([member], knobs)
                    except (LubanError, ValueError, TypeError) as e:
                        out.append((member[0], e))
        for group in list(self.groups):
            try:
                events, n = group.step()
            except (LubanError, ValueError, TypeError, RuntimeError) as e:
                events, n = [(k, e) for r, (k, _) in enumerate(group.members) if r not in group.ended], 0
                group.ended.update(range(len(group.members)))
            out += events
            if n:
                self.forward_sizes.append(n)
            if group.done:
                group.close()
                self.groups.remove(group)
        return out

    def _open(self, members: list[tuple[int, dict]], knobs: dict) -> list[tuple[int, dict]]:
        """Start a streaming group (its events come with the steps), or answer a beam-search group whole now."""
        sources = [r.get("prompt") for _, r in members]
        opened = self.open_stream(sources, knobs)
        if opened is not None:
            self.groups.append(_Group(members, *opened))
            return []
        results = self.predict(sources, **knobs)
        self.forward_sizes.append(len(members))
        return [(k, {"text": x["text"], "token": None, "finish_reason": x["finish_reason"], "tokens": x["tokens"]})
                for (k, _), x in zip(members, results, strict=True)]

    def cancel(self, request: int) -> None:
        self.queue = [(k, r) for k, r in self.queue if k != request]
        for group in self.groups:
            group.cancel(request)

    def close(self) -> None:
        self.queue = []
        for group in self.groups:
            group.close()
        self.groups = []
