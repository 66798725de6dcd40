"""Which runtime a loaded run uses: PyTorch (fp32, or bf16 for a bf16-compressed run) or onnxruntime.

`luban.load(run)` (and so `luban predict`, `evaluate`, `serve`) uses the ONNX export when the run has one
(model/onnx/model.onnx, written by `luban export` or `luban compress --quantize int8-*`) and onnxruntime is
installed; `luban.load(run, backend="torch")` forces PyTorch, `backend="onnx"` insists on the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

# the backend choice is torch-free (luban.compress.onnx_runtime); imported here by its older callers
from luban.compress.onnx_runtime import BACKENDS, choose_backend, compression_info  # noqa: F401
from luban.training.checkpoint import load_weights


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
