"""A CenterNet-style anchor-free detector small enough to train on a CPU.

Backbone: a conv stem and stages of residual blocks (strides 4..32), a top-down FPN back to the output stride (4 by
default). Heads: a class heatmap (Gaussian targets, penalty-reduced focal loss), a size head (log width/height)
and an offset head (from a cell to the object's centre). Size and offset are supervised densely around each centre
(every cell under the object's Gaussian, weighted by it; TTFNet-style) with L1 plus a GIoU loss on the decoded box,
which trains far faster than supervising the centre cell alone.

Decoding: 3x3 max-pool peaks, top-k, score threshold, class-wise NMS (`nms` below; torchvision is not needed),
max detections. Box-aware augmentation (random scale / translate / crop, horizontal flip, color jitter, mosaic) lives
here too so training and the tests share it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GRAY = 114


# ----------------------------------------------------------------------------------------------- boxes / NMS


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix between (N,4) and (M,4) xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indexes of the kept boxes, highest score first. A box is dropped when its
    IoU with a kept, higher-scoring box is > iou_threshold."""
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each label only (boxes of different classes never suppress each other)."""
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.long)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + shift, scores, iou_threshold)


# ----------------------------------------------------------------------------------------------- network


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, act=True):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))
        if act:
            self.append(nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(ConvBN(c, c), ConvBN(c, c, act=False))

    def forward(self, x):
        return F.relu(x + self.body(x))


class CenterNet(nn.Module):
    def __init__(self, num_classes: int, widths=(32, 64, 128, 256), head_channels: int = 64, output_stride: int = 4,
                 blocks: int = 1):
        super().__init__()
        if output_stride not in (4, 8):
            raise ValueError("output_stride must be 4 or 8")
        self.num_classes, self.output_stride = num_classes, output_stride
        w = list(widths)
        self.stem = nn.Sequential(ConvBN(3, w[0] // 2 if w[0] >= 16 else w[0], stride=2),
                                  ConvBN(w[0] // 2 if w[0] >= 16 else w[0], w[0], stride=2))  # stride 4
        stages, cin = [], w[0]
        for i, c in enumerate(w):
            layers = [ConvBN(cin, c, stride=1 if i == 0 else 2)] + [Residual(c) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = c
        self.stages = nn.ModuleList(stages)  # strides 4, 8, 16, 32 ...
        self.context = nn.Sequential(ConvBN(w[-1], w[-1], k=3), ConvBN(w[-1], w[-1], k=3))  # wider receptive field
        self.first_level = 0 if output_stride == 4 else 1
        c = head_channels
        self.lateral = nn.ModuleList(nn.Conv2d(wi, c, 1) for wi in w[self.first_level:])
        self.smooth = ConvBN(c, c)

        def head(out, bias=0.0):
            h = nn.Sequential(ConvBN(c, c), nn.Conv2d(c, out, 1))
            nn.init.constant_(h[-1].bias, bias)
            return h

        self.heatmap = head(num_classes, bias=-math.log((1 - 0.1) / 0.1))
        self.wh = head(2)
        self.offset = head(2)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        feats[-1] = feats[-1] + self.context(feats[-1])
        feats = feats[self.first_level:]
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = F.interpolate(y, size=f.shape[-2:], mode="nearest") + lat(f)
        y = self.smooth(y)
        return {"heatmap": self.heatmap(y), "wh": self.wh(y), "offset": self.offset(y)}


# ----------------------------------------------------------------------------------------------- targets / loss


def build_targets(boxes: np.ndarray, labels: np.ndarray, size: int, stride: int, num_classes: int,
                  alpha: float = 0.54):
    """Heatmap (C,H,W) with an elliptical Gaussian per object, and dense box targets: for every cell under an
    object's Gaussian, the box (xyxy, input pixels) it should predict and a weight (each object's weights sum to 1;
    smaller objects win overlapping cells)."""
    H = W = size // stride
    heat = np.zeros((num_classes, H, W), np.float32)
    box_t = np.zeros((4, H, W), np.float32)
    weight = np.zeros((H, W), np.float32)
    if len(boxes) == 0:
        return heat, box_t, weight
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    for k in np.argsort(-areas):  # large first, so small objects overwrite shared cells
        x0, y0, x1, y1 = boxes[k] / stride
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), W - 1), min(int(cy), H - 1)
        sx, sy = max(alpha * (x1 - x0) / 6, 0.3), max(alpha * (y1 - y0) / 6, 0.3)
        g = np.exp(-((xs - ix) ** 2 / (2 * sx * sx) + (ys - iy) ** 2 / (2 * sy * sy)))
        g[iy, ix] = 1.0
        heat[labels[k]] = np.maximum(heat[labels[k]], g)
        region = g > 0.05
        if not region.any():
            continue
        w = np.where(region, g, 0)
        w /= w.sum()
        box_t[:, region] = boxes[k][:, None]
        weight[region] = w[region]
    return heat, box_t, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), averaged over the objects."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)
    n = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def _grid(H, W, device):
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                            torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    return xs, ys


def decode_boxes(wh: torch.Tensor, offset: torch.Tensor, stride: int) -> torch.Tensor:
    """(B,2,H,W) log-size and centre offset -> (B,4,H,W) xyxy boxes in input pixels."""
    B, _, H, W = wh.shape
    xs, ys = _grid(H, W, wh.device)
    cx = (xs + offset[:, 0].float()) * stride
    cy = (ys + offset[:, 1].float()) * stride
    size = torch.exp(wh.float().clamp(-6, 6)) * stride
    return torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], 1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU per box pair, (N,4) xyxy."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-6)
    elt = torch.minimum(pred[:, :2], target[:, :2])
    erb = torch.maximum(pred[:, 2:], target[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(-1)
    return 1 - (iou - (enclose - union) / enclose.clamp(min=1e-6))


def detection_loss(out: dict, heat: torch.Tensor, box_t: torch.Tensor, weight: torch.Tensor, stride: int,
                   giou_weight: float = 2.0, l1_weight: float = 0.5) -> torch.Tensor:
    hm = focal_loss(out["heatmap"], heat)
    B, _, H, W = out["wh"].shape
    mask = weight > 0
    n_obj = weight.sum().clamp(min=1)
    if not mask.any():
        return hm + 0 * (out["wh"].sum() + out["offset"].sum())
    pred = decode_boxes(out["wh"], out["offset"], stride).permute(0, 2, 3, 1)[mask]
    tgt = box_t.permute(0, 2, 3, 1)[mask]
    w = weight[mask]
    g = (giou_loss(pred, tgt) * w).sum() / n_obj
    # L1 in the heads' own units: offset in cells, size in log cells
    xs, ys = _grid(H, W, heat.device)
    cx_t = (tgt[:, 0] + tgt[:, 2]) / 2 / stride - xs.expand(B, H, W)[mask]
    cy_t = (tgt[:, 1] + tgt[:, 3]) / 2 / stride - ys.expand(B, H, W)[mask]
    off = out["offset"].float().permute(0, 2, 3, 1)[mask]
    wh_t = torch.log(((tgt[:, 2:] - tgt[:, :2]) / stride).clamp(min=1e-3))
    whp = out["wh"].float().permute(0, 2, 3, 1)[mask]
    l1 = (((off[:, 0] - cx_t).abs() + (off[:, 1] - cy_t).abs() + (whp - wh_t).abs().sum(-1)) * w).sum() / n_obj
    return hm + giou_weight * g + l1_weight * l1


@torch.no_grad()
def decode(out: dict, stride: int, score_threshold: float, nms_iou: float, max_detections: int,
           top_k: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image: (boxes (N,4) xyxy input pixels, scores (N,), labels (N,)), best first."""
    heat = torch.sigmoid(out["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    B, C, H, W = heat.shape
    boxes_all = decode_boxes(out["wh"], out["offset"], stride)
    results = []
    k = min(top_k, C * H * W)
    for b in range(B):
        scores, idx = peaks[b].reshape(-1).topk(k)
        keep = scores >= score_threshold
        scores, idx = scores[keep], idx[keep]
        labels = idx // (H * W)
        cell = idx % (H * W)
        boxes = boxes_all[b].reshape(4, -1)[:, cell].T
        if len(scores):
            order = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]
            boxes, scores, labels = boxes[order], scores[order], labels[order]
        results.append((boxes.cpu(), scores.cpu(), labels.cpu()))
    return results


# ----------------------------------------------------------------------------------------------- augmentation


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side is `size`, pad (gray) to size x size at the top-left; returns (image, scale)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    im = Image.fromarray(image).resize((nw, nh), Image.BILINEAR)
    canvas = np.full((size, size, 3), GRAY, np.uint8)
    canvas[:nh, :nw] = np.asarray(im)
    return canvas, s


def _affine(image: np.ndarray, boxes: np.ndarray, size: int, scale: float, tx: float, ty: float, flip: bool):
    """Scale by `scale`, place the top-left at (tx, ty) on a size x size canvas, optionally mirror."""
    from PIL import Image

    if flip:
        data = (-1 / scale, 0, (size - tx) / scale, 0, 1 / scale, -ty / scale)
    else:
        data = (1 / scale, 0, -tx / scale, 0, 1 / scale, -ty / scale)
    im = Image.fromarray(image).transform((size, size), Image.AFFINE, data, resample=Image.BILINEAR,
                                          fillcolor=(GRAY, GRAY, GRAY))
    b = boxes.astype(np.float32) * scale
    b[:, [0, 2]] += tx
    b[:, [1, 3]] += ty
    if flip:
        b[:, [0, 2]] = size - b[:, [2, 0]]
    return np.asarray(im), b


def _keep_visible(boxes: np.ndarray, labels: np.ndarray, size_x: float, size_y: float, x0=0.0, y0=0.0,
                  min_visible: float = 0.3):
    if len(boxes) == 0:
        return boxes, labels
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    c = boxes.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(x0, x0 + size_x)
    c[:, [1, 3]] = c[:, [1, 3]].clip(y0, y0 + size_y)
    w, h = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    ok = (w >= 2) & (h >= 2) & (w * h >= min_visible * area)
    return c[ok], labels[ok]


def random_placement(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator,
                     scale_range=(0.5, 1.5), hflip=True):
    """Random scale (relative to the letterbox fit), random translation / crop, random mirror; boxes follow."""
    h, w = image.shape[:2]
    s = size / max(h, w) * math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    nw, nh = w * s, h * s
    tx = rng.uniform(min(0, size - nw), max(0, size - nw))
    ty = rng.uniform(min(0, size - nh), max(0, size - nh))
    flip = bool(hflip and rng.random() < 0.5)
    img, b = _affine(image, boxes, size, s, tx, ty, flip)
    b, l = _keep_visible(b, labels, size, size)
    return img, b, l


def mosaic(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int, rng: np.random.Generator,
           scale_range=(0.5, 1.5), hflip=True):
    """Four images, each randomly placed in its own quadrant around a random centre of a size x size canvas."""
    cx, cy = (int(rng.uniform(0.3, 0.7) * size) for _ in range(2))
    canvas = np.full((size, size, 3), GRAY, np.uint8)
    all_b, all_l = [], []
    cells = [(0, 0, cx, cy), (cx, 0, size - cx, cy), (0, cy, cx, size - cy), (cx, cy, size - cx, size - cy)]
    for (image, boxes, labels), (x0, y0, cw, ch) in zip(samples, cells):
        if cw < 8 or ch < 8:
            continue
        side = max(cw, ch)
        img, b, l = random_placement(image, boxes, labels, side, rng, scale_range, hflip)
        img, b = img[:ch, :cw], b.copy()
        b, l = _keep_visible(b, l, cw, ch)
        canvas[y0:y0 + ch, x0:x0 + cw] = img
        b[:, [0, 2]] += x0
        b[:, [1, 3]] += y0
        all_b.append(b)
        all_l.append(l)
    boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_l) if all_l else np.zeros((0,), np.int64)
    return canvas, boxes, labels


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    if strength <= 0:
        return image
    x = image.astype(np.float32)
    x *= rng.uniform(1 - strength, 1 + strength)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean  # contrast
    gray = x.mean(-1, keepdims=True)
    x = (x - gray) * rng.uniform(1 - strength, 1 + strength) + gray  # saturation
    return x.clip(0, 255).astype(np.uint8)


def build(cfg, *, num_classes: int, **_) -> CenterNet:
    """The registry's builder for CenterNetConfig (luban.models.detector_config)."""
    return CenterNet(num_classes, cfg.widths, cfg.head_channels, cfg.output_stride, cfg.blocks)
