"""Image inputs for every vision task: listing a folder-per-class or a CSV/JSONL of paths, and decoding with Pillow
(EXIF orientation applied, grayscale/RGBA/palette converted) with errors that name the file.

`ImageStore` decodes each file once and keeps it as a uint8 array, so epochs after the first never re-decode JPEGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from luban.data.readers import LINE
from luban.errors import DataError, skippable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def decode_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """HxWxC uint8 (C = 3 for RGB, 1 for L). Raises DataError naming the file when it cannot be decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode so truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            im = im.convert(mode)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def list_image_folder(root: Path) -> pd.DataFrame:
    """A folder with one sub-folder per class -> frame with columns image (path), label, _line (running number)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                rows.append((str(f), class_dir.name))
    if not rows:
        raise DataError(f"{root}: no images found (expected one sub-folder per class: {root}/<label>/<image>)")
    df = pd.DataFrame(rows, columns=["image", "label"])
    df[LINE] = range(1, len(df) + 1)
    df.attrs["source"] = str(root)
    return df


def list_images(path: Path) -> list[Path]:
    """An image file, or every image file under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: no image files found")
        return files
    raise DataError(f"{path}: no such file or folder")


def resolve_image_paths(frame: pd.DataFrame, column: str, root: Path | None) -> list[Path]:
    """Image paths from a CSV/JSONL column, relative to `root` (default: the listing file's folder)."""
    src = frame.attrs.get("source", "")
    base = Path(root) if root is not None else (Path(src).parent if src and Path(src).is_file() else Path("."))
    out = []
    for value, line in zip(frame[column], frame[LINE]):
        if value is None or str(value).strip() == "":
            raise DataError(f"{src}: line {line}: field {column!r}: empty image path")
        p = Path(str(value).strip())
        out.append(p if p.is_absolute() else base / p)
    return out


class ImageStore:
    """Decoded images kept in memory (uint8), decoded on first use; bad files raise or are skipped."""

    def __init__(self, paths: list[Path], mode: str = "RGB"):
        self.paths, self.mode = list(paths), mode
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        arr = self._cache.get(i)
        if arr is None:
            arr = self._cache[i] = decode_image(self.paths[i], self.mode)
        return arr

    def decode_all(self, skip_bad: bool) -> list[int]:
        """Decode everything now; returns the indexes that failed (skipped) or raises on the first failure."""
        bad = []
        for i in range(len(self.paths)):
            try:
                self[i]
            except DataError as e:
                if not skip_bad:
                    raise skippable(e) from None
                bad.append(i)
        return bad
