"""A pretrained causal LM as it is — a Hugging Face folder (`luban models import`'s output) or a starter name
(`starter-smollm2`) — as a finished luban run, so `luban serve` and `luban generate` take it beside trained runs.

The run is written once under `<model cache>/runs/<name>` (rewritten when its source changes): config.yaml
(text_generation with model.path = the folder, the folder's generation_config.json as the run's generation
defaults), model/hf -> the folder (a link: no weights copied), the tokenizer, metrics.json (no metrics: nothing was
trained) and manifest.json. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from luban.errors import ConfigError

# generation_config.json keys -> the run's generation: settings
GENERATION_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "repetition_penalty": "repetition_penalty", "do_sample": "do_sample",
                   "max_new_tokens": "max_new_tokens"}


def is_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "model").exists()


def causal_lm_folder(source: str) -> tuple[str, Path] | None:
    """(name, folder) when `source` is a starter name or a folder holding a causal LM (config.json whose
    architectures end in ForCausalLM, or LMHeadModel as GPT-2's); None otherwise."""
    from luban.hub.catalog import CATALOG, resolve

    if source in CATALOG and not Path(source).exists():
        folder, name = Path(resolve(source, source)), source
    else:
        folder = Path(source)
        name = folder.resolve().name
    conf = folder / "config.json"
    if not conf.is_file():
        return None
    try:
        archs = json.loads(conf.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        raise ConfigError(f"{conf}: not a readable model config (JSON)") from None
    if not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):  # GPT-2: GPT2LMHeadModel
        return None
    return name, folder.resolve()


def _generation(folder: Path) -> dict:
    try:
        g = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for key, field in GENERATION_KEYS.items():
        v = g.get(key)
        if v is not None and not isinstance(v, (dict, list)):
            out[field] = v
    if out.get("top_k") == 0:
        out["top_k"] = None
    if out.get("top_p") is not None and not 0 < out["top_p"] <= 1:
        out.pop("top_p")
    return out


def model_run(source: str, root: str | Path | None = None) -> Path:
    """The run directory serving `source` (see the module doc); a ConfigError when it is not a causal LM."""
    from luban.hub.catalog import cache_dir

    found = causal_lm_folder(source)
    if found is None:
        raise ConfigError(f"{source}: neither a finished luban run nor a causal language model folder "
                          "(config.json with a *ForCausalLM architecture) nor a starter name")
    name, folder = found
    root = Path(root) if root is not None else cache_dir() / "runs"
    run = root / name
    config = {"task": "text_generation", "seed": 0,
              "data": {"train": str(folder)},  # nothing is trained: the run only names its model
              "model": {"type": "pretrained_lm", "path": str(folder)},
              "generation": _generation(folder)}
    import yaml

    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    if is_run(run) and (run / "config.yaml").read_text(encoding="utf-8") == text \
            and (run / "model" / "hf").resolve() == folder:
        return run
    _write(run, folder, config, text)
    return run


def _write(run: Path, folder: Path, config: dict, text: str) -> None:
    import luban.processor as processor
    from luban import manifest
    from luban.config import validate
    from luban.data.chat import ChatFormatter
    from luban.data.tokenizers import build_encoder

    cfg = validate(config, str(run / "config.yaml"))
    encoder = build_encoder(cfg.preprocessing.tokenizer, str(folder))
    conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    window = conf.get("max_position_embeddings") or conf.get("n_positions") or cfg.preprocessing.tokenizer.max_length
    tmp = run.with_name(run.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    (tmp / "config.yaml").write_text(text, encoding="utf-8")
    (tmp / "metrics.json").write_text(json.dumps({"note": f"{folder} as it is: nothing trained"}), encoding="utf-8")
    os.symlink(folder, tmp / "model" / "hf", target_is_directory=True)
    meta = {"mode": "sft", "uses_chat": ChatFormatter(encoder).template is not None,
            "vocab_size": encoder.vocab_size, "block_size": int(window)}
    processor.save(tmp / "model", "text_generation", tokenizer=encoder, model=meta)
    manifest.write(tmp, kind="pretrained_model", source=str(folder))
    if run.is_symlink() or run.is_file():
        run.unlink()
    elif run.exists():
        shutil.rmtree(run)
    os.replace(tmp, run)


def runs_for(sources: list[str]) -> list[str]:
    """Each source as a run directory: model folders and starter names as their model run, the rest as given
    (runs, and paths whose own error the loader reports)."""
    return [str(model_run(s)) if not is_run(s) and causal_lm_folder(s) is not None else s for s in sources]
