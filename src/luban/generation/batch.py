"""Several sequences decoded together: one forward per step for all of them.

Rows start together (prompts left-padded, each row with its own positions and a key mask that hides the padding)
and each keeps its own GenerationConfig — temperature, top-k / top-p, repetition penalty, stop strings, eos, seed —
so a row's output is the one it would get alone (the same logits up to float rounding, the same seeded draws). A
row leaves the batch when it finishes or is cancelled (its cache rows are dropped). Rows the batch cannot hold — a
model without ``next_token_logits_batch``, or a prompt plus max_new_tokens past the model's context (that needs the
sliding window of the single-sequence loop) — run their own loop beside it, so the caller sees one stepper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from luban.generation.decoding import (GenerationConfig, TextTracker, _model_device, _reorder_cache, choose_token,
                                       step_events)

Event = tuple[int, int | None, str, str | None]  # row, token id (None on a closing event), text piece, finish reason


class _Row:
    def __init__(self, prompt: list[int], cfg: GenerationConfig, decode: Callable[[list[int]], str]):
        self.context, self.cfg, self.count = prompt, cfg, 0
        self.tracker = TextTracker(cfg, decode)
        self.generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None


class BatchDecoder:
    """step() -> this step's events for every live row; cancel(row) drops a row; done when every row finished."""

    def __init__(self, model, rows: Sequence[tuple[Sequence[int], GenerationConfig]],
                 decode: Callable[[list[int]], str]):
        self.model = model
        self.device = _model_device(model)
        max_context = getattr(model, "max_context", None)
        batchable = hasattr(model, "next_token_logits_batch")
        self.rows: dict[int, _Row] = {}
        self.solo: dict[int, object] = {}
        self.batch: list[int] = []  # rows in the batch, in cache order
        for i, (prompt, cfg) in enumerate(rows):
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise ValueError("the prompt must encode to at least one token")
            fits = not max_context or len(prompt) + cfg.max_new_tokens <= max_context
            if batchable and fits and cfg.use_cache and cfg.max_new_tokens > 0:
                self.rows[i] = _Row(prompt, cfg, decode)
                self.batch.append(i)
            else:
                self.solo[i] = step_events(model, prompt, cfg, decode)
        self.cache = self.key_mask = self.positions = None
        self.cancelled: set[int] = set()
        if self.batch and getattr(model, "training", False):
            model.eval()

    @property
    def done(self) -> bool:
        return not self.batch and not self.solo

    @property
    def batch_size(self) -> int:
        return len(self.batch)

    def cancel(self, row: int) -> None:
        self.cancelled.add(row)

    def step(self) -> list[Event]:
        self._drop_cancelled()
        events = self._batch_step() if self.batch else []
        for i, it in list(self.solo.items()):
            ev = next(it, None)
            if ev is not None:
                events.append((i, *ev))
            if ev is None or ev[2]:
                del self.solo[i]
        return events

    def close(self) -> None:
        for it in self.solo.values():
            it.close()
        self.solo.clear()
        self.batch, self.cache = [], None

    def _drop_cancelled(self) -> None:
        if not self.cancelled:
            return
        for i in self.cancelled & set(self.solo):
            self.solo.pop(i).close()
        if self.cancelled & set(self.batch):
            self._keep([i for i in self.batch if i not in self.cancelled])
        self.cancelled.clear()

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:  # the first step reads the whole (left-padded) prompts
            prompts = [self.rows[i].context for i in self.batch]
            width = max(map(len, prompts))
            ids = torch.zeros(len(prompts), width, dtype=torch.long)
            mask = torch.zeros(len(prompts), width, dtype=torch.bool)
            for r, p in enumerate(prompts):
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = True
            self.key_mask = mask.to(self.device)
            return ids.to(self.device), (self.key_mask.long().cumsum(1) - 1).clamp(min=0)
        ids = torch.tensor([[self.rows[i].context[-1]] for i in self.batch], device=self.device)
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_ones(len(self.batch), 1)], dim=1)
        return ids, self.positions[:, -1:] + 1

    def _batch_step(self) -> list[Event]:
        ids, self.positions = self._inputs()
        with torch.no_grad():
            logits, self.cache = self.model.next_token_logits_batch(ids, self.cache, self.key_mask, self.positions)
        events, finished = [], set()
        for r, i in enumerate(self.batch):
            row = self.rows[i]
            token = choose_token(logits[r], row.cfg, row.context, row.generator)
            row.context.append(token)
            row.count += 1
            piece, finish = row.tracker.push(token)
            events.append((i, token, piece, finish))
            if not finish and row.count >= row.cfg.max_new_tokens:
                events.append((i, None, row.tracker.rest(), "length"))
                finish = "length"
            if finish:
                finished.add(i)
        if finished:
            self._keep([i for i in self.batch if i not in finished])
        return events

    def _keep(self, alive: list[int]) -> None:
        if not alive:
            self.batch, self.cache = [], None
            return
        index = torch.tensor([self.batch.index(i) for i in alive], device=self.device)
        if self.cache is not None:
            self.cache = _reorder_cache(self.cache, index)
            self.key_mask, self.positions = self.key_mask[index], self.positions[index]
        self.batch = alive


class EventBatch:
    """A BatchDecoder seen request by request, for servers: step() -> [(request index, {"text", "token",
    "finish_reason"} or the exception that request raised)]. Requests that failed before decoding (a bad prompt,
    a bad knob) report their error at the first step; the others are decoded together."""

    def __init__(self, decoder: BatchDecoder | None, index: list[int], errors: dict[int, Exception]):
        self.decoder, self.index, self.errors = decoder, index, errors

    @property
    def done(self) -> bool:
        return not self.errors and (self.decoder is None or self.decoder.done)

    def step(self) -> list[tuple[int, dict | Exception]]:
        out: list[tuple[int, dict | Exception]] = list(self.errors.items())
        self.errors = {}
        if self.decoder is not None and not self.decoder.done:
            out += [(self.index[r], {"text": piece, "token": token, "finish_reason": finish})
                    for r, token, piece, finish in self.decoder.step()]
        return out

    def cancel(self, request: int) -> None:
        self.errors.pop(request, None)
        if self.decoder is not None and request in self.index:
            self.decoder.cancel(self.index.index(request))

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
