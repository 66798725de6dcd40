"""Text generation: pretrain a GPT on a plain-text corpus, or fine-tune any HF causal LM (full or LoRA) on a corpus
or on prompt/response / chat data with the loss masked on the prompt; then generate with temperature, top-k,
top-p, repetition penalty, beam search, stop strings and streaming.

Two data modes, picked from the config:
- corpus (language modelling): one text file, a folder of text files, or a table's text column. Training batches
  are random windows of `block_size` tokens (an "epoch" is `trainer.steps_per_epoch` of them; auto: a token budget
  from the corpus' size for a GPT from scratch, luban.models.gpt_config; null: one pass);
  evaluation covers every held-out token once.
- supervised fine-tuning: `columns.prompt` + `columns.response`, or `columns.messages` (chat). Loss only on the
  response / assistant tokens.
- preference training (DPO, IPO, SLiC-hinge) of a pretrained LM: `columns.prompt` (or `messages` ending with a user
  turn) + `columns.chosen` + `columns.rejected`; the model as loaded is the frozen reference (luban.training.preference).

Validation loss and perplexity are the metrics; each evaluation also samples text from fixed prompts (kept in
history.jsonl and report.html) and measures generation speed.
"""

from __future__ import annotations

import functools
import html
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import luban.processor as processor
from luban.capabilities import (Chats, DecodesTogether, Evaluates, Predicts, ScoresTokens, StreamsTokens,
                                TaskPredictor)
from luban.config import GenerationSettings, RunConfig, updated
from luban.data.batching import epoch_batches
from luban.data.chat import IGNORE, ChatFormatter, Example, parse_messages
from luban.data.chat_formats import canonical_columns, resolve, to_canonical
from luban.data.builtin import get_builtin
from luban.data.corpus import Doc, docs_from_table, is_corpus_path, read_corpus, split_corpus
from luban.data.preference import Pair, pad_examples, pair_batch, preference_pairs
from luban.data.readers import LINE, read_table, resolve_column
from luban.data.tokenizers import BOS, EOS, TextEncoder, build_encoder, resolve_pretrained
from luban.data.cleaning import not_text
from luban.errors import ConfigError, DataError, LubanError
from luban.generation.constrained import Grammars
from luban.generation.decoding import GenerationConfig, generate, prompt_logprobs, step_events
from luban.tasks.base import Batches, Task, read_frames, to_device
from luban.models.gpt_config import auto_steps, auto_width
from luban.models.registry import build_model
from luban.training.checkpoint import load_weights
from luban.training.preference import (REFERENCE_FREE, disable_dropout, objective, pair_logps,
                                       preference_metrics, split_logps)
from luban.training.targets import target_logits

SPLITS = ("train", "validation", "test")


# ------------------------------------------------------------------------------------------------ data


def data_mode(cfg: RunConfig) -> str:
    """corpus (language modelling), sft (prompt/response or messages) or preference (chosen/rejected replies); the
    config's validation checked that the columns make one of them (luban.config._text_generation_checks)."""
    c = cfg.data.columns
    if c.chosen is not None:
        return "preference"
    return "sft" if c.messages is not None or c.prompt is not None else "corpus"


SFT_ROLES = ("prompt", "response", "messages", "chosen", "rejected")


def reads_layout(cfg: RunConfig) -> bool:
    """The data is a table whose layout (Alpaca, ShareGPT, OpenAI messages, prompt/response) its fields tell, or
    the one data.formatting names, rather than the columns data.columns names."""
    d = cfg.data
    if d.formatting in ("alpaca", "sharegpt"):
        return True
    named = any(getattr(d.columns, r) is not None for r in SFT_ROLES + ("text",))
    return (d.formatting == "auto" and not named and d.builtin is None
            and not is_corpus_path(Path(d.train), d.format, False))


def layout_frames(cfg: RunConfig, frames: dict) -> tuple[str, dict, dict]:
    """(layout, the column of each SFT role, the frames in luban's columns): Alpaca and ShareGPT rows become a
    `messages` column (+ chosen/rejected text), luban.data.chat_formats."""
    named = {r: None for r in SFT_ROLES}
    layout, cols = resolve(cfg.data.formatting, named, frames["train"])
    if layout != "columns":
        frames = {s: to_canonical(f, layout) if f is not None else None for s, f in frames.items()}
        cols = canonical_columns("chosen" in frames["train"].columns)
    return layout, cols, frames


def _read_docs(cfg: RunConfig, path: Path) -> list[Doc]:
    d = cfg.data
    if is_corpus_path(path, d.format, d.columns.text is not None):
        return read_corpus(path, d.encoding_for(path))
    frame = read_table(path, d.format, d.header, d.delimiter, d.quoting, d.encoding_for(path))
    if d.columns.text is None:
        raise ConfigError(f"data.columns.text: {path} is a table; name its text column (or use a .txt file / "
                          "data.format: text for plain text)")
    return docs_from_table(frame, resolve_column(frame, d.columns.text, "text"))


def read_corpus_splits(cfg: RunConfig) -> dict[str, list[Doc]]:
    d, sp = cfg.data, cfg.data.split
    docs = {s: _read_docs(cfg, getattr(d, s)) if getattr(d, s) is not None else None for s in SPLITS}
    if d.builtin is not None:  # a built-in corpus (peoples_daily_text): one document per row of its text column
        frame = get_builtin(d.builtin).load()
        docs["train"] = docs_from_table(frame, resolve_column(frame, d.columns.text or "text", "text"))
    if d.train_limit is not None:
        docs["train"] = docs["train"][: d.train_limit]
    missing = [s for s in ("validation", "test") if docs[s] is None]
    if missing:
        fracs = [sp.validation if s == "validation" else sp.test for s in missing]
        train, first, second = split_corpus(docs["train"], fracs[0], fracs[1] if len(fracs) > 1 else None)
        docs["train"], docs[missing[0]] = train, first
        if len(missing) > 1:
            docs[missing[1]] = second
    return docs


