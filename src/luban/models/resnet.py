"""A small ResNet from scratch (He et al. 2016, basic blocks), sized for 32-224 px images on a CPU.

stem: "cifar" = one 3x3 conv at full resolution (small images); "imagenet" = 3x3 stride-2 conv + max-pool (large
images); "auto" picks imagenet for inputs of 64 px and more. Each stage after the first halves the resolution.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: trains faster and more stably
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths=(32, 64, 128), blocks=(2, 2, 2),
                 dropout: float = 0.0, stem: str = "cifar"):
        super().__init__()
        w0 = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w0, 3, 2 if stem == "imagenet" else 1, 1, bias=False),
                                   nn.BatchNorm2d(w0), nn.ReLU(inplace=True)]
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)
        stages, cin = [], w0
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stages.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(self.dropout(x))


def build(cfg, *, num_classes: int, in_channels: int, image_size: int, **_) -> ResNet:
    """The registry's builder for ResNetConfig (luban.models.resnet_config)."""
    stem = cfg.stem if cfg.stem != "auto" else ("imagenet" if image_size >= 64 else "cifar")
    return ResNet(in_channels, num_classes, cfg.widths, cfg.blocks, cfg.dropout, stem)
