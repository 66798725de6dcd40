"""Speech: recognition (audio -> text, CTC from scratch or a pretrained HF model) and audio classification
(keyword spotting / spoken commands: audio -> label).

Data is a folder of audio files (the label or transcript from a file-name regex or the sub-folder), or a
CSV/JSONL/Parquet manifest with an audio path column and a transcript (`columns.text`) or label column. Every clip
is read once (soundfile), resampled (soxr), turned into log-mel features and cached in memory; training adds speed /
noise perturbation and SpecAugment.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import luban.processor as processor
from luban.capabilities import Evaluates, Predicts, TaskPredictor
from luban.config import RunConfig, overridden, updated
from luban.data.audio import LogMel, list_audio_folder, perturb, read_audio, spec_augment
from luban.data.batching import epoch_batches
from luban.data.cleaning import label_text, normalize_text
from luban.data.readers import LINE, read_table, resolve_column
from luban.errors import ConfigError, DataError, ExportError, skippable
from luban.evaluate.asr import asr_metrics, utterance_errors
from luban.evaluate.metrics import classification_with_worst
from luban.generation.ctc import decode
from luban.models.registry import build_model
from luban.tasks.base import (Batches, ExportSpec, LabelMap, Task, run_model, sample_rows, split_labelled,
                              to_device)

SPLITS = ("train", "validation", "test")


# ------------------------------------------------------------------------------------------------ data


def read_audio_table(cfg: RunConfig, path: Path, target_role: str) -> pd.DataFrame:
    """A folder listing or a manifest -> frame with columns audio (absolute path), label (transcript/class)."""
    d = cfg.data
    if Path(path).is_dir():
        return list_audio_folder(path, d.label_pattern)
    frame = read_table(path, d.format, d.header, d.delimiter, d.quoting, d.encoding_for(path))
    if d.columns.audio is None or getattr(d.columns, target_role) is None:
        raise ConfigError(f"data.columns: a manifest needs data.columns.audio and data.columns.{target_role}")
    audio_col = resolve_column(frame, d.columns.audio, "audio")
    target_col = resolve_column(frame, getattr(d.columns, target_role), target_role)
    root = Path(d.image_root) if d.image_root is not None else Path(path).parent
    rows = []
    for a, t, line in zip(frame[audio_col], frame[target_col], frame[LINE], strict=True):
        if not isinstance(a, str) or not a.strip():
            raise DataError(f"{path}: line {line}: field {audio_col!r}: missing audio path")
        rows.append((str(Path(a) if Path(a).is_absolute() else root / a), t, line))
    out = pd.DataFrame(rows, columns=["audio", "label", LINE], dtype=object)
    out.attrs["source"] = str(path)
    return out


class AudioSet:
    """One split: waveforms, cached log-mel features, targets, and where each clip came from."""

    def __init__(self, frame: pd.DataFrame, cfg: RunConfig, featurize: LogMel, split: str):
        self.skipped: list[str] = []
        waves, keep = [], []
        for i, path in enumerate(frame["audio"]):
            try:
                waves.append(read_audio(path, cfg.preprocessing.audio))
                keep.append(i)
            except DataError as e:
                if not cfg.data.skip_bad_files:
                    line = frame[LINE].iloc[i]
                    src = frame.attrs.get("source", "data")
                    where = DataError(f"{src}: line {line}: {e}" if not Path(src).is_dir() else str(e))
                    raise skippable(where) from None
                self.skipped.append(str(e))
        if self.skipped:
            print(f"{split}: skipped {len(self.skipped)} unreadable audio file(s), e.g. {self.skipped[0]}",
                  flush=True)
        if not waves:
            raise DataError(f"{frame.attrs.get('source', split)}: no usable audio in the {split} split")
        self.frame = frame.iloc[keep].reset_index(drop=True)
        self.waves = waves
        self.feats = [featurize(w) for w in waves]
        self.lengths = [f.shape[0] for f in self.feats]
        self.targets: list | None = []

    @classmethod
    def from_waves(cls, frame: pd.DataFrame, waves: list[np.ndarray], featurize: LogMel) -> "AudioSet":
        """Waveforms already in memory (prediction): no files to read, no targets."""
        data = cls.__new__(cls)
        data.frame, data.waves, data.skipped, data.targets = frame, waves, [], None
        data.feats = [featurize(w) for w in waves]
        data.lengths = [f.shape[0] for f in data.feats]
        return data

    def __len__(self):
        return len(self.waves)

    def seconds(self, rate: int) -> float:
        return sum(len(w) for w in self.waves) / rate


def collate_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lengths


class UnitMap(processor.Processor):
    """Characters or words of the transcripts <-> CTC unit ids (0 is the blank)."""

    def __init__(self, units: list[str], kind: str):
        self.units, self.kind = list(units), kind
        self.index = {u: i + 1 for i, u in enumerate(self.units)}

    @classmethod
    def fit(cls, texts: list[str], kind: str) -> "UnitMap":
        pieces = set()
        for t in texts:
            pieces.update(t.split() if kind == "word" else t)
        return cls(sorted(pieces), kind)

    def encode(self, text: str, where: str) -> list[int]:
        pieces = text.split() if self.kind == "word" else list(text)
        unknown = [p for p in pieces if p not in self.index]
        if unknown:
            raise DataError(f"{where}: {self.kind} {unknown[0]!r} never occurs in the training transcripts")
        return [self.index[p] for p in pieces]

    def decode(self, ids: list[int]) -> str:
        pieces = [self.units[i - 1] for i in ids if 0 < i <= len(self.units)]
        return (" " if self.kind == "word" else "").join(pieces)

    def state(self) -> dict:
        return {"kind": self.kind, "units": self.units}

    @classmethod
    def from_state(cls, d: dict, folder: Path | None = None, name: str = "units") -> "UnitMap":
        return cls(d["units"], d["kind"])


# ------------------------------------------------------------------------------------------------ models


def build_speech_model(cfg: RunConfig, n_out: int):
    return build_model(cfg.model, cfg.task, n_mels=cfg.preprocessing.audio.n_mels, n_out=n_out)



def _forward(model, batch):
    return model(batch["x"], batch["lengths"])


# ------------------------------------------------------------------------------------------------ task


class SpeechTask(Task):
    """speech_recognition (main metric CER, lower is better) and audio_classification (accuracy)."""

    # the state batching, decoding and scoring read: fitted by prepare(), or set from the saved run by SpeechPredictor
    featurize: LogMel
    sets: dict[str, AudioSet]       # split name -> clips (the predictor's own: "predict", "evaluate")
    units: UnitMap | None = None    # speech_recognition from scratch: the transcripts' CTC units
    labels: LabelMap | None = None  # audio_classification from scratch: the classes

    def __init__(self, cfg: RunConfig, run_folder: Path | None = None):
        super().__init__(cfg)
        self.asr = cfg.task == "speech_recognition"
        self.name = cfg.task
        self.main_metric = "cer" if self.asr else "accuracy"
        self.mode = "min" if self.asr else "max"
        if cfg.model.pretrained:
            from luban.tasks.speech_pretrained import PretrainedSpeech

            self.hf = PretrainedSpeech(cfg, run_folder)
            self.cfg = updated(cfg, {"preprocessing.audio.sample_rate": self.hf.sample_rate})
        else:
            self.hf = None

    def prefers_bf16_on_cpu(self):
        return self.hf is not None

    def read_frames(self):
        role = "text" if self.asr else "label"
        d = self.cfg.data
        frames = {s: read_audio_table(self.cfg, getattr(d, s), role) if getattr(d, s) is not None else None
                  for s in SPLITS}
        if d.train_limit is not None and d.train_limit < len(frames["train"]):
            frames["train"] = frames["train"].sample(n=d.train_limit, random_state=self.cfg.seed).sort_values(LINE)
        return frames

    def _clean_targets(self, frame: pd.DataFrame) -> pd.DataFrame:
        src = frame.attrs.get("source", "data")
        texts = []
        for t, line in zip(frame["label"], frame[LINE], strict=True):
            text = normalize_text(t, self.cfg.data.clean) if isinstance(t, str) else ""
            if not self.asr and label_text(t, self.cfg.data.clean) is None:
                text = ""  # NaN / null / None (data.clean.missing_labels) is no label, not a class
            if not text:
                raise DataError(f"{src}: line {line}: field {'text' if self.asr else 'label'!r}: empty "
                                f"{'transcript' if self.asr else 'label'}")
            texts.append(text)
        out = frame.assign(label=texts)
        out.attrs = frame.attrs
        return out

    def prepare(self, frames):
        from luban.data.splits import make_splits

        cfg = self.cfg
        frames = {s: (self._clean_targets(f) if f is not None else None) for s, f in frames.items()}
        if self.asr:
            sp = cfg.data.split
            splits = make_splits(frames, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed, None)
        else:
            splits = split_labelled(cfg, frames)
        self.featurize = LogMel(cfg.preprocessing.audio)
        self.sets = {s: AudioSet(splits[s], cfg, self.featurize, s) for s in SPLITS}
        if self.hf is not None:
            self.hf.prepare(self.sets)
            return
        if self.asr:
            self.units = UnitMap.fit(list(self.sets["train"].frame["label"]), cfg.model.units)
            for s in SPLITS:
                data = self.sets[s]
                src = data.frame.attrs.get("source", s)
                data.targets = [self.units.encode(t, f"{src}: line {ln}: field 'text'")
                                for t, ln in zip(data.frame["label"], data.frame[LINE], strict=True)]
        else:
            self.labels = LabelMap.fit(self.sets["train"].frame, "label")
            for s in SPLITS:
                self.sets[s].targets = self.labels.encode(self.sets[s].frame, "label")

    def build_model(self):
        if self.hf is not None:
            return self.hf.build_model()
        return build_speech_model(self.cfg, len(self.units.units) if self.asr else len(self.labels.labels))

    # batches ---------------------------------------------------------------------------------------------
    def _batches(self, split: str, epoch: int, train: bool) -> Batches:
        data = self.sets[split]
        tr = self.cfg.trainer
        bs = tr.batch_size if train else (tr.eval_batch_size or tr.batch_size)
        aug = self.cfg.preprocessing.audio.augment
        rate = self.cfg.preprocessing.audio.sample_rate

        def collate(idx):
            batch = {"index": torch.tensor(idx), "size": len(idx)}
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch * 10_007 + idx[0]) if train else None
            changed = train and (aug.speed is not None or aug.noise_snr_db is not None)
            waves = [perturb(data.waves[i], aug, rate, g) for i in idx] if changed else None
            if self.hf is not None:
                texts = [data.frame["label"].iloc[i] for i in idx] if data.targets is not None else None
                return {**batch, **self.hf.collate(waves or [data.waves[i] for i in idx], texts)}
            feats = [self.featurize(w) for w in waves] if changed else [data.feats[i] for i in idx]
            if train:
                feats = [spec_augment(f, aug, g) for f in feats]
            x, lengths = collate_features(feats)
            batch.update(x=x, lengths=lengths)
            if data.targets is None:  # prediction: no references
                return batch
            if self.asr:
                targets = [data.targets[i] for i in idx]
                batch["targets"] = torch.tensor([u for t in targets for u in t], dtype=torch.long)
                batch["target_lengths"] = torch.tensor([len(t) for t in targets])
            else:
                batch["y"] = torch.tensor([data.targets[i] for i in idx])
            return batch

        order = epoch_batches(data.lengths, bs, self.cfg.seed, epoch, shuffle=train,
                              bucket=self.cfg.preprocessing.bucket_by_length)
        return Batches(order, collate)

    def train_batches(self, epoch):
        return self._batches("train", epoch, train=True)

    def loss_batches(self, split):
        return None if self.asr else self._batches(split, 0, train=False)  # recognition's metrics hold its loss

    def loss(self, model, batch):
        batch = to_device(batch, self.device)
        if self.hf is not None:
            return self.hf.loss(model, batch)
        if not self.asr:
            return F.cross_entropy(self.batch_logits(model, batch), batch["y"],
                                   label_smoothing=self.cfg.trainer.label_smoothing)
        log_probs, out_len = _forward(model, batch)
        return F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_len, batch["target_lengths"],
                          blank=0, zero_infinity=True)

    # export ----------------------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        if self.hf is not None:
            raise ExportError("export and compression cover speech models trained from scratch (model.type ctc or "
                              "classifier); a pretrained_speech run's backbone is a Hugging Face model")
        feats, batch = {0: "batch", 1: "frames"}, {0: "batch"}
        if self.asr:
            return ExportSpec(["features", "lengths"], ["log_probs", "output_lengths"],
                              {"features": feats, "lengths": batch, "log_probs": {0: "batch", 1: "steps"},
                               "output_lengths": batch})
        return ExportSpec(["features", "lengths"], ["logits"], {"features": feats, "lengths": batch, "logits": batch})

    def split_inputs(self, split, limit=None, batch_size=32):
        """(log-mel features, lengths) batches, padded as evaluate() pads them, for a sample of a split."""
        self.export_spec()
        feats = self.sets[split].feats
        rows = sample_rows(len(feats), limit, self.cfg.seed)
        return [collate_features([feats[j] for j in rows[i:i + batch_size]]) for i in range(0, len(rows), batch_size)]

    # keyword classification (always a model from scratch: pretrained speech backbones are recognizers) has labels and
    # logits: distillation and the classification metrics read them here; recognition has neither
    def split_logits(self, model, split):
        if self.asr:
            return super().split_logits(model, split)
        return run_model(model, self._batches(split, 0, train=False), self.batch_logits, len(self.sets[split]))

    def batch_logits(self, model, batch):
        if self.asr:
            raise ExportError(f"distillation is for classification tasks (not task {self.cfg.task})")
        return _forward(model, to_device(batch, self.device)).float()

    def batch_labels(self, batch):
        if self.asr:
            return super().batch_labels(batch)
        return batch["y"].to(self.device)

    # evaluation ------------------------------------------------------------------------------------------
    def transcribe(self, model, batches: Batches, n: int) -> tuple[list[str], float]:
        """Texts for every row in order, and the mean CTC loss when the batches carry targets."""
        if self.hf is not None:
            return self.hf.transcribe(model, batches, n, self.device)
        model.eval()
        texts: list[str] = [""] * n
        loss_sum, count = 0.0, 0
        beam = self.cfg.model.beam_width
        with torch.no_grad():
            for batch in batches:
                b = to_device(batch, self.device)
                log_probs, out_len = _forward(model, b)
                if "targets" in b:
                    loss_sum += float(F.ctc_loss(log_probs.transpose(0, 1), b["targets"], out_len,
                                                 b["target_lengths"], blank=0, zero_infinity=True)) * batch["size"]
                    count += batch["size"]
                for i, ids in zip(batch["index"].tolist(), decode(log_probs.float().cpu(), out_len.cpu(), beam),
                                  strict=True):
                    texts[i] = self.units.decode(ids)
        return texts, (loss_sum / count if count else float("nan"))

    def evaluate(self, model, split, detailed=False):
        data = self.sets[split]
        batches = self._batches(split, 0, train=False)
        if not self.asr:
            probs = run_model(model, batches, lambda m, b: self.batch_logits(m, b).softmax(-1), len(data))
            m = classification_with_worst(probs.numpy(), data.targets, self.labels.labels,
                                          self.cfg.evaluation.worst_examples, lambda i: self._describe(data, i))
            return m if detailed else {k: v for k, v in m.items() if isinstance(v, float)}
        hyps, loss = self.transcribe(model, batches, len(data))
        refs = list(data.frame["label"])
        out = {**asr_metrics(refs, hyps), "loss": loss}
        if detailed:
            out["worst_utterances"] = worst_utterances(data, refs, hyps, self.cfg.evaluation.worst_examples,
                                                     self._describe)
        return out

    @staticmethod
    def _describe(data: AudioSet, i: int) -> dict:
        return {"line": int(data.frame[LINE].iloc[i]), "file": Path(data.frame["audio"].iloc[i]).name,
                "text": Path(data.frame["audio"].iloc[i]).name}

    def baseline(self):
        """The majority transcript/label of the training set (what a model that ignores the audio would say)."""
        train = self.sets["train"].frame["label"]
        majority = train.value_counts().index[0]
        out = {"name": f"always the most frequent training {'transcript' if self.asr else 'label'} ({majority!r})"}
        for s in ("validation", "test"):
            refs = list(self.sets[s].frame["label"])
            if self.asr:
                out[s] = asr_metrics(refs, [majority] * len(refs))
            else:
                out[s] = {"accuracy": float(np.mean([r == majority for r in refs]))}
        return out

    # saving ----------------------------------------------------------------------------------------------
    def save_weights(self, folder, model):
        if self.hf is not None:
            return self.hf.save(folder, model)
        return super().save_weights(folder, model)

    def save(self, folder, model):
        if self.hf is not None:  # a pretrained model's HF processor is saved beside it in hf/ (save_weights)
            processor.save(folder, self.cfg.task, assets=("hf",))
        elif self.asr:
            processor.save(folder, self.cfg.task, units=self.units)
        else:
            processor.save(folder, self.cfg.task, labels=self.labels)

    def data_summary(self):
        rate = self.cfg.preprocessing.audio.sample_rate
        return {"splits": {s: len(self.sets[s]) for s in SPLITS},
                "audio_seconds": {s: round(self.sets[s].seconds(rate), 1) for s in SPLITS},
                "skipped_files": {s: len(self.sets[s].skipped) for s in SPLITS},
                **({"units": len(self.units.units)} if self.asr and self.hf is None else {})}

    def report_sections(self, workdir, final):
        worst = final.get("test", {}).get("worst_utterances") or []
        if not self.asr or not worst:
            return []
        E = html.escape
        rows = "".join(f"<tr><td class=l>{E(w['file'])}</td><td class=l>{E(w['reference'])}</td>"
                       f"<td class=l>{E(w['hypothesis'])}</td><td>{w['cer']:.3f}</td><td>{w['wer']:.3f}</td></tr>"
                       for w in worst)
        return ["<h2>Test utterances with the most errors</h2><table><tr><th class=l>file</th>"
                "<th class=l>reference</th><th class=l>hypothesis</th><th>CER</th><th>WER</th></tr>" + rows +
                "</table>"]


def worst_utterances(data: AudioSet, refs: list[str], hyps: list[str], k: int, describe) -> list[dict]:
    scored = []
    for i, (r, h) in enumerate(zip(refs, hyps, strict=True)):
        if r != h:
            scored.append({**describe(data, i), "reference": r, "hypothesis": h, **utterance_errors(r, h)})
    scored.sort(key=lambda e: (-e["cer"], e["line"]))
    for e in scored:
        e.pop("text", None)
    return scored[:k]


# ------------------------------------------------------------------------------------------------ predictor


class SpeechPredictor(TaskPredictor, Predicts, Evaluates):
    input_kind = "audio"  # what the server sends predict(): see TaskPredictor.capabilities
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        self.task = cfg.task
        self.impl = SpeechTask(cfg, folder / "hf" if cfg.model.pretrained else None)
        self.impl.device = device
        self.impl.featurize = LogMel(cfg.preprocessing.audio)
        if self.impl.hf is not None:
            self.model = self.impl.hf.load(folder, device)
        else:
            saved = processor.load(folder)
            if self.impl.asr:
                self.impl.units = UnitMap.from_state(saved["units"])
                n = len(self.impl.units.units)
            else:
                self.impl.labels = LabelMap(saved["labels"])
                n = len(self.impl.labels.labels)
            self.model = self.load_model(lambda: build_speech_model(cfg, n))

    def override_data(self, items: list[str], where: str) -> None:
        super().override_data(items, where)
        self.impl.cfg = overridden(self.impl.cfg, items, where)  # the task's cleaning reads them too

    def export_spec(self) -> ExportSpec:
        return self.impl.export_spec()

    def _waves(self, inputs) -> list[np.ndarray]:
        audio_cfg = self.cfg.preprocessing.audio
        waves = []
        for i, x in enumerate(inputs):
            if isinstance(x, (str, Path)):
                waves.append(read_audio(x, audio_cfg))
            elif isinstance(x, tuple) and len(x) == 2:  # (waveform, sample rate)
                from luban.data.audio import resample

                waves.append(resample(np.asarray(x[0], dtype=np.float32).reshape(-1), int(x[1]),
                                      audio_cfg.sample_rate))
            elif isinstance(x, np.ndarray):
                waves.append(np.asarray(x, dtype=np.float32).reshape(-1))
            else:
                raise DataError(f"input {i + 1}: expected an audio file path, a waveform array at "
                                f"{audio_cfg.sample_rate} Hz, or a (waveform, sample_rate) pair")
            if waves[-1].size == 0:
                raise DataError(f"input {i + 1}: empty audio")
        return waves

    def predict_inputs(self, inputs, top_k: int | None = None) -> list[dict]:
        if isinstance(inputs, (str, Path, np.ndarray, tuple)):
            inputs = [inputs]
        t0 = time.perf_counter()
        waves = self._waves(inputs)
        rate = self.cfg.preprocessing.audio.sample_rate
        frame = pd.DataFrame({"audio": [str(x) if isinstance(x, (str, Path)) else f"input {i + 1}"
                                        for i, x in enumerate(inputs)], "label": "", LINE: range(1, len(waves) + 1)})
        self.impl.sets = {"predict": AudioSet.from_waves(frame, waves, self.impl.featurize)}
        batches = self.impl._batches("predict", 0, train=False)
        if self.impl.asr:
            texts, _ = self.impl.transcribe(self.model, batches, len(waves))
            per = (time.perf_counter() - t0) / len(waves)
            return [{"text": t, "audio_seconds": round(len(w) / rate, 3), "seconds": round(per, 4)}
                    for t, w in zip(texts, waves, strict=True)]
        probs = run_model(self.model, batches, lambda m, b: self.impl.batch_logits(m, b).softmax(-1), len(waves))
        labels = self.impl.labels.labels
        out = []
        for row in probs.tolist():
            order = sorted(range(len(row)), key=lambda j: -row[j])
            out.append({"label": labels[order[0]], "score": round(row[order[0]], 6),
                        "probabilities": {labels[j]: round(row[j], 6) for j in order[: top_k or len(row)]}})
        return out

    def read_inputs(self, path):
        path = Path(path)
        if path.is_dir():
            from luban.data.audio import AUDIO_SUFFIXES

            files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise DataError(f"{path}: no audio files in this folder")
            return files
        from luban.data.audio import AUDIO_SUFFIXES

        if path.suffix.lower() in AUDIO_SUFFIXES:
            return [str(path)]
        return list(read_audio_table(self.cfg, path, "text" if self.impl.asr else "label")["audio"])

    def evaluate_file(self, path):
        role = "text" if self.impl.asr else "label"
        frame = self.impl._clean_targets(read_audio_table(self.cfg, Path(path), role))
        data = AudioSet(frame, self.cfg, self.impl.featurize, "evaluate")
        if self.impl.hf is not None:
            self.impl.hf.prepare({"evaluate": data})
        elif self.impl.asr:
            src = frame.attrs.get("source", "data")
            data.targets = [self.impl.units.encode(t, f"{src}: line {ln}: field 'text'")
                            for t, ln in zip(data.frame["label"], data.frame[LINE], strict=True)]
        else:
            data.targets = self.impl.labels.encode(data.frame, "label")
        self.impl.sets = {"evaluate": data}
        return self.impl.evaluate(self.model, "evaluate", detailed=True)
