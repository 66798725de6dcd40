"""Image classification: an image (file, folder-per-class, CSV/JSONL of paths, or decoded arrays) -> label.

Every image is decoded once, resized (shorter side to `resize`) and center-cropped to a square working image that
is kept as uint8. Evaluation center-crops `size` from it; training augments whole uint8 batches with tensor ops
(random resized crop + flip in one `grid_sample`, colour jitter, RandAugment, mixup / cutmix), so epochs after the
first never decode or resize a file again.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import luban.processor as processor
from luban.capabilities import Evaluates, Explains, Predicts, TaskPredictor
from luban.config import RunConfig
from luban.data.cleaning import label_text, missing_label_error
from luban.data.images import (IMAGE_SUFFIXES, ImageInputs, list_image_folder, list_images, load_one,
                               resolve_image_paths)
from luban.data.readers import LINE, resolve_column
from luban.errors import ConfigError, DataError, skippable
from luban.evaluate.metrics import classification_metrics, scalars
from luban.models.registry import build_model
from luban.tasks.base import (Batches, ExportSpec, LabelMap, Task, classifier_metrics, read_file, run_model,
                              sample_rows, split_labelled)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- decoding


def working_side(cfg: RunConfig) -> int:
    im = cfg.preprocessing.image
    return im.resize or max(im.size, int(round(im.size * 256 / 224)))


def center_crop(w: torch.Tensor, size: int) -> torch.Tensor:
    side = w.shape[-1]
    if side == size:
        return w
    o = (side - size) // 2
    return w[..., o:o + size, o:o + size].contiguous()


# ----------------------------------------------------------------------------------------------- augmentation


def _affine_sample(x: torch.Tensor, theta: torch.Tensor, size: int, padding: str = "border") -> torch.Tensor:
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _geometric(x: torch.Tensor, size: int, aug, g: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip as one affine resample (or the eval center crop + flip)."""
    b, side = x.shape[0], x.shape[-1]
    if aug.random_resized_crop is not None:
        lo, hi = aug.random_resized_crop
        area = _u(b, lo, hi, g)
        logr = _u(b, math.log(3 / 4), math.log(4 / 3), g)
        hw = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
        hh = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - hw)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - hh)
    else:
        if not aug.hflip:
            return center_crop(x, size)
        hw = hh = torch.full((b,), size / side)
        cx = cy = torch.zeros(b)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = hw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = hh, cy
    return _affine_sample(x, theta, size)


