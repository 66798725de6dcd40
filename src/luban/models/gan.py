"""DCGAN-style generator and discriminator (optionally class-conditional), plus the small CNN that scores samples.

* Generator: z (+ a label embedding when conditional) -> a linear layer to a 4x4..7x7 map -> transposed-conv
  upsampling blocks (BatchNorm + ReLU) -> a 3x3 conv -> tanh, so images are in [-1, 1].
* Discriminator: strided convs with LeakyReLU (optionally spectral-normalised) -> sum-pooled features -> one logit;
  conditional models add a projection term <embed(y), features> (Miyato & Koyama 2018).
* ImageScorer: the quality classifier trained on real images; its softmax scores samples and its penultimate
  features feed KID.
"""

from __future__ import annotations

import torch
from torch import nn


def upsampling_plan(size: int) -> tuple[int, int]:
    """(start side, number of 2x upsamplings) so that start * 2**n == size, with the start side >= 3."""
    n = 0
    while size % (2 ** (n + 1)) == 0 and size // (2 ** (n + 1)) >= 4:
        n += 1
    return size // 2 ** n, n


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, size: int, base_channels: int, num_classes: int = 0):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.start, n_up = upsampling_plan(size)
        widths = [base_channels * 2 ** (n_up - i) for i in range(n_up + 1)]  # e.g. 4C, 2C, C
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.fc = nn.Sequential(nn.Linear(latent_dim * (2 if num_classes else 1), widths[0] * self.start ** 2),
                                nn.BatchNorm1d(widths[0] * self.start ** 2), nn.ReLU(inplace=True))
        blocks = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            blocks += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.widths = widths
        self.out = nn.Conv2d(widths[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.fc(z).view(z.shape[0], self.widths[0], self.start, self.start)
        return torch.tanh(self.out(self.blocks(h)))


class Discriminator(nn.Module):
    def __init__(self, channels: int, size: int, base_channels: int, num_classes: int = 0,
                 spectral_norm: bool = True):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        _, n_down = upsampling_plan(size)
        widths = [base_channels * 2 ** i for i in range(n_down + 1)]  # C, 2C, 4C
        layers = [sn(nn.Conv2d(channels, widths[0], 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [sn(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        layers += [sn(nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = sn(nn.Linear(widths[-1], 1))
        self.embed = sn(nn.Embedding(num_classes, widths[-1])) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(dim=1)  # projection discriminator
        return out


class GAN(nn.Module):
    """Holds both networks so one safetensors file carries the whole model."""

    def __init__(self, latent_dim: int, channels: int, size: int, base_channels: int, num_classes: int = 0,
                 spectral_norm: bool = True):
        super().__init__()
        self.latent_dim, self.channels, self.size, self.num_classes = latent_dim, channels, size, num_classes
        self.generator = Generator(latent_dim, channels, size, base_channels, num_classes)
        self.discriminator = Discriminator(channels, size, base_channels, num_classes, spectral_norm)
        self.apply(_dcgan_init)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               device: torch.device | None = None, batch_size: int = 500) -> torch.Tensor:
        """n images (N, C, H, W) in [-1, 1] from noise drawn with `generator` (eval mode)."""
        device = device or next(self.parameters()).device
        was_training = self.training
        self.eval()
        z = torch.randn(n, self.latent_dim, generator=generator)
        out = []
        for i in range(0, n, batch_size):
            y = labels[i:i + batch_size].to(device) if labels is not None else None
            out.append(self.generator(z[i:i + batch_size].to(device), y).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.channels, self.size, self.size)


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not hasattr(m, "parametrizations"):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ImageScorer(nn.Module):
    """A small CNN classifier for any image size: 3x3 convs, one 2x pool, global average pooling."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)
        self.feature_dim = 4 * width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build(cfg, *, channels: int, num_classes: int, image_size: int, **_) -> GAN:
    """The registry's builder for DCGANConfig (luban.models.gan_config): conditional on the labels when asked."""
    return GAN(cfg.latent_dim, channels, image_size, cfg.base_channels, num_classes if cfg.conditional else 0,
               cfg.spectral_norm)
