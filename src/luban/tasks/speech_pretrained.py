"""Pretrained Hugging Face speech recognizers for the speech task: CTC models (wav2vec2, HuBERT, WavLM... via
AutoModelForCTC) and encoder-decoders (Whisper via AutoModelForSpeechSeq2Seq), each with its own processor
(feature extractor + tokenizer) from the model folder. Loading is offline unless allow_download is set.

The run keeps a standard HF folder (model/hf/: weights, config, processor), so other tools load it as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from luban.config import RunConfig
from luban.data.tokenizers import resolve_pretrained
from luban.errors import ConfigError
from luban.models.registry import build_model
from luban.models.speech import HFSpeech
from luban.tasks.base import Batches, to_device


class PretrainedSpeech:
    def __init__(self, cfg: RunConfig, run_folder: Path | None = None):
        """`run_folder`: a finished run's model/hf/ (prediction), else the configured model.path (training)."""
        m = cfg.model
        self.cfg = cfg
        self.source = str(run_folder) if run_folder else resolve_pretrained(m.path, m.allow_download, "model.path")
        self._load_processor(self.source, m.allow_download and run_folder is None)

    def _load_processor(self, source: str, allow_download: bool):
        if not allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoProcessor

        try:
            self.hf_config = AutoConfig.from_pretrained(source, local_files_only=not allow_download,
                                                        trust_remote_code=self.cfg.model.trust_remote_code)
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=not allow_download,
                                                           trust_remote_code=self.cfg.model.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.path: cannot load a speech model and its processor from {source}: {e}") \
                from None
        self.seq2seq = bool(getattr(self.hf_config, "is_encoder_decoder", False))
        self.tokenizer = self.processor.tokenizer
        if self.tokenizer.pad_token is None:  # padded label batches need one; Whisper pads with end-of-text
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)

    def prepare(self, sets: dict) -> None:
        for data in sets.values():  # transcripts are tokenized per batch by the model's own tokenizer
            data.targets = list(data.frame["label"])

    def build_model(self) -> HFSpeech:
        return build_model(self.cfg.model, self.cfg.task, source=self.source, seq2seq=self.seq2seq,
                           pad_token_id=self.tokenizer.pad_token_id)

    # batches -------------------------------------------------------------------------------------------------
    def _labels(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", return_attention_mask=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        start = getattr(self.hf_config, "decoder_start_token_id", None)
        if self.seq2seq and start is not None and bool((labels[:, 0] == start).all()):
            labels = labels[:, 1:]  # the model prepends the start token itself when it shifts labels right
        return labels

    def collate(self, waves: list, texts: list[str] | None) -> dict:
        fe = self.processor.feature_extractor
        if self.seq2seq:
            inputs = {"input_features": fe(waves, sampling_rate=self.sample_rate, return_tensors="pt")
                      ["input_features"]}
        else:
            out = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt", padding=True,
                     return_attention_mask=True)
            inputs = {"input_values": out["input_values"], "attention_mask": out["attention_mask"]}
        if texts is not None and all(texts):
            inputs["labels"] = self._labels(texts)
        return inputs

    def loss(self, model: HFSpeech, batch: dict) -> torch.Tensor:
        keys = ("input_features", "input_values", "attention_mask", "labels")
        return model.model(**{k: batch[k] for k in keys if k in batch}).loss

    @torch.no_grad()
    def transcribe(self, model: HFSpeech, batches: Batches, n: int, device) -> tuple[list[str], float]:
        hf = model.model.eval()
        texts, loss_sum, count = [""] * n, 0.0, 0
        for batch in batches:
            b = to_device(batch, device)
            if "labels" in b:
                loss_sum += float(self.loss(model, b)) * batch["size"]
                count += batch["size"]
            if self.seq2seq:
                kw = {"max_new_tokens": self.cfg.model.max_new_tokens}
                if self.cfg.model.language:
                    kw["language"] = self.cfg.model.language
                ids = hf.generate(b["input_features"], **kw)
            else:
                ids = hf(input_values=b["input_values"], attention_mask=b["attention_mask"]).logits.argmax(-1)
            decoded = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            for i, t in zip(batch["index"].tolist(), decoded, strict=True):
                texts[i] = " ".join(t.split())
        return texts, (loss_sum / count if count else float("nan"))

    # saving ------------------------------------------------------------------------------------------------
    def save(self, folder: Path, model: HFSpeech) -> None:
        model.model.save_pretrained(str(folder / "hf"))
        self.processor.save_pretrained(str(folder / "hf"))

    def load(self, folder: Path, device) -> HFSpeech:
        from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq

        auto = AutoModelForSpeechSeq2Seq if self.seq2seq else AutoModelForCTC
        return HFSpeech(auto.from_pretrained(str(folder / "hf"), local_files_only=True)).to(device).eval()
