"""`luban compress RUN|HF_FOLDER --quantize int8-weight|int4-weight|bf16` for causal language models.

Weight-only quantization (luban.models.quantized_lm) of
- a finished text_generation run whose model is a Hugging Face causal LM (`pretrained_lm`): a new run next to it
  (RUN-int8-weight, ...), perplexity re-measured on the run's validation and test splits; or
- a Hugging Face causal-LM folder (e.g. one `luban models import` wrote): a new run at `--out` (default
  FOLDER-METHOD beside it) holding the quantized model and its tokenizer, which `luban generate`, `luban serve` and
  `luban.load` use like any text-generation run.

The run records the quantization in model/hf/luban_quant.json, model/compression.json, processor.json's model part
and metrics.json; manifest.json lists the files with their sha256.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from luban.errors import ExportError

LM_METHODS = ("int8-weight", "int4-weight")
GROUP_SIZES = (32, 64, 128, 256)
TOKENIZER_SKIP = (".safetensors", ".bin", ".index.json", ".gguf", "config.json", "generation_config.json",
                  "luban_quant.json", "luban_import.json")


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "model").is_dir()


def _hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "config.yaml").is_file()


def lm_source(path, method: str) -> bool:
    """Whether `luban compress PATH --quantize METHOD` goes to this module (a causal LM) or to quantize_run.
    int8-weight / int4-weight always come here (the checks below refuse what is not a causal LM)."""
    path = Path(path)
    if method in LM_METHODS:
        return True
    if method != "bf16":
        return False
    if _hf_folder(path):
        return True
    if _is_run(path):
        from luban.config import read_yaml

        cfg = read_yaml(path / "config.yaml")
        return cfg.get("task") == "text_generation" and (cfg.get("model") or {}).get("type") == "pretrained_lm"
    return False


def _check_causal_lm_folder(folder: Path) -> None:
    """A clear error unless `folder` is an unquantized HF causal LM (read from its config.json, torch-free)."""
    try:
        conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(conf, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder / 'config.json'}: unreadable ({type(e).__name__}: {e})") from None
    from luban.models.quantized_lm import QUANT_FILE

    if (folder / QUANT_FILE).is_file():
        method = json.loads((folder / QUANT_FILE).read_text(encoding="utf-8")).get("method", "?")
        raise ExportError(f"{folder}: already quantized ({method}); compress the unquantized model it was made from")
    if conf.get("quantization_config"):
        raise ExportError(f"{folder}: already quantized ({conf['quantization_config'].get('quant_method', '?')}); "
                          "give an unquantized model")
    archs = conf.get("architectures") or []
    if not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ExportError(f"{folder / 'config.json'}: architectures {archs or '(none)'} is not a causal language "
                          "model; --quantize int8-weight / int4-weight / bf16 here apply to causal LMs "
                          "(AutoModelForCausalLM)")
    if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                "pytorch_model.bin")):
        raise ExportError(f"{folder}: no model weights (model.safetensors)")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(TOKENIZER_SKIP):
            shutil.copyfile(f, dst / f.name)


def _load_fp32(folder: Path):
    from luban.models.causal_lm import load_exported

    import torch

    return load_exported(folder, torch.device("cpu"))


def quantize_lm(source, method: str, out=None, name: str | None = None, group_size: int = 32,
                overwrite: bool = False, quiet: bool = False) -> Path:
    """Quantize a text-generation run or an HF causal-LM folder; returns the new run directory."""
    from luban.models.quantized_lm import METHODS

    source = Path(source).expanduser()
    if method not in METHODS:
        raise ExportError(f"--quantize {method!r}: for causal LMs choose one of {', '.join(METHODS)}")
    if group_size not in GROUP_SIZES:
        raise ExportError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))} (torch's int4 kernel; "
                          f"got {group_size})")
    if not source.exists():
        raise ExportError(f"{source}: no such run or model folder")
    if _is_run(source):
        if out is not None:
            raise ExportError("--out applies to a Hugging Face folder; a run's compressed copy is a run beside it "
                              "(--name names it)")
        run = _quantize_run(source, method, name, group_size, overwrite)
    elif _hf_folder(source):
        run = _quantize_folder(source, method, out, group_size, overwrite)
    else:
        raise ExportError(f"{source}: neither a luban run (config.yaml + model/) nor a Hugging Face model folder "
                          "(config.json)")
    if not quiet:
        _print(run)
    return run


def _run_checks(source: Path, method: str):
    from luban.compress.runs import run_config
    from luban.models.quantized_lm import QUANT_FILE

    cfg = run_config(source)
    if cfg.task != "text_generation" or not cfg.model.pretrained:
        what = f"task {cfg.task}" + (f", model {cfg.model.type}" if cfg.task == "text_generation" else "")
        raise ExportError(f"{source}: --quantize {method} applies to causal language models (text_generation runs "
                          f"with model.type pretrained_lm, or a Hugging Face causal-LM folder); this run is {what}"
                          + ("; its int8 / bf16 choices are int8-dynamic, int8-static, bf16"
                             if cfg.task != "text_generation" else ""))
    hf = source / "model" / "hf"
    if (hf / QUANT_FILE).is_file():
        got = json.loads((hf / QUANT_FILE).read_text(encoding="utf-8")).get("method", "?")
        raise ExportError(f"{source}: already quantized ({got}); compress the run it was made from")
    if not (hf / "config.json").is_file() and not (hf / "base").is_dir():
        raise ExportError(f"{hf}: the run's model folder is missing or corrupted (no config.json)")
    return cfg


def _quantize_run(source: Path, method: str, name, group_size: int, overwrite: bool) -> Path:
    from luban.compress.runs import DerivedRun
    from luban.models.causal_lm import CausalLM
    from luban.models.quantized_lm import save_quantized
    from luban.prepare import evaluate, prepare

    _run_checks(source, method)
    derived = DerivedRun(source, method, name, overwrite)
    src_hf = source / "model" / "hf"
    model = _load_fp32(src_hf)
    hf = model.merged()
    task = prepare(derived.cfg, quiet=True)
    import torch

    task.device = torch.device("cpu")
    with derived as d:
        out = d.model_dir / "hf"
        _copy_tokenizer(src_hf if (src_hf / "config.json").is_file() else src_hf / "base", out)
        info = save_quantized(hf, out, method, group_size, {"source": str(source)})
        quantized = CausalLM(_reload(out)).eval()
        measured = evaluate(task, quantized, ("validation", "test"))
        _mark_processor(d.model_dir, info)
        final = d.finish(measured, _compression(method, info, group_size), derived.source_metrics.get("test", {}))
    return final


def _reload(folder: Path):
    from luban.models.quantized_lm import load_quantized, quant_info

    return load_quantized(folder, quant_info(folder))


def _compression(method: str, info: dict, group_size: int) -> dict:
    out = {"method": method, "backend": "torch", "weights": {"int8-weight": "int8", "int4-weight": "int4",
                                                               "bf16": "bfloat16"}[method],
           "format": "model/hf/" + info.get("weights", ""), "metadata": "model/hf/luban_quant.json"}
    if method == "int4-weight":
        out["group_size"] = group_size
    if method == "bf16":
        out["dtype"] = "bfloat16"
    return out


def _mark_processor(model_dir: Path, info: dict) -> None:
    """processor.json's model part records the quantization (method, bits, group size)."""
    import luban.processor as processor

    path = model_dir / processor.FILE
    doc = json.loads(path.read_text(encoding="utf-8"))
    parts = doc["parts"]
    parts["model"] = {**parts.get("model", {}),
                      "quantization": {k: info.get(k) for k in ("method", "bits", "group_size", "weights")
                                       if info.get(k) is not None}}
    processor.save(model_dir, doc["task"], assets=tuple(doc.get("assets", [])), **parts)