def token_stream(docs: list[Doc], encoder) -> torch.Tensor:
    """All documents as one id stream; documents are separated by the end-of-sequence token."""
    eos = encoder.eos_id
    ids: list[int] = []
    for i, d in enumerate(docs):
        if i and eos is not None:
            ids.append(eos)
        ids += encoder.encode_text(d.text)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream_ids: torch.Tensor, block: int) -> list[tuple[int, int]]:
    """(start, length) of consecutive windows covering every next-token prediction once."""
    n = len(stream_ids) - 1
    return [(s, min(block, n - s)) for s in range(0, n, block)]


def corpus_batches(stream_ids: torch.Tensor, block: int, starts: list[list[int]], length: int | None = None):
    """Batches of (x, y) windows starting at the given offsets."""

    def collate(offsets):
        t = length or block
        idx = torch.as_tensor(offsets)[:, None] + torch.arange(t + 1)[None, :]
        chunk = stream_ids[idx]
        return {"x": chunk[:, :-1], "y": chunk[:, 1:], "size": chunk.shape[0] * t}

    return Batches(starts, collate)


def eval_batches(stream_ids: torch.Tensor, block: int, batch_size: int) -> list[Batches]:
    wins = windows(stream_ids, block)
    full = [s for s, t in wins if t == block]
    out = [corpus_batches(stream_ids, block, [full[i:i + batch_size] for i in range(0, len(full), batch_size)])]
    out += [corpus_batches(stream_ids, block, [[s]], length=t) for s, t in wins if t < block]
    return out


def sft_batches(examples: list[Example], batch_size: int, pad_id: int, seed: int, epoch: int,
                shuffle: bool = True) -> Batches:
    def collate(idx):
        x, y = pad_examples([examples[i] for i in idx], pad_id)
        # the loss is per reply token (size); the throughput counts every token read (processed)
        return {"x": x, "y": y, "size": int((y != IGNORE).sum()), "processed": sum(len(examples[i].ids) for i in idx)}

    return Batches(epoch_batches([len(e.ids) for e in examples], batch_size, seed, epoch, shuffle=shuffle), collate)


def pair_batches(pairs: list[Pair], batch_size: int, pad_id: int, seed: int, epoch: int,
                 shuffle: bool = True) -> Batches:
    return Batches(epoch_batches([p.length for p in pairs], batch_size, seed, epoch, shuffle=shuffle),
                   lambda idx: pair_batch(pairs, idx, pad_id))


def token_loss_sum(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
    logits, targets, _ = target_logits(model, batch["x"], batch["y"])
    return F.cross_entropy(logits, targets, reduction="sum"), len(targets)


@torch.no_grad()
def mean_loss(model: nn.Module, batch_sets: list[Batches], device: torch.device) -> dict:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for batches in batch_sets:
        for batch in batches:
            s, n = token_loss_sum(model, to_device(batch, device))
            total, count = total + float(s), count + n
    model.train(was)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def bigram_loss(train_pairs: np.ndarray, eval_pairs: np.ndarray, vocab: int, alpha: float = 1.0) -> float:
    """Mean -log p(next | prev) of a bigram model smoothed toward the add-one unigram (Dirichlet prior alpha)."""
    prev, nxt = train_pairs[:, 0].astype(np.int64), train_pairs[:, 1].astype(np.int64)
    uni = (np.bincount(nxt, minlength=vocab) + 1.0) / (len(nxt) + vocab)
    ctx = np.bincount(prev, minlength=vocab).astype(np.float64)
    keys, counts = np.unique(prev * vocab + nxt, return_counts=True)
    q = eval_pairs[:, 0].astype(np.int64) * vocab + eval_pairs[:, 1].astype(np.int64)
    pos = np.clip(np.searchsorted(keys, q), 0, len(keys) - 1)
    c = np.where(keys[pos] == q, counts[pos], 0)
    p = (c + alpha * uni[eval_pairs[:, 1]]) / (ctx[eval_pairs[:, 0]] + alpha)
    return float(-np.log(p).mean())


# ------------------------------------------------------------------------------------------------ generation


def generation_config(settings: GenerationSettings, knobs: dict, eos) -> GenerationConfig:
    """`knobs` may also hold ignore_eos (true: decode max_new_tokens whatever the model says; benchmarks' knob)."""
    allowed = (set(GenerationSettings.model_fields) - {"sample_prompts", "sample_tokens", "lead_n"}) | {
        "logprobs", "json_schema", "ignore_eos"}
    unknown = sorted(set(knobs) - allowed)
    if unknown:
        raise LubanError(f"unknown generation setting(s) {', '.join(unknown)}; use {', '.join(sorted(allowed))}")
    ignore_eos = bool(knobs.get("ignore_eos"))
    fields = settings.model_dump() | {k: v for k, v in knobs.items() if v is not None and k != "ignore_eos"}
    if fields["do_sample"] is None:
        fields["do_sample"] = True  # text generation samples unless told not to
    if ignore_eos and fields.get("json_schema") is not None:
        raise LubanError("ignore_eos does not combine with a JSON schema (its text ends where the JSON does)")
    try:
        return GenerationConfig(**fields, eos_token_id=None if ignore_eos else eos)
    except ValidationError as e:
        raise LubanError("generation: " + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                                    for err in e.errors())) from None


