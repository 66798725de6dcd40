"""Bounding-box annotations for object detection: Pascal VOC XML, COCO JSON, or a CSV of boxes.

Every format becomes a list of `Annotated` images (path + size + boxes in pixel xmin, ymin, xmax, ymax). Boxes are
checked on the way in: inside the image (1-px tolerance), positive area, a known image file. A bad box raises a
DataError naming the annotation file, the line / object and the field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from luban.errors import DataError

TOLERANCE = 1.0  # pixels a box may stick out of the image (annotation tools round outwards)
CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")


@dataclass
class Annotated:
    """One image and its boxes (pixels in the original image, xmin ymin xmax ymax)."""

    path: Path
    width: int | None
    height: int | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "file: line N" / "file: object N" per box, for errors
    source: str = ""


def detect_annotation_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".xml":
        return "voc"
    if path.suffix.lower() == ".json":
        return "coco"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return "csv"
    raise DataError(f"{path}: cannot tell the annotation format from the name; set data.annotation_format to "
                    "voc (folder of .xml), coco (.json) or csv")


def read_annotations(path: str | Path, fmt: str = "auto", image_root: str | Path | None = None) -> list[Annotated]:
    """Every annotated image in `path` (in file order), boxes validated, image files checked to exist."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: annotation file or folder not found")
    fmt = detect_annotation_format(path, fmt)
    root = Path(image_root) if image_root is not None else None
    if fmt == "voc":
        items = _read_voc(path, root)
    elif fmt == "coco":
        items = _read_coco(path, root)
    else:
        items = _read_csv(path, root)
    if not items:
        raise DataError(f"{path}: no annotated images found")
    for item in items:
        _check_boxes(item)
    return items


# ----------------------------------------------------------------------------------------------- helpers


def _find_image(name: str, bases: list[Path], where: str) -> Path:
    p = Path(name.strip())
    if not name.strip():
        raise DataError(f"{where}: field 'filename': empty image name")
    if p.is_absolute():
        if p.is_file():
            return p
        raise DataError(f"{where}: field 'filename': image {p} not found")
    for base in bases:
        if (base / p).is_file():
            return base / p
    raise DataError(f"{where}: field 'filename': image {name!r} not found (looked in "
                    f"{', '.join(str(b) for b in bases)}; set data.image_root)")


