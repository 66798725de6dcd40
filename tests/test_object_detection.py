"""Object detection: annotation readers and their errors, NMS, mAP against a hand-computed case, and a tiny
detector that overfits synthetic rectangles end to end (train -> predict / draw -> evaluate)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from luban.data.boxes import read_annotations
from luban.errors import DataError
from luban.evaluate.detection import detection_metrics
from luban.models.detector import (CenterNet, batched_nms, build_targets, decode, mosaic, nms,
                                   random_placement)

HEADER = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]


def _shapes(folder: Path, n: int = 20, size: int = 64, seed: int = 0) -> list[list]:
    """n images with 1-2 filled rectangles: red ones are 'box', blue ones 'bar'. Returns CSV rows."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        im = Image.fromarray(rng.integers(90, 160, (size, size, 3), dtype=np.uint8))
        d = ImageDraw.Draw(im)
        taken = []
        for k in range(1 + i % 2):
            for _ in range(50):
                w, h = (int(v) for v in rng.integers(14, 28, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                if all(x + w <= a or a + c <= x or y + h <= b or b + e <= y for a, b, c, e in taken):
                    break
            taken.append((x, y, w, h))
            cls = "box" if (i + k) % 2 == 0 else "bar"
            d.rectangle([x, y, x + w - 1, y + h - 1], fill=(220, 30, 30) if cls == "box" else (30, 30, 220))
            rows.append([f"img{i}.png", size, size, cls, x, y, x + w, y + h])
        im.save(folder / f"img{i}.png")
    return rows


def _write(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def _voc(folder: Path, filename: str, size, objects) -> Path:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, (a, b, c, d) in objects)
    p = folder / (Path(filename).stem + ".xml")
    p.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                 f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>", encoding="utf-8")
    return p


# ----------------------------------------------------------------------------------------------- NMS / metrics


def test_nms_on_crafted_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0], [21, 20, 31, 30]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.3])
    # box 3 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU 0.61); 2 is kept; 4 vs 2: IoU 0.82 -> suppressed
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    # with a high threshold only the near-duplicate (0, IoU 0.9 with 3) goes
    assert nms(boxes, scores, 0.85).tolist() == [3, 1, 2, 4]
    # different classes never suppress each other
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert sorted(batched_nms(boxes, scores, labels, 0.5).tolist()) == [1, 2, 3, 4]
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_map_matches_hand_computed_case():
    # one image, 2 GT boxes; 3 predictions: TP (IoU 1, .9), FP (IoU 0, .8), then IoU 0.64 with GT 2 (.7)
    gt = [(np.array([[20, 20, 40, 40], [60, 60, 70, 70]], float), np.array([0, 0]))]
    pred = [(np.array([[20, 20, 40, 40], [0, 0, 10, 10], [60, 60, 68, 68]], float), np.array([0.9, 0.8, 0.7]),
             np.array([0, 0, 0]))]
    m = detection_metrics(gt, pred, ["thing"])
    # IoU >= .5/.55/.6: precision 1, .5, .67 at recall .5, .5, 1 -> interpolated 1 up to recall .5, 2/3 above;
    # COCO samples 101 recall points: 51 of them <= .5
    ap_low = (51 * 1 + 50 * 2 / 3) / 101
    # IoU >= .65 ... .95 (7 thresholds): the third prediction is a FP -> recall stops at .5
    ap_high = 51 / 101
    assert m["map50"] == pytest.approx(ap_low, abs=1e-6)
    assert m["map75"] == pytest.approx(ap_high, abs=1e-6)
    assert m["map"] == pytest.approx((3 * ap_low + 7 * ap_high) / 10, abs=1e-6)
    assert m["per_class"]["thing"]["ap50"] == pytest.approx(ap_low, abs=1e-6)
    # no predictions at all -> 0; a class without GT is left out
    z = detection_metrics(gt, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], ["thing", "other"])
    assert z["map50"] == 0 and z["per_class"]["other"]["ap50"] is None


