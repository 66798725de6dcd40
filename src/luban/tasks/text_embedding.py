"""Text embedding: fine-tune an encoder on (query, positive[, hard negative]) pairs for retrieval.

Training: in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss): each query's positive must
score above every other passage of the batch (the other queries' positives and every hard negative) in a softmax
over cosine / temperature; `embedding.symmetric` adds the passage -> query direction. A passage that appears twice
in a batch is not counted as its own negative. Prefixes ("query: " / "passage: " for e5) and pooling come from the
model (luban.embedding.encoder), never the config.

Evaluation: every held-out query ranks a corpus made of the split's positives and hard negatives (+ the
embedding.corpus file): Recall@1, Recall@10, MRR, NDCG@10 (luban.evaluate.retrieval). Baselines on the same
rankings: BM25 over jieba words, and the encoder before fine-tuning.

The run's model/encoder/ is a plain HF folder with sentence-transformers files (AutoModel and SentenceTransformer
load it); model/processor.json part "embedding" holds the spec. `luban embed`, `POST /v1/embeddings` and the
knowledge base load it with luban.embedding.load_encoder.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import luban.processor as processor
from luban.capabilities import Embeds, Evaluates, Predicts, TaskPredictor
from luban.data.batching import pad_ids
from luban.data.cleaning import clean_text_pairs, normalize_inputs
from luban.data.readers import LINE, read_table, resolve_column
from luban.embedding.encoder import ENCODER_DIR, SPEC_PART, Encoder, EmbeddingSpec, detect_spec
from luban.errors import ConfigError, DataError
from luban.evaluate.retrieval import METRICS, bm25_scores, dense_scores, retrieval_metrics
from luban.models.registry import build_model
from luban.tasks.base import Batches, Task, read_file
from luban.training.progress import say


@dataclass
class Pairs:
    """One split's rows: query, positive and (optional) hard negative texts, with their source lines."""

    frame: pd.DataFrame  # columns query, positive, negative (None where absent), _line

    def __len__(self):
        return len(self.frame)

    @property
    def queries(self) -> list[str]:
        return list(self.frame["query"])

    @property
    def positives(self) -> list[str]:
        return list(self.frame["positive"])

    @property
    def negatives(self) -> list[str | None]:
        return list(self.frame["negative"])


def read_pairs(cfg, frame: pd.DataFrame, dedupe: bool) -> tuple[Pairs, dict]:
    """query/positive(/negative) columns of a raw split, cleaned: queries normalized as predictor inputs are,
    passages whitespace-tidied; empty queries / positives dropped (or an error naming the row)."""
    cols = cfg.data.columns
    q_col = resolve_column(frame, cols.query, "query")
    p_col = resolve_column(frame, cols.positive, "positive")
    n_col = resolve_column(frame, cols.negative, "negative") if cols.negative is not None else None
    out, rep = clean_text_pairs(frame, q_col, p_col, cfg.data.clean, dedupe=dedupe, names=("query", "positive"))
    if len(out) == 0:
        raise DataError(f"{rep.source}: no usable (query, positive) rows left after cleaning\n  {rep.summary()}")
    negatives = [None] * len(out)
    if n_col is not None:
        by_line = dict(zip(frame[LINE], frame[n_col]))
        negatives = [(" ".join(v.split()) or None) if isinstance(v, str) else None
                     for v in (by_line.get(line) for line in out[LINE])]
    out["negative"] = negatives
    return Pairs(out), rep.to_dict()


def read_corpus(cfg) -> list[str]:
    """The embedding.corpus file's passages (a .txt file: one per line), whitespace-tidied, empty ones left out."""
    e = cfg.embedding
    if e.corpus is None:
        return []
    path = Path(e.corpus)
    if not path.is_file():
        raise DataError(f"embedding.corpus: {path} not found")
    fmt = "lines" if path.suffix.lower() == ".txt" else "auto"
    frame = read_table(path, fmt, cfg.data.header, cfg.data.delimiter, cfg.data.quoting, cfg.data.encoding_for(path))
    col = resolve_column(frame, e.corpus_column, "corpus_column")
    texts = [" ".join(t.split()) for t in frame[col] if isinstance(t, str)]
    return [t for t in texts if t]