def _number(value, where: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field {name!r}: not a number ({value!r})") from None
    if not np.isfinite(v):
        raise DataError(f"{where}: field {name!r}: not a finite number ({value!r})")
    return v


def _size(value, where: str, name: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    v = _number(value, where, name)
    if v <= 0:
        raise DataError(f"{where}: field {name!r}: image {name} must be positive (got {value!r})")
    return int(round(v))


def check_box(box, width: int | None, height: int | None, where: str) -> None:
    """Positive area and inside the image (1-px tolerance); errors name the field."""
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    if xmax <= xmin:
        raise DataError(f"{where}: field 'xmax': box has no width (xmin {xmin:g}, xmax {xmax:g})")
    if ymax <= ymin:
        raise DataError(f"{where}: field 'ymax': box has no height (ymin {ymin:g}, ymax {ymax:g})")
    for name, v, hi in (("xmin", xmin, width), ("ymin", ymin, height), ("xmax", xmax, width),
                        ("ymax", ymax, height)):
        if v < -TOLERANCE or (hi is not None and v > hi + TOLERANCE):
            limit = f"0..{hi}" if hi is not None else ">= 0"
            raise DataError(f"{where}: field {name!r}: {v:g} is outside the image ({limit})")


def _check_boxes(item: Annotated) -> None:
    for box, where in zip(item.boxes, item.where):
        check_box(box, item.width, item.height, where)


def clip_boxes(item: Annotated, width: int, height: int) -> None:
    """Clip to the decoded image (after the tolerance check) and check the annotated size matches it."""
    if (item.width is not None and item.width != width) or (item.height is not None and item.height != height):
        raise DataError(f"{item.source}: image {item.path}: annotated size {item.width}x{item.height} does not "
                        f"match the file ({width}x{height})")
    if len(item.boxes):
        for where, box in zip(item.where, item.boxes):
            check_box(box, width, height, where)
        item.boxes[:, [0, 2]] = item.boxes[:, [0, 2]].clip(0, width)
        item.boxes[:, [1, 3]] = item.boxes[:, [1, 3]].clip(0, height)
    item.width, item.height = width, height


# ----------------------------------------------------------------------------------------------- formats


def _read_csv(path: Path, root: Path | None) -> list[Annotated]:
    bases = [root] if root is not None else [path.parent, path.parent.parent / "images"]
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    reader = csv.reader(text.splitlines(), delimiter=delim)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in CSV_COLUMNS if c not in header and c not in ("width", "height")]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} (expected a header "
                        f"{','.join(CSV_COLUMNS)})")
    col = {c: header.index(c) for c in CSV_COLUMNS if c in header}
    by_image: dict[str, Annotated] = {}
    for line, row in enumerate(reader, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        where = f"{path}: line {line}"
        if len(row) < len(header):
            raise DataError(f"{where}: expected {len(header)} fields, found {len(row)}")
        get = lambda c: row[col[c]] if c in col else None  # noqa: E731
        name = get("filename")
        item = by_image.get(name)
        if item is None:
            item = by_image[name] = Annotated(_find_image(name, bases, where), _size(get("width"), where, "width"),
                                              _size(get("height"), where, "height"), source=str(path))
        label = (get("class") or "").strip()
        if not label:
            raise DataError(f"{where}: field 'class': empty class name")
        box = [_number(get(c), where, c) for c in ("xmin", "ymin", "xmax", "ymax")]
        item.boxes = np.vstack([item.boxes, np.asarray(box, np.float32)[None]])
        item.labels.append(label)
        item.where.append(where)
    return list(by_image.values())


def _read_voc(path: Path, root: Path | None) -> list[Annotated]:
    import xml.etree.ElementTree as ET

    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise DataError(f"{path}: no .xml annotation files in this folder")
    folder = path if path.is_dir() else path.parent
    bases = [root] if root is not None else [folder, folder.parent / "JPEGImages", folder.parent / "images"]
    out = []
    for f in files:
        try:
            tree = ET.parse(f).getroot()
        except ET.ParseError as e:
            raise DataError(f"{f}: not valid XML ({e})") from None
        name = tree.findtext("filename")
        if name is None:
            raise DataError(f"{f}: field 'filename': missing <filename>")
        size = tree.find("size")
        w = _size(size.findtext("width") if size is not None else None, str(f), "width")
        h = _size(size.findtext("height") if size is not None else None, str(f), "height")
        item = Annotated(_find_image(name, bases, str(f)), w, h, source=str(f))
        for k, obj in enumerate(tree.findall("object"), start=1):
            where = f"{f}: object {k}"
            label = (obj.findtext("name") or "").strip()
            if not label:
                raise DataError(f"{where}: field 'name': empty class name")
            bb = obj.find("bndbox")
            if bb is None:
                raise DataError(f"{where}: field 'bndbox': missing")
            box = [_number(bb.findtext(c), where, c) for c in ("xmin", "ymin", "xmax", "ymax")]
            item.boxes = np.vstack([item.boxes, np.asarray(box, np.float32)[None]])
            item.labels.append(label)
            item.where.append(where)
        out.append(item)
    return out


def _read_coco(path: Path, root: Path | None) -> list[Annotated]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise DataError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories'")
    bases = [root] if root is not None else [path.parent, path.parent / "images"]
    cats = {c.get("id"): str(c.get("name")) for c in doc.get("categories", [])}
    items: dict = {}
    for k, im in enumerate(doc["images"], start=1):
        where = f"{path}: images[{k - 1}]"
        if "id" not in im or "file_name" not in im:
            raise DataError(f"{where}: needs 'id' and 'file_name'")
        items[im["id"]] = Annotated(_find_image(str(im["file_name"]), bases, where),
                                    _size(im.get("width"), where, "width"), _size(im.get("height"), where, "height"),
                                    source=str(path))
    for k, a in enumerate(doc["annotations"], start=1):
        where = f"{path}: annotations[{k - 1}] (id {a.get('id', '?')})"
        item = items.get(a.get("image_id"))
        if item is None:
            raise DataError(f"{where}: field 'image_id': unknown image id {a.get('image_id')!r}")
        if a.get("category_id") not in cats:
            raise DataError(f"{where}: field 'category_id': unknown category {a.get('category_id')!r}")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: field 'bbox': expected [x, y, width, height]")
        x, y, bw, bh = (_number(v, where, "bbox") for v in bbox)
        item.boxes = np.vstack([item.boxes, np.asarray([x, y, x + bw, y + bh], np.float32)[None]])
        item.labels.append(cats[a["category_id"]])
        item.where.append(where)
    return list(items.values())
