"""luban's pretrained classifiers in Hugging Face `save_pretrained` layout, so other tools can load them.

Text (`model.type: pretrained`): the folder holds the backbone's config (plus num_labels, id2label, the pooling),
one model.safetensors with the backbone and the head, the tokenizer, and this file as modeling_luban.py; with
`auto_map` in config.json,

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("text-classification", model=folder, trust_remote_code=True)

load it (the head pools the encoder's last hidden state, mean or CLS, exactly as luban does, which no built-in
transformers class does). This module imports only torch and transformers: it is copied verbatim.

Images (`model.type: pretrained_image`): the backbone in save_pretrained layout (backbone/, loadable with
AutoModel), the head weights (head.safetensors) and head.json (labels, pooling, mean/std, input size).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class LubanTextClassifier(PreTrainedModel):
    """Any HF encoder + mean (or CLS) pooling over the attention mask + a linear head."""

    config_class = PretrainedConfig
    base_model_prefix = "backbone"

    def __init__(self, config):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.pooling = getattr(config, "luban_pooling", "mean")
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _save_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def save_text_classifier(model: nn.Module, tokenizer, labels: list[str], pooling: str, folder: Path) -> None:
    """A luban PretrainedClassifier (backbone + head) -> `folder` in save_pretrained layout (see module doc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.backbone.config.__class__.from_dict(model.backbone.config.to_dict())
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {l: i for i, l in enumerate(labels)}
    config.luban_pooling = pooling
    config.architectures = ["LubanTextClassifier"]
    config.auto_map = {"AutoModelForSequenceClassification": "modeling_luban.LubanTextClassifier"}
    config.save_pretrained(str(folder))
    _save_weights(model, folder / "model.safetensors")
    tokenizer.save_pretrained(str(folder))
    shutil.copyfile(__file__, folder / "modeling_luban.py")


def save_image_classifier(model: nn.Module, labels: list[str], meta: dict, folder: Path) -> None:
    """A luban PretrainedImageClassifier -> backbone/ (save_pretrained) + head.safetensors + head.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(str(folder / "backbone"))
    _save_weights(model.head, folder / "head.safetensors")
    (folder / "head.json").write_text(json.dumps({
        "labels": labels, "features": "CLS token (transformers) or pooler output (CNNs), then head: logits",
        "image_size": meta.get("size"), "mean": meta.get("mean"), "std": meta.get("std")}, indent=1),
        encoding="utf-8")
