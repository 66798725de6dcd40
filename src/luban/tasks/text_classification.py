"""Text classification and sentiment (Chinese and English): text -> label with probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import luban.processor as processor
from luban.capabilities import Evaluates, Explains, Predicts, TaskPredictor
from luban.config import RunConfig
from luban.data.batching import epoch_batches, pad_ids
from luban.data.cleaning import clean_text_frame, column_texts, normalize_inputs, normalize_text
from luban.data.readers import LINE, resolve_column
from luban.data.redact import for_clean
from luban.data.ngrams import load_featurizer
from luban.data.tokenizers import build_encoder
from luban.errors import DataError
from luban.evaluate.baselines import text_tfidf_lr
from luban.models.registry import build_model
from luban.tasks.base import (Batches, ExportSpec, LabelMap, Task, TextInputs, classifier_metrics, read_file,
                              run_model, sample_rows, split_labelled, to_device)
from luban.training.progress import say


def build_text_model(cfg: RunConfig, vocab_size: int, num_classes: int, pad_id: int,
                     backbone_dir: str | None = None) -> nn.Module:
    """The module for cfg.model. `backbone_dir` rebuilds a pretrained model from a run dir (no weights load)."""
    return build_model(cfg.model, cfg.task, vocab_size=vocab_size, num_classes=num_classes, pad_id=pad_id,
                       max_length=cfg.preprocessing.tokenizer.max_length, backbone_dir=backbone_dir)



def build_featurizer(cfg: RunConfig):
    """Token ids from a tokenizer, or weighted n-gram ids for the ngram_bag model."""
    m = cfg.model
    if m.ngrams:
        from luban.data.ngrams import NgramFeaturizer

        return NgramFeaturizer(m.analyzer, m.ngram_range, m.weighting, m.min_df, m.lowercase, m.nb_alpha,
                               m.max_features, m.hash_buckets)
    return build_encoder(cfg.preprocessing.tokenizer, m.path if m.pretrained else None,
                         getattr(m, "trust_remote_code", False))


class EncodedTexts:
    """Token ids (+ weights for n-gram bags, + label ids) for one split, with the rows for the report."""

    CHUNK = 4096  # texts encoded at a time: a count and ETA on a large split

    def __init__(self, frame: pd.DataFrame, featurizer, labels: list[int] | None, encoded=None):
        from luban.training.progress import stage

        texts = list(frame["text"])
        weighted = hasattr(featurizer, "encode_weighted")
        self.ids, self.weights = [], [] if weighted else None
        if encoded is not None:  # (ids, weights) the featurizer made while fitting
            texts = []
            self.ids, self.weights = encoded
        with stage("featurize", total=len(texts), unit="texts", delay=1.0) as p:
            for i in range(0, len(texts), self.CHUNK):
                part = texts[i:i + self.CHUNK]
                if weighted:
                    ids, weights = featurizer.encode_weighted(part)
                    self.weights.extend(weights)
                else:
                    ids = featurizer.encode(part)
                self.ids.extend(ids)
                p.advance(len(part))
        self.frame, self.labels = frame, labels
        self.lengths = [len(s) for s in self.ids]

    def __len__(self):
        return len(self.ids)


def _pad_weighted(ids: list[np.ndarray], weights: list[np.ndarray], pad_id: int):
    """Right-padded (ids, weights) of one batch of n-gram bags, filled in one NumPy assignment each."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    inside = np.arange(lengths.max()) < lengths[:, None]
    out_ids = np.full(inside.shape, pad_id, dtype=np.int64)
    out_w = np.zeros(inside.shape, dtype=np.float32)
    out_ids[inside] = np.concatenate(ids)
    out_w[inside] = np.concatenate(weights)
    return torch.from_numpy(out_ids), torch.from_numpy(out_w)


def _collate(data: EncodedTexts, pad_id: int):
    def collate(idx: list[int]) -> dict:
        if data.weights is not None:  # n-gram bags: the "mask" carries each n-gram's weight (0 on padding)
            ids, mask = _pad_weighted([data.ids[i] for i in idx], [data.weights[i] for i in idx], pad_id)
        else:
            ids, mask = pad_ids([data.ids[i] for i in idx], pad_id)
        batch = {"ids": ids, "mask": mask, "index": torch.as_tensor(idx), "size": len(idx)}
        if data.labels is not None:
            batch["labels"] = torch.as_tensor([data.labels[i] for i in idx])
        return batch

    return collate


def _forward(device):
    def forward(model, batch):
        b = to_device(batch, device)
        return model(b["ids"], b["mask"])

    return forward


