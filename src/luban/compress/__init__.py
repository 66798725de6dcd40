"""Export and compression of trained runs: ONNX / TorchScript export with a parity check, int8 (dynamic and
static, onnxruntime) and bf16 quantization, magnitude pruning with a short fine-tune, knowledge distillation, and
a latency / throughput / accuracy benchmark.

Every compressed model is a new run directory (its metrics re-measured on the same test split); an export is added
to the run it came from (model/onnx/, model/torchscript/, model/hf/). Tasks opt in through small hooks on their
Task and Predictor classes (tasks/base.py), so nothing here branches on task names.
"""

ONNX_DIR = "onnx"              # model/onnx/model.onnx + export.json
ONNX_FILE = "model.onnx"
TORCHSCRIPT_DIR = "torchscript"  # model/torchscript/model.pt + export.json
HF_DIR = "hf"                   # model/hf/: save_pretrained layout (HF-backbone runs)
EXPORT_META = "export.json"
COMPRESSION = "compression.json"  # model/compression.json in a compressed run: how it was made, what runs it
