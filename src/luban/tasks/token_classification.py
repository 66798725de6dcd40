"""Token classification (sequence labelling): named entities, Chinese word segmentation, part-of-speech tags.

Data: a tokens column and a tags column (lists, or space-separated strings; JSON-lines or Parquet keep lists), or a
built-in dataset (peoples_daily_ner, peoples_daily_seg). The tag scheme is found from the training tags
(luban.data.tagging). Models: a BiLSTM over token embeddings, or a pretrained encoder reading each word at its first
subword; a CRF on top by default. Sequences longer than the context are cut into consecutive chunks and put back
together, so nothing is truncated. Predictions on raw text: tokens (characters or words, with their offsets), tags,
and the entities (text, type, start, end) or the words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import luban.processor as processor
from luban.capabilities import Evaluates, Predicts, TaskPredictor
from luban.config import RunConfig
from luban.data.batching import epoch_batches, pad_ids
from luban.data.readers import resolve_column
from luban.data.splits import make_splits
from luban.data.tagging import (Sequence, check_known_tags, chunk_ranges, find_scheme, normalize_token,
                                read_sequences, spans, split_text)
from luban.data.tokenizers import resolve_pretrained
from luban.data.cleaning import not_text
from luban.errors import ConfigError, DataError
from luban.evaluate.tagging import MostFrequentTag, tagging_metrics
from luban.tasks.base import Batches, ExportSpec, Task, read_file, sample_rows, to_device
from luban.models.registry import build_model

PAD, UNK = "<pad>", "<unk>"
HEAD = "tag_head.safetensors"  # the CRF transitions again, for runs that keep only an ONNX model (luban compress)


@dataclass
class Chunk:
    ids: list[int]           # encoder input (subwords with specials, or the words' own ids)
    first: list[int]         # input position of each word
    tags: list[int] | None
    seq: int                 # which sequence, and where in it this chunk starts
    start: int


class Vocabulary:
    """Token -> id for the BiLSTM (tokens normalized like the data's clean settings)."""

    def __init__(self, tokens: list[str], nfkc: bool, lowercase: bool):
        self.itos, self.nfkc, self.lowercase = tokens, nfkc, lowercase
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def fit(cls, seqs: list[Sequence], min_freq: int, nfkc: bool, lowercase: bool) -> "Vocabulary":
        from collections import Counter

        counts = Counter(normalize_token(t, nfkc, lowercase) for s in seqs for t in s.tokens)
        return cls([PAD, UNK] + sorted(t for t, c in counts.items() if c >= min_freq), nfkc, lowercase)

    def encode(self, tokens: list[str]) -> list[list[int]]:
        unk = self.stoi[UNK]
        return [[self.stoi.get(normalize_token(t, self.nfkc, self.lowercase), unk)] for t in tokens]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    pad_id = 0
    prefix: list[int] = []  # no special tokens around a sequence
    suffix: list[int] = []


class Subwords:
    """A pretrained tokenizer: each word's subword ids (a word it cannot encode reads as its unknown token)."""

    def __init__(self, tok):
        self.tok = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        enc = tok(["a"], is_split_into_words=True)  # the special tokens the encoder expects around a text
        inside = [i for i, w in enumerate(enc.word_ids()) if w is not None]
        self.prefix, self.suffix = enc["input_ids"][: inside[0]], enc["input_ids"][inside[-1] + 1:]

    def encode(self, tokens: list[str]) -> list[list[int]]:
        enc = self.tok(tokens, is_split_into_words=True, add_special_tokens=False)
        pieces: list[list[int]] = [[] for _ in tokens]
        for i, w in zip(enc["input_ids"], enc.word_ids()):
            if w is not None:
                pieces[w].append(i)
        unk = self.tok.unk_token_id if self.tok.unk_token_id is not None else self.pad_id
        return [p or [unk] for p in pieces]

    vocab_size = 0  # the pretrained encoder has its own embeddings


def _chunks(pieces: list[list[int]], tags: list[int] | None, seq: int, limit: int, prefix: list[int],
            suffix: list[int]) -> list[Chunk]:
    out = []
    for a, b in chunk_ranges([len(p) for p in pieces], limit):
        ids, first = list(prefix), []
        for p in pieces[a:b]:
            first.append(len(ids))
            ids += p[:limit]  # a word longer than the whole context keeps its first subwords
        out.append(Chunk(ids + list(suffix), first, tags[a:b] if tags is not None else None, seq, a))
    return out


def collate(chunks: list[Chunk], pad_id: int):
    def run(idx: list[int]) -> dict:
        cs = [chunks[i] for i in idx]
        ids, mask = pad_ids([c.ids for c in cs], pad_id)
        width = max(len(c.first) for c in cs)
        first = torch.zeros(len(cs), width, dtype=torch.long)
        word_mask = torch.zeros(len(cs), width, dtype=torch.bool)
        tags = torch.full((len(cs), width), -100, dtype=torch.long)
        for row, c in enumerate(cs):
            first[row, : len(c.first)] = torch.as_tensor(c.first)
            word_mask[row, : len(c.first)] = True
            if c.tags is not None:
                tags[row, : len(c.tags)] = torch.as_tensor(c.tags)
        return {"ids": ids, "mask": mask, "first": first, "word_mask": word_mask, "tags": tags,
                "index": torch.as_tensor(idx), "size": len(idx)}

    return run


class _Tagging:
    """What training and inference share: the encoder of tokens, chunking, decoding a set of sequences."""

    cfg: RunConfig
    device: torch.device
    encoder: Vocabulary | Subwords
    tags: list[str]

    @property
    def limit(self) -> int:
        enc = self.encoder
        return self.cfg.preprocessing.tokenizer.max_length - len(enc.prefix) - len(enc.suffix)

    def encode(self, seqs: list[Sequence], tag_ids: list[list[int]] | None) -> list[Chunk]:
        enc, out = self.encoder, []
        for i, s in enumerate(seqs):
            out += _chunks(enc.encode(s.tokens), tag_ids[i] if tag_ids else None, i, self.limit, enc.prefix,
                           enc.suffix)
        return out

    def export_spec(self) -> ExportSpec:
        seq, words = {0: "batch", 1: "length"}, {0: "batch", 1: "words"}
        return ExportSpec(["ids", "mask", "first"], ["emissions"],
                          {"ids": seq, "mask": seq, "first": words, "emissions": words})

    @torch.no_grad()
    def decode(self, model, head, seqs: list[Sequence], chunks: list[Chunk]) -> list[list[str]]:
        """Every sequence's tags: `model` gives the emissions (PyTorch or an export), `head` decodes them."""
        was = model.training
        model.eval()
        head = head.float()  # transitions in float32, also when the model runs in bf16
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size * 2
        paths: list[list[int]] = [[0] * len(s.tokens) for s in seqs]
        run = collate(chunks, self.encoder.pad_id)
        for idx in epoch_batches([len(c.ids) for c in chunks], bs, 0, 0, shuffle=False):
            b = to_device(run(idx), self.device)
            best = head.decode(model(b["ids"], b["mask"], b["first"]), b["word_mask"])
            for i, path in zip(idx, best):
                c = chunks[i]
                paths[c.seq][c.start: c.start + len(path)] = path
        model.train(was)
        return [[self.tags[t] for t in p] for p in paths]


def build_tagger(cfg: RunConfig, vocab_size: int, num_tags: int, pad_id: int, backbone_dir: str | None = None):
    return build_model(cfg.model, cfg.task, vocab_size=vocab_size, num_tags=num_tags, pad_id=pad_id,
                       crf=cfg.tagging.crf, backbone_dir=backbone_dir)



def _pretrained_tokenizer(source: str, allow_download: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path: cannot load the tokenizer of {source}: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"model.path: {source} has no fast tokenizer; token classification needs word ids")
    return tok


class TokenClassificationTask(Task, _Tagging):
    name = "token_classification"
    main_metric = "f1"

    def prefers_bf16_on_cpu(self):
        return self.cfg.model.pretrained

    def prepare(self, frames):
        cfg, c = self.cfg, self.cfg.data.columns
        sp = cfg.data.split
        splits = make_splits(frames, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed, None)
        self.seqs = {s: read_sequences(f, resolve_column(f, c.tokens, "tokens"), resolve_column(f, c.tags, "tags"))
                     for s, f in splits.items()}
        self.sources = {s: f.attrs.get("source", s) for s, f in splits.items()}
        train_tags = [t for s in self.seqs["train"] for t in s.tags]
        self.tags = sorted(set(train_tags))
        self.scheme = find_scheme(self.tags) if cfg.tagging.scheme == "auto" else cfg.tagging.scheme
        self.main_metric = "accuracy" if self.scheme == "plain" else "f1"
        tag_id = {t: i for i, t in enumerate(self.tags)}
        for s, seqs in self.seqs.items():
            check_known_tags(seqs, self.tags, self.sources[s], c.tags)
        ids = {s: [[tag_id[t] for t in q.tags] for q in seqs] for s, seqs in self.seqs.items()}
        single = sum(len(t) == 1 for q in self.seqs["train"] for t in q.tokens) / max(len(train_tags), 1)
        self.split = cfg.tagging.split if cfg.tagging.split != "auto" else "char" if single >= 0.9 else "whitespace"
        m, clean = cfg.model, cfg.data.clean
        if m.pretrained:
            self.encoder = Subwords(_pretrained_tokenizer(resolve_pretrained(m.path, m.allow_download, "model.path"),
                                                          m.allow_download))
        else:
            self.encoder = Vocabulary.fit(self.seqs["train"], cfg.preprocessing.tokenizer.min_freq, clean.nfkc,
                                          clean.lowercase)
        self.chunks = {s: self.encode(self.seqs[s], ids[s]) for s in self.seqs}

    def data_summary(self):
        return {"splits": {s: len(q) for s, q in self.seqs.items()}, "sources": self.sources,
                "tokens": {s: sum(len(x.tokens) for x in q) for s, q in self.seqs.items()},
                "chunks": {s: len(c) for s, c in self.chunks.items()}, "tags": self.tags, "scheme": self.scheme,
                "split": self.split}

    def build_model(self):
        model = build_tagger(self.cfg, self.encoder.vocab_size, len(self.tags), self.encoder.pad_id)
        self.head = model.head  # decodes for exported / compressed forms of this model too (luban compress)
        return model

    def train_batches(self, epoch):
        cs = self.chunks["train"]
        return Batches(epoch_batches([len(c.ids) for c in cs], self.cfg.trainer.batch_size, self.cfg.seed, epoch,
                                     bucket=self.cfg.preprocessing.bucket_by_length), collate(cs, self.encoder.pad_id))

    def loss(self, model, batch):
        b = to_device(batch, self.device)
        return self.head.loss(model(b["ids"], b["mask"], b["first"]), b["tags"], b["word_mask"])  # model may be DDP

    def loss_batches(self, split):
        cs, tr = self.chunks[split], self.cfg.trainer
        return Batches(epoch_batches([len(c.ids) for c in cs], tr.eval_batch_size or tr.batch_size, 0, 0,
                                     shuffle=False), collate(cs, self.encoder.pad_id))

    def split_inputs(self, split, limit=None, batch_size=32):
        """(ids, mask, first) batches of a sample of a split's chunks, padded as decoding pads them."""
        cs = self.chunks[split]
        rows = sample_rows(len(cs), limit, self.cfg.seed)
        run = collate(cs, self.encoder.pad_id)
        return [(b["ids"], b["mask"], b["first"]) for b in (run(rows[i:i + batch_size])
                                                          for i in range(0, len(rows), batch_size))]

    def evaluate(self, model, split, detailed=False):
        seqs = self.seqs[split]
        pred = self.decode(model, getattr(model, "head", None) or self.head, seqs, self.chunks[split])
        m = tagging_metrics([q.tags for q in seqs], pred, self.scheme)
        if not detailed:
            return {k: v for k, v in m.items() if isinstance(v, float)}
        return m | {"worst_sequences": worst_sequences(seqs, pred, self.scheme, self.cfg.evaluation.worst_examples)}

    def baseline(self):
        norm = (lambda t: normalize_token(t, self.cfg.data.clean.nfkc, self.cfg.data.clean.lowercase))
        base = MostFrequentTag([[norm(t) for t in q.tokens] for q in self.seqs["train"]],
                               [q.tags for q in self.seqs["train"]])
        out = {"name": "most frequent training tag of each token"}
        for s in ("validation", "test"):
            m = tagging_metrics([q.tags for q in self.seqs[s]],
                                [base.predict([norm(t) for t in q.tokens]) for q in self.seqs[s]], self.scheme)
            out[s] = {k: v for k, v in m.items() if isinstance(v, float)}
        return out

    def report_sections(self, workdir, final):
        return report_sections(final["test"], self.scheme)

    def save(self, folder, model):
        from safetensors.torch import save_model

        save_model(model.head, str(folder / HEAD))
        meta, assets = {"tags": self.tags, "scheme": self.scheme, "split": self.split}, []
        if isinstance(self.encoder, Vocabulary):
            meta["vocabulary"] = self.encoder.itos
        else:
            files = self.encoder.tok.save_pretrained(str(folder / "tokenizer"))
            assets = [Path(f).relative_to(folder).as_posix() for f in files]
            model.backbone.config.save_pretrained(str(folder / "backbone"))
        processor.save(folder, self.cfg.task, assets=assets, tagger=meta)


def report_sections(test: dict, scheme: str) -> list[str]:
    from luban.evaluate.report import E, per_class_table

    what = {"entities": "entity type", "segmentation": "unit", "plain": "tag"}[scheme]
    out = [f"<h2>Per {E(what)} (test)</h2>", per_class_table(test.get("per_type", {}), what)]
    rows = test.get("worst_sequences") or []
    if rows:
        def cell(v):
            return E(v if isinstance(v, str) else " · ".join(f"{x['text']} ({x['type']})" for x in v))

        out += ["<h2>Test sequences with the most wrong tags</h2><table><tr><th>line</th><th>errors</th>"
                "<th class=l>tokens</th><th class=l>true</th><th class=l>predicted</th></tr>",
                "".join(f"<tr><td>{r['line']}</td><td>{r['errors']}</td><td class=l>{E(r['tokens'][:300])}</td>"
                        f"<td class=l>{cell(r['gold'])}</td><td class=l>{cell(r['predicted'])}</td></tr>"
                        for r in rows), "</table>"]
    return out


def worst_sequences(seqs: list[Sequence], pred: list[list[str]], scheme: str, n: int) -> list[dict]:
    """The sequences with the most wrongly tagged tokens: text, the gold and the predicted spans (or tags)."""
    def show(s: Sequence, tags: list[str]):
        if scheme == "plain":
            return " ".join(tags)
        sep = "" if all(len(t) == 1 for t in s.tokens) else " "
        return [{"text": sep.join(s.tokens[a: b + 1]), "type": k} for k, a, b in spans(tags, scheme)]

    errors = sorted(((sum(a != b for a, b in zip(s.tags, p)), i) for i, (s, p) in enumerate(zip(seqs, pred))),
                    reverse=True)
    return [{"line": seqs[i].line, "errors": e, "tokens": " ".join(seqs[i].tokens),
             "gold": show(seqs[i], seqs[i].tags), "predicted": show(seqs[i], pred[i])}
            for e, i in errors[:n] if e]


class TokenClassificationPredictor(TaskPredictor, _Tagging, Predicts, Evaluates):
    input_kind = "text"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "token_classification"
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        meta = processor.load(folder)["tagger"]
        self.tags, self.scheme, self.split = meta["tags"], meta["scheme"], meta["split"]
        backbone = None
        if "vocabulary" in meta:
            self.encoder = Vocabulary(meta["vocabulary"], cfg.data.clean.nfkc, cfg.data.clean.lowercase)
        else:
            from transformers import AutoTokenizer

            self.encoder = Subwords(AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True))
            backbone = str(folder / "backbone")

        def build():
            return build_tagger(cfg, self.encoder.vocab_size, len(self.tags), self.encoder.pad_id, backbone)

        self.model = self.load_model(build)
        self.head = self._head()

    def _head(self):
        """The CRF (or argmax) decoder; an ONNX model holds only the emissions, so it comes from its own file."""
        model = getattr(self.model, "model", self.model)  # a bf16-compressed run wraps the module
        if isinstance(model, torch.nn.Module) and hasattr(model, "head"):
            return model.head.float()
        from safetensors.torch import load_model

        from luban.models.tagger import TagHead

        head = TagHead(len(self.tags), self.cfg.tagging.crf)
        load_model(head, str(self.folder / HEAD))
        return head.to(self.device).eval()

    def predict_inputs(self, inputs) -> list[dict]:
        """Each input: a text (cut into tokens as in training: characters or words) or {"tokens": [...]}. Returns
        tokens, tags and, by scheme, entities [{text, type, start, end}] (character offsets in the text, end
        exclusive; token offsets for token input) or words."""
        if isinstance(inputs, (str, dict)):
            inputs = [inputs]
        seqs, texts, offsets = [], [], []
        for i, x in enumerate(inputs):
            if isinstance(x, dict) and isinstance(x.get("tokens"), list) and x["tokens"]:
                tokens, text, offs = [str(t) for t in x["tokens"]], None, None
            elif isinstance(x, str) and x.strip():
                text = x
                tokens, offs = split_text(x, self.split)
            else:
                raise DataError(f"input {i + 1}: expected a non-empty text or {{\"tokens\": [...]}}")
            seqs.append(Sequence(tokens, None, i + 1))
            texts.append(text)
            offsets.append(offs)
        tags = self.decode(self.model, self.head, seqs, self.encode(seqs, None)) if seqs else []
        return [self._result(s.tokens, t, text, offs) for s, t, text, offs in zip(seqs, tags, texts, offsets)]

    def _result(self, tokens, tags, text, offs) -> dict:
        out = {"tokens": tokens, "tags": tags}
        if self.scheme == "plain":
            return out
        found = []
        for kind, a, b in spans(tags, self.scheme):
            if text is not None:
                start, end = offs[a][0], offs[b][1]
                found.append({"text": text[start:end], "type": kind, "start": start, "end": end})
            else:
                sep = "" if self.split == "char" else " "
                found.append({"text": sep.join(tokens[a: b + 1]), "type": kind, "start": a, "end": b + 1})
        if self.scheme == "segmentation":
            out["words"] = [f["text"] for f in found]
        else:
            out["entities"] = found
        return out

    def _frame(self, path):
        return read_file(self.cfg, Path(path))

    def frame_inputs(self, frame):
        """A chunk's texts (text column) or token lists (tokens column: a list or a space-separated string)."""
        c = self.cfg.data.columns
        role = "text" if c.text is not None else "tokens"
        col = resolve_column(frame, getattr(c, role), role)
        if role == "text":
            return list(frame[col]), col
        return [{"tokens": v.split() if isinstance(v, str) else v} for v in frame[col]], col

    def input_problem(self, x):
        if isinstance(x, dict):
            tokens = x.get("tokens")
            return None if isinstance(tokens, list) and tokens else "no tokens"
        if x is None or isinstance(x, str) and not x.strip():
            return "empty text"
        return None if isinstance(x, str) else not_text(x)

    def read_inputs(self, path):
        """Texts from the text column, or token lists from the tokens column."""
        frame = self._frame(path)
        c = self.cfg.data.columns
        if c.text is not None:
            col = resolve_column(frame, c.text, "text")
            return [v if isinstance(v, str) else "" for v in frame[col]]
        return [{"tokens": q.tokens} for q in read_sequences(frame, resolve_column(frame, c.tokens, "tokens"), None)]

    def evaluate_file(self, path):
        frame = self._frame(path)
        c = self.cfg.data.columns
        seqs = read_sequences(frame, resolve_column(frame, c.tokens, "tokens"), resolve_column(frame, c.tags, "tags"))
        check_known_tags(seqs, self.tags, frame.attrs.get("source", str(path)), c.tags)
        pred = self.decode(self.model, self.head, seqs, self.encode(seqs, None))
        return tagging_metrics([q.tags for q in seqs], pred, self.scheme) | {
            "worst_sequences": worst_sequences(seqs, pred, self.scheme, self.cfg.evaluation.worst_examples)}

