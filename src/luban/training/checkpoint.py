"""Checkpoints: weights as safetensors; optimizer/scheduler/RNG state as a torch file loaded with weights_only=True.

A checkpoint folder is replaced in three steps (write FOLDER.tmp; rename FOLDER -> FOLDER.old; rename FOLDER.tmp ->
FOLDER; delete FOLDER.old), so a kill at any moment leaves one complete checkpoint; `recover` puts it back in
place (RunDir.start does so before a --resume). Torch is imported inside the functions that need it, so
`recover` is cheap for the CLI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from luban.errors import RunError

if TYPE_CHECKING:
    from torch import nn

WEIGHTS = "model.safetensors"
# the model files of models saved in their own library's format instead (luban.models.gbdt: LightGBM's text model)
LIBRARY_MODEL_FILES = ("gbdt.txt",)


def has_weights(model_dir: Path) -> bool:
    """Whether a run's model/ folder holds the trained model itself (safetensors, or a library's own format), not
    only an ONNX export."""
    return any((Path(model_dir) / name).is_file() for name in (WEIGHTS, *LIBRARY_MODEL_FILES))
STATE = "state.pt"


def _atomic_dir(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _complete(folder: Path, like: Path) -> bool:
    """`folder` holds (non-empty) every file the other copy `like` holds, and the weights."""
    names = {WEIGHTS} | ({p.name for p in like.iterdir()} if like.is_dir() else set())
    return all((folder / n).is_file() and (folder / n).stat().st_size > 0 for n in names)


def recover(folder: Path) -> None:
    """Finish or roll back a checkpoint replacement that a kill interrupted (see the module docstring).

    FOLDER present: it is the last committed checkpoint; leftover .tmp/.old are removed. FOLDER missing with
    both .old and .tmp: the kill fell between the two renames, when .tmp was already fully written; it becomes
    FOLDER (or .old does, should .tmp lack a file). Only .old: it is put back. Only .tmp: a first checkpoint
    that was still being written; it is removed."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if not folder.is_dir():
        if tmp.is_dir() and old.is_dir():
            os.replace(*((tmp, folder) if _complete(tmp, old) else (old, folder)))
        elif old.is_dir():
            os.replace(old, folder)
    for leftover in (tmp, old):
        if leftover.is_dir():
            shutil.rmtree(leftover)


def _commit(tmp: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)


def save_weights(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model

    tmp = _atomic_dir(folder)
    save_model(model, str(tmp / WEIGHTS))
    _commit(tmp, folder)


def load_weights(model: nn.Module, folder: Path) -> None:
    """The saved weights (model.safetensors) into `model`; a model that saves itself in its own library's format
    (`load_from(folder)`, e.g. LightGBM's text model: luban.models.gbdt) reads its own file."""
    if callable(getattr(model, "load_from", None)):
        model.load_from(folder)
        return
    from safetensors.torch import load_model

    path = folder / WEIGHTS
    if not path.is_file():
        raise RunError(f"{path}: checkpoint weights not found")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as e:  # safetensors raises its own error types for truncated / corrupted headers
        raise RunError(f"{path}: unreadable or corrupted checkpoint ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise RunError(f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]})")


def _rng_state() -> dict:
    import torch

    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def save_last(folder: Path, model, optimizer, scheduler, scaler, state: dict) -> None:
    import torch
    from safetensors.torch import save_model

    tmp = _atomic_dir(folder)
    save_model(model, str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "rng": _rng_state(), "state": state},
               tmp / STATE)
    _commit(tmp, folder)


def load_last(folder: Path, model, optimizer, scheduler, scaler) -> dict:
    import torch

    load_weights(model, folder)
    try:
        blob = torch.load(folder / STATE, weights_only=True, map_location="cpu")
    except Exception as e:
        raise RunError(f"{folder / STATE}: unreadable or corrupted training state ({type(e).__name__}: {e})") from None
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return blob["state"]
