"""onnxruntime without PyTorch: sessions, which backend a loaded run uses, and the torch-free predictors.

Nothing here imports torch. `luban.load(run)` (so `luban predict` and `luban serve`) asks `light_predictor` first:
for a run with an ONNX export whose task has a torch-free predictor (luban.compress.onnx_tasks: text
classification, tabular, image classification) and whose backend resolves to "onnx", the run is served by
onnxruntime + NumPy and the run's saved tokenizer / vocabulary / labels / preprocessor: a cold start in well under
a second instead of the 2+ s `import torch` takes. Every other run goes through its task's own predictor
(luban.compress.backends.runtime_model wraps the export as a torch module there).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from luban.compress import COMPRESSION, EXPORT_META, ONNX_DIR, ONNX_FILE
from luban.errors import ExportError, RunError
from luban.training.cpu import auto_threads

BACKENDS = ("auto", "torch", "onnx")

# task -> "module:class" of its torch-free predictor (luban.compress.onnx_tasks)
LIGHT_PREDICTORS = {
    "text_classification": "luban.compress.onnx_tasks:TextClassificationOnnx",
    "tabular_regression": "luban.compress.onnx_tasks:TabularOnnx",
    "tabular_classification": "luban.compress.onnx_tasks:TabularOnnx",
    "image_classification": "luban.compress.onnx_tasks:ImageClassificationOnnx",
}

_session_threads: int | None = None  # `luban serve --threads`: every onnxruntime session made after it


def set_session_threads(n: int | None) -> None:
    """Intra-op threads of the onnxruntime sessions created from now on (None: the run's trainer.num_threads,
    else the free cores: luban.training.cpu.auto_threads); torch-free, unlike luban.training.hardware.set_threads."""
    global _session_threads
    _session_threads = n


def session_threads() -> int | None:
    return _session_threads


def onnx_path(model_dir: Path) -> Path:
    return Path(model_dir) / ONNX_DIR / ONNX_FILE


def export_meta(model_dir: Path) -> dict:
    try:
        return json.loads((onnx_path(model_dir).parent / EXPORT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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
    """An onnxruntime CPU session with every graph optimization, `threads` intra-op threads (default: serve's
    --threads, else the free cores), threads not spinning."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or _session_threads or auto_threads().threads
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


def compression_info(model_dir: Path) -> dict:
    path = Path(model_dir) / COMPRESSION
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunError(f"{path}: unreadable ({e})") from None


def choose_backend(run_dir: Path, predictor_cls, backend: str = "auto") -> str:
    """"onnx" or "torch" for a run whose task predictor is `predictor_cls` (its `exportable` says whether an
    export can run it): auto takes the ONNX export when there is one and onnxruntime is installed."""
    from luban.training.checkpoint import has_weights

    if backend not in BACKENDS:
        raise RunError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    model_dir = Path(run_dir) / "model"
    onnx = predictor_cls.exportable and has_onnx(model_dir)
    torch_weights = has_weights(model_dir)
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


def light_predictor(run_dir: Path, cfg, device: str = "auto", backend: str = "auto"):
    """The run's torch-free onnxruntime predictor, or None when the run goes through its task's own predictor (a
    task or model without one, no usable export, backend torch, a device other than the CPU, an ensemble)."""
    target = LIGHT_PREDICTORS.get(cfg.task)
    model_dir = Path(run_dir) / "model"
    if target is None or device not in ("auto", "cpu") or (model_dir / "ensemble.json").is_file():
        return None
    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name)
    if not cls.runs_without_torch(cfg, model_dir) or choose_backend(run_dir, cls, backend) != "onnx":
        return None
    try:  # serve's --threads, else the run's trainer.num_threads, else (in session()) the free cores
        return cls(cfg, model_dir, session(onnx_path(model_dir), _session_threads or cfg.trainer.num_threads))
    except (OSError, ValueError, KeyError) as e:  # a damaged model/ folder: missing or unparsable files
        raise RunError(f"{model_dir}: missing or corrupted model files ({type(e).__name__}: {e})") from None