def test_targets_and_decode_roundtrip():
    boxes = np.array([[8, 12, 40, 36], [44, 4, 60, 20]], np.float32)
    heat, box_t, weight = build_targets(boxes, np.array([0, 1]), 64, 4, 2)
    assert heat.shape == (2, 16, 16) and heat[0].max() == 1 and heat[1].max() == 1
    assert (heat == 1).sum() == 2 and weight.sum() == pytest.approx(2.0)
    # perfect head outputs decode back to the boxes
    logit = torch.from_numpy(np.where(heat == 1, 10.0, -10.0)).float()[None]
    wh = torch.zeros(1, 2, 16, 16)
    off = torch.zeros(1, 2, 16, 16)
    for b in boxes:
        cx, cy = (b[0] + b[2]) / 8, (b[1] + b[3]) / 8
        ix, iy = int(cx), int(cy)
        off[0, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
        wh[0, :, iy, ix] = torch.log(torch.tensor([(b[2] - b[0]) / 4, (b[3] - b[1]) / 4]))
    (pb, ps, pl), = decode({"heatmap": logit, "wh": wh, "offset": off}, 4, 0.5, 0.5, 10)
    order = pl.argsort()
    assert pl[order].tolist() == [0, 1]
    assert np.allclose(pb[order].numpy(), boxes, atol=1e-3)


def test_augmentation_keeps_boxes_on_the_objects():
    """After random zoom / crop / flip / mosaic, each kept box still frames its (uniquely coloured) rectangle."""
    img = np.full((80, 120, 3), 100, np.uint8)
    img[10:50, 20:60] = (250, 0, 0)
    boxes, labels = np.array([[20, 10, 60, 50]], np.float32), np.array([0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, b, l = random_placement(img, boxes, labels, 64, rng, (0.5, 1.5))
        for x0, y0, x1, y1 in b:
            inside = out[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]
            assert inside.size and (inside[..., 0] > 200).mean() > 0.9
    out, b, l = mosaic([(img, boxes, labels)] * 4, 64, rng)
    assert out.shape == (64, 64, 3) and len(b) == len(l)


# ----------------------------------------------------------------------------------------------- data errors


def test_csv_voc_coco_readers(tmp_path):
    rows = _shapes(tmp_path / "imgs", n=3)
    items = read_annotations(_write(tmp_path / "imgs" / "a.csv", rows))
    assert [it.path.name for it in items] == ["img0.png", "img1.png", "img2.png"]
    assert [len(it.boxes) for it in items] == [1, 2, 1]
    ann = tmp_path / "ann"
    ann.mkdir()
    _voc(ann, "img0.png", (64, 64), [("box", rows[0][4:])])
    voc = read_annotations(ann, image_root=tmp_path / "imgs")
    assert voc[0].labels == ["box"] and voc[0].boxes.tolist() == [rows[0][4:]]
    coco = {"images": [{"id": 5, "file_name": "img0.png", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 3,
                             "bbox": [rows[0][4], rows[0][5], rows[0][6] - rows[0][4], rows[0][7] - rows[0][5]]}],
            "categories": [{"id": 3, "name": "box"}]}
    (tmp_path / "imgs" / "c.json").write_text(json.dumps(coco))
    c = read_annotations(tmp_path / "imgs" / "c.json")
    assert c[0].labels == ["box"] and np.allclose(c[0].boxes, [rows[0][4:]])


@pytest.mark.parametrize("change, expect", [
    (lambda r: r.__setitem__(6, 80), "line 3: field 'xmax': 80 is outside the image"),
    (lambda r: r.__setitem__(5, -5), "line 3: field 'ymin': -5 is outside the image"),
    (lambda r: r.__setitem__(6, r[4]), "line 3: field 'xmax': box has no width"),
    (lambda r: r.__setitem__(0, "missing.png"), "line 3: field 'filename': image 'missing.png' not found"),
    (lambda r: r.__setitem__(4, "abc"), "line 3: field 'xmin': not a number"),
])
def test_bad_csv_boxes_name_file_line_and_field(tmp_path, change, expect):
    rows = _shapes(tmp_path, n=3)
    change(rows[1])
    path = _write(tmp_path / "a.csv", rows)
    with pytest.raises(DataError) as e:
        read_annotations(path)
    assert str(path) in str(e.value) and expect in str(e.value)
    # one pixel of slack is fine
    rows = _shapes(tmp_path, n=3)
    rows[1][6] = 65
    read_annotations(_write(tmp_path / "b.csv", rows))


def test_bad_voc_and_coco_name_the_object(tmp_path):
    _shapes(tmp_path, n=1)
    p = _voc(tmp_path, "img0.png", (64, 64), [("box", (1, 1, 10, 10)), ("box", (5, 5, 5, 9))])
    with pytest.raises(DataError, match=r"img0\.xml: object 2: field 'xmax': box has no width"):
        read_annotations(tmp_path)
    p.unlink()
    coco = {"images": [{"id": 1, "file_name": "img0.png", "width": 64, "height": 64}],
            "annotations": [{"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5]}],
            "categories": [{"id": 1, "name": "box"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"c\.json: annotations\[0\] \(id 9\): field 'image_id': unknown image"):
        read_annotations(tmp_path / "c.json")


def _tiny_cfg(tmp_path, train, test, epochs=40, **extra):
    cfg = {
        "task": "object_detection", "seed": 0,
        "data": {"train": str(train), "validation": str(train), "test": str(test)},
        "preprocessing": {"image": {"size": 64, "augment": {"hflip": False, "color_jitter": 0.0}}},
        "model": {"type": "centernet", "widths": [16, 16, 32, 32], "head_channels": 16, "scale_range": [1.0, 1.0],
                  "mosaic": 0.0},
        "trainer": {"epochs": epochs, "batch_size": 10, "lr": 0.01, "weight_decay": 0.0, "num_threads": 1,
                    "precision": "fp32", "device": "cpu", "scheduler": "cosine", "grad_clip": 10.0},
        "evaluation": {"baseline": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "det", "tensorboard": False},
    }
    for k, v in extra.items():
        cfg[k].update(v)
    return cfg


def test_bad_image_is_a_data_error_naming_it(tmp_path):
    import luban

    rows = _shapes(tmp_path, n=6)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    train = _write(tmp_path / "a.csv", rows)
    with pytest.raises(DataError, match=r"img2\.png: not an image"):
        luban.train(_tiny_cfg(tmp_path, train, train, epochs=1), quiet=True)
    assert not (tmp_path / "runs" / "det").exists()
    rows[0][3] = "unseen"
    test = _write(tmp_path / "t.csv", [r for r in rows if r[0] != "img2.png"])
    with pytest.raises(DataError, match=r"t\.csv: line 2: field 'class': class 'unseen' was not seen"):
        luban.train(_tiny_cfg(tmp_path, _write(tmp_path / "b.csv", rows[2:3] + rows[5:]), test, epochs=1),
                    quiet=True)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def det_run(tmp_path_factory) -> dict:
    import luban

    tmp_path = tmp_path_factory.mktemp("det")
    imgs = tmp_path / "imgs"
    train = _write(imgs / "shapes.csv", _shapes(imgs, n=20))
    return {"run": luban.train(_tiny_cfg(tmp_path, train, train), quiet=True), "imgs": imgs, "train": train}


def test_tiny_detector_overfits_shapes_and_predicts(det_run, tmp_path):
    import luban

    run, imgs, train = det_run["run"], det_run["imgs"], det_run["train"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["map50"] >= 0.9, m["test"]
    assert set(m["test"]["per_class"]) == {"bar", "box"}
    assert "data:image/png;base64," in (run / "report.html").read_text()

    p = luban.load(run)
    out = p.predict([str(imgs / "img0.png")], draw=str(tmp_path / "drawn"))
    assert out[0]["image"].endswith("img0.png")
    best = out[0]["boxes"][0]
    assert best["label"] == "box" and best["score"] > 0.3 and len(best["box"]) == 4
    assert (tmp_path / "drawn" / "img0.png").is_file()
    assert len(p.predict_file(imgs)) == 20  # a folder: every image
    ev = p.evaluate(train)
    assert ev["map50"] == pytest.approx(m["test"]["map50"], abs=0.02)


def test_detector_exports_quantizes_and_prunes(det_run, tmp_path):
    """The ONNX export finds the same boxes as PyTorch; int8 and pruned copies are runs that still detect."""
    import shutil

    import luban
    from luban.compress.export import export_run
    from luban.compress.prune import prune_run
    from luban.compress.quantize import quantize_run

    pytest.importorskip("onnxruntime")
    run = Path(shutil.copytree(det_run["run"], tmp_path / "runs" / "det"))
    image = str(det_run["imgs"] / "img0.png")
    before = luban.load(run).predict([image])[0]["boxes"]
    meta = export_run(run, quiet=True)
    assert meta["output_names"] == ["heatmap", "wh", "offset"] and meta["parity"]["max_abs_diff"] < 1e-3
    onnx = luban.load(run)
    assert onnx.capabilities()["backend"] == "onnx"
    after = onnx.predict([image])[0]["boxes"]
    assert [b["label"] for b in after] == [b["label"] for b in before]
    assert np.allclose([b["box"] for b in after], [b["box"] for b in before], atol=0.2)
    assert onnx.evaluate(det_run["train"])["map50"] == luban.load(run, backend="torch").evaluate(
        det_run["train"])["map50"]
    q = quantize_run(run, "int8-static", calibration_size=10, quiet=True)
    assert json.loads((q / "metrics.json").read_text())["test"]["map50"] >= 0.9
    pruned = prune_run(run, 0.3, quiet=True)  # conv weights are channels-last: pruning must still see them
    info = json.loads((pruned / "model" / "compression.json").read_text())
    assert info["sparsity"]["prunable_sparsity"] == pytest.approx(0.3, abs=0.01)
    assert luban.load(pruned).predict([image])[0]["image"].endswith("img0.png")


def test_model_shapes_stride8():
    m = CenterNet(3, (8, 16, 16, 32), 8, output_stride=8)
    out = m(torch.zeros(2, 3, 64, 64))
    assert out["heatmap"].shape == (2, 3, 8, 8) and out["wh"].shape == (2, 2, 8, 8)
