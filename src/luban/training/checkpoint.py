"""Checkpoints: weights as safetensors; optimizer/scheduler/RNG state as a torch file loaded with weights_only=True."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from luban.errors import RunError

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def _atomic_dir(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


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
    tmp = _atomic_dir(folder)
    save_model(model, str(tmp / WEIGHTS))
    _commit(tmp, folder)


def load_weights(model: nn.Module, folder: Path) -> None:
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
    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def save_last(folder: Path, model, optimizer, scheduler, scaler, state: dict) -> None:
    tmp = _atomic_dir(folder)
    save_model(model, str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "rng": _rng_state(), "state": state},
               tmp / STATE)
    _commit(tmp, folder)


def load_last(folder: Path, model, optimizer, scheduler, scaler) -> dict:
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
