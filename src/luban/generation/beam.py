"""Batched beam search and batched greedy / sampled decoding for any autoregressive model.

Both loops reach the model through two small callables, so an encoder-decoder (decoder start token + encoder
output in the state) and a causal LM (the prompt, with a KV cache as the state) use the same code::

    step(new_ids: LongTensor (N, t_new), state) -> (logits: FloatTensor (N, V), state)
        feed `new_ids` after whatever `state` holds (state None: nothing yet) and return the raw next-token
        scores of every row (log_softmax is applied here; mask tokens that must never appear with -inf)
    reorder(state, index: LongTensor (M,)) -> state
        index_select every per-row tensor of the state along dim 0. M may differ from N: the loops use it to
        expand each row into its beams, to follow beams as they are re-ranked, and to drop rows that are done
        (so long batches get cheaper as their sentences finish). Not needed when the state is None throughout.

`start_ids` (B, t0) is what is fed first; it is fed once for the B rows (a prompt is not recomputed per beam).
Every row then advances in lockstep, one token per call, so all rows share one position counter.

`beam_search` keeps `num_beams` hypotheses per row. Each step it ranks beam x token continuations by their
summed log-probability, takes the 2 * num_beams best, turns those ending in `eos_id` that rank within the top
num_beams into finished hypotheses, and keeps the best num_beams others alive. A finished hypothesis scores
``sum_logprobs / length ** length_penalty`` (the Hugging Face convention; length counts the new tokens including
the eos): length_penalty > 0 favours longer outputs, < 0 shorter ones, 0 compares raw log-probabilities. A row
is done when it has num_beams finished hypotheses and none of its live beams, scored at the current length, beats
the worst of them (Hugging Face's default `early_stopping=False` rule); after `max_new_tokens` the live beams
compete with the finished ones. At least `min_new_tokens` (default 1) tokens come before an eos, so an output is
never empty. With num_beams=1 beam search is greedy decoding.

`sample` (and `iter_sample`, its step-by-step form for streaming) decodes one hypothesis per row: greedy (do_sample False, or temperature 0) or sampled with temperature,
top-k and top-p (luban.generation.decoding's filters) from a seeded `torch.Generator` (the global RNG is
untouched; draws happen on the CPU, so a seed gives the same text on any device).

`repetition_penalty` (> 1 discourages tokens already fed or generated in that row) follows Hugging Face: a
positive score is divided by it and a negative one multiplied; `sample` applies it to the logits, `beam_search`
to the log-probabilities (as Hugging Face's beam search does).

Both return, per input row, the new token ids of its best hypothesis with the eos left out. `causal_beam_search`
runs beam_search for one prompt on a causal LM (luban's GPT or a Hugging Face model, KV cache kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from luban.generation.decoding import _model_device, _reorder_cache, top_k_filter, top_p_filter

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
Reorder = Callable[[Any, torch.Tensor], Any]


def penalize_repeats(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Batched repetition penalty: per row, the tokens in `history` (N, t) get score / penalty when positive,
    score * penalty when negative."""
    if penalty == 1.0 or history.numel() == 0:
        return scores
    picked = scores.gather(1, history)
    return scores.scatter(1, history, torch.where(picked > 0, picked / penalty, picked * penalty))


def _reorder(reorder: Reorder | None, state, index: torch.Tensor):
    if state is None:
        return None
    if reorder is None:
        raise ValueError("a state that holds per-row tensors needs a reorder function")
    return reorder(state, index)


def _check(start_ids: torch.Tensor, max_new_tokens: int) -> None:
    if start_ids.ndim != 2 or start_ids.shape[1] == 0:
        raise ValueError(f"start_ids must be (batch, t0) with t0 >= 1, got shape {tuple(start_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")