def _eos_ids(model, encoder):
    """End-of-sequence ids: the tokenizer's, plus the HF generation config's (chat models end turns with more)."""
    ids = {encoder.eos_id} if encoder.eos_id is not None else set()
    hf = getattr(model, "model", None)
    extra = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return sorted(ids) or None


RUN_MANY_BATCH = 32  # prompts decoded together by predict()


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet back to bytes (the printable stand-ins it uses for every byte value)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def token_pieces(encoder, ids: list[int]) -> list[tuple[str, bytes]]:
    """(text, bytes) of each token id alone: exact bytes for byte-level BPE tokenizers (GPT-2, LLaMA 3, Qwen,
    SmolLM), else the UTF-8 of the token decoded alone."""
    tok = getattr(encoder, "tok", None)
    decoder = getattr(getattr(getattr(tok, "backend_tokenizer", None), "decoder", None), "__class__", None)
    out = []
    if decoder is not None and decoder.__name__ == "ByteLevel":
        table = _byte_decoder()
        special = set(getattr(tok, "all_special_ids", []) or [])
        for t, piece in zip(ids, tok.convert_ids_to_tokens(list(ids)), strict=True):
            if t not in special and piece is not None and all(c in table for c in piece):
                raw = bytes(table[c] for c in piece)
            else:
                raw = encoder.decode([t]).encode("utf-8")
            out.append((raw.decode("utf-8", errors="replace"), raw))
        return out
    for t in ids:
        text = encoder.decode([t])
        out.append((text, text.encode("utf-8")))
    return out


class Generator:
    """Prompt -> text for one model + tokenizer, with every decoding knob; shared by training samples and the
    predictor."""

    def __init__(self, model, encoder, formatter: ChatFormatter, settings: GenerationSettings):
        self.model, self.encoder, self.formatter, self.settings = model, encoder, formatter, settings
        self.grammars = Grammars(encoder, _eos_ids(model, encoder), lambda ids: token_pieces(encoder, ids))

    def _constraint(self, cfg: GenerationConfig):
        """The JsonConstraint of a generation with a json_schema knob (None without one)."""
        if cfg.json_schema is None:
            return None
        try:
            return self.grammars.constraint(cfg.json_schema)
        except ValueError as e:
            raise LubanError(f"json_schema: {e}") from None

    def _config(self, knobs: dict) -> GenerationConfig:
        cfg = generation_config(self.settings, knobs, _eos_ids(self.model, self.encoder))
        if cfg.json_schema is not None:
            try:
                self.grammars.check(cfg.json_schema)
            except ValueError as e:
                raise LubanError(f"json_schema: {e}") from None
        return cfg

    def _ids(self, prompt=None, messages=None, tools=None) -> list[int]:
        """The ids the model reads: a conversation (rendered by the chat template, with `tools` where given), a
        prompt, or a prompt given as token ids (a list of ints in the vocabulary)."""
        if messages is not None:
            ids = self.formatter.reply_prompt(messages if tools else parse_messages(messages, "messages"), tools)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt):
            vocab = self.encoder.vocab_size
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise DataError(f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})")
            ids = list(prompt)
        else:
            if not isinstance(prompt, str):
                raise DataError(f"prompt: expected text, found {type(prompt).__name__}")
            ids = self.formatter.prompt_ids(prompt)
        if not ids:  # an empty prompt starts a new document
            start = self.encoder.eos_id if self.encoder.eos_id is not None else self.encoder.bos_id
            if start is None:
                raise DataError("prompt: empty, and the tokenizer has no start token; give a prompt")
            ids = [start]
        return ids

    def run(self, prompt=None, messages=None, **knobs) -> dict:
        ids = self._ids(prompt, messages, knobs.pop("tools", None))
        num_beams = knobs.pop("num_beams", None) or self.settings.num_beams
        length_penalty = knobs.pop("length_penalty", None)
        cfg = self._config(knobs)
        if num_beams > 1:
            if cfg.json_schema is not None:
                raise LubanError("json_schema: JSON-constrained decoding samples or decodes greedily; it does not "
                                 "combine with beam search (num_beams > 1)")
            return self._beam(ids, cfg, num_beams, self.settings.length_penalty if length_penalty is None
                              else length_penalty)
        res = generate(self.model, ids, cfg, self.encoder.decode, self._constraint(cfg))
        return {"text": res.text, "tokens": len(res.token_ids), "finish_reason": res.finish_reason,
                "seconds": round(res.seconds, 4), "tokens_per_second": round(res.tokens_per_second, 1)}

    def stream(self, prompt=None, messages=None, **knobs):
        """The generated text piece by piece (sampling or greedy; beam settings do not apply to streaming)."""
        return (piece for _, piece, _, _ in self.events(prompt, messages, **knobs) if piece)

    def events(self, prompt=None, messages=None, **knobs):
        """Like stream, yielding (token_id | None, text_piece, finish_reason | None, logprob entry | None) per
        decoding step; the last event carries the finish reason (serving: usage counts, OpenAI finish_reason). The
        knob `logprobs` (k) gives each token's entry (its log-probability and the k most likely tokens')."""
        knobs.pop("num_beams", None)
        knobs.pop("length_penalty", None)
        ids = self._ids(prompt, messages, knobs.pop("tools", None))
        cfg = self._config(knobs)
        return self._with_logprobs(step_events, self.model, ids, cfg, self.encoder.decode, self._constraint(cfg))

    @staticmethod
    def _with_logprobs(steps, model, ids, cfg, decode, constraint):
        """(token, piece, finish, that token's logprob entry or None) per step (entries with cfg.logprobs only)."""
        sink: list[dict] = []
        for token, piece, finish in steps(model, ids, cfg, decode, sink, constraint):
            yield token, piece, finish, (sink[-1] if token is not None and sink else None)

    def batch(self, requests: list[dict]):
        """Decode several requests together ({"prompt": ...} or {"messages": [...]}, plus knobs each): an
        EventBatch whose step() gives each request's next event and add() takes more (luban.generation.batch)."""
        from luban.generation.batch import BatchDecoder, EventBatch

        def prepare(request: dict):
            knobs = {k: v for k, v in request.items() if k not in ("prompt", "messages", "num_beams",
                                                                     "length_penalty", "tools")}
            return (self._ids(request.get("prompt"), request.get("messages"), request.get("tools")),
                    self._config(knobs))

        batch = EventBatch(prepare, lambda rows: BatchDecoder(self.model, rows, self.encoder.decode,
                                                              constrain=self._constraint))
        batch.add(requests)
        return batch

    def run_many(self, requests: list[dict]) -> list[dict]:
        """run() for several requests, decoded together (beam search requests run one by one)."""
        beams = [(r.get("num_beams") or self.settings.num_beams) > 1 for r in requests]
        out: list[dict | None] = [None] * len(requests)
        for i, r in enumerate(requests):
            if beams[i]:
                out[i] = self.run(r.get("prompt"), r.get("messages"),
                                  **{k: v for k, v in r.items() if k not in ("prompt", "messages")})
        rest = [i for i in range(len(requests)) if not beams[i]]
        for start in range(0, len(rest), RUN_MANY_BATCH):
            self._run_together(requests, rest[start:start + RUN_MANY_BATCH], out)
        return out

    def _run_together(self, requests: list[dict], todo: list[int], out: list) -> None:
        t0 = time.perf_counter()
        batch = self.batch([requests[i] for i in todo])
        pieces = {i: [] for i in todo}
        tokens = dict.fromkeys(todo, 0)
        while not batch.done:
            for j, ev in batch.step():
                i = todo[j]
                if isinstance(ev, Exception):
                    raise ev
                pieces[i].append(ev["text"])
                tokens[i] += ev["token"] is not None
                if ev["finish_reason"]:
                    secs = time.perf_counter() - t0
                    out[i] = {"text": "".join(pieces[i]), "tokens": tokens[i], "finish_reason": ev["finish_reason"],
                              "seconds": round(secs, 4), "tokens_per_second": round(tokens[i] / secs, 1)
                              if secs > 0 else 0.0}

    def _beam(self, ids, cfg: GenerationConfig, num_beams: int, length_penalty: float) -> dict:
        from luban.generation.beam import causal_beam_search

        t0 = time.perf_counter()
        out = causal_beam_search(self.model, ids, num_beams=num_beams, max_new_tokens=cfg.max_new_tokens,
                                 eos_ids=cfg.eos_token_id, length_penalty=length_penalty)
        text = self.encoder.decode(out)
        reason = "length" if len(out) >= cfg.max_new_tokens else "eos"
        for s in cfg.stop:
            if s in text:
                text, reason = text[: text.index(s)], "stop"
        secs = time.perf_counter() - t0
        return {"text": text, "tokens": len(out), "finish_reason": reason, "seconds": round(secs, 4),
                "tokens_per_second": round(len(out) / secs, 1) if secs > 0 else 0.0}


