"""The onnxruntime backend: an ONNX export wrapped as an nn.Module, so a task's own predictor (tokenization,
batching, postprocessing) runs it exactly as it runs the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from luban.compress import EXPORT_META, ONNX_DIR, ONNX_FILE
from luban.errors import ExportError, RunError


def onnx_path(model_dir: Path) -> Path:
    return Path(model_dir) / ONNX_DIR / ONNX_FILE


def has_onnx(model_dir: Path) -> bool:
    """An ONNX export luban's predictor can run: present, with dynamic batch/sequence axes."""
    path = onnx_path(model_dir)
    if not path.is_file():
        return False
    try:
        meta = json.loads((path.parent / EXPORT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(meta.get("dynamic_axes", True))


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("the ONNX backend needs onnxruntime: pip install 'luban[export]'") from None
    return onnxruntime


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session with every graph optimization, using torch's thread count, threads not spinning."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting between runs: a predictor does its tokenization and postprocessing in PyTorch/NumPy in the
    # same process, and spinning onnxruntime threads starve those on a small CPU (measured: SST-2 MiniLM int8,
    # 2 cores, 390-400 rows/s end to end without spinning, 280-375 with)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable / invalid models
        raise RunError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None


class OrtModule(nn.Module):
    """Called like the exported torch module: positional tensors in (named by the export's input names), and back
    what the torch module returns — one float tensor, a tuple in the export's output order, or a dict by output name
    (`spec.outputs_dict`). Inputs the graph dropped (unused by the model) are not fed."""

    def __init__(self, path: Path, spec, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.input_names = list(spec.input_names)
        self.output_names = list(spec.output_names)
        self.as_dict = spec.outputs_dict
        self.graph_inputs = {i.name for i in self.session.get_inputs()}

    def forward(self, *tensors: torch.Tensor):
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in zip(self.input_names, tensors, strict=False) if name in self.graph_inputs}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        if self.as_dict:
            return dict(zip(self.output_names, outs, strict=True))
        return outs[0] if len(self.output_names) == 1 else tuple(outs[:len(self.output_names)])

    def extra_repr(self) -> str:
        return str(self.path)