@torch.no_grad()
def beam_search(step: Step, start_ids: torch.Tensor, num_beams: int, max_new_tokens: int, eos_id: int | None,
                length_penalty: float = 1.0, state=None, reorder: Reorder | None = None,
                repetition_penalty: float = 1.0, min_new_tokens: int = 1,
                return_scores: bool = False):
    """Best hypothesis per row (see the module docstring). With return_scores, also its length-normalized
    score per row."""
    _check(start_ids, max_new_tokens)
    batch, device = start_ids.shape[0], start_ids.device
    if batch == 0 or max_new_tokens == 0:
        return ([[] for _ in range(batch)], [0.0] * batch) if return_scores else [[] for _ in range(batch)]
    logits, state = step(start_ids, state)
    vocab = logits.shape[-1]
    k = max(1, min(num_beams, vocab))
    # every row becomes k beams; only the first counts at the start (the others score -inf)
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    state = _reorder(reorder, state, expand)
    logits = logits.index_select(0, expand)
    history = start_ids.index_select(0, expand)           # fed + generated ids of every beam (for the penalty)
    generated = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    rows = list(range(batch))                            # original row of each active row
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    best_alive: list[tuple[float, list[int]]] = [(float("-inf"), [])] * batch

    def add(row: int, score: float, tokens: list[int]) -> None:
        hyps = finished[row]
        if len(hyps) < k or score > hyps[-1][0]:
            hyps.append((score, tokens))
            hyps.sort(key=lambda h: -h[0])
            del hyps[k:]

    for t in range(max_new_tokens):
        active = len(rows)
        logp = torch.log_softmax(logits.float(), dim=-1)
        logp = penalize_repeats(logp, history, repetition_penalty)
        if eos_id is not None and t < min_new_tokens:
            logp[:, eos_id] = float("-inf")
        cand = (scores.unsqueeze(-1) + logp.view(active, k, vocab)).view(active, k * vocab)
        n_top = min(2 * k, k * vocab)
        top_scores, top_idx = cand.topk(n_top, dim=-1)
        parent, token = top_idx // vocab, top_idx % vocab
        length = t + 1
        norm = float(length) ** length_penalty
        is_eos = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        # eos candidates ranked within the top k finish a hypothesis
        ended = (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist()
        if ended:
            gen_rows = generated.tolist()
            top_list, parent_list = top_scores.tolist(), parent.tolist()
            for a, j in ended:
                add(rows[a], top_list[a][j] / norm, gen_rows[a * k + parent_list[a][j]])
        alive_scores = top_scores.masked_fill(is_eos, float("-inf"))
        scores, pick = alive_scores.topk(k, dim=-1)
        parent, token = parent.gather(1, pick), token.gather(1, pick)
        flat_parent = (torch.arange(active, device=device).unsqueeze(1) * k + parent).view(-1)
        generated = torch.cat([generated.index_select(0, flat_parent), token.view(-1, 1)], dim=1)
        history = torch.cat([history.index_select(0, flat_parent), token.view(-1, 1)], dim=1)
        best = scores[:, 0].tolist()
        last = t + 1 == max_new_tokens
        keep = []
        for a, row in enumerate(rows):
            hyps = finished[row]
            if last:
                continue
            done = len(hyps) >= k and hyps[-1][0] >= best[a] / norm
            if not done and best[a] != float("-inf"):
                keep.append(a)
        if last:  # out of length: the live beams compete with the finished hypotheses
            gen_rows, score_rows = generated.tolist(), scores.tolist()
            for a, row in enumerate(rows):
                for b in range(k):
                    if score_rows[a][b] != float("-inf"):
                        add(row, score_rows[a][b] / norm, gen_rows[a * k + b])
            break
        if not keep:
            break
        if len(keep) < active:  # drop the rows that are done
            keep_t = torch.as_tensor(keep, device=device)
            sel = (keep_t.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            flat_parent = flat_parent.index_select(0, sel)
            generated, history = generated.index_select(0, sel), history.index_select(0, sel)
            scores, token = scores.index_select(0, keep_t), token.index_select(0, keep_t)
            rows = [rows[a] for a in keep]
        state = _reorder(reorder, state, flat_parent)
        logits, state = step(token.view(-1, 1), state)
    out, out_scores = [], []
    for row in range(batch):
        score, tokens = finished[row][0] if finished[row] else best_alive[row]
        out.append(tokens)
        out_scores.append(score)
    return (out, out_scores) if return_scores else out


def iter_sample(step: Step, start_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None, *,
                do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0,
                generator: torch.Generator | None = None, state=None, reorder: Reorder | None = None,
                min_new_tokens: int = 1) -> Iterator[tuple[list[int], list[int]]]:
    """Greedy (do_sample False or temperature 0) or sampled decoding, one step at a time: yields (rows, tokens),
    the input rows still running and the token each just chose (an eos ends its row; it is yielded too)."""
    _check(start_ids, max_new_tokens)
    batch, device = start_ids.shape[0], start_ids.device
    if batch == 0 or max_new_tokens == 0:
        return
    greedy = not do_sample or temperature == 0
    with torch.no_grad():
        logits, state = step(start_ids, state)
    history = start_ids
    rows = torch.arange(batch)
    for t in range(max_new_tokens):
        scores = penalize_repeats(logits.float(), history, repetition_penalty)
        if eos_id is not None and t < min_new_tokens:
            scores[:, eos_id] = float("-inf")
        if greedy:
            token = scores.argmax(dim=-1)
        else:
            scores = top_p_filter(top_k_filter(scores / temperature, top_k), top_p)
            probs = torch.softmax(scores, dim=-1).cpu()
            token = torch.multinomial(probs, 1, generator=generator).view(-1).to(device)
        yield rows.tolist(), token.tolist()
        alive = token != eos_id if eos_id is not None else torch.ones_like(token, dtype=torch.bool)
        if t + 1 == max_new_tokens or not bool(alive.any()):
            return
        if not bool(alive.all()):  # drop the rows that ended
            keep = alive.nonzero().view(-1)
            state = _reorder(reorder, state, keep)
            token, history, rows = token[keep], history.index_select(0, keep), rows[keep.cpu()]
        history = torch.cat([history, token.view(-1, 1)], dim=1)
        with torch.no_grad():
            logits, state = step(token.view(-1, 1), state)


def sample(step: Step, start_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None, **kw) -> list[list[int]]:
    """Greedy or sampled decoding of one hypothesis per row (keyword options as `iter_sample`)."""
    out: list[list[int]] = [[] for _ in range(start_ids.shape[0])]
    for rows, tokens in iter_sample(step, start_ids, max_new_tokens, eos_id, **kw):
        for r, tok in zip(rows, tokens):
            if tok != eos_id:
                out[r].append(tok)
    return out


def causal_beam_search(model, prompt_ids: Sequence[int], num_beams: int, max_new_tokens: int,
                       eos_ids: int | Sequence[int] | None, length_penalty: float = 1.0,
                       repetition_penalty: float = 1.0) -> list[int]:
    """Beam search for one prompt on any model with ``next_token_logits`` (batched over beams, KV cache kept).
    The prompt is cut from the left so prompt + output fit the model's context."""
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
