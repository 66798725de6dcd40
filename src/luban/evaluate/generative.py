"""Sample-quality metrics for image generation, computed with a classifier trained on the real images.

* mean_confidence: mean top-1 softmax probability the classifier gives the samples (higher: more recognisable).
* class_entropy_ratio: entropy of the histogram of predicted classes / log(num_classes) (1.0: every class equally
  often; low: mode collapse).
* kid: Kernel Inception Distance analogue — the unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3 between the classifier's penultimate features of real and generated images
  (0 for identical distributions; lower is better).
"""

from __future__ import annotations

import math

import numpy as np


def mean_confidence(probs) -> float:
    p = np.asarray(probs, dtype=np.float64)
    return float(p.max(axis=1).mean()) if len(p) else float("nan")


def class_entropy_ratio(probs, num_classes: int | None = None) -> float:
    p = np.asarray(probs, dtype=np.float64)
    k = num_classes or p.shape[1]
    if len(p) == 0 or k < 2:
        return float("nan")
    hist = np.bincount(p.argmax(axis=1), minlength=k).astype(np.float64)
    q = hist / hist.sum()
    q = q[q > 0]
    return max(0.0, float(-(q * np.log(q)).sum() / math.log(k)))


def kid(real, fake, max_subset: int = 1000, n_subsets: int = 10, seed: int = 0) -> float:
    """Unbiased polynomial-kernel MMD^2 between two feature sets (averaged over random subsets when large)."""
    x, y = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    m = min(len(x), len(y), max_subset)
    if m == len(x) == len(y):
        return _mmd2(x, y)
    rng = np.random.default_rng(seed)
    return float(np.mean([_mmd2(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
                          for _ in range(n_subsets)]))


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def image_grid(images: np.ndarray, ncols: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> one HxWxC uint8 grid image (C = 1 or 3), upscaled by `scale`."""
    imgs = np.asarray(images, dtype=np.float32)
    n, c, h, w = imgs.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    u8 = to_uint8(imgs)  # N, H, W, C
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = u8[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def save_png(array: np.ndarray, path) -> None:
    from PIL import Image

    arr = np.asarray(array)
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(str(path), format="PNG")