class _TextModelUser:
    """What training and inference share: batching a split and turning logits into probabilities."""

    cfg: RunConfig
    device: torch.device
    pad_id: int

    def eval_batches(self, data: EncodedTexts) -> Batches:
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size * 2
        return Batches(epoch_batches(data.lengths, bs, 0, 0, shuffle=False), _collate(data, self.pad_id))

    def logits(self, model, data: EncodedTexts) -> torch.Tensor:
        return run_model(model, self.eval_batches(data), _forward(self.device), len(data))

    def probabilities(self, model, data: EncodedTexts) -> torch.Tensor:
        return torch.softmax(self.logits(model, data), dim=-1)

    def export_spec(self) -> ExportSpec:
        seq = {0: "batch", 1: "length"}
        return ExportSpec(["ids", "mask"], ["logits"], {"ids": seq, "mask": seq, "logits": {0: "batch"}})


def _example(data: EncodedTexts):
    frame = data.frame
    return lambda i: {"line": int(frame[LINE].iloc[i]), "text": frame["text"].iloc[i]}


EXPLAINED_EXAMPLES = 3  # the most confidently wrong test examples explained in report.html


class TextClassificationTask(Task, _TextModelUser):
    name = "text_classification"
    main_metric = "accuracy"

    def prefers_bf16_on_cpu(self):
        return self.cfg.model.pretrained

    def prepare(self, frames):
        cfg = self.cfg
        cols = cfg.data.columns
        cleaned = {}
        for split, frame in frames.items():
            if frame is None:
                cleaned[split] = None
                continue
            text_col = resolve_column(frame, cols.text, "text")
            label_col = resolve_column(frame, cols.label, "label")
            out, rep = clean_text_frame(frame, text_col, label_col, cfg.data.clean, dedupe=split == "train",
                                        redactor=for_clean(cfg.data.clean))
            if len(out) == 0:
                raise DataError(f"{rep.source}: no usable rows left after cleaning\n  {rep.summary()}")
            self.cleaning.append(rep.to_dict() | {"split": split})
            say("cleaning " + rep.summary())
            cleaned[split] = out
        self.label_col = str(cols.label)
        self.label_map = LabelMap.fit(cleaned["train"], self.label_col)
        splits = split_labelled(cfg, cleaned)
        label_ids = {s: self.label_map.encode(f, self.label_col) for s, f in splits.items()}
        self.encoder = build_featurizer(cfg)
        encoded = {}
        if cfg.model.ngrams:  # the training texts are counted once: fitting returns their encoding
            from luban.training.progress import stage

            with stage("n-gram features", total=len(splits["train"]), unit="texts", delay=1.0) as p:
                encoded["train"] = self.encoder.fit_encode(list(splits["train"]["text"]), label_ids["train"])
                p.advance(len(splits["train"]))
        else:
            self.encoder.fit(list(splits["train"]["text"]))
        self.pad_id = self.encoder.pad_id
        self.data = {s: EncodedTexts(f, self.encoder, label_ids[s], encoded.get(s)) for s, f in splits.items()}

    def data_summary(self):
        return {"splits": {s: len(d) for s, d in self.data.items()}, "labels": self.label_map.labels,
                "vocab_size": self.encoder.vocab_size, "tokenizer": self.encoder.kind, "cleaning": self.cleaning}

    def build_model(self):
        return build_text_model(self.cfg, self.encoder.vocab_size, len(self.label_map.labels), self.pad_id)

    def train_batches(self, epoch):
        d = self.data["train"]
        idx = epoch_batches(d.lengths, self.cfg.trainer.batch_size, self.cfg.seed, epoch,
                            bucket=self.cfg.preprocessing.bucket_by_length)
        return Batches(idx, _collate(d, self.pad_id))

    def loss(self, model, batch):
        return F.cross_entropy(self.batch_logits(model, batch), self.batch_labels(batch))

    def loss_batches(self, split):
        return self.eval_batches(self.data[split])

    def batch_logits(self, model, batch):
        return _forward(self.device)(model, batch)

    def batch_labels(self, batch):
        return batch["labels"].to(self.device)

    def split_inputs(self, split, limit=None, batch_size=32):
        d = self.data[split]
        rows = sample_rows(len(d), limit, self.cfg.seed)  # mixed lengths: batches with padding
        collate = _collate(d, self.pad_id)
        return [(b["ids"], b["mask"]) for b in (collate(rows[i:i + batch_size])
                                                for i in range(0, len(rows), batch_size))]

    def split_logits(self, model, split):
        return self.logits(model, self.data[split])

    def add_unlabeled(self, texts: list[str]) -> int:
        """Append unlabeled texts to the training split (label -100: no hard-label loss), e.g. a distillation
        transfer set the teacher scores; returns how many were added (empty ones are skipped)."""
        texts = [t for t in (normalize_text(t, self.cfg.data.clean) for t in texts) if t]
        train = self.data["train"]
        extra = pd.DataFrame({"text": texts, LINE: range(1, len(texts) + 1)})
        frame = pd.concat([train.frame[["text", LINE]], extra], ignore_index=True)
        frame.attrs = train.frame.attrs
        self.data["train"] = EncodedTexts(frame, self.encoder, list(train.labels) + [-100] * len(texts))
        return len(texts)

    def evaluate(self, model, split, detailed=False):
        data = self.data[split]
        return classifier_metrics(self.logits(model, data), data.labels, self.label_map.labels,
                                  self.cfg.evaluation.worst_examples, _example(data), detailed)

    def split_lines(self, split):
        return self.data[split].frame[LINE].tolist()

    def baseline(self):
        tr = self.data["train"]
        evals = {s: (list(self.data[s].frame["text"]), self.data[s].labels) for s in ("validation", "test")}
        return text_tfidf_lr(list(tr.frame["text"]), tr.labels, evals, self.label_map.labels, self.cfg.seed)

    def report_sections(self, workdir, final):
        """The few most confidently wrong test examples, explained (luban.explain), from the saved model."""
        worst = (final.get("test") or {}).get("worst_examples") or []
        if not worst:
            return []
        try:
            import captum  # noqa: F401
        except ImportError:
            return []
        from luban.explain import report_section

        p = TextClassificationPredictor(self.cfg, workdir / "model", self.device)
        picked = worst[:EXPLAINED_EXAMPLES]
        explained = p.explain([e["text"] for e in picked])
        return [report_section([{**x, "true": e["label"]} for x, e in zip(explained, picked)])]

    def save(self, folder, model):
        processor.save(folder, self.cfg.task, tokenizer=self.encoder, labels=self.label_map,
                       model={"vocab_size": self.encoder.vocab_size, "pad_id": self.pad_id})
        if self.cfg.model.pretrained:
            model.backbone.config.save_pretrained(str(folder / "backbone"))


