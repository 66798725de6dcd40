"""A sentence encoder: any HF encoder (AutoModel) + mean or CLS pooling over the attention mask + L2 normalization.

forward(input_ids, attention_mask) -> (batch, hidden) unit vectors: what the text_embedding task trains with its
contrastive loss, what luban.embedding.Encoder runs, and what the ONNX export traces. `save_folder` writes it as a
plain HF folder (AutoModel loads it) plus the sentence-transformers files that say how it pools and which prompts it
takes, so `SentenceTransformer(folder)` gives the same vectors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from luban.errors import ConfigError
from luban.models.pooling import masked_mean
from luban.models.pretrained import LayeredBackbone, load_backbone


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per load


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}: cannot load the encoder's tokenizer: {e}") from None


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    return hidden[:, 0] if pooling == "cls" else masked_mean(hidden, mask)


class SentenceEncoder(LayeredBackbone, nn.Module):
    def __init__(self, backbone: nn.Module, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling {pooling!r}: choose mean or cls")
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @classmethod
    def from_folder(cls, folder: str | Path, pooling: str = "mean", normalize: bool = True,
                    trust_remote_code: bool = False) -> "SentenceEncoder":
        _quiet()
        return cls(load_backbone(str(folder), trust_remote_code=trust_remote_code), pooling, normalize)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        v = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(v.float(), dim=-1) if self.normalize else v

    def save_folder(self, folder: str | Path, tokenizer, query_prefix: str = "", passage_prefix: str = "",
                    max_length: int = 512) -> None:
        """The backbone (save_pretrained, safetensors), its tokenizer and the sentence-transformers files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        write_sentence_transformers_files(folder, self.dim, self.pooling, self.normalize, query_prefix,
                                          passage_prefix, max_length)


def write_sentence_transformers_files(folder: Path, dim: int, pooling: str, normalize: bool, query_prefix: str,
                                      passage_prefix: str, max_length: int) -> list[str]:
    """modules.json, 1_Pooling/config.json, (2_Normalize/), sentence_bert_config.json and
    config_sentence_transformers.json (prompts): how sentence-transformers (and luban) pool this folder."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {"modules.json": modules,
             "1_Pooling/config.json": {"word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
                                       "pooling_mode_mean_tokens": pooling == "mean",
                                       "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
             "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
             "config_sentence_transformers.json": {"prompts": {"query": query_prefix, "passage": passage_prefix},
                                                   "default_prompt_name": None, "similarity_fn_name": "cosine"}}
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    return list(files)


def build(cfg, *, spec, **_) -> SentenceEncoder:
    """The registry's builder for SentenceEncoderConfig: the pretrained encoder `cfg.path` with the pooling its
    `spec` (luban.embedding.encoder.detect_spec) says, frozen as cfg.freeze says."""
    from luban.data.tokenizers import resolve_pretrained

    source = resolve_pretrained(cfg.path, cfg.allow_download, "model.path")
    if not cfg.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet()
    model = SentenceEncoder(load_backbone(source, cfg.allow_download, cfg.trust_remote_code), spec.pooling,
                            spec.normalize)
    model.freeze(cfg.freeze)
    return model
