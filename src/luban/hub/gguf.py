"""GGUF (llama.cpp / Ollama / LM Studio files) -> a Hugging Face causal-LM folder.

transformers' own GGUF loader dequantizes the tensors and rebuilds the config and tokenizer (chat template included);
this module checks the file first (header, tensor data inside the file, an architecture transformers maps), saves a
plain folder, and proves it: the logits of the saved folder equal those of transformers' dequantized load."""

from __future__ import annotations

from pathlib import Path

from luban.hub.common import ModelImportError, log, offline, portable_tokenizer_class, torch_dtype

PROMPT = "Hello! Who are you?"


def read_header(src: Path) -> dict:
    """Architecture, name and context length from the header; a truncated or corrupt file is refused here."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelImportError(f"{src}: importing GGUF needs the gguf package: pip install 'luban[models]'") from None
    try:
        r = GGUFReader(str(src))
    except Exception as e:  # noqa: BLE001 - the reader fails in many ways on a cut file (IndexError, ValueError...)
        raise ModelImportError(f"{src}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None
    size = src.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in r.tensors), default=0)
    if not r.tensors or end > size:
        raise ModelImportError(f"{src}: truncated GGUF file ({size} bytes; its tensors need {end})")

    def field(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # noqa: BLE001
            return default

    arch = field("general.architecture")
    if not arch:
        raise ModelImportError(f"{src}: the GGUF header has no general.architecture")
    return {"architecture": str(arch), "name": field("general.name"), "tensors": len(r.tensors),
            "context_length": field(f"{arch}.context_length"), "chat_template": field("tokenizer.chat_template")}


def check_architecture(src: Path, arch: str) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in supported:
        raise ModelImportError(f"{src}: unknown GGUF architecture {arch!r}; transformers maps "
                               + ", ".join(sorted(supported)))


def sample_ids(tok):
    msgs = [{"role": "user", "content": PROMPT}]
    if tok.chat_template:
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    else:
        ids = tok(PROMPT)["input_ids"]
    import torch

    return torch.tensor([list(ids)])


def convert(src: Path, out: Path, dtype: str) -> tuple[dict, dict]:
    head = read_header(src)
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    check_architecture(src, head["architecture"])
    hf_logging.set_verbosity_error()
    log(f"{src.name}: {head['architecture']} ({head['name'] or 'unnamed'}), {head['tensors']} tensors; dequantizing")
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True,
                                                     dtype=torch_dtype(dtype))
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError) as e:
        raise ModelImportError(f"{src}: transformers cannot load this GGUF ({type(e).__name__}: {e})") from None
    model.eval()
    model.hf_quantizer = None  # a plain folder: no GGUF quantizer, no quantization_config
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    gen = model.generation_config
    eos = tok.eos_token_id
    if eos is not None and gen.eos_token_id != eos:  # chat models stop at the end-of-turn token
        gen.eos_token_id = sorted({eos, *([gen.eos_token_id] if isinstance(gen.eos_token_id, int) else
                                          (gen.eos_token_id or []))})
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else eos
    if head["context_length"]:
        tok.model_max_length = int(head["context_length"])
    ids = sample_ids(tok)
    with torch.inference_mode():
        ref = model(ids).logits.float()
    log(f"saving to {out}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    portable_tokenizer_class(out)
    del model
    again = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch_dtype(dtype)).eval()
    with torch.inference_mode():
        got = again(ids).logits.float()
        diff = float((ref - got).abs().max())
        reply = again.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=gen.pad_token_id)
    if diff != 0.0:
        raise ModelImportError(f"{src}: the saved folder does not reproduce the GGUF load (logits differ by {diff:g})")
    sample = tok.decode(reply[0, ids.shape[1]:], skip_special_tokens=True)
    log(f"check: logits of the saved folder equal transformers' GGUF load on {ids.shape[1]} tokens "
        f"(max |diff| {diff:g}); greedy reply to {PROMPT!r}: {sample!r}")
    check = {"kind": "logits vs transformers' dequantized GGUF load", "tokens": int(ids.shape[1]),
             "max_abs_diff": diff, "prompt": PROMPT, "greedy_reply": sample}
    return check, {"architecture": head["architecture"], "gguf_name": head["name"],
                   "chat_template": bool(tok.chat_template), "loads_with": "AutoModelForCausalLM"}