def _quantize_folder(source: Path, method: str, out, group_size: int, overwrite: bool) -> Path:
    from luban.config import render, validate
    from luban.rundir import RunDir

    _check_causal_lm_folder(source)
    out = Path(out).expanduser() if out else source.parent / f"{source.name}-{method}"
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ExportError(f"--out {out}: must not be the source folder or lie inside it")
    cfg = validate({"task": "text_generation", "data": {"train": str(source)},
                    "model": {"type": "pretrained_lm", "path": str(source), "finetune": "none"},
                    "preprocessing": {"tokenizer": {"type": "pretrained"}},
                    "output": {"dir": str(out.parent), "name": out.name}}, f"compress {source}")
    t0 = time.perf_counter()
    rundir = RunDir(out.parent, out.name)
    work = rundir.start(overwrite, False, restart=True)
    try:
        import luban.processor as processor
        from luban.data.tokenizers import PretrainedEncoder
        from luban.models.causal_lm import CausalLM, load_hf_causal_lm
        from luban.models.quantized_lm import save_quantized

        model_dir = work / "model"
        hf = load_hf_causal_lm(str(source))
        max_context = CausalLM(hf).max_context
        enc = PretrainedEncoder(cfg.preprocessing.tokenizer, str(source))
        _copy_tokenizer(source, model_dir / "hf")
        params = sum(p.numel() for p in hf.parameters())
        info = save_quantized(hf, model_dir / "hf", method, group_size, {"source": str(source)})
        uses_chat = bool(getattr(enc.tok, "chat_template", None))
        meta = {"mode": "corpus", "uses_chat": uses_chat, "vocab_size": enc.vocab_size,
                "block_size": min(cfg.preprocessing.tokenizer.max_length, max_context or 10**9)}
        processor.save(model_dir, cfg.task, tokenizer=enc, model=meta)
        _mark_processor(model_dir, info)
        (work / "config.yaml").write_text(render(cfg), encoding="utf-8")
        from luban.compress import COMPRESSION
        from luban.compress.runs import file_bytes

        provenance = source / "luban_import.json"
        compression = {**_compression(method, info, group_size), "source_model": str(source),
                       "size_bytes": file_bytes(model_dir / "hf" / info["weights"]),
                       "source_size_bytes": sum(file_bytes(source / f) for f in
                                                ("model.safetensors", "pytorch_model.bin")),
                       "parameters": params, "seconds": round(time.perf_counter() - t0, 1)}
        if provenance.is_file():
            compression["source_provenance"] = json.loads(provenance.read_text(encoding="utf-8"))
        (model_dir / COMPRESSION).write_text(json.dumps(compression, indent=1), encoding="utf-8")
        (work / "metrics.json").write_text(json.dumps({"task": cfg.task, "main_metric": "loss",
                                                       "compression": compression}, indent=1), encoding="utf-8")
        return rundir.finish(source_model=str(source))
    except BaseException:
        rundir.discard()
        raise


def _print(run: Path) -> None:
    c = json.loads((run / "model" / "compression.json").read_text(encoding="utf-8"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    size = c.get("size_bytes", 0) / 2**20
    src = c.get("source_size_bytes", 0) / 2**20
    line = f"{c['method']}: {run}\n  weights {size:.1f} MB vs {src:.1f} MB"
    test = m.get("test") or {}
    if "perplexity" in test:
        ref = (c.get("source_test") or {}).get("perplexity")
        line += f"; test perplexity {test['perplexity']:.3f}" + (f" (source {ref:.3f})" if ref else "")
    print(line + f"\n  use it: luban generate {run} --prompt ...  |  luban serve {run}")
