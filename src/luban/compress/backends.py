"""Which runtime a loaded run uses: PyTorch (fp32, or bf16 for a bf16-compressed run) or onnxruntime.

`luban.load(run)` (and so `luban predict`, `evaluate`, `serve`) uses the ONNX export when the run has one
(model/onnx/model.onnx, written by `luban export` or `luban compress --quantize int8-*`) and onnxruntime is
installed; `luban.load(run, backend="torch")` forces PyTorch, `backend="onnx"` insists on the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from luban.compress import COMPRESSION
from luban.errors import RunError
from luban.training.checkpoint import WEIGHTS, load_weights

BACKENDS = ("auto", "torch", "onnx")


def compression_info(model_dir: Path) -> dict:
    path = Path(model_dir) / COMPRESSION
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunError(f"{path}: unreadable ({e})") from None


def choose_backend(run_dir: Path, predictor_cls, backend: str = "auto") -> str:
    from luban.compress.onnx_predictor import has_onnx

    if backend not in BACKENDS:
        raise RunError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    model_dir = Path(run_dir) / "model"
    onnx = predictor_cls.exportable and has_onnx(model_dir)
    torch_weights = (model_dir / WEIGHTS).is_file()
    if backend == "onnx":
        if not onnx:
            raise RunError(f"{run_dir}: no ONNX export to run (make one with `luban export {run_dir} --format onnx`)")
        return "onnx"
    if backend == "torch":
        if not torch_weights and onnx:
            how = compression_info(model_dir).get("method", "ONNX")
            raise RunError(f"{run_dir}: this run holds only an ONNX model ({how}); load it with backend='onnx' "
                           "(the default)")
        return "torch"
    if onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if not torch_weights:
                raise RunError(f"{run_dir}: this run holds only an ONNX model; it needs onnxruntime: "
                               "pip install 'luban[export]'") from None
            return "torch"
        return "onnx"
    return "torch"


class Bf16Module(nn.Module):
    """A model whose weights are bfloat16, run under bf16 autocast (float inputs are cast on the way in)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(torch.bfloat16)

    def forward(self, *args):
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            return self.model(*args)


def runtime_model(predictor, build: Callable[[], nn.Module]) -> nn.Module:
    """The model a task predictor runs: see tasks.base.Predictor.load_model."""
    folder = Path(predictor.folder)
    if predictor.backend == "onnx":
        from luban.compress.onnx_predictor import OrtModule, onnx_path

        return OrtModule(onnx_path(folder), predictor.export_spec())
    model = build()
    load_weights(model, folder)
    model = model.to(predictor.device).eval()
    if compression_info(folder).get("dtype") == "bfloat16":
        model = Bf16Module(model).eval()
    return model