class TextClassificationPredictor(TextInputs, TaskPredictor, _TextModelUser, Predicts, Evaluates, Explains):
    input_kind = "text"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "text_classification"
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        saved = processor.load(folder)
        meta = saved["model"]
        self.encoder = load_featurizer(saved["tokenizer"], folder)
        self.label_map = LabelMap(saved["labels"])
        self.pad_id = meta["pad_id"]
        backbone = str(folder / "backbone") if cfg.model.pretrained else None
        self.model = self.load_model(lambda: build_text_model(cfg, meta["vocab_size"], len(self.label_map.labels),
                                                              self.pad_id, backbone))

    def export_hf(self, folder):
        if not self.cfg.model.pretrained:
            return False
        from luban.models.hf_classifier import save_text_classifier

        save_text_classifier(self.model, self.encoder.tok, self.label_map.labels, self.cfg.model.pooling, folder)
        return True

    def class_labels(self):
        return self.label_map.labels

    def _encode(self, frame: pd.DataFrame, labels: list[int] | None) -> EncodedTexts:
        return EncodedTexts(frame, self.encoder, labels)

    def predict_inputs(self, inputs, top_k: int | None = None) -> list[dict]:
        texts = normalize_inputs(inputs, self.cfg.data.clean)
        if not texts:
            return []
        frame = pd.DataFrame({"text": texts, LINE: range(1, len(texts) + 1)})
        probs = self.probabilities(self.model, self._encode(frame, None))
        out = []
        for row in probs.tolist():
            order = sorted(range(len(row)), key=lambda j: -row[j])
            best = order[0]
            res = {"label": self.label_map.labels[best], "score": round(row[best], 6),
                   "probabilities": {self.label_map.labels[j]: round(row[j], 6) for j in order[: top_k or len(row)]}}
            out.append(res)
        return out

    def explain(self, inputs, target=None):
        from luban.explain import explain_texts, needs_torch

        needs_torch(self)
        return explain_texts(self, [inputs] if isinstance(inputs, str) else list(inputs), target)

    def _read(self, path, need_label: bool) -> pd.DataFrame:
        frame = read_file(self.cfg, Path(path))
        cols = self.cfg.data.columns
        text_col = resolve_column(frame, cols.text, "text")
        label_col = resolve_column(frame, cols.label, "label") if need_label else None
        clean, rep = clean_text_frame(frame, text_col, label_col, self.cfg.data.clean, dedupe=False)
        if rep.dropped:
            say("cleaning " + rep.summary())
        return clean

    def parity_rows(self, path):
        return list(self._read(path, need_label=False)["text"])

    def read_inputs(self, path):
        frame = read_file(self.cfg, Path(path))
        text_col = resolve_column(frame, self.cfg.data.columns.text, "text")
        return column_texts(frame, text_col, path, self.cfg.data.clean)

    def evaluate_file(self, path):
        frame = self._read(path, need_label=True)
        data = self._encode(frame, self.label_map.encode(frame, str(self.cfg.data.columns.label)))
        return classifier_metrics(self.logits(self.model, data), data.labels, self.label_map.labels,
                                  self.cfg.evaluation.worst_examples, _example(data))
