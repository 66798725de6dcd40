"""Image inputs for every vision task: listing a folder-per-class or a CSV/JSONL of paths, and decoding with Pillow
(EXIF orientation applied, grayscale/RGBA/palette converted) with errors that name the file.

`ImageStore` decodes each file once and keeps it as a uint8 array, so epochs after the first never re-decode JPEGs.
`load_one` turns what predict() is given (a path, a PIL image, an array) into the working image; torch- and
pandas-free, so the ONNX backend predicts with it without either.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from luban.errors import DataError, skippable

if TYPE_CHECKING:
    import pandas as pd

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
    import pandas as pd

    from luban.data.readers import LINE

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
    from luban.data.readers import LINE

    src = frame.attrs.get("source", "")
    base = Path(root) if root is not None else (Path(src).parent if src and Path(src).is_file() else Path("."))
    out = []
    for value, line in zip(frame[column], frame[LINE]):
        if value is None or str(value).strip() == "":
            raise DataError(f"{src}: line {line}: field {column!r}: empty image path")
        p = Path(str(value).strip())
        out.append(p if p.is_absolute() else base / p)
    return out


class ImageInputs:
    """Predictor mixin (row-aligned file prediction, luban.lifecycle.predict_file): an image file given as the
    input is one input; a listing's rows are image paths in data.columns.image (default "image")."""

    media_suffixes = IMAGE_SUFFIXES

    def frame_inputs(self, frame: pd.DataFrame) -> tuple[list[Path | None], str]:
        """Image paths of a listing's rows (relative to the listing's folder); an empty cell stays None."""
        from luban.data.readers import resolve_column

        col = resolve_column(frame, self.cfg.data.columns.image or "image", "image")
        base = Path(frame.attrs.get("source", ".")).parent
        paths = []
        for v in frame[col]:
            v = None if v is None else str(v).strip()
            paths.append(None if not v else Path(v) if Path(v).is_absolute() else base / v)
        return paths, col

    def input_problem(self, x) -> str | None:
        if x is None:
            return "empty image path"
        if isinstance(x, (str, Path)) and not Path(x).is_file():
            return f"image file not found: {x}"
        return None


# ------------------------------------------------------------------------------------- working images (predict)
def _pil_to_array(im, mode: str) -> np.ndarray:
    """A PIL image -> HxWxC uint8 with EXIF orientation applied and RGBA/palette composited on white."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    arr = np.asarray(im.convert(mode), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _array_to_mode(arr: np.ndarray, mode: str, name: str) -> np.ndarray:
    """A numpy image (HxW, HxWx1/3/4; uint8, or float in [0, 1]) -> HxWxC uint8 in `mode`."""
    from PIL import Image

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CxHxW
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or min(a.shape[:2]) < 1:
        raise DataError(f"{name}: expected an HxW or HxWxC image array, found shape {tuple(a.shape)}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return _pil_to_array(Image.fromarray(a), mode)


def to_working(arr: np.ndarray, side: int) -> np.ndarray:
    """HxWxC uint8 -> CxSxS uint8: shorter side resized to `side` (antialiased bilinear), then center-cropped."""
    from PIL import Image

    h, w, c = arr.shape
    if (h, w) != (side, side):
        scale = side / min(h, w)
        nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
        im = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - side) // 2, (nw - side) // 2
        arr = np.asarray(im.crop((left, top, left + side, top + side)), dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_one(item, mode: str, side: int, name: str) -> np.ndarray:
    """A path, PIL image or numpy array -> CxSxS uint8 working image; DataError naming the file when unreadable."""
    if isinstance(item, (str, Path)):
        return to_working(decode_image(item, mode), side)
    if isinstance(item, np.ndarray):
        return to_working(_array_to_mode(item, mode, name), side)
    try:
        from PIL import Image

        if isinstance(item, Image.Image):
            return to_working(_pil_to_array(item, mode), side)
    except ImportError:  # pragma: no cover
        pass
    torch = sys.modules.get("torch")  # a tensor: torch is imported already (torch-free inference has none)
    if torch is not None and isinstance(item, torch.Tensor):
        return to_working(_array_to_mode(item.detach().cpu().numpy(), mode, name), side)
    raise DataError(f"{name}: expected an image path, a PIL image or a numpy array, found {type(item).__name__}")


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
