"""Object detection: image -> boxes with labels and scores (CenterNet-style detector trained from scratch).

Annotations: Pascal VOC XML folder, COCO JSON or a CSV of boxes (see luban.data.boxes). Images are letterboxed to
preprocessing.image.size; training samples are randomly zoomed / translated / cropped / mirrored / color-jittered and
mixed into 4-image mosaics, boxes following every transform. Metrics: COCO mAP@0.5, mAP@[.5:.95], mAP@0.75, per class.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import luban.processor as processor
from luban.capabilities import Evaluates, Predicts, TaskPredictor
from luban.config import RunConfig
from luban.data.boxes import Annotated, clip_boxes, read_annotations
from luban.data.images import IMAGE_SUFFIXES, decode_image, list_images
from luban.errors import DataError, skippable
from luban.evaluate.detection import detection_metrics
from luban.models import detector as det
from luban.tasks.base import Batches, ExportSpec, Task, sample_rows
from luban.models.registry import build_model

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def build_detector(cfg: RunConfig, num_classes: int) -> det.CenterNet:
    return build_model(cfg.model, cfg.task, num_classes=num_classes)


def _cache_side(cfg: RunConfig) -> int:
    """Images are kept downscaled so that the largest training zoom still has full resolution."""
    return int(math.ceil(cfg.preprocessing.image.size * max(1.0, cfg.model.scale_range[1])))


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return image, 1.0
    im = Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    return np.asarray(im), s


class _Images:
    """One split: downscaled images (uint8) with their boxes in the downscaled frame."""

    def __init__(self, items: list[Annotated], label_index: dict[str, int], max_side: int, skip_bad: bool):
        self.items, self.images, self.scales, self.boxes, self.labels, self.skipped = [], [], [], [], [], []
        for item in items:
            try:
                arr = decode_image(item.path)
            except DataError as e:
                if not skip_bad:
                    raise skippable(e) from None
                self.skipped.append(str(item.path))
                continue
            clip_boxes(item, arr.shape[1], arr.shape[0])
            small, s = _downscale(arr, max_side)
            for lab, where in zip(item.labels, item.where):
                if lab not in label_index:
                    raise DataError(f"{where}: field 'class': class {lab!r} was not seen in training (known: "
                                    f"{', '.join(list(label_index)[:20])})")
            self.items.append(item)
            self.images.append(small)
            self.scales.append(s)
            self.boxes.append(item.boxes.astype(np.float32) * s)
            self.labels.append(np.asarray([label_index[l] for l in item.labels], np.int64))

    def __len__(self):
        return len(self.images)

    def ground_truth(self):
        return [(it.boxes, lab) for it, lab in zip(self.items, self.labels)]


class _DetectorUser:
    """What training and inference share: normalizing, letterboxed batches, decoding back to the original image."""

    cfg: RunConfig
    device: torch.device
    mean: np.ndarray
    std: np.ndarray
    labels: list[str]

    def to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
        x = (x - torch.as_tensor(self.mean).view(1, 3, 1, 1)) / torch.as_tensor(self.std).view(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def detect(self, model, images: list[np.ndarray], scales: list[float]) -> list[tuple]:
        """Boxes in the frame each image had before `scales` (the original image), per image."""
        size, m = self.cfg.preprocessing.image.size, self.cfg.model
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size
        model.eval()
        out = []
        for i in range(0, len(images), bs):
            boxed = [det.letterbox(im, size) for im in images[i:i + bs]]
            x = self.to_tensor([b[0] for b in boxed]).to(self.device)
            maps = {k: v.float() for k, v in model(x).items()}  # bf16 / ONNX runtimes included
            res = det.decode(maps, m.output_stride, m.score_threshold, m.nms_iou, m.max_detections)
            for (_, lb_s), s0, (boxes, scores, labels), im in zip(boxed, scales[i:i + bs], res, images[i:i + bs]):
                b = boxes.numpy() / (lb_s * s0)  # letterbox and cache scale -> original pixels
                h, w = im.shape[0] / s0, im.shape[1] / s0
                b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
                b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
                out.append((b, scores.numpy(), labels.numpy()))
        return out

    def export_spec(self) -> ExportSpec:
        maps = {0: "batch", 2: "rows", 3: "columns"}
        return ExportSpec(["pixels"], ["heatmap", "wh", "offset"],
                          {"pixels": {0: "batch"}, "heatmap": maps, "wh": maps, "offset": maps}, outputs_dict=True)


def draw_boxes(image: np.ndarray, boxes, labels: list[str], scores=None, color=(230, 40, 40), base=None):
    """A PIL image with boxes (and "label score" captions) drawn; `base` draws onto an existing PIL image."""
    from PIL import Image, ImageDraw

    im = base if base is not None else Image.fromarray(image).convert("RGB")
    d = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 250))
    for k, b in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in b)
        d.rectangle([x0, y0, x1, y1], outline=color, width=width)
        text = labels[k] + (f" {scores[k]:.2f}" if scores is not None else "")
        tw = d.textlength(text)
        d.rectangle([x0, max(0, y0 - 12), x0 + tw + 4, max(0, y0 - 12) + 12], fill=color)
        d.text((x0 + 2, max(0, y0 - 12)), text, fill=(255, 255, 255))
    return im


def _metrics(gt, preds, labels, max_det) -> dict:
    return detection_metrics(gt, preds, labels, max_det)


class ObjectDetectionTask(Task, _DetectorUser):
    name = "object_detection"
    # COCO's primary metric picks the best checkpoint: on a small validation set map50 saturates at 1.0 early
    main_metric = "map"

    def prefers_bf16_on_cpu(self):
        return True  # conv nets run ~1.8x faster under bf16 autocast on AVX-512 BF16 / AMX CPUs; losses stay fp32

    def read_frames(self):
        d = self.cfg.data
        if d.builtin is not None:
            raise DataError(f"data.builtin {d.builtin!r}: there are no built-in detection datasets; give data.train")
        frames = {}
        for split in ("train", "validation", "test"):
            p = getattr(d, split)
            frames[split] = read_annotations(p, d.annotation_format, d.image_root) if p is not None else None
        if d.train_limit is not None:
            frames["train"] = frames["train"][: d.train_limit]
        return frames

    def prepare(self, frames):
        cfg = self.cfg
        rng = np.random.default_rng(cfg.data.split.seed if cfg.data.split.seed is not None else cfg.seed)
        train = list(frames["train"])
        order = rng.permutation(len(train))
        splits = {}
        for split, frac in (("test", cfg.data.split.test), ("validation", cfg.data.split.validation)):
            if frames[split] is not None:
                splits[split] = frames[split]
                continue
            if len(train) < 4:
                raise DataError(f"{cfg.data.train}: only {len(train)} images; too few to split off a {split} set "
                                f"(give data.{split})")
            n = max(1, round(len(frames['train']) * frac))
            hold, order = order[:n], order[n:]
            splits[split] = [train[i] for i in sorted(hold)]
        splits["train"] = [train[i] for i in sorted(order)]
        self.class_names = sorted({l for it in splits["train"] for l in it.labels})
        if not self.class_names:
            raise DataError(f"{cfg.data.train}: the training images have no boxes")
        index = {l: i for i, l in enumerate(self.class_names)}
        side = _cache_side(cfg)
        self.data = {s: _Images(splits[s], index, side, cfg.data.skip_bad_files)
                     for s in ("train", "validation", "test")}
        for s, d in self.data.items():
            if d.skipped:
                print(f"skipped {len(d.skipped)} unreadable {s} image(s), e.g. {d.skipped[0]}", flush=True)
            if len(d) == 0:
                raise DataError(f"the {s} split has no readable images")
        norm = cfg.preprocessing.image.normalize
        if norm == "dataset":
            px = np.concatenate([im.reshape(-1, 3)[::97] for im in self.data["train"].images]).astype(np.float32)
            self.mean, self.std = (px.mean(0) / 255).tolist(), (px.std(0) / 255 + 1e-3).tolist()
        elif norm == "none":
            self.mean, self.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        else:
            self.mean, self.std = IMAGENET
        self._preds: dict[str, list] = {}
        self._eval_cache: dict[str, list] = {}

    def data_summary(self):
        return {"splits": {s: len(d) for s, d in self.data.items()}, "labels": self.class_names,
                "boxes": {s: int(sum(len(b) for b in d.boxes)) for s, d in self.data.items()},
                "skipped": {s: len(d.skipped) for s, d in self.data.items() if d.skipped}}

    def build_model(self):
        return build_detector(self.cfg, len(self.class_names)).to(memory_format=torch.channels_last)

    # training ------------------------------------------------------------------------------------
    def _sample(self, i: int, rng: np.random.Generator):
        d, m, aug = self.data["train"], self.cfg.model, self.cfg.preprocessing.image.augment
        size = self.cfg.preprocessing.image.size
        if m.mosaic > 0 and rng.random() < m.mosaic:
            picks = [i] + list(rng.integers(0, len(d), 3))
            img, boxes, labels = det.mosaic([(d.images[j], d.boxes[j], d.labels[j]) for j in picks], size, rng,
                                            m.scale_range, aug.hflip)
        else:
            img, boxes, labels = det.random_placement(d.images[i], d.boxes[i], d.labels[i], size, rng,
                                                      m.scale_range, aug.hflip)
        return det.color_jitter(img, aug.color_jitter, rng), boxes, labels

    def _collate(self, epoch: int):
        size, stride = self.cfg.preprocessing.image.size, self.cfg.model.output_stride

        def collate(idx):
            rng = np.random.default_rng([self.cfg.seed, epoch] + [int(i) for i in idx])
            imgs, heats, boxes, weights = [], [], [], []
            for i in idx:
                img, b, l = self._sample(i, rng)
                h, bt, w = det.build_targets(b, l, size, stride, len(self.class_names))
                imgs.append(img)
                heats.append(h)
                boxes.append(bt)
                weights.append(w)
            return {"images": self.to_tensor(imgs), "heatmap": torch.from_numpy(np.stack(heats)),
                    "boxes": torch.from_numpy(np.stack(boxes)), "weight": torch.from_numpy(np.stack(weights)),
                    "size": len(idx)}

        return collate

    def train_batches(self, epoch):
        n, bs = len(self.data["train"]), self.cfg.trainer.batch_size
        order = np.random.default_rng([self.cfg.seed, epoch, 7]).permutation(n)
        batches = [order[i:i + bs].tolist() for i in range(0, n, bs)]
        if len(batches) > 1 and len(batches[-1]) < max(2, bs // 4):  # a tiny last batch upsets BatchNorm
            batches[-2] += batches.pop()
        return Batches(batches, self._collate(epoch))

    def loss(self, model, batch):
        dev = self.device
        out = model(batch["images"].to(dev))
        return det.detection_loss(out, batch["heatmap"].to(dev), batch["boxes"].to(dev), batch["weight"].to(dev),
                                  self.cfg.model.output_stride, giou_weight=self.cfg.model.giou_weight)

    # evaluation ----------------------------------------------------------------------------------
    def evaluate(self, model, split, detailed=False):
        d = self.data[split]
        preds = self.detect(model, d.images, d.scales)
        self._preds[split] = preds
        m = _metrics(d.ground_truth(), preds, self.class_names, self.cfg.model.max_detections)
        if detailed:
            return m
        return {k: m[k] for k in ("map50", "map", "map75")}

    def baseline(self):
        return None

    def split_inputs(self, split, limit=None, batch_size=32):
        """Letterboxed, normalized images (what detect() feeds the model) for a sample of a split."""
        images, size = self.data[split].images, self.cfg.preprocessing.image.size
        rows = sample_rows(len(images), limit, self.cfg.seed)
        return [(self.to_tensor([det.letterbox(images[j], size)[0] for j in rows[i:i + batch_size]]),)
                for i in range(0, len(rows), batch_size)]

    def save(self, folder, model):
        processor.save(folder, self.cfg.task, labels=self.class_names,
                       detector={"mean": list(map(float, self.mean)), "std": list(map(float, self.std)),
                                 "num_classes": len(self.class_names)})

    def report_sections(self, workdir, final):
        from html import escape

        from luban.evaluate.report import png_data_uri

        test = final.get("test", {})
        rows = "".join(
            f"<tr><td class=l>{escape(c)}</td><td>{_f(v['ap50'])}</td><td>{_f(v['ap'])}</td><td>{_f(v['ap75'])}</td>"
            f"<td>{v['support']}</td></tr>" for c, v in test.get("per_class", {}).items())
        parts = [f"<h2>Detection results (test)</h2><p>mAP@0.5 <b>{test.get('map50', 0):.4f}</b> · "
                 f"mAP@[.5:.95] <b>{test.get('map', 0):.4f}</b> · mAP@0.75 {test.get('map75', 0):.4f}</p>"
                 "<table><tr><th class=l>class</th><th>AP50</th><th>AP</th><th>AP75</th><th>boxes</th></tr>"
                 f"{rows}</table>"]
        preds = self._preds.get("test")
        d = self.data["test"]
        if preds:
            cells = []
            for i in range(min(6, len(d))):
                s = d.scales[i]
                im = draw_boxes(d.images[i], d.boxes[i], [self.class_names[k] for k in d.labels[i]], color=(30, 160, 60))
                b, sc, lab = preds[i]
                keep = sc >= 0.3
                im = draw_boxes(None, b[keep] * s, [self.class_names[k] for k in lab[keep]], sc[keep], base=im)
                im.thumbnail((320, 320))
                cells.append(f'<figure style="margin:0"><img src="{png_data_uri(im)}" alt="test image {i + 1}">'
                             f"<figcaption class=muted>{escape(d.items[i].path.name)}</figcaption></figure>")
            parts.append("<h2>Test images</h2><p class=muted>green: ground truth · red: predictions with score "
                         "&ge; 0.3</p><div class=charts>" + "".join(cells) + "</div>")
        return parts


def _f(v):
    return "–" if v is None else f"{v:.4f}"


class ObjectDetectionPredictor(TaskPredictor, _DetectorUser, Predicts, Evaluates):
    input_kind = "image"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "object_detection"
    exportable = True

    def __init__(self, cfg, folder, device, backend="torch"):
        super().__init__(cfg, folder, device, backend)
        saved = processor.load(folder)
        meta, self.class_names = saved["detector"], saved["labels"]
        self.mean, self.std = meta["mean"], meta["std"]
        self.model = self.load_model(lambda: build_detector(cfg, len(self.class_names)))

    def class_labels(self):
        return self.class_names

    def read_inputs(self, path):
        """Images: one file, a folder of them, or the images an annotation file (CSV / COCO JSON) lists."""
        path = Path(path)
        if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
            items = read_annotations(path, self.cfg.data.annotation_format, self.cfg.data.image_root)
            return [str(it.path) for it in items]
        return [str(p) for p in list_images(path)]

    def predict_inputs(self, inputs, draw: str | Path | None = None, **_) -> list[dict]:
        if isinstance(inputs, (str, Path)):
            inputs = self.read_inputs(inputs) if Path(inputs).is_dir() else [str(inputs)]
        side = _cache_side(self.cfg)
        results = []
        for k, item in enumerate(inputs):
            if isinstance(item, (str, Path)):
                name, arr = str(item), decode_image(item)
            elif isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3:
                name, arr = f"input {k + 1}", item.astype(np.uint8)
            else:
                raise DataError(f"input {k + 1}: expected an image path or an HxWx3 uint8 array, "
                                f"found {type(item).__name__}")
            small, s = _downscale(arr, side)
            b, sc, lab = self.detect(self.model, [small], [s])[0]
            boxes = [{"label": self.class_names[int(l)], "score": round(float(v), 4),
                      "box": [round(float(x), 1) for x in bb]} for bb, v, l in zip(b, sc, lab)]
            results.append({"image": name, "boxes": boxes})
            if draw is not None:
                out = Path(draw)
                out.mkdir(parents=True, exist_ok=True)
                keep = sc >= max(0.3, self.cfg.model.score_threshold)
                im = draw_boxes(arr, b[keep], [self.class_names[int(l)] for l in lab[keep]], sc[keep])
                stem = Path(name).stem if isinstance(item, (str, Path)) else f"input_{k + 1}"
                im.save(out / f"{stem}.png")
        return results

    def evaluate_file(self, path):
        items = read_annotations(path, self.cfg.data.annotation_format, self.cfg.data.image_root)
        data = _Images(items, {l: i for i, l in enumerate(self.class_names)}, _cache_side(self.cfg),
                       self.cfg.data.skip_bad_files)
        preds = self.detect(self.model, data.images, data.scales)
        return _metrics(data.ground_truth(), preds, self.class_names, self.cfg.model.max_detections)
