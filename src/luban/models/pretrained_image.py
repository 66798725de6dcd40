"""Any Hugging Face image backbone (ViT, ResNet, ConvNeXt, ... via AutoModel) + a new classification head.

The run directory stores the backbone's config and the whole module's weights (safetensors), so a trained model
reloads with `from_config` and no access to the original folder or hub (like models/pretrained.py for text).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from luban.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_image_backbone(path: str, allow_download: bool) -> str:
    if Path(path).expanduser().is_dir():
        return str(Path(path).expanduser())
    if not allow_download:
        raise ConfigError(f"model.path: {path!r} is not a local folder; give the folder of a saved image model "
                          "(save_pretrained), or set model.allow_download: true to fetch a hub id")
    return path


def backbone_mean_std(source: str, allow_download: bool = False) -> tuple[list[float], list[float]]:
    """The backbone's image processor mean/std (preprocessor_config.json), else ImageNet's."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source, local_files_only=not allow_download)
        mean, std = list(proc.image_mean), list(proc.image_std)
        if len(mean) in (1, 3) and len(std) == len(mean):
            return [float(v) for v in mean], [float(v) for v in std]
    except Exception:  # no / unreadable preprocessor_config.json: fall back to ImageNet statistics
        pass
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _feature_dim(config) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    dim = getattr(config, "hidden_size", None)
    if dim:
        return int(dim)
    raise ConfigError(f"model.path: cannot tell the feature size of a {type(config).__name__} backbone")


class PretrainedImageClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0, freeze: bool = False):
        super().__init__()
        self.backbone = backbone
        self.frozen = bool(freeze)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(_feature_dim(backbone.config), num_classes)
        params = inspect.signature(backbone.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in params  # ViT-style: any input size
        self.in_channels = int(getattr(backbone.config, "num_channels", 3) or 3)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, source: str, num_classes: int, allow_download=False, trust_remote_code=False, **kw):
        from transformers import AutoModel

        if not allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            backbone = AutoModel.from_pretrained(source, local_files_only=not allow_download,
                                                 trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model.path: cannot load a pretrained image backbone from {source}: {e}") from None
        return cls(backbone, num_classes, **kw)

    @classmethod
    def from_config_dir(cls, folder: str, num_classes: int, **kw):
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        return cls(AutoModel.from_config(config), num_classes, **kw)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its BatchNorm statistics and no dropout
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.backbone(pixel_values=x, **kw)
        hidden = out.last_hidden_state
        if hidden.ndim == 3:  # transformer tokens: the CLS token (ViT, DeiT, BEiT, ...)
            return hidden[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:  # ResNet (B, C, 1, 1), ConvNeXt (B, C)
            return pooled.flatten(1)
        return hidden.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                f = self.features(x)
        else:
            f = self.features(x)
        return self.head(self.dropout(f.float() if f.dtype != self.head.weight.dtype else f))


def build(cfg, *, num_classes: int, backbone_dir: str | None = None, **_) -> PretrainedImageClassifier:
    """The registry's builder for PretrainedImageConfig (`backbone_dir`: a run directory's, no weights load)."""
    if backbone_dir is not None:
        return PretrainedImageClassifier.from_config_dir(backbone_dir, num_classes, dropout=cfg.dropout,
                                                         freeze=cfg.freeze)
    return PretrainedImageClassifier.from_pretrained(resolve_image_backbone(cfg.path, cfg.allow_download), num_classes,
                                                     allow_download=cfg.allow_download,
                                                     trust_remote_code=cfg.trust_remote_code, dropout=cfg.dropout,
                                                     freeze=cfg.freeze)
