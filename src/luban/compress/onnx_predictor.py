"""The onnxruntime backend: an ONNX export wrapped as an nn.Module, so a task's own predictor (tokenization,
batching, postprocessing) runs it exactly as it runs the PyTorch model. The torch-free side (sessions, the
tasks' own onnxruntime predictors) is luban.compress.onnx_runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from luban.compress.onnx_runtime import has_onnx, onnx_path, require_onnxruntime, session, session_threads  # noqa: F401


class OrtModule(nn.Module):
    """Called like the exported torch module: positional tensors in (named by the export's input names), and back
    what the torch module returns — one float tensor, a tuple in the export's output order, or a dict by output name
    (`spec.outputs_dict`). Inputs the graph dropped (unused by the model) are not fed."""

    def __init__(self, path: Path, spec, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads or session_threads() or torch.get_num_threads())
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
