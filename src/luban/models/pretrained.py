"""Any HF encoder (AutoModel) + pooling + a classification head, with freezing and layer-wise learning rates.

The run directory stores the backbone's config and the whole module's weights (safetensors), so a trained model
reloads with `from_config` and no access to the original folder or hub.
"""

from __future__ import annotations

import os
import re

from torch import nn

from luban.errors import ConfigError
from luban.models.pooling import masked_mean

_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def _auto_model():
    from transformers import AutoModel

    return AutoModel


def load_backbone(source: str, allow_download: bool = False, trust_remote_code: bool = False) -> nn.Module:
    """A pretrained HF encoder (AutoModel) with its weights; offline unless allow_download."""
    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return _auto_model().from_pretrained(source, local_files_only=not allow_download,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path: cannot load a pretrained encoder from {source}: {e}") from None


def backbone_from_config(folder: str) -> nn.Module:
    """The encoder's architecture from a run's saved config (its weights come with the run's safetensors)."""
    from transformers import AutoConfig

    return _auto_model().from_config(AutoConfig.from_pretrained(folder, local_files_only=True))


class LayeredBackbone:
    """Fine-tuning controls of a module whose encoder is `self.backbone`: depth of a parameter and freezing."""

    backbone: nn.Module

    def num_layers(self) -> int:
        return int(getattr(self.backbone.config, "num_hidden_layers", 0) or 0)

    def _depth(self, name: str) -> int:
        """0 = embeddings, i+1 = transformer layer i, L+1 = everything above the last layer."""
        m = _LAYER.search("." + name)
        if m:
            return int(m.group(1)) + 1
        if "embed" in name:
            return 0
        return self.num_layers() + 1

    def freeze(self, freeze: bool | int) -> None:
        if freeze is False:
            return
        for name, p in self.backbone.named_parameters():
            if freeze is True or self._depth(name) <= int(freeze):
                p.requires_grad_(False)


class PretrainedClassifier(LayeredBackbone, nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, pooling="mean", dropout=0.1,
                 layerwise_lr_decay=1.0, head_lr_multiplier=1.0):
        super().__init__()
        self.backbone = backbone
        self.layer_decay, self.head_mult = layerwise_lr_decay, head_lr_multiplier
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    @classmethod
    def from_pretrained(cls, source: str, num_classes: int, allow_download=False, trust_remote_code=False, **kw):
        return cls(load_backbone(source, allow_download, trust_remote_code), num_classes, **kw)

    @classmethod
    def from_config_dir(cls, folder: str, num_classes: int, **kw):
        return cls(backbone_from_config(folder), num_classes, **kw)

    def forward(self, ids, mask):
        out = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = out[:, 0] if self.pooling == "cls" else masked_mean(out, mask)
        return self.head(self.dropout(pooled))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Layer-wise learning rates: lr * decay^(layers above); the head gets lr * head multiplier."""
        top, layer_decay, head_mult = self.num_layers() + 1, self.layer_decay, self.head_mult
        groups: dict[tuple, dict] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("backbone."):
                plr = lr * layer_decay ** (top - self._depth(name[len("backbone."):]))
            else:
                plr = lr * head_mult
            wd = 0.0 if p.ndim < 2 else weight_decay
            groups.setdefault((plr, wd), {"params": [], "lr": plr, "weight_decay": wd})["params"].append(p)
        return list(groups.values())


def build(cfg, *, num_classes: int, backbone_dir: str | None = None, **_) -> PretrainedClassifier:
    """The registry's builder for PretrainedConfig in text classification. `backbone_dir` rebuilds the model of a run
    directory (no weights load)."""
    from luban.data.tokenizers import resolve_pretrained

    kw = dict(pooling=cfg.pooling, dropout=cfg.dropout, layerwise_lr_decay=cfg.layerwise_lr_decay,
              head_lr_multiplier=cfg.head_lr_multiplier)
    if backbone_dir is not None:
        return PretrainedClassifier.from_config_dir(backbone_dir, num_classes, **kw)
    model = PretrainedClassifier.from_pretrained(resolve_pretrained(cfg.path, cfg.allow_download, "model.path"),
                                                 num_classes, allow_download=cfg.allow_download,
                                                 trust_remote_code=cfg.trust_remote_code, **kw)
    model.freeze(cfg.freeze)
    return model