# ------------------------------------------------------------------------------------------------ model


def _hf_source(cfg: RunConfig) -> str:
    m = cfg.model
    return resolve_pretrained(m.path, m.allow_download, "model.path")


def build_gpt(cfg: RunConfig, vocab_size: int):
    return build_model(cfg.model, cfg.task, vocab_size=vocab_size)



def context_length(cfg: RunConfig, model=None) -> int:
    if not cfg.model.pretrained:
        return cfg.model.block_size
    limit = getattr(model, "max_context", None) or cfg.preprocessing.tokenizer.max_length
    return min(cfg.preprocessing.tokenizer.max_length, limit)


# ------------------------------------------------------------------------------------------------ task


class TextGenerationTask(Task):
    name = "text_generation"
    main_metric = "loss"
    mode = "min"
    more_training = "trainer.steps_per_epoch or trainer.epochs"
    kind, sft, pref = "corpus", False, False  # the data mode (read_frames): corpus, sft or preference

    def prefers_bf16_on_cpu(self):
        return True  # measured: bf16 autocast ~1.3-1.5x faster for small GPTs on AVX-512 BF16 CPUs

    def read_frames(self):
        cfg = self.cfg
        self.layout, self.columns = "columns", {r: getattr(cfg.data.columns, r) for r in SFT_ROLES}
        if reads_layout(cfg):
            self.layout, self.columns, frames = layout_frames(cfg, read_frames(cfg))
            self.kind = "preference" if self.columns["chosen"] is not None else "sft"
            if self.kind == "preference" and (not cfg.model.pretrained
                                            or getattr(cfg.model, "finetune", "none") == "none"):
                raise ConfigError("model: the data holds preference pairs (chosen/rejected); preference training "
                                  "starts from a pretrained causal LM (model.type: pretrained_lm with finetune lora "
                                  "or full)")
        else:
            self.kind = data_mode(cfg)
            frames = None
        self.sft, self.pref = self.kind != "corpus", self.kind == "preference"  # pref: sft's tables, paired
        if frames is not None:
            return frames
        return read_frames(cfg) if self.sft else read_corpus_splits(cfg)

    def prepare(self, frames):
        cfg = self.cfg
        m = cfg.model
        source = _hf_source(cfg) if m.pretrained else None
        self.source = source
        self.encoder = build_encoder(cfg.preprocessing.tokenizer, source,
                                     getattr(m, "trust_remote_code", False), specials=(BOS, EOS))
        self.formatter = ChatFormatter(self.encoder)
        self.block = context_length(cfg)
        if self.sft:
            self._prepare_sft(frames)
        else:
            self._prepare_corpus(frames)
        self._resolve_auto()

    def _resolve_auto(self):
        """The settings left at auto, now that the data is read (luban.models.gpt_config): the GPT's width from the
        vocabulary, the optimizer steps per epoch from the corpus' size (a pretrained LM and SFT data: one pass).
        The run's config.yaml records the numbers; data_summary()["auto"] says what they came from."""
        cfg, changes, why = self.cfg, {}, {}
        vocab = self.encoder.vocab_size
        if getattr(cfg.model, "n_embd", None) == "auto":
            changes["model.n_embd"] = auto_width(vocab, cfg.model.n_head)
            why["model.n_embd"] = f"{vocab:,}-token vocabulary"
        tr = cfg.trainer
        if tr.steps_per_epoch == "auto":
            if self.sft or cfg.model.pretrained:
                changes["trainer.steps_per_epoch"], why["trainer.steps_per_epoch"] = None, "one pass per epoch"
            else:
                tokens = len(self.streams["train"])
                steps = auto_steps(tokens, tr.epochs, tr.batch_size, self.block)
                seen = steps * tr.epochs * tr.batch_size * self.block
                changes["trainer.steps_per_epoch"] = steps
                why["trainer.steps_per_epoch"] = f"{tokens:,} training tokens: {seen:,} seen in {tr.epochs} epochs"
        self.auto = {k: {"value": v, "from": why[k]} for k, v in changes.items()}
        if changes:
            self.cfg = updated(cfg, changes)
            print("auto settings: " + "; ".join(f"{k} {v['value']} ({v['from']})" for k, v in self.auto.items()),
                  flush=True)

    def _prepare_corpus(self, docs):
        self.encoder.fit([d.text for d in docs["train"]])
        self.streams = {s: token_stream(docs[s], self.encoder) for s in SPLITS}
        for s in SPLITS:
            if len(self.streams[s]) < 2:
                raise DataError(f"{docs[s][0].source}: the {s} text is shorter than two tokens")
        if len(self.streams["train"]) <= self.block + 1:
            raise DataError(f"{docs['train'][0].source}: the training text ({len(self.streams['train'])} tokens) "
                            f"is not longer than one context window ({self.block} tokens); add text or lower "
                            "model.block_size")
        self.sources = {s: docs[s][0].source + (f" (+{len(docs[s]) - 1} more)" if len(docs[s]) > 1 else "")
                        for s in SPLITS}
        self.sizes = {s: len(self.streams[s]) for s in SPLITS}
        lines = [ln for ln in docs["validation"][0].text.split("\n")[1:] if ln.strip()]  # skip a cut first line
        self.default_prompts = [(lines[0] if lines else docs["validation"][0].text)[:40] + "\n"]

    def _prepare_sft(self, frames):
        from luban.data.splits import make_splits

        cfg = self.cfg
        sp = cfg.data.split
        splits = make_splits(frames, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed, None)
        cols = {}
        for role in SFT_ROLES:
            ref = self.columns[role]
            cols[role] = resolve_column(splits["train"], ref, role) if ref is not None else None
        self.formatter.uses_chat = cols["messages"] is not None or self.formatter.template is not None
        texts, src = [], splits["train"].attrs.get("source", "data")
        for _, row in splits["train"].iterrows():  # trained vocabularies see every text they must encode
            if cols["messages"] is not None:
                where = f"{src}: line {row[LINE]}: field {cols['messages']!r}"
                texts += [m["content"] for m in parse_messages(row[cols["messages"]], where)]
            texts += [row[cols[r]] for r in ("prompt", "response", "chosen", "rejected")
                      if cols[r] is not None and isinstance(row[cols[r]], str)]
        self.encoder.fit(texts + ["system: user: assistant: \n"])
        self.examples, self.pairs, dropped = {}, {}, {}
        for s in SPLITS:
            if self.pref:
                self.pairs[s], dropped[s] = preference_pairs(self.formatter, splits[s], cols["prompt"],
                                                             cols["messages"], cols["chosen"], cols["rejected"],
                                                             self.block + 1)
            else:
                self.examples[s], dropped[s] = self.formatter.examples(splits[s], cols["prompt"], cols["response"],
                                                                       cols["messages"], self.block + 1)
        self.sources = {s: splits[s].attrs.get("source", s) for s in SPLITS}
        self.sizes = {s: len((self.pairs if self.pref else self.examples)[s]) for s in SPLITS}
        self.dropped = dropped
        first = splits["validation"].iloc[0]
        if cols["messages"] is not None:
            msgs = parse_messages(first[cols["messages"]], "messages")
            self.default_prompts = [next((m["content"] for m in msgs if m["role"] == "user"), "")]
        else:
            self.default_prompts = [first[cols["prompt"]]]

    # model -----------------------------------------------------------------------------------------------
    def build_model(self):
        cfg = self.cfg
        self.base_metrics = None
        if not cfg.model.pretrained:
            return build_gpt(cfg, self.encoder.vocab_size)
        model = build_model(cfg.model, cfg.task, source=self.source, vocab_size=len(self.encoder.tok),
                            device=self.device, as_loaded=self._measure_as_loaded)
        if self.pref:
            disable_dropout(model)
        return model

    def _measure_as_loaded(self, model) -> None:
        """The pretrained model before fine-tuning: its context window; under preference training the frozen
        reference's log-probabilities (once, before training), else the baseline fine-tuning has to beat."""
        cfg = self.cfg
        self.block = context_length(cfg, model)
        if self.pref:
            from luban.training.hardware import autocast

            with autocast(self.device, getattr(self, "precision", "fp32")):
                self.reference = {s: split_logps(model, self._eval_sets(s)[0], len(self.pairs[s]), self.device)
                                  for s in SPLITS}
            self.base_metrics = {s: preference_metrics(self.reference[s][0], self.reference[s][0],
                                                       self.reference[s][1], cfg.trainer.preference)
                                 for s in ("validation", "test")}
        elif cfg.evaluation.baseline:  # the pretrained model as is: what fine-tuning has to beat
            self.base_metrics = {s: self._loss(model, s) for s in ("validation", "test")}

    @property
    def throughput_unit(self):
        return "pairs" if self.pref else "tokens"

    def train_step(self):
        """A pretrained model with finetune: none is evaluated as is (no training loop)."""
        if self.cfg.model.pretrained and self.cfg.model.finetune == "none":
            return None
        return super().train_step()

    # batches ---------------------------------------------------------------------------------------------
    def train_batches(self, epoch):
        tr, bs = self.cfg.trainer, self.cfg.trainer.batch_size
        if self.pref:
            return pair_batches(self.pairs["train"], bs, self.encoder.pad_id, self.cfg.seed, epoch)
        if self.sft:
            return sft_batches(self.examples["train"], bs, self.encoder.pad_id, self.cfg.seed, epoch,
                               shuffle=True)
        stream_ids = self.streams["train"]
        steps = tr.steps_per_epoch or max(1, (len(stream_ids) - 1) // (bs * self.block))
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        starts = torch.randint(0, len(stream_ids) - self.block - 1 + 1, (steps, bs), generator=g).tolist()
        return corpus_batches(stream_ids, self.block, starts)

    def _eval_sets(self, split) -> list[Batches]:
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size
        if self.pref:
            return [pair_batches(self.pairs[split], bs, self.encoder.pad_id, 0, 0, shuffle=False)]
        if self.sft:
            return [sft_batches(self.examples[split], bs, self.encoder.pad_id, 0, 0, shuffle=False)]
        return eval_batches(self.streams[split], self.block, bs)

    def loss(self, model, batch):
        batch = to_device(batch, self.device)
        if self.pref:
            policy, counts = pair_logps(model, batch)
            ref = self.reference["train"][0][batch["index"].cpu()].to(self.device, torch.float32)
            return objective(policy, ref, counts, self.cfg.trainer.preference)
        s, n = token_loss_sum(model, batch)
        return s / max(n, 1)

    def _loss(self, model, split) -> dict:
        if self.pref:
            logps, counts = split_logps(model, self._eval_sets(split)[0], len(self.pairs[split]), self.device)
            return preference_metrics(logps, self.reference[split][0], counts, self.cfg.trainer.preference)
        return mean_loss(model, self._eval_sets(split), self.device)

    def generator(self, model) -> Generator:
        return Generator(model, self.encoder, self.formatter, self.cfg.generation)

    def samples(self, model) -> dict:
        g = self.cfg.generation
        if g.sample_tokens == 0:
            return {}
        gen = self.generator(model)
        out, tokens, seconds = [], 0, 0.0
        for p in g.sample_prompts or self.default_prompts:
            r = gen.run(p, max_new_tokens=g.sample_tokens, seed=self.cfg.seed if g.seed is None else g.seed)
            out.append({"prompt": p, "text": r["text"]})
            tokens, seconds = tokens + r["tokens"], seconds + r["seconds"]
        return {"samples": out, "generation_tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0}

    def evaluate(self, model, split, detailed=False):
        return {**self._loss(model, split), **self.samples(model)}

    def baseline(self):
        if self.base_metrics is not None:
            return {"name": "the pretrained model before " + ("preference training (the reference)" if self.pref
                                                              else "fine-tuning"),
                    **{s: {k: v for k, v in r.items() if k != "tokens"} for s, r in self.base_metrics.items()}}
        if self.cfg.model.pretrained:
            return None
        train = self._pairs("train")
        out = {}
        for s in ("validation", "test"):
            loss = bigram_loss(train, self._pairs(s), self.encoder.vocab_size)
            out[s] = {"loss": loss, "perplexity": math.exp(loss)}
        return {"name": "bigram counts (smoothed)", **out}

    def _pairs(self, split) -> np.ndarray:
        if not self.sft:
            s = self.streams[split].numpy()
            return np.stack([s[:-1], s[1:]], axis=1)
        rows = [(a, b) for e in self.examples[split] for a, b, lab in zip(e.ids, e.ids[1:], e.labels[1:])
                if split == "train" or lab != IGNORE]
        return np.asarray(rows, dtype=np.int64)

    # saving ----------------------------------------------------------------------------------------------
    def save_weights(self, folder, model):
        if not self.cfg.model.pretrained:
            return super().save_weights(folder, model)
        model.export(folder / "hf", merge=self.cfg.model.merge_adapters)
        self.encoder.tok.save_pretrained(str(folder / "hf"))

    def save(self, folder, model):
        meta = {"mode": self.kind, "uses_chat": self.formatter.uses_chat, "layout": getattr(self, "layout", "columns"),
                "vocab_size": self.encoder.vocab_size, "block_size": self.block}
        processor.save(folder, self.cfg.task, tokenizer=self.encoder, model=meta)

    def data_summary(self):
        unit = "pairs" if self.pref else "examples" if self.sft else "tokens"
        out = {"splits": {s: self.sizes[s] for s in SPLITS}, "unit": unit, "sources": self.sources,
               "vocab_size": self.encoder.vocab_size, "context_length": self.block,
               "samples_per_second_counts": "pairs" if self.pref else
               "tokens read (prompt, chat template and reply; the loss is on the reply tokens)" if self.sft else
               "tokens"}
        if self.sft:
            out["dropped_too_long"] = self.dropped
        if getattr(self, "auto", None):
            out["auto"] = self.auto  # the settings resolved from the data (config.yaml holds the values)
        return out

    def report_sections(self, workdir, final):
        return [samples_section(self._history(workdir), final)]

    @staticmethod
    def _history(workdir: Path) -> list[dict]:
        path = workdir / "history.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []


def samples_section(history: list[dict], final: dict) -> str:
    E = html.escape
    rows = [(f"epoch {h['epoch']}", s) for h in history for s in h.get("val_samples", [])]
    rows += [("final (best weights)", s) for s in final.get("test", {}).get("samples", [])]
    if not rows:
        return ""
    tps = final.get("test", {}).get("generation_tokens_per_s")
    body = "".join(f"<tr><td class=l>{E(w)}</td><td class=l><b>{E(s['prompt'])}</b>"
                   f"<span style='white-space:pre-wrap'>{E(s['text'])}</span></td></tr>" for w, s in rows)
    speed = f"<p class=muted>generation: {tps} tokens/s</p>" if tps else ""
    return ("<h2>Samples at each evaluation</h2>" + speed +
            "<table><tr><th class=l>when</th><th class=l>prompt + generated text</th></tr>" + body + "</table>")


# ------------------------------------------------------------------------------------------------ predictor


class TextGenerationPredictor(TaskPredictor, Predicts, Evaluates, Chats, StreamsTokens, DecodesTogether, ScoresTokens):
    input_kind = "text"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "text_generation"
    continues_prompt = True

    def __init__(self, cfg, folder, device):
        super().__init__(cfg, folder, device)
        saved = processor.load(folder)
        self.meta = meta = saved["model"]
        self.encoder = TextEncoder.from_state(saved["tokenizer"], folder, "tokenizer")
        if not cfg.model.pretrained:
            self.model = build_gpt(cfg, meta["vocab_size"])
            load_weights(self.model, folder)
            self.model.to(device).eval()
        else:
            from luban.models.causal_lm import load_exported

            self.model = load_exported(folder / "hf", device)
        self.formatter = ChatFormatter(self.encoder)
        self.formatter.uses_chat = meta["uses_chat"]
        self.generator = Generator(self.model, self.encoder, self.formatter, cfg.generation)

    def generate_text(self, prompt: str, **knobs) -> dict:
        return self.generator.run(prompt, **knobs)

    def export_hf(self, folder) -> bool:
        """A GPT trained from scratch as a Hugging Face GPT-2 (learned positions) or GPT-NeoX (RoPE) folder, model and
        tokenizer; runs of pretrained causal LMs already hold theirs in model/hf (False: nothing to write)."""
        if self.cfg.model.pretrained:
            return False
        from luban.models.gpt_hf import hf_tokenizer, to_hf

        enc = self.encoder
        hf = to_hf(self.model.float(), {"bos": enc.bos_id, "eos": enc.eos_id, "pad": enc.pad_id})
        hf.generation_config.eos_token_id = enc.eos_id
        hf.save_pretrained(str(folder))
        hf_tokenizer(enc).save_pretrained(str(folder))
        return True

    def check_hf(self, folder) -> dict:
        """The export loaded back with transformers against this model: logits and tokenizer (gpt_hf.check_hf_export)."""
        from luban.models.gpt_hf import check_hf_export

        return check_hf_export(self.model, folder, self.encoder)

    def stream_text(self, prompt: str, **knobs):
        return self.generator.stream(prompt, **knobs)

    def chat(self, messages: list[dict], **knobs) -> dict:
        return self.generator.run(messages=messages, **knobs)

    def stream_chat(self, messages: list[dict], **knobs):
        return self.generator.stream(messages=messages, **knobs)

    def stream_events(self, prompt: str | None = None, messages: list[dict] | None = None, **knobs):
        """One dict per decoding step, {"text", "token", "finish_reason"}: the pieces join to stream_text's /
        stream_chat's text; the last carries finish_reason (eos, stop or length). Used by `luban serve`."""
        for token, piece, finish, logprob in self.generator.events(prompt, messages, **knobs):
            yield {"text": piece, "token": token, "finish_reason": finish,
                   **({"logprob": logprob} if logprob is not None else {})}

    def stream_events_batch(self, requests: list[dict]):
        """Several requests ({"prompt"} or {"messages"}, plus knobs) decoded together: an object whose step()
        gives [(request index, event dict or exception)], with cancel(i), done and close(). Used by `luban
        serve` to put concurrent generations in one forward."""
        return self.generator.batch(requests)

    def prompt_tokens(self, prompt: str | None = None, messages: list[dict] | None = None, tools=None) -> int:
        """How many tokens the model reads for a prompt or a conversation (usage counts)."""
        return len(self.generator._ids(prompt, messages, tools))

    def context_length(self) -> int | None:
        return getattr(self.model, "max_context", None)

    def score_prompt(self, prompt, top: int = 0) -> dict:
        """The prompt's tokens and each one's log-probability given those before it (None for the first), with the
        `top` most likely tokens at each position (decoding.prompt_logprobs: one forward pass)."""
        ids = self.generator._ids(prompt) if isinstance(prompt, list) else self.encode_prompt(prompt)
        return {"ids": ids, "logprobs": prompt_logprobs(self.model, ids, top)}

    def encode_prompt(self, prompt: str) -> list[int]:
        """A text prompt as the model reads it for plain completion (OpenAI /v1/completions): the tokenizer's
        prefix (e.g. BOS) and the text's tokens, never wrapped in the chat template."""
        if not isinstance(prompt, str):
            raise DataError(f"prompt: expected text, found {type(prompt).__name__}")
        return (self.formatter._prefix() + self.encoder.encode_text(prompt)) or self.generator._ids("")

    def token_pieces(self, ids: list[int]) -> list[tuple[str, bytes]]:
        """Each token id's own text and bytes (a byte-level BPE token may hold part of a UTF-8 character: its
        bytes are exact, its text then shows the replacement character)."""
        return token_pieces(self.encoder, ids)

    def chat_tools(self) -> bool:
        return self.formatter.supports_tools

    def predict_inputs(self, inputs, **knobs) -> list[dict]:
        """Each input: a prompt string, or {"messages": [...]} for a chat turn."""
        if isinstance(inputs, (str, dict)):
            inputs = [inputs]
        requests = []
        for i, x in enumerate(inputs):
            if isinstance(x, dict) and "messages" in x:
                requests.append({"messages": x["messages"], **knobs})
            elif isinstance(x, str):
                requests.append({"prompt": x, **knobs})
            else:
                raise DataError(f"input {i + 1}: expected a prompt (text) or {{\"messages\": [...]}}")
        return self.generator.run_many(requests)  # decoded together, each with its own knobs

    def frame_inputs(self, frame):
        """A chunk's prompts: the messages column ({"messages": [...]}) or the prompt (else text) column."""
        cols = self.cfg.data.columns
        if cols.messages is not None and str(cols.messages) in frame.columns:
            col = resolve_column(frame, cols.messages, "messages")
            return [{"messages": v} for v in frame[col]], col
        for role in ("prompt", "text"):
            ref = getattr(cols, role)
            if ref is not None:
                col = resolve_column(frame, ref, role)
                return list(frame[col]), col
        if frame.attrs.get("format") == "lines":  # a .txt file of prompts, one per line
            return list(frame["text"]), None
        raise DataError(f"{frame.attrs.get('source', 'input')}: name the prompt column (data.columns.prompt)")

    def input_problem(self, x):
        if isinstance(x, dict):
            return None if isinstance(x.get("messages"), list) and x["messages"] else "no messages"
        if x is None or isinstance(x, str) and not x.strip():
            return "empty prompt"
        return None if isinstance(x, str) else not_text(x)

    def read_inputs(self, path):
        """Prompts: one per line of a .txt file, or a table's prompt (else text / messages) column."""
        path = Path(path)
        d = self.cfg.data
        if is_corpus_path(path, "auto", False):
            lines = [ln for ln in read_corpus(path, d.encoding_for(path))[0].text.splitlines() if ln.strip()]
            return lines
        frame = read_table(path, "auto", d.header, d.delimiter, d.quoting, d.encoding_for(path))
        cols = d.columns
        if cols.messages is not None and str(cols.messages) in frame.columns:
            return [{"messages": v} for v in frame[resolve_column(frame, cols.messages, "messages")]]
        for role in ("prompt", "text"):
            ref = getattr(cols, role)
            if ref is not None:
                return [v if isinstance(v, str) else "" for v in frame[resolve_column(frame, ref, role)]]
        raise DataError(f"{path}: name the prompt column (data.columns.prompt)")

    def evaluate_file(self, path):
        """Loss and perplexity on held-out text (a corpus file) or SFT data (the training columns); for a
        preference-trained run, the preference metrics on chosen/rejected pairs (the rewards need the reference
        model, read again from model.path; without it, the metrics that do not)."""
        block, kind = self.meta["block_size"], self.meta["mode"]  # the context and data mode it was trained with
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size
        pad = self.encoder.pad_id
        path = Path(path)
        if kind == "corpus":
            stream = token_stream(_read_docs(self.cfg, path), self.encoder)
            return mean_loss(self.model, eval_batches(stream, block, bs), self.device)
        frame = read_table(path, self.cfg.data.format, self.cfg.data.header, self.cfg.data.delimiter,
                           self.cfg.data.quoting, self.cfg.data.encoding_for(path))
        c = self.cfg.data.columns
        cols = {r: getattr(c, r) for r in SFT_ROLES}
        if self.meta.get("layout", "columns") != "columns" or reads_layout(self.cfg):
            _, cols, frames = layout_frames(self.cfg, {"train": frame})
            frame = frames["train"]
        cols = {r: resolve_column(frame, v, r) if v is not None else None for r, v in cols.items()}
        if kind != "preference":
            examples = self.formatter.examples(frame, cols["prompt"], cols["response"], cols["messages"],
                                               block + 1)[0]
            return mean_loss(self.model, [sft_batches(examples, bs, pad, 0, 0, shuffle=False)], self.device)
        pairs = preference_pairs(self.formatter, frame, cols["prompt"], cols["messages"], cols["chosen"],
                                 cols["rejected"], block + 1)[0]
        batches = pair_batches(pairs, bs, pad, 0, 0, shuffle=False)
        logps, counts = split_logps(self.model, batches, len(pairs), self.device)
        pc = self.cfg.trainer.preference
        if pc.loss in REFERENCE_FREE:
            return preference_metrics(logps, logps, counts, pc)
        try:
            from luban.models.causal_lm import CausalLM, load_hf_causal_lm

            m = self.cfg.model
            ref = CausalLM(load_hf_causal_lm(_hf_source(self.cfg), m.allow_download, m.trust_remote_code,
                                             m.base_dtype)).to(self.device)
        except LubanError as e:
            out = preference_metrics(logps, logps, counts, pc)
            return {k: out[k] for k in ("logp_accuracy", "chosen_loss", "chosen_perplexity", "pairs")} | {
                "note": f"no reward metrics: the reference model did not load ({e})"}
        ref_logps = split_logps(ref, batches, len(pairs), self.device)[0]
        return preference_metrics(logps, ref_logps, counts, pc)