def _color_jitter(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x * _u(b, 1 - s, 1 + s, g).view(b, 1, 1, 1)  # brightness
    m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * _u(b, 1 - s, 1 + s, g).view(b, 1, 1, 1) + m  # contrast
    if x.shape[1] == 3:
        gr = _gray(x)
        x = (x - gr) * _u(b, 1 - s, 1 + s, g).view(b, 1, 1, 1) + gr  # saturation
    return x.clamp(0, 1)


def _ra_affine(x: torch.Tensor, kind: str, mag: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if kind == "rotate":
        a = sign * math.radians(30 * mag)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    elif kind == "shear_x":
        theta[:, 0, 1] = sign * 0.3 * mag
    elif kind == "shear_y":
        theta[:, 1, 0] = sign * 0.3 * mag
    elif kind == "translate_x":
        theta[:, 0, 2] = sign * 0.9 * mag  # up to ~45% of the image at full magnitude
    else:
        theta[:, 1, 2] = sign * 0.9 * mag
    return _affine_sample(x, theta, x.shape[-1], padding="zeros")


def _ra_op(x: torch.Tensor, op: str, mag: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    if op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return _ra_affine(x, op, mag, g)
    if op in ("brightness", "contrast", "color"):
        f = (1 + torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) * 0.9 * mag).view(b, 1, 1, 1)
        if op == "brightness":
            return (x * f).clamp(0, 1)
        ref = _gray(x).mean(dim=(1, 2, 3), keepdim=True) if op == "contrast" else _gray(x)
        return ((x - ref) * f + ref).clamp(0, 1)
    if op == "solarize":
        t = 1 - mag
        return torch.where(x >= t, 1 - x, x)
    if op == "posterize":
        bits = max(1, 8 - int(round(4 * mag)))
        q = 2 ** (8 - bits)
        return torch.floor(x * 255 / q) * q / 255
    if op == "autocontrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)
    if op == "invert":
        return 1 - x
    return x  # identity


RA_OPS = ["identity", "autocontrast", "rotate", "solarize", "color", "posterize", "contrast", "brightness",
          "shear_x", "shear_y", "translate_x", "translate_y"]


def _randaugment(x: torch.Tensor, n_ops: int, g: torch.Generator, mag: float = 9 / 30) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): n random ops per image at a fixed magnitude, batched by op."""
    b = x.shape[0]
    for _ in range(n_ops):
        choice = torch.randint(len(RA_OPS), (b,), generator=g)
        out = x.clone()
        for k, op in enumerate(RA_OPS):
            sel = (choice == k).nonzero().flatten()
            if len(sel) and op != "identity":
                out[sel] = _ra_op(x[sel], op, mag, g)
        x = out
    return x


def _mix(x: torch.Tensor, y: torch.Tensor, aug, rng: np.random.Generator, g: torch.Generator):
    """mixup / cutmix (one of them per batch when both are on): returns x, labels_b, lam."""
    modes = [m for m, a in (("mixup", aug.mixup), ("cutmix", aug.cutmix)) if a > 0]
    if not modes or x.shape[0] < 2:
        return x, None, 1.0
    mode = modes[int(rng.integers(len(modes)))]
    alpha = aug.mixup if mode == "mixup" else aug.cutmix
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g)
    if mode == "mixup":
        return lam * x + (1 - lam) * x[perm], y[perm], lam
    h, w = x.shape[-2:]
    rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(0, cy - rh // 2), min(h, cy + rh // 2)
    x0, x1 = max(0, cx - rw // 2), min(w, cx + rw // 2)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, y[perm], lam


# ----------------------------------------------------------------------------------------------- models


def build_image_model(cfg: RunConfig, num_classes: int, in_channels: int, backbone_dir: str | None = None):
    return build_model(cfg.model, cfg.task, num_classes=num_classes, in_channels=in_channels,
                       image_size=cfg.preprocessing.image.size, backbone_dir=backbone_dir)



# ----------------------------------------------------------------------------------------------- data


class ImageSet:
    """One split: working images (N x C x S x S uint8), eval crops, label ids and where each image came from."""

    def __init__(self, frame: pd.DataFrame, working: torch.Tensor, size: int, labels: list[int] | None):
        self.frame, self.working, self.labels = frame, working, labels
        self.eval = center_crop(working, size)
        self.names = [_name(v, line) for v, line in zip(frame["image"], frame[LINE])]

    def __len__(self):
        return self.working.shape[0]


def _name(value, line) -> str:
    return str(value) if isinstance(value, (str, Path)) else f"#{line}"


def _table_frame(frame: pd.DataFrame, cfg: RunConfig, need_label: bool, root: Path | None) -> pd.DataFrame:
    """A listing (folder-per-class, CSV/JSONL of paths, or a builtin frame of arrays) -> image, label, _line."""
    cols = cfg.data.columns
    src = frame.attrs.get("source", "data")
    is_folder = Path(src).is_dir() if src and not src.startswith("builtin:") else False
    image_ref = "image" if is_folder or cols.image is None else cols.image
    if cols.image is None and "image" not in frame.columns and not is_folder:
        raise ConfigError(f"data.columns.image: {src} has no 'image' column; set data.columns.image to the "
                          "column holding image paths")
    image_col = resolve_column(frame, image_ref, "image")
    out = pd.DataFrame({LINE: frame[LINE].to_numpy()})
    values = list(frame[image_col])
    if values and not isinstance(values[0], (np.ndarray, str)) and values[0] is not None:
        out["image"] = values  # PIL images or tensors
    elif values and isinstance(values[0], np.ndarray):
        out["image"] = values
    else:
        out["image"] = [str(p) for p in resolve_image_paths(frame, image_col, None if is_folder else root)]
    if need_label:
        label_ref = "label" if is_folder or cols.label is None else cols.label
        label_col = resolve_column(frame, label_ref, "label")
        labels = [label_text(v, cfg.data.clean) for v in frame[label_col]]
        out["label"] = labels
        missing = out["label"].isna()
        if missing.any():
            row = out[missing].iloc[0]
            if not cfg.data.clean.drop_missing_label:
                raise missing_label_error(src, row[LINE], label_col, frame[label_col][missing.to_numpy()].iloc[0])
            print(f"{src}: dropped {int(missing.sum())} rows without a label (first: line {row[LINE]})",
                  flush=True)
            out = out[~missing].reset_index(drop=True)
    out.attrs = {"source": src, "label_column": str(label_col) if need_label else None}
    return out


def _decode_frame(frame: pd.DataFrame, mode: str, side: int, skip_bad: bool, split: str) -> tuple[pd.DataFrame, dict]:
    """Decode every image once into the frame's `pixels` column; bad files raise or are dropped with a count."""
    pixels, keep, bad = [], [], []
    for i, (value, line) in enumerate(zip(frame["image"], frame[LINE])):
        try:
            pixels.append(load_one(value, mode, side, _name(value, line)))
            keep.append(i)
        except DataError as e:
            if not skip_bad:
                raise skippable(e) from None
            bad.append(str(e))
    src = frame.attrs.get("source", split)
    out = frame.iloc[keep].reset_index(drop=True)
    out.attrs = dict(frame.attrs)
    out["pixels"] = pixels
    report = {"split": split, "source": src, "rows_in": len(frame),
              "dropped": {"unreadable images": len(bad)} if bad else {}}
    if bad:
        print(f"{split}: skipped {len(bad)} unreadable image(s) of {len(frame)} (data.skip_bad_files); first: "
              f"{bad[0]}", flush=True)
    if len(out) == 0:
        raise DataError(f"{src}: no readable images")
    return out, report


def _stack(frame: pd.DataFrame) -> torch.Tensor:
    return torch.from_numpy(np.stack(list(frame["pixels"]))) if len(frame) else torch.empty(0, dtype=torch.uint8)


def dataset_mean_std(eval_u8: torch.Tensor) -> tuple[list[float], list[float]]:
    c = eval_u8.shape[1]
    s, s2, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in eval_u8.split(1024):
        x = chunk.to(torch.float64) / 255
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp(min=1e-8).sqrt().clamp(min=1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _example(data: ImageSet):
    frame = data.frame
    return lambda i: {"line": int(frame[LINE].iloc[i]), "text": data.names[i], "index": i}


class _TrainBatches:
    """One epoch of augmented batches; each batch's randomness is seeded by (seed, epoch, batch) for exact resume."""

    def __init__(self, owner: "ImageClassificationTask", epoch: int):
        self.o, self.epoch = owner, epoch
        n, bs = len(owner.data["train"]), owner.cfg.trainer.batch_size
        order = np.random.default_rng([owner.cfg.seed, epoch]).permutation(n)
        self.batches = [order[i:i + bs] for i in range(0, n, bs)]
        if len(self.batches) > 1 and len(self.batches[-1]) < 2:  # BatchNorm cannot train on a single image
            self.batches.pop()

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for k, idx in enumerate(self.batches):
            yield self.o.augment_batch(torch.as_tensor(idx), [self.o.cfg.seed, self.epoch, k])


# ----------------------------------------------------------------------------------------------- shared


class _ImageModelUser:
    """What training and inference share: the image geometry, normalization and running the model."""

    cfg: RunConfig
    device: torch.device
    meta: dict

    def _stats(self):
        c = self.meta["in_channels"]
        mean = torch.tensor(self.meta["mean"], dtype=torch.float32)
        std = torch.tensor(self.meta["std"], dtype=torch.float32)
        if mean.numel() != c:  # e.g. grayscale images into a 3-channel backbone
            mean, std = mean.mean().repeat(c), std.mean().repeat(c)
        return mean.view(1, c, 1, 1).to(self.device), std.view(1, c, 1, 1).to(self.device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float [0, 1] (B, C, H, W) on any device -> normalized channels_last input on the model's device."""
        if not hasattr(self, "_mean_std"):
            self._mean_std = self._stats()
        mean, std = self._mean_std
        x = x.to(self.device, non_blocking=True)
        if x.shape[1] != mean.shape[1]:
            x = x.expand(-1, mean.shape[1], -1, -1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def logits(self, model: nn.Module, eval_u8: torch.Tensor) -> torch.Tensor:
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size * 2
        n = eval_u8.shape[0]
        batches = [{"index": torch.arange(i, min(n, i + bs))} for i in range(0, n, bs)]

        def forward(m, batch):
            return m(self.pixels(eval_u8[batch["index"]]))

        return run_model(model, batches, forward, n)

    def pixels(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) eval crops -> the model's normalized input."""
        return self.normalize(u8.to(self.device).float().div_(255))

    def probabilities(self, model: nn.Module, eval_u8: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(model, eval_u8), dim=-1)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(["pixels"], ["logits"], {"pixels": {0: "batch"}, "logits": {0: "batch"}})


# ----------------------------------------------------------------------------------------------- training


class ImageClassificationTask(Task, _ImageModelUser):
    name = "image_classification"
    main_metric = "accuracy"

    def prefers_bf16_on_cpu(self):
        # measured on a CPU with AVX-512 BF16 (1 thread, 32 px, batch 128): ResNet [32,64,128] steps run 1.8x
        # faster under bf16 autocast (+ channels_last) than in fp32, with the same accuracy
        return True

    def prepare(self, frames):
        cfg = self.cfg
        im = cfg.preprocessing.image
        self.mode = "L" if im.grayscale else "RGB"
        self.side = working_side(cfg)
        tables = {}
        for split, frame in frames.items():
            if frame is None:
                tables[split] = None
                continue
            t = _table_frame(frame, cfg, True, cfg.data.image_root)  # train_limit is applied by read_frames
            decoded, rep = _decode_frame(t, self.mode, self.side, cfg.data.skip_bad_files, split)
            self.cleaning.append(rep)
            tables[split] = decoded
        self.label_col = tables["train"].attrs.get("label_column") or "label"
        self.label_map = LabelMap.fit(tables["train"], self.label_col)
        splits = split_labelled(cfg, tables)
        self.data = {s: ImageSet(f, _stack(f), im.size, self.label_map.encode(f, self.label_col))
                     for s, f in splits.items()}
        channels = 1 if im.grayscale else 3
        if im.normalize == "dataset":
            mean, std = dataset_mean_std(self.data["train"].eval)
        elif im.normalize == "none":
            mean, std = [0.0] * channels, [1.0] * channels
        elif im.normalize == "backbone" and cfg.model.pretrained:
            from luban.models.pretrained_image import backbone_mean_std, resolve_image_backbone

            mean, std = backbone_mean_std(resolve_image_backbone(cfg.model.path, cfg.model.allow_download),
                                          cfg.model.allow_download)
        else:  # imagenet (and "backbone" for a model without one)
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        if len(mean) != channels:
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        self.meta = {"size": im.size, "resize": self.side, "mode": self.mode, "channels": channels,
                     "in_channels": channels, "normalize": im.normalize, "mean": mean, "std": std}

    def data_summary(self):
        return {"splits": {s: len(d) for s, d in self.data.items()}, "labels": self.label_map.labels,
                "image": {k: self.meta[k] for k in ("size", "resize", "channels", "mean", "std")},
                "cleaning": self.cleaning}

    def build_model(self):
        model = build_image_model(self.cfg, len(self.label_map.labels), self.meta["channels"])
        self.meta["in_channels"] = getattr(model, "in_channels", self.meta["channels"])
        if hasattr(self, "_mean_std"):
            del self._mean_std
        return model.to(memory_format=torch.channels_last)

    def train_batches(self, epoch):
        return _TrainBatches(self, epoch)

    def augment_batch(self, idx: torch.Tensor, seed: list[int]) -> dict:
        aug = self.cfg.preprocessing.image.augment
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        rng = np.random.default_rng(seed)
        d = self.data["train"]
        x = d.working[idx].float().div_(255)
        x = _geometric(x, self.cfg.preprocessing.image.size, aug, g)
        if aug.color_jitter > 0:
            x = _color_jitter(x, aug.color_jitter, g)
        if aug.randaugment > 0:
            x = _randaugment(x, aug.randaugment, g)
        y = torch.as_tensor([d.labels[i] for i in idx.tolist()])
        x, y_b, lam = _mix(x, y, aug, rng, g)
        batch = {"x": x, "labels": y, "size": len(idx), "index": idx}
        if y_b is not None:
            batch.update(labels_b=y_b, lam=lam)
        return batch

    def batch_logits(self, model, batch):
        return model(self.normalize(batch["x"]))

    def batch_labels(self, batch):
        return batch["labels"].to(self.device)

    def split_inputs(self, split, limit=None, batch_size=32):
        rows = sample_rows(len(self.data[split]), limit, self.cfg.seed)
        ev = self.data[split].eval
        return [(self.pixels(ev[rows[i:i + batch_size]]).contiguous(),) for i in range(0, len(rows), batch_size)]

    def split_logits(self, model, split):
        return self.logits(model, self.data[split].eval)

    def loss_batches(self, split):
        d = self.data[split]  # the evaluation crops, not augmented
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size * 2

        def collate(idx):
            return {"x": d.eval[torch.as_tensor(idx)].float().div_(255), "size": len(idx),
                    "labels": torch.as_tensor([d.labels[i] for i in idx])}

        return Batches([list(range(i, min(len(d), i + bs))) for i in range(0, len(d), bs)], collate)

    def loss(self, model, batch):
        logits = self.batch_logits(model, batch)
        ls = self.cfg.trainer.label_smoothing
        y = batch["labels"].to(self.device)
        loss = F.cross_entropy(logits, y, label_smoothing=ls)
        if "labels_b" in batch:
            lam = batch["lam"]
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits, batch["labels_b"].to(self.device),
                                                            label_smoothing=ls)
        return loss

    def evaluate(self, model, split, detailed=False):
        d = self.data[split]  # the loss is self.loss over the evaluation crops (no mixup there)
        return classifier_metrics(self.logits(model, d.eval), d.labels, self.label_map.labels,
                                  self.cfg.evaluation.worst_examples, _example(d), detailed,
                                  self.cfg.trainer.label_smoothing)

    def split_lines(self, split):
        return self.data[split].frame[LINE].tolist()

    def baseline(self):
        """Logistic regression on 8x8 downsampled, standardized pixels."""
        import time

        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def feats(d: ImageSet):
            x = d.eval.float() / 255
            return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy() if len(d) else np.zeros((0, 1))

        t0 = time.perf_counter()
        tr = self.data["train"]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300, random_state=self.cfg.seed))
        model.fit(feats(tr), tr.labels)
        out = {"name": "logistic regression on 8x8 pixels", "train_seconds": time.perf_counter() - t0}
        for split in ("validation", "test"):
            d = self.data[split]
            out[split] = scalars(classification_metrics(d.labels, model.predict(feats(d)), self.label_map.labels))
        return out

    def save(self, folder, model):
        processor.save(folder, self.cfg.task, labels=self.label_map, image=self.meta)
        if self.cfg.model.pretrained:
            model.backbone.config.save_pretrained(str(folder / "backbone"))

    def report_sections(self, workdir, final):
        return [image_grid("Most confidently misclassified test images", final["test"].get("worst_examples", []),
                           self.data["test"].eval)]


def image_grid(title: str, examples: list[dict], eval_u8: torch.Tensor, max_items: int = 24) -> str:
    import html

    from PIL import Image

    from luban.evaluate.report import png_data_uri

    if not examples:
        return ""
    cells = []
    for e in examples[:max_items]:
        arr = eval_u8[e["index"]].permute(1, 2, 0).numpy()
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        if max(im.size) < 96:  # small images: scale up (nearest) so they can be seen
            k = max(1, 96 // max(im.size))
            im = im.resize((im.size[0] * k, im.size[1] * k), Image.NEAREST)
        cells.append(f'<figure style="margin:.3rem;width:112px;font-size:11px"><img src="{png_data_uri(im)}" '
                     f'style="max-width:112px" alt="{html.escape(e["text"])}"><figcaption>true '
                     f'<b>{html.escape(e["label"])}</b><br>predicted <b class=lose>{html.escape(e["predicted"])}'
                     f'</b> ({e["confidence"]:.2f})<br><span class=muted>{html.escape(Path(e["text"]).name)}'
                     f'</span></figcaption></figure>')
    return (f"<h2>{html.escape(title)}</h2><div style='display:flex;flex-wrap:wrap'>" + "".join(cells) +
            "</div>")


# ----------------------------------------------------------------------------------------------- inference


class ImageClassificationPredictor(ImageInputs, TaskPredictor, _ImageModelUser, Predicts, Evaluates, Explains):
    input_kind = "image"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "image_classification"
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        saved = processor.load(folder)
        self.meta = saved["image"]
        self.label_map = LabelMap(saved["labels"])
        backbone = str(folder / "backbone") if cfg.model.pretrained else None
        self.model = self.load_model(lambda: build_image_model(cfg, len(self.label_map.labels), self.meta["channels"],
                                                               backbone))
        self.model.to(memory_format=torch.channels_last)

    def export_hf(self, folder):
        if not self.cfg.model.pretrained:
            return False
        from luban.models.hf_classifier import save_image_classifier

        save_image_classifier(self.model, self.label_map.labels, self.meta, folder)
        return True

    def class_labels(self):
        return self.label_map.labels

    def _working(self, items: list, names: list[str]) -> torch.Tensor:
        arrs = [load_one(v, self.meta["mode"], self.meta["resize"], n) for v, n in zip(items, names)]
        return center_crop(torch.from_numpy(np.stack(arrs)), self.meta["size"])

    def predict_inputs(self, inputs, top_k: int | None = None) -> list[dict]:
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if not inputs:
            return []
        names = [str(v) if isinstance(v, (str, Path)) else f"input {i + 1}" for i, v in enumerate(inputs)]
        probs = self.probabilities(self.model, self._working(list(inputs), names))
        out = []
        labels = self.label_map.labels
        for name, row in zip(names, probs.tolist()):
            order = sorted(range(len(row)), key=lambda j: -row[j])
            out.append({"image": name, "label": labels[order[0]], "score": round(row[order[0]], 6),
                        "probabilities": {labels[j]: round(row[j], 6) for j in order[: top_k or len(row)]}})
        return out

    def explain(self, inputs, target=None):
        from luban.explain import explain_images, needs_torch

        needs_torch(self)
        return explain_images(self, inputs if isinstance(inputs, (list, tuple)) else [inputs], target)

    def read_inputs(self, path):
        p = Path(path)
        if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES:
            return list_images(p)
        frame = read_file(self.cfg, p)
        return [Path(v) for v in _table_frame(frame, self.cfg, False, None)["image"]]

    def evaluate_file(self, path):
        p = Path(path)
        frame = list_image_folder(p) if p.is_dir() else read_file(self.cfg, p)
        t = _table_frame(frame, self.cfg, True, None)
        t, _ = _decode_frame(t, self.meta["mode"], self.meta["resize"], self.cfg.data.skip_bad_files, "evaluate")
        data = ImageSet(t, _stack(t), self.meta["size"], self.label_map.encode(t, t.attrs.get("label_column")))
        return classifier_metrics(self.logits(self.model, data.eval), data.labels, self.label_map.labels,
                                  self.cfg.evaluation.worst_examples, _example(data),
                                  label_smoothing=self.cfg.trainer.label_smoothing)