class RetrievalSet:
    """A split as a retrieval problem: its distinct queries, each with its gold passages, against a corpus of the
    split's distinct passages (positives, hard negatives) plus the extra corpus."""

    def __init__(self, pairs: Pairs, extra: list[str]):
        index: dict[str, int] = {}
        for t in pairs.positives + [n for n in pairs.negatives if n] + list(extra):
            index.setdefault(t, len(index))
        self.corpus = list(index)
        gold: dict[str, set[int]] = {}
        for q, p in zip(pairs.queries, pairs.positives):
            gold.setdefault(q, set()).add(index[p])
        self.queries = list(gold)
        self.gold = [sorted(g) for g in gold.values()]

    def scores(self, encoder: Encoder, batch_size: int) -> np.ndarray:
        q = encoder.encode(self.queries, "query", batch_size, progress=True)
        p = encoder.encode(self.corpus, "passage", batch_size, progress=True)
        return dense_scores(q, p)

    def metrics(self, scores: np.ndarray, detailed: bool, worst: int = 0) -> dict:
        m = retrieval_metrics(scores, self.gold, detailed)
        if detailed:
            ranks = m.pop("gold_ranks")
            top = scores.argmax(axis=1)
            order = sorted(range(len(ranks)), key=lambda i: -ranks[i])[:worst]
            m["worst_queries"] = [{"query": self.queries[i], "gold": self.corpus[self.gold[i][0]][:300],
                                    "retrieved": self.corpus[int(top[i])][:300], "gold_rank": ranks[i] + 1}
                                   for i in order if ranks[i] > 0]
        return m


class _EmbeddingUser:
    """What training and inference share: the model's tokenizer and spec, and retrieval metrics of an encoder."""

    cfg: object

    def retrieval(self, encoder: Encoder, rs: RetrievalSet, detailed: bool = False) -> dict:
        return rs.metrics(rs.scores(encoder, self.cfg.embedding.batch_size), detailed,
                          self.cfg.evaluation.worst_examples)


