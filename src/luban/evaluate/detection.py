"""Detection metrics: COCO-style mAP@0.5, mAP@[.5:.95], mAP@0.75 and per-class AP, computed by pycocotools
(the reference implementation: 101-point interpolated precision, greedy matching by score, maxDets 100)."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from luban.errors import LubanError


def _cocoeval():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise LubanError("object detection metrics need pycocotools: pip install 'luban[vision]'") from None
    return COCO, COCOeval


def detection_metrics(ground_truth: list[tuple[np.ndarray, np.ndarray]],
                      predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      class_names: list[str], max_detections: int = 100) -> dict:
    """ground_truth[i] = (boxes (n,4) xyxy, labels (n,)); predictions[i] = (boxes, scores, labels), per image.

    Returns map50, map (mean over IoU .5:.05:.95), map75, and per_class {name: {ap50, ap, ap75, support}}.
    Classes with no ground-truth box in this split are left out of the means (and reported with AP null)."""
    COCO, COCOeval = _cocoeval()
    images, gts, dets = [], [], []
    support = np.zeros(len(class_names), np.int64)
    for i, (boxes, labels) in enumerate(ground_truth):
        images.append({"id": i})
        for b, lab in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels).reshape(-1)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(lab),
                        "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
            support[int(lab)] += 1
    for i, (boxes, scores, labels) in enumerate(predictions):
        for b, s, lab in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores).reshape(-1),
                             np.asarray(labels).reshape(-1)):
            dets.append({"image_id": i, "category_id": int(lab), "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    per_class = {name: {"ap50": None, "ap": None, "ap75": None, "support": int(support[k])}
                 for k, name in enumerate(class_names)}
    out = {"map50": 0.0, "map": 0.0, "map75": 0.0, "per_class": per_class}
    if not gts or not dets:
        for k, name in enumerate(class_names):
            if support[k]:
                per_class[name].update(ap50=0.0, ap=0.0, ap75=0.0)
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts,
                           "categories": [{"id": k, "name": n} for k, n in enumerate(class_names)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max(100, max_detections)]
        ev.params.catIds = list(range(len(class_names)))
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [iou thresholds, recall points, classes, area ranges, max dets]

    def ap(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else None

    aps = {"ap": [], "ap50": [], "ap75": []}
    for k, name in enumerate(class_names):
        if not support[k]:
            continue
        vals = {"ap": ap(prec[:, :, k, 0, -1]), "ap50": ap(prec[0, :, k, 0, -1]), "ap75": ap(prec[5, :, k, 0, -1])}
        vals = {key: (v if v is not None else 0.0) for key, v in vals.items()}
        per_class[name].update(vals)
        for key, v in vals.items():
            aps[key].append(v)
    out.update(map50=float(np.mean(aps["ap50"])), map=float(np.mean(aps["ap"])), map75=float(np.mean(aps["ap75"])))
    return out
