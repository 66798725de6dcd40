"""Translation and summarization: source text -> target text with an encoder-decoder.

One task class serves both config tasks; they differ in their scoring (`SCORING[task]`: a `Scoring` strategy:
metrics, per-sentence score, baseline). `translation` scores BLEU (main metric)
and chrF with sacrebleu (its zh tokenizer when the references are Chinese); `summarization` scores ROUGE-1/2/L F1
(main metric rouge_l) with a CJK-aware tokenizer and reports a lead-N baseline (the first N source sentences)
beside the model. Models: `seq2seq_transformer` (luban.models.seq2seq, from scratch, shared or separate
vocabularies, optional copy head) or `pretrained_seq2seq` (any HF AutoModelForSeq2SeqLM from a folder).

Data: pairs from the `source` and `target` columns of a TSV/CSV/JSONL/Parquet file. Sources are cleaned like any
text (data.clean); targets keep their characters (only whitespace is tidied) so references are scored as
written. Training is teacher-forced cross-entropy (trainer.label_smoothing applies); each epoch validation
reports the loss and the main metric on greedy decodes (cheap); the final validation and test use the configured
search (`generation:` num_beams, length_penalty, ...). report.html shows examples and the worst test cases.

Inference: `luban.load(run).predict(["..."], num_beams=4)` -> [{"text", "tokens", "finish_reason", "seconds",
"tokens_per_second"}], `generate_text(prompt, **knobs)` and `stream_text(prompt, **knobs)` for `luban generate`,
and `evaluate(file)` for the metrics on any file with both columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable
from html import escape
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import luban.processor as processor
from luban.capabilities import DecodesTogether, Evaluates, Predicts, TaskPredictor
from luban.config import GenerationSettings, RunConfig
from luban.data.batching import epoch_batches, pad_ids
from luban.data.cleaning import clean_text_pairs, column_texts, normalize_inputs
from luban.data.redact import for_clean
from luban.data.readers import LINE, resolve_column
from luban.data.splits import make_splits
from luban.data.tokenizers import (
    BOS,
    EOS,
    UNK,
    TextEncoder,
    build_encoder,
)
from luban.errors import ConfigError, DataError
from luban.evaluate import text_metrics as tm
from luban.generation.beam import beam_search, iter_sample, sample
from luban.generation.decoding import GenerationConfig, TextTracker
from luban.tasks.base import Batches, Task, TextInputs, read_file, to_device
from luban.models.registry import build_model
from luban.training.checkpoint import load_weights
from luban.training.progress import say

KNOBS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams",
         "length_penalty", "stop", "seed")
SHOWN = 10  # examples and worst cases kept for the report


# ----------------------------------------------------------------------------------------------- tokenization


class TextSides:
    """Both sides' tokenization for luban's own model: a target encoder with BOS/EOS, and the same encoder (shared
    vocabulary) or a second one for the source. Targets end with EOS; the decoder starts from BOS."""

    def __init__(self, source, target, shared: bool, max_source: int, max_target: int):
        self.source, self.target, self.shared = source, target, shared
        self.max_source, self.max_target = max_source, max_target
        self.src_pad, self.tgt_pad = source.pad_id, target.pad_id

    # the special tokens' ids are known once the vocabularies are fitted (or loaded)
    @property
    def eos_id(self) -> int:
        return self.target.eos_id

    @property
    def decoder_start(self) -> int:
        return self.target.bos_id

    @property
    def start_ids(self) -> list[int]:
        return [self.decoder_start]

    @property
    def banned(self) -> list[int]:
        t = self.target
        return sorted({i for i in (t.pad_id, t.bos_id, t.token_id(UNK)) if i is not None})

    @classmethod
    def build(cls, cfg: RunConfig) -> TextSides:
        m = cfg.model
        target = build_encoder(cfg.preprocessing.tokenizer, specials=(BOS, EOS))
        source = target if m.shared_vocabulary else build_encoder(m.source_tokenizer or cfg.preprocessing.tokenizer)
        return cls(source, target, m.shared_vocabulary, m.max_source_length, m.max_target_length)

    def fit(self, sources: list[str], targets: list[str]) -> None:
        if self.shared:
            self.target.fit(sources + targets)
        else:
            self.source.fit(sources)
            self.target.fit(targets)

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return self.source.vocab_size, self.target.vocab_size

    def encode_sources(self, texts: list[str]) -> list[list[int]]:
        unk = self.source.token_id(UNK) or 0
        return [self.source.encode_text(t)[: self.max_source] or [unk] for t in texts]

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        return [self.target.encode_text(t)[: self.max_target - 1] + [self.eos_id] for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self.target.decode(ids)

    def parts(self) -> dict:
        """The processor parts (luban.processor) of the fitted sides."""
        return {"tokenizer": self.target, "source_tokenizer": None if self.shared else self.source}

    @classmethod
    def load(cls, cfg: RunConfig, folder: Path) -> TextSides:
        saved = processor.load(folder)
        target = TextEncoder.from_state(saved["tokenizer"], folder, "tokenizer")
        shared = cfg.model.shared_vocabulary
        source = target if shared else TextEncoder.from_state(saved["source_tokenizer"], folder, "source_tokenizer")
        return cls(source, target, shared, cfg.model.max_source_length, cfg.model.max_target_length)

    def describe(self) -> dict:
        src, tgt = self.vocab_sizes
        return {"source_vocab_size": src, "target_vocab_size": tgt, "tokenizer": self.target.kind,
                "source_tokenizer": self.source.kind, "shared_vocabulary": self.shared}


class PretrainedSides:
    """A Hugging Face tokenizer for both sides of a pretrained encoder-decoder (source prefix, e.g. 'summarize: ',
    prepended; targets tokenized as text_target so they carry the model's end-of-sequence token)."""

    shared = True

    def __init__(self, encoder, model, prefix: str, max_source: int, max_target: int):
        self.encoder, self.tok = encoder, encoder.tok
        self.prefix, self.max_source, self.max_target = prefix, max_source, max_target
        self.src_pad = self.tgt_pad = self.tok.pad_token_id
        eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else model.hf.config.eos_token_id
        self.eos_id = int(eos)
        self.decoder_start = model.decoder_start_id
        self.start_ids = [self.decoder_start] + ([model.forced_bos_id] if model.forced_bos_id is not None else [])
        self.banned = [self.src_pad] if self.src_pad is not None and self.src_pad != self.eos_id else []

    def fit(self, sources, targets) -> None:
        pass

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return len(self.tok), len(self.tok)

    def encode_sources(self, texts):
        return self.tok([self.prefix + t for t in texts], truncation=True, max_length=self.max_source)["input_ids"]

    def encode_targets(self, texts):
        ids = self.tok(text_target=list(texts), truncation=True, max_length=self.max_target)["input_ids"]
        return [s if s and s[-1] == self.eos_id else s[: self.max_target - 1] + [self.eos_id] for s in ids]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def parts(self) -> dict:
        return {"tokenizer": self.encoder}

    def describe(self) -> dict:
        return {"source_vocab_size": len(self.tok), "target_vocab_size": len(self.tok), "tokenizer": "pretrained",
                "shared_vocabulary": True}


def build_seq2seq(cfg: RunConfig, sides, folder: Path | None = None):
    """The model for cfg.model: luban's Transformer, or an HF model (from model.path, or rebuilt offline from a run
    directory's `backbone/` config when `folder` is given; the weights are loaded afterwards)."""
    return build_model(cfg.model, cfg.task, sides=sides, folder=folder)



def _sides_for(cfg: RunConfig, model=None, folder: Path | None = None):
    """Tokenization for cfg.model: fresh (to fit) when folder is None, else loaded from a run's model/ folder."""
    m = cfg.model
    if not m.pretrained:
        return TextSides.build(cfg) if folder is None else TextSides.load(cfg, folder)
    if folder is None:
        encoder = build_encoder(cfg.preprocessing.tokenizer, m.path, m.trust_remote_code)
    else:
        encoder = TextEncoder.from_state(processor.load(folder)["tokenizer"], folder, "tokenizer")
    return PretrainedSides(encoder, model, m.source_prefix, m.max_source_length, m.max_target_length)


# ----------------------------------------------------------------------------------------------- data


class PairData:
    """One split: the cleaned frame (source, target, _line) and its token ids (targets end with EOS)."""

    def __init__(self, frame: pd.DataFrame, sides, with_targets: bool = True):
        self.frame = frame
        self.sources, self.src = list(frame["source"]), sides.encode_sources(list(frame["source"]))
        self.targets = list(frame["target"]) if with_targets else None
        self.tgt = sides.encode_targets(self.targets) if with_targets else None
        self.lengths = [len(s) + (len(t) if with_targets else 0)
                        for s, t in zip(self.src, self.tgt or self.src)]

    def __len__(self):
        return len(self.src)


def read_pairs(cfg: RunConfig, frame: pd.DataFrame, dedupe: bool):
    cols = cfg.data.columns
    src_col = resolve_column(frame, cols.source, "source")
    tgt_col = resolve_column(frame, cols.target, "target")
    out, rep = clean_text_pairs(frame, src_col, tgt_col, cfg.data.clean, dedupe=dedupe,
                                redactor=for_clean(cfg.data.clean))
    if len(out) == 0:
        raise DataError(f"{rep.source}: no usable rows left after cleaning\n  {rep.summary()}")
    return out, rep


# ----------------------------------------------------------------------------------------------- shared logic


@dataclass
class Decoded:
    texts: list[str]
    tokens: list[int]
    finish: list[str]
    seconds: float


class Scoring:
    """What sets the two encoder-decoder tasks apart: the corpus metrics (main metric first), the per-sentence
    score of the report's examples and worst cases, and the baseline beside the model."""

    main_metric: str
    sentence_metric: str

    def corpus(self, hyps: list[str], refs: list[str]) -> dict: ...

    def sentences(self, hyps: list[str], refs: list[str]) -> list[float]: ...

    def baseline(self, generation) -> tuple[str, Callable[[list[str]], list[str]]] | None:
        """A model-free answer scored beside the model: (its name, sources -> outputs); None when there is none."""
        return None


class TranslationScoring(Scoring):
    """BLEU (main) and chrF with sacrebleu; chrF per sentence."""

    main_metric, sentence_metric = "bleu", "chrf"

    def corpus(self, hyps, refs):
        return {"bleu": tm.bleu(hyps, refs), "chrf": tm.chrf(hyps, refs)}

    def sentences(self, hyps, refs):
        return [tm.sentence_chrf(h, r) for h, r in zip(hyps, refs)]


class SummarizationScoring(Scoring):
    """ROUGE-1/2/L F1 (main: rouge_l), and the lead-N baseline (the first N source sentences)."""

    main_metric, sentence_metric = "rouge_l", "rouge_l"

    def corpus(self, hyps, refs):
        return tm.rouge(hyps, refs)

    def sentences(self, hyps, refs):
        return [p["rouge_l"] for p in tm.rouge_pairs(hyps, refs)]

    def baseline(self, generation):
        n = generation.lead_n
        return (f"lead-{n} (the first {n} source sentence{'s' if n > 1 else ''})",
                lambda sources: [tm.lead_n(x, n) for x in sources])


SCORING: dict[str, Scoring] = {"translation": TranslationScoring(), "summarization": SummarizationScoring()}


class _Seq2SeqUser:
    """What training and inference share: batching, teacher-forced loss, decoding and scoring."""

    cfg: RunConfig
    device: torch.device
    sides: object

    @property
    def scoring(self) -> Scoring:
        return SCORING[self.cfg.task]

    # batches ---------------------------------------------------------------------------------------
    def collate(self, data: PairData):
        start, src_pad, tgt_pad = self.sides.decoder_start, self.sides.src_pad, self.sides.tgt_pad

        def collate(idx: list[int]) -> dict:
            src, src_mask = pad_ids([data.src[i] for i in idx], src_pad)
            batch = {"src": src, "src_mask": src_mask, "index": torch.as_tensor(idx), "size": len(idx)}
            if data.tgt is not None:
                labels, mask = pad_ids([data.tgt[i] for i in idx], tgt_pad)
                tgt_in, _ = pad_ids([[start] + data.tgt[i][:-1] for i in idx], tgt_pad)
                batch.update(tgt_in=tgt_in, labels=labels.masked_fill(mask == 0, -100))
            return batch

        return collate

    def eval_batch_size(self) -> int:
        return self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size * 2

    def token_loss(self, model, batch: dict, smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
        b = to_device(batch, self.device)
        scores = model(b["src"], b["src_mask"], b["tgt_in"]).float()
        flat, labels = scores.reshape(-1, scores.shape[-1]), b["labels"].reshape(-1)
        if not getattr(model, "outputs_log_probs", False):
            return F.cross_entropy(flat, labels, ignore_index=-100, label_smoothing=smoothing, reduction=reduction)
        nll = F.nll_loss(flat, labels, ignore_index=-100, reduction="none")
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * flat.mean(-1) * (labels != -100)
        return nll.sum() / (labels != -100).sum().clamp_min(1) if reduction == "mean" else nll.sum()

    @torch.no_grad()
    def mean_loss(self, model, data: PairData) -> float:
        model.eval()
        total, count = 0.0, 0
        idx = epoch_batches(data.lengths, self.eval_batch_size(), 0, 0, shuffle=False)
        for batch in Batches(idx, self.collate(data)):
            total += float(self.token_loss(model, batch, reduction="sum"))
            count += int((batch["labels"] != -100).sum())
        return total / max(count, 1)

    # decoding --------------------------------------------------------------------------------------
    def settings(self, knobs: dict) -> GenerationSettings:
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise ConfigError(f"unknown decoding option(s) {', '.join(unknown)}; choose from {', '.join(KNOBS)}")
        merged = self.cfg.generation.model_dump()
        merged.update({k: v for k, v in knobs.items() if v is not None})
        try:
            return GenerationSettings.model_validate(merged)
        except ValidationError as e:
            raise ConfigError("decoding options: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                for err in e.errors())) from None

    def _max_new(self, model, s: GenerationSettings) -> int:
        limit = getattr(model, "max_positions", None)
        n = s.max_new_tokens
        return min(n, limit - len(self.sides.start_ids)) if limit else n

    def _step(self, model):
        banned = self.sides.banned

        def step(ids, state):
            scores, state = model.decode_step(ids, state)
            scores = scores.float()
            if banned:
                scores[:, banned] = float("-inf")
            return scores, state

        return step

    def _start(self, model, sources: list[list[int]]):
        src, mask = pad_ids(sources, self.sides.src_pad)
        state = model.start_state(src.to(self.device), mask.to(self.device))
        start = torch.tensor([self.sides.start_ids] * len(sources), dtype=torch.long, device=self.device)
        return start, state

    @staticmethod
    def _sampling(s: GenerationSettings) -> bool:
        return bool(s.do_sample) and s.temperature > 0

    def _sample_options(self, model, s: GenerationSettings) -> dict:
        sampling = self._sampling(s)
        return {"do_sample": sampling, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                "repetition_penalty": s.repetition_penalty, "reorder": model.reorder_state,
                "generator": torch.Generator().manual_seed(s.seed) if sampling and s.seed is not None else None}

    @torch.no_grad()
    def decode_ids(self, model, sources: list[list[int]], s: GenerationSettings) -> tuple[list[list[int]], float]:
        """New token ids (eos excluded) for every source, batched by length; and the seconds it took. Sampling
        (do_sample with temperature > 0) wins over num_beams."""
        model.eval()
        began = time.perf_counter()
        beams = 1 if self._sampling(s) else s.num_beams
        step, max_new, options = self._step(model), self._max_new(model, s), self._sample_options(model, s)
        out: list[list[int]] = [[] for _ in sources]
        per_batch = max(1, self.eval_batch_size() // beams)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        for lo in range(0, len(order), per_batch):
            idx = order[lo:lo + per_batch]
            start, state = self._start(model, [sources[i] for i in idx])
            if beams > 1:
                res = beam_search(step, start, beams, max_new, self.sides.eos_id, s.length_penalty, state=state,
                                  reorder=model.reorder_state, repetition_penalty=s.repetition_penalty)
            else:
                res = sample(step, start, max_new, self.sides.eos_id, state=state, **options)
            for i, ids in zip(idx, res):
                out[i] = ids
        return out, time.perf_counter() - began

    def decode_texts(self, model, sources: list[list[int]], s: GenerationSettings) -> Decoded:
        ids, seconds = self.decode_ids(model, sources, s)
        max_new = self._max_new(model, s)
        texts, finish = [], []
        for row in ids:
            text, reason = self.sides.decode(row), "length" if len(row) >= max_new else "eos"
            cuts = [i for i in (text.find(x) for x in s.stop) if i >= 0]
            if cuts:
                text, reason = text[:min(cuts)], "stop"
            texts.append(text)
            finish.append(reason)
        return Decoded(texts, [len(r) for r in ids], finish, seconds)

    # scoring ---------------------------------------------------------------------------------------
    def score_split(self, model, data: PairData, s: GenerationSettings, detailed: bool) -> dict:
        out = self.decode_texts(model, data.src, s)
        m = {**self.scoring.corpus(out.texts, data.targets), "loss": self.mean_loss(model, data)}
        if not detailed:
            return m
        n_tokens = sum(out.tokens)
        m.update(decode_seconds=round(out.seconds, 3),
                 tokens_per_second=round(n_tokens / out.seconds, 1) if out.seconds > 0 else 0.0,
                 mean_output_tokens=round(n_tokens / max(1, len(data)), 2),
                 decoding={k: v for k, v in s.model_dump().items() if k in KNOBS})
        sent = self.scoring.sentences(out.texts, data.targets)
        lines = list(data.frame[LINE])

        def row(i):
            return {"line": int(lines[i]), "source": data.sources[i], "reference": data.targets[i],
                    "hypothesis": out.texts[i], "score": round(sent[i], 4)}

        m["sentence_metric"] = self.scoring.sentence_metric
        m["examples"] = [row(i) for i in range(min(SHOWN, len(data)))]
        m["worst"] = [row(i) for i in sorted(range(len(data)), key=lambda i: (sent[i], i))[:SHOWN]]
        return m


# ----------------------------------------------------------------------------------------------- training


class Seq2SeqTask(Task, _Seq2SeqUser):
    name = "translation"
    main_metric = "bleu"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.name = cfg.task
        self.main_metric = self.scoring.main_metric
        self._model_for_sides = None

    def prefers_bf16_on_cpu(self):
        return True  # measured 2.5x faster than fp32 for the Transformer on AVX-512 BF16, same quality

    def prepare(self, frames):
        cfg = self.cfg
        cleaned = {}
        for split, frame in frames.items():
            if frame is None:
                cleaned[split] = None
                continue
            out, rep = read_pairs(cfg, frame, dedupe=split == "train")
            self.cleaning.append(rep.to_dict() | {"split": split})
            say("cleaning " + rep.summary())
            cleaned[split] = out
        sp = cfg.data.split
        splits = make_splits(cleaned, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed, None)
        if cfg.model.pretrained:
            self._model_for_sides = build_seq2seq(cfg, None)  # its config names the decoder's special tokens
        self.sides = _sides_for(cfg, self._model_for_sides)
        self.sides.fit(list(splits["train"]["source"]), list(splits["train"]["target"]))
        self.data = {s: PairData(f, self.sides) for s, f in splits.items()}

    def data_summary(self):
        def mean(xs):
            return round(sum(xs) / max(1, len(xs)), 2)

        tr = self.data["train"]
        return {"splits": {s: len(d) for s, d in self.data.items()}, **self.sides.describe(),
                "mean_source_tokens": mean([len(x) for x in tr.src]),
                "mean_target_tokens": mean([len(x) for x in tr.tgt]), "cleaning": self.cleaning}

    def build_model(self):
        if self._model_for_sides is not None:
            model, self._model_for_sides = self._model_for_sides, None
            return model
        return build_seq2seq(self.cfg, self.sides)

    def train_batches(self, epoch):
        d = self.data["train"]
        idx = epoch_batches(d.lengths, self.cfg.trainer.batch_size, self.cfg.seed, epoch,
                            bucket=self.cfg.preprocessing.bucket_by_length)
        return Batches(idx, self.collate(d))

    def loss(self, model, batch):
        return self.token_loss(model, batch, self.cfg.trainer.label_smoothing)

    def loss_batches(self, split):
        d = self.data[split]
        return Batches(epoch_batches(d.lengths, self.eval_batch_size(), 0, 0, shuffle=False), self.collate(d))

    def evaluate(self, model, split, detailed=False):
        s = self.settings({})
        if not detailed:  # per-epoch validation: greedy, bounded by the target length limit
            limit = min(s.max_new_tokens, self.cfg.model.max_target_length)
            s = s.model_copy(update={"do_sample": False, "num_beams": 1, "max_new_tokens": limit,
                                     "repetition_penalty": 1.0})
        elif s.do_sample and s.seed is None:
            s = s.model_copy(update={"seed": self.cfg.seed})  # same seed, same metrics
        return self.score_split(model, self.data[split], s, detailed)

    def baseline(self):
        lead = self.scoring.baseline(self.cfg.generation)
        if lead is None:
            return None
        t0 = time.perf_counter()
        name, answer = lead
        out = {"name": name}
        for split in ("validation", "test"):
            d = self.data[split]
            out[split] = self.scoring.corpus(answer(d.sources), d.targets)
        out["train_seconds"] = time.perf_counter() - t0
        return out

    def save(self, folder, model):
        src, tgt = self.sides.vocab_sizes
        processor.save(folder, self.cfg.task, model={"source_vocab_size": src, "target_vocab_size": tgt},
                       **self.sides.parts())
        if self.cfg.model.pretrained:
            model.save_config(str(folder / "backbone"))

    def report_sections(self, workdir, final):
        test = final.get("test", {})
        if not test.get("examples"):
            return []
        metric = test.get("sentence_metric", "")
        dec = test.get("decoding", {})
        how = (f"beam search, {dec.get('num_beams')} beams, length penalty {dec.get('length_penalty')}"
               if dec.get("num_beams", 1) > 1 and not dec.get("do_sample") else
               "sampling" if dec.get("do_sample") else "greedy decoding")

        def table(rows):
            head = ("<table><tr><th>line</th><th class=l>source</th><th class=l>reference</th>"
                    f"<th class=l>model output</th><th>{escape(metric)}</th></tr>")
            body = "".join(f"<tr><td>{r['line']}</td><td class=l>{escape(r['source'][:400])}</td>"
                           f"<td class=l>{escape(r['reference'])}</td><td class=l>{escape(r['hypothesis'])}</td>"
                           f"<td>{r['score']:.2f}</td></tr>" for r in rows)
            return head + body + "</table>"

        intro = (f"<h2>Test examples</h2><p class=muted>{escape(how)}; {test.get('tokens_per_second', 0):.0f} "
                 f"tokens/s; per-sentence {escape(metric)} in the last column</p>")
        return [intro, table(test["examples"]), "<h2>Worst test cases</h2>", table(test["worst"])]


# ----------------------------------------------------------------------------------------------- inference


class Seq2SeqPredictor(TextInputs, TaskPredictor, _Seq2SeqUser, Predicts, Evaluates, DecodesTogether):
    input_role = "source"  # the file column luban predict reads
    input_kind = "text"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "translation"

    def __init__(self, cfg, folder, device):
        super().__init__(cfg, folder, device)
        self.task = cfg.task
        if cfg.model.pretrained:
            self.model = build_seq2seq(cfg, None, folder)
            self.sides = _sides_for(cfg, self.model, folder)
        else:
            self.sides = _sides_for(cfg, None, folder)
            self.model = build_seq2seq(cfg, self.sides, folder)
        load_weights(self.model, folder)
        self.model.to(device).eval()

    def _sources(self, inputs) -> list[str]:
        return normalize_inputs(inputs, self.cfg.data.clean)

    def predict_inputs(self, inputs, **knobs) -> list[dict]:
        """One output per source text: {"text", "tokens" (generated), "finish_reason" (eos, length or stop),
        "seconds" and "tokens_per_second" (of the whole call, shared by its rows)}. Knobs override the run's
        `generation:` settings (num_beams, max_new_tokens, do_sample, temperature, top_k, top_p, length_penalty,
        repetition_penalty, stop, seed)."""
        s = self.settings(knobs)
        texts = self._sources(inputs)
        if not texts:
            return []
        out = self.decode_texts(self.model, self.sides.encode_sources(texts), s)
        per_row = out.seconds / len(texts)
        speed = round(sum(out.tokens) / out.seconds, 1) if out.seconds > 0 else 0.0
        return [{"text": t, "tokens": n, "finish_reason": f, "seconds": round(per_row, 4), "tokens_per_second": speed}
                for t, n, f in zip(out.texts, out.tokens, out.finish)]

    def generate_text(self, prompt: str, **knobs) -> dict:
        return self.predict([prompt], **knobs)[0]

    def stream_events_batch(self, requests: list[dict]):
        """Several requests ({"prompt": source, knobs...}) for `luban serve`: those queued together with the same
        knobs are decoded together; greedy and sampled groups stream token by token, beam search answers whole
        (luban.generation.batch.GroupBatch)."""
        from luban.generation.batch import GroupBatch

        return GroupBatch(self.open_stream, self.predict, requests)

    def open_stream(self, sources: list[str], knobs: dict):
        """Greedy or sampled decoding of `sources` in lockstep: (iterator of (rows still running, their next
        tokens), one TextTracker per source); None when the knobs decode by beam search (no partial output)."""
        s = self.settings(knobs)
        if s.num_beams > 1 and not self._sampling(s):
            return None
        model = self.model.eval()
        with torch.no_grad():
            start, state = self._start(model, self.sides.encode_sources(self._sources(sources)))
        steps = iter_sample(self._step(model), start, self._max_new(model, s), self.sides.eos_id, state=state,
                            **self._sample_options(model, s))
        text = GenerationConfig(stop=tuple(s.stop), eos_token_id=self.sides.eos_id)
        return steps, [TextTracker(text, self.sides.decode) for _ in sources]

    def prompt_tokens(self, prompt: str | None = None, messages: list[dict] | None = None) -> int:
        """How many tokens the encoder reads for a source text (usage counts in `luban serve`)."""
        return len(self.sides.encode_sources(self._sources([prompt]))[0])

    def stream_text(self, prompt: str, **knobs):
        """The output for one source, piece by piece as tokens are decoded (beam search yields it whole)."""
        opened = self.open_stream([prompt], knobs)
        if opened is None:
            yield self.generate_text(prompt, **knobs)["text"]
            return
        steps, (tracker,) = opened
        for _, (token,) in steps:
            piece, finish = tracker.push(token)
            if piece:
                yield piece
            if finish:
                return
        if tracker.rest():
            yield tracker.rest()

    def read_inputs(self, path):
        frame = read_file(self.cfg, Path(path))
        col = resolve_column(frame, self.cfg.data.columns.source, "source")
        return column_texts(frame, col, path, self.cfg.data.clean)

    def evaluate_file(self, path):
        frame, rep = read_pairs(self.cfg, read_file(self.cfg, Path(path)), dedupe=False)
        if rep.dropped:
            say("cleaning " + rep.summary())
        data = PairData(frame, self.sides)
        s = self.settings({})
        if s.do_sample and s.seed is None:
            s = s.model_copy(update={"seed": self.cfg.seed})
        m = self.score_split(self.model, data, s, detailed=True)
        lead = self.scoring.baseline(self.cfg.generation)
        if lead is not None:
            m.update({f"lead_baseline_{k}": v for k, v in self.scoring.corpus(lead[1](data.sources),
                                                                               data.targets).items()})
        return m