def _batch_ids(ids: list[list[int]], rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_ids([ids[i] for i in rows], pad_id)


class TextEmbeddingTask(Task, _EmbeddingUser):
    name = "text_embedding"
    main_metric = "mrr"

    def prefers_bf16_on_cpu(self):
        return True

    def prepare(self, frames):
        from luban.data.splits import make_splits
        from luban.data.tokenizers import resolve_pretrained
        from luban.models.sentence_encoder import load_tokenizer

        cfg = self.cfg
        pairs, reports = {}, {}
        for split, frame in frames.items():
            if frame is None:
                continue
            p, rep = read_pairs(cfg, frame, dedupe=split == "train")
            pairs[split], reports[split] = p.frame, rep
            self.cleaning.append(rep | {"split": split})
        sp = cfg.data.split
        splits = make_splits({s: pairs.get(s) for s in ("train", "validation", "test")}, sp.validation, sp.test,
                             sp.seed if sp.seed is not None else cfg.seed, None)
        self.pairs = {s: Pairs(f.reset_index(drop=True)) for s, f in splits.items()}
        if len(self.pairs["train"]) < 2:
            raise DataError(f"{frames['train'].attrs.get('source', 'train')}: in-batch negatives need at least 2 "
                            "training pairs")
        self.source = resolve_pretrained(cfg.model.path, cfg.model.allow_download, "model.path")
        spec = detect_spec(Path(self.source), cfg.model.path) if Path(self.source).is_dir() else EmbeddingSpec()
        from luban.embedding.encoder import model_max_length

        if cfg.model.max_length is not None and Path(self.source).is_dir():
            from dataclasses import replace

            spec = replace(spec, max_length=min(cfg.model.max_length, model_max_length(Path(self.source))))
        self.spec = spec
        self.tokenizer = load_tokenizer(self.source)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        extra = read_corpus(cfg)
        self.sets = {s: RetrievalSet(self.pairs[s], extra) for s in ("validation", "test")}
        self.extra_corpus = len(extra)
        self.ids = {s: self._tokenize(p) for s, p in self.pairs.items()}
        say(f"text_embedding: {len(self.pairs['train'])} training pairs; pooling {spec.pooling}, prefixes "
            f"{spec.query_prefix!r} / {spec.passage_prefix!r} ({spec.source}), max {spec.max_length} tokens")

    def _tokenize(self, pairs: Pairs) -> dict:
        def ids(texts, prefix):
            if not texts:
                return []
            return self.tokenizer([prefix + t for t in texts], truncation=True,
                                  max_length=self.spec.max_length)["input_ids"]

        negs = [n for n in pairs.negatives if n]
        neg_ids = ids(negs, self.spec.passage_prefix)
        it = iter(neg_ids)
        # passage and query identities: duplicates in a batch are not each other's negatives
        passage_id: dict[str, int] = {}
        return {"query": ids(pairs.queries, self.spec.query_prefix),
                "positive": ids(pairs.positives, self.spec.passage_prefix),
                "negative": [next(it) if n else None for n in pairs.negatives],
                "pid": [passage_id.setdefault(t, len(passage_id)) for t in pairs.positives],
                "nid": [passage_id.setdefault(n, len(passage_id)) if n else -1 for n in pairs.negatives],
                "qid": pd.factorize(pd.Series(pairs.queries))[0].tolist()}

    def data_summary(self):
        return {"splits": {s: len(p) for s, p in self.pairs.items()},
                "retrieval": {s: {"queries": len(rs.queries), "passages": len(rs.corpus)}
                              for s, rs in self.sets.items()},
                "extra_corpus": self.extra_corpus, "hard_negatives": int(sum(
                    n is not None for n in self.pairs["train"].negatives)),
                "embedding": self.spec.state(), "cleaning": self.cleaning}

    def build_model(self):
        return build_model(self.cfg.model, self.cfg.task, spec=self.spec)

    # training ----------------------------------------------------------------------------------------
    def _collate(self, split: str):
        d = self.ids[split]

        def collate(rows: list[int]) -> dict:
            q, qm = _batch_ids(d["query"], rows, self.pad_id)
            p, pm = _batch_ids(d["positive"], rows, self.pad_id)
            batch = {"q": q, "qm": qm, "p": p, "pm": pm, "size": len(rows),
                     "pid": torch.tensor([d["pid"][i] for i in rows]),
                     "qid": torch.tensor([d["qid"][i] for i in rows])}
            with_neg = [i for i in rows if d["negative"][i] is not None]
            if with_neg:
                batch["n"], batch["nm"] = _batch_ids(d["negative"], with_neg, self.pad_id)
                batch["nid"] = torch.tensor([d["nid"][i] for i in with_neg])
            return batch

        return collate

    def train_batches(self, epoch):
        n = len(self.pairs["train"])
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        bs = self.cfg.trainer.batch_size
        idx = [order[i:i + bs] for i in range(0, n, bs)]
        if len(idx) > 1 and len(idx[-1]) < 2:  # a batch of one pair has no negatives
            idx[-2] += idx.pop()
        return Batches(idx, self._collate("train"))

    def loss(self, model, batch):
        dev = self.device
        q = model(batch["q"].to(dev), batch["qm"].to(dev))
        p = model(batch["p"].to(dev), batch["pm"].to(dev))
        pid = batch["pid"].to(dev)
        cands, cid = p, pid
        if "n" in batch:
            cands = torch.cat([p, model(batch["n"].to(dev), batch["nm"].to(dev))])
            cid = torch.cat([pid, batch["nid"].to(dev)])
        t = self.cfg.embedding.temperature
        return contrastive_loss(q.float(), cands.float(), pid, cid, t, self.cfg.embedding.symmetric,
                                batch["qid"].to(dev), p.float())

    def loss_batches(self, split):
        n = len(self.pairs[split])
        bs = self.cfg.trainer.batch_size
        return Batches([list(range(i, min(n, i + bs))) for i in range(0, n, bs) if min(n, i + bs) - i >= 2],
                       self._collate(split))

    # evaluation and outputs --------------------------------------------------------------------------
    def encoder(self, model) -> Encoder:
        return Encoder.wrap(model, self.tokenizer, self.spec, self.cfg.model.path)

    def evaluate(self, model, split, detailed=False):
        return self.retrieval(self.encoder(model), self.sets[split], detailed)

    def baseline(self):
        out = {"name": "BM25 (jieba words)"}
        for split, rs in self.sets.items():
            out[split] = rs.metrics(bm25_scores(rs.corpus, rs.queries), False)
        before = build_model(self.cfg.model, self.cfg.task, spec=self.spec).to(self.device)
        enc = Encoder.wrap(before, self.tokenizer, self.spec, self.cfg.model.path)
        out["before_finetuning"] = {"name": f"{self.cfg.model.path} before fine-tuning",
                                    **{s: self.retrieval(enc, rs) for s, rs in self.sets.items()}}
        del before, enc
        self._baseline = out
        return out

    def save_weights(self, folder, model):
        s = self.spec
        model.save_folder(Path(folder) / ENCODER_DIR, self.tokenizer, s.query_prefix, s.passage_prefix, s.max_length)

    def save(self, folder, model):
        spec = EmbeddingSpec(**{**self.spec.state(), "source": "run"})
        processor.save(folder, self.cfg.task, assets=(ENCODER_DIR,), **{SPEC_PART: spec.state()},
                       model={"base": self.cfg.model.path, "dim": int(model.dim)})

    def report_sections(self, workdir, final):
        rows = [("fine-tuned " + str(self.cfg.model.path), final.get("test", {}))]
        base = getattr(self, "_baseline", None)  # set by baseline() when evaluation.baseline is on
        if base:
            rows += [(base["name"], base["test"]), (base["before_finetuning"]["name"], base["before_finetuning"]["test"])]
        head = "".join(f"<th>{k}</th>" for k in METRICS)
        body = "".join(f"<tr><td class=l>{html.escape(n)}</td>" +
                       "".join(f"<td>{m.get(k, float('nan')):.4f}</td>" for k in METRICS) + "</tr>"
                       for n, m in rows)
        worst = final.get("test", {}).get("worst_queries") or []
        ex = "".join(f"<tr><td class=l>{html.escape(e['query'])}</td><td class=l>{html.escape(e['gold'])}</td>"
                     f"<td class=l>{html.escape(e['retrieved'])}</td><td>{e['gold_rank']}</td></tr>" for e in worst)
        out = [f"<h2>Retrieval (test)</h2><table><tr><th class=l>model</th>{head}</tr>{body}</table>"]
        if ex:
            out.append("<h2>Queries whose passage ranked lowest</h2><table><tr><th class=l>query</th>"
                       "<th class=l>gold passage</th><th class=l>retrieved first</th><th>gold rank</th></tr>"
                       f"{ex}</table>")
        return out


def contrastive_loss(q: torch.Tensor, cands: torch.Tensor, pid: torch.Tensor, cid: torch.Tensor, temperature: float,
                     symmetric: bool = False, qid: torch.Tensor | None = None,
                     p: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch negatives: q [B, d] against cands [C, d] (the B positives first, then hard negatives), target i for
    query i; a candidate holding the same passage as query i's positive (pid / cid ids) is masked out, not a
    negative. symmetric: plus positives p [B, d] against the queries (qid: same query text masked), averaged."""
    n = q.shape[0]
    target = torch.arange(n, device=q.device)
    logits = q @ cands.T / temperature
    same = (cid[None, :] == pid[:, None])
    same[target, target] = False
    loss = F.cross_entropy(logits.masked_fill(same, float("-inf")), target)
    if symmetric:
        back = p @ q.T / temperature
        dup = qid[None, :] == qid[:, None]
        dup[target, target] = False
        loss = (loss + F.cross_entropy(back.masked_fill(dup, float("-inf")), target)) / 2
    return loss


class TextEmbeddingPredictor(TaskPredictor, _EmbeddingUser, Predicts, Evaluates, Embeds):
    """A text_embedding run (or, through `from_encoder`, any encoder folder / starter name): predict(texts) ->
    [{"embedding": [...], "tokens": n}], embed(texts, kind) -> an array, evaluate(pairs file) -> retrieval
    metrics."""

    input_kind = "text"
    task = "text_embedding"

    def __init__(self, cfg, folder, device, backend: str = "torch"):
        super().__init__(cfg, folder, device, backend)
        from luban.embedding.encoder import load_encoder

        self._encoder = load_encoder(Path(folder).parent, device=getattr(device, "type", str(device)),
                                     backend=backend if backend in ("onnx", "onnx-int8") else "torch")
        self.model = getattr(self._encoder, "module", None)

    @classmethod
    def from_encoder(cls, encoder: Encoder, cfg) -> "TextEmbeddingPredictor":
        self = cls.__new__(cls)
        TaskPredictor.__init__(self, cfg, encoder.folder, encoder.device, encoder.backend)
        self._encoder = encoder
        self.model = getattr(encoder, "module", None)
        return self

    def encoder(self) -> Encoder:
        return self._encoder

    def embed(self, texts, kind="query", batch_size=None, progress=False):
        return self._encoder.encode(texts, kind, batch_size or self.cfg.embedding.batch_size, progress)

    # row-aligned prediction (luban predict / luban embed) ----------------------------------------
    def frame_inputs(self, frame: pd.DataFrame):
        col = input_column(frame, self.cfg.data.columns.text)
        return list(frame[col]), col

    def input_problem(self, x):
        from luban.data.cleaning import text_problem

        return text_problem(x, self.cfg.data.clean)

    def predict_inputs(self, inputs, kind: str = "query") -> list[dict]:
        # checked (an empty text is refused) but embedded as given: the vectors are Encoder.encode's exactly, the
        # same a knowledge base or the Python API gets for the text (the model's tokenizer normalizes)
        normalize_inputs(inputs, self.cfg.data.clean)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            return []
        ids = self._encoder.token_ids(texts, kind)
        vecs = self._encoder.encode_ids(ids, self.cfg.embedding.batch_size)
        return [{"embedding": v.tolist(), "tokens": len(i)} for v, i in zip(vecs, ids)]

    def read_inputs(self, path):
        frame = read_file(self.cfg, Path(path))
        col = input_column(frame, self.cfg.data.columns.text)
        from luban.data.cleaning import column_texts

        return column_texts(frame, col, path, self.cfg.data.clean)

    def evaluate_file(self, path):
        frame = read_file(self.cfg, Path(path))
        pairs, _ = read_pairs(self.cfg, frame, dedupe=False)
        return self.retrieval(self._encoder, RetrievalSet(pairs, read_corpus(self.cfg)), detailed=True)


def input_column(frame: pd.DataFrame, configured) -> str:
    """The column of texts to embed: data.columns.text when set, else one named text, else the only column."""
    if configured is not None:
        return resolve_column(frame, configured, "text")
    cols = [c for c in frame.columns if c != LINE]
    if "text" in cols:
        return "text"
    if len(cols) == 1:
        return cols[0]
    raise ConfigError(f"{frame.attrs.get('source', 'input')}: which column holds the texts? columns are "
                      f"{', '.join(map(str, cols))}: name one with --column (or data.columns.text)")
