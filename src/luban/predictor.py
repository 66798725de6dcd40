"""`luban.load(RUN)`: a finished run directory back as its task's predictor, for the CLI, Python and the server.

`load` reads the run's config, picks the backend (the ONNX export, PyTorch, an ensemble of member runs) and builds
the task's predictor (a `luban.capabilities.TaskPredictor`: the task file's inference class; `luban.Predictor` is
that base). What the run can do is what that predictor implements: `Predicts`, `GeneratesText`, `Recommends`, ...
(luban.capabilities), checked with isinstance; a method of a capability the run lacks raises a LubanError saying
so.
"""

from __future__ import annotations

from pathlib import Path

from luban.capabilities import TaskPredictor
from luban.config import read_yaml, validate
from luban.errors import RunError
from luban.rundir import check_finished
from luban.tasks import task_classes


Predictor = TaskPredictor  # luban.Predictor: what luban.load returns (the task's predictor, on this base)


def load(run_dir: str | Path, device: str = "auto", backend: str = "auto") -> TaskPredictor:
    """A run's predictor: the task's own (a TaskPredictor with the capabilities it implements). backend: "auto"
    (the ONNX export when the run has one, else PyTorch), "torch" (force PyTorch), "onnx" (insist on the export).
    An encoder folder or a starter encoder name (no run) loads as a text_embedding model
    (luban.embedding.load_encoder)."""
    if is_encoder_ref(run_dir) or _run_task(run_dir) == "text_embedding":
        return load_encoder_model(run_dir, device, backend)
    from luban.compress.onnx_runtime import choose_backend, light_predictor

    run_dir = check_finished(run_dir)
    config = validate(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    light = light_predictor(run_dir, config, device, backend)  # onnxruntime + NumPy, no torch
    if light is not None:
        return _loaded(light, run_dir, "onnx")
    from luban.training.hardware import select_device, set_threads

    set_threads(config.trainer.num_threads)
    _, PredictorCls = task_classes(config.task)
    if (run_dir / "model" / "ensemble.json").is_file():  # luban ensemble: combines its member runs
        from luban.tasks.ensemble import EnsemblePredictor, member_dirs

        members = [load(d, device) for d in member_dirs(run_dir)]
        return _loaded(EnsemblePredictor(run_dir, members), run_dir, "ensemble")
    # "onnx" when the run has an ONNX export (luban export / compress) and onnxruntime is installed
    backend = choose_backend(run_dir, PredictorCls, backend)
    kw = {"backend": backend} if PredictorCls.exportable else {}
    try:
        p = PredictorCls(config, run_dir / "model", select_device(device), **kw)
    except (OSError, ValueError, KeyError) as e:  # a damaged model/ folder: missing or unparsable files
        raise RunError(f"{run_dir / 'model'}: missing or corrupted model files "
                       f"({type(e).__name__}: {e})") from None
    return _loaded(p, run_dir, backend)


def _loaded(p: TaskPredictor, run_dir: Path, backend: str) -> TaskPredictor:
    p.run_dir, p.backend = run_dir, backend
    return p


def _run_task(run_dir) -> str | None:
    import json

    try:
        return json.loads((Path(run_dir) / "model" / "processor.json").read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def is_encoder_ref(ref) -> bool:
    """A starter encoder name or an HF encoder folder (config.json, not a luban run), not a run directory."""
    from luban.hub.catalog import CATALOG

    text = str(ref)
    if text in CATALOG:
        entry = CATALOG[text]
        return "embeddings" in entry.task or bool(entry.module)
    p = Path(text)
    return (p.is_dir() and (p / "config.json").is_file() and not (p / "manifest.json").is_file()
            and not (p / "config.yaml").is_file())


def load_encoder_model(ref: str | Path, device: str = "auto", backend: str = "auto",
                       max_length: int | None = None) -> TaskPredictor:
    """An encoder as a model: a text_embedding run, or an encoder folder / starter name served without a run (with
    the text_embedding task's default settings). Texts in, vectors out (Embeds; predict() -> {"embedding",
    "tokens"}). backend: torch, or onnx / onnx-int8 (the encoder's ONNX export, luban.embedding.export)."""
    from luban.embedding.encoder import load_encoder
    from luban.tasks.text_embedding import TextEmbeddingPredictor

    encoder = load_encoder(ref, device=device, backend=backend, max_length=max_length)
    if encoder.run is not None:
        run_dir = encoder.run
        config = validate(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    else:
        run_dir = encoder.folder
        config = validate({"task": "text_embedding",
                           "data": {"train": str(encoder.folder), "columns": {"query": "query",
                                                                               "positive": "positive"}},
                           "model": {"path": str(ref)}, "output": {"name": encoder.name}}, str(ref))
    return _loaded(TextEmbeddingPredictor.from_encoder(encoder, config), Path(run_dir), encoder.backend)
