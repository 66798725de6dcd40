"""Any Hugging Face causal LM (``AutoModelForCausalLM``) as a luban module: full fine-tuning or LoRA adapters
(PEFT), the ``next_token_logits`` decoding interface, and export as a plain HF folder with adapters merged.

Loading is offline unless ``allow_download`` is set, and never runs remote code unless ``trust_remote_code`` is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from luban.models.causal_lm_config import LoraConfig
from luban.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# architectures whose causal-LM forward is `lm_head(decoder(ids).last_hidden_state)` and nothing more
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "phi3", "smollm3", "olmo2", "granite"})


def load_hf_causal_lm(source: str, allow_download: bool = False, trust_remote_code: bool = False,
                      dtype: str = "float32"):
    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    try:
        return AutoModelForCausalLM.from_pretrained(source, local_files_only=not allow_download,
                                                    trust_remote_code=trust_remote_code, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.path: cannot load a causal language model from {source}: {e}") from None


def add_lora(model, lora: LoraConfig):
    """Wrap `model` with LoRA adapters; only adapter weights stay trainable."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise ConfigError("model.finetune lora needs peft: pip install 'luban[text]'") from None

    def wrap(targets):
        conf = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              task_type="CAUSAL_LM")
        return get_peft_model(model, conf)

    if lora.target_modules is not None:
        try:
            return wrap(lora.target_modules)
        except ValueError as e:
            raise ConfigError(f"model.lora.target_modules: {e}") from None
    try:  # PEFT knows the attention projections of common architectures ...
        return wrap(None)
    except ValueError:  # ... and for the others every linear layer but the output head is adapted
        return wrap("all-linear")


class CausalLM(nn.Module):
    """Holds the HF model (possibly PEFT-wrapped); forward(ids) -> logits like luban's own GPT."""

    def __init__(self, hf_model):
        super().__init__()
        self.model = hf_model
        conf = self.base_config
        self.max_context = getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None)

    @property
    def base_config(self):
        return self.model.config

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "merge_and_unload")

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits

    def logits_at(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits (n, vocab) at the n positions where the (batch, time) mask `keep` is true, in row-major order.
        Fine-tuning scores only the reply tokens: the vocabulary-wide output head (Qwen2.5-0.5B: 896 x 151,936, a
        quarter of the model's work per token) runs on those rows alone, forward and backward. Architectures whose
        head is more than a linear layer (soft-capped or scaled logits) take the full forward."""
        parts = self._head_parts
        if parts is None:
            return self.forward(ids)[keep]
        body, head = parts
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        return head(hidden[keep])

    @property
    def _head_parts(self):
        if not hasattr(self, "_parts"):
            base = self.model.get_base_model() if self.is_peft else self.model
            conf = base.config
            plain = conf.model_type in PLAIN_HEAD and not any(
                getattr(conf, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale",
                                                                      "logits_scaling", "output_multiplier"))
            body = getattr(base, "base_model", None)
            head = base.get_output_embeddings()
            self._parts = (body, head) if plain and body is not None and body is not base and head is not None \
                else None
        return self._parts

    @property
    def _last_only(self) -> dict:
        """Decoding needs the last position's logits only: where the model takes `logits_to_keep`, the output
        head runs on that position alone (a prompt of n tokens saves n - 1 rows of the vocabulary-wide matmul)."""
        if not hasattr(self, "_keep_kw"):
            import inspect

            base = self.model.get_base_model() if self.is_peft else self.model
            self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters \
                else {}
        return self._keep_kw

    @torch.no_grad()
    def next_token_logits(self, ids, cache=None):
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **self._last_only)
        return out.logits[:, -1, :], out.past_key_values

    @torch.no_grad()
    def next_token_logits_batch(self, ids, cache, key_mask, positions):
        """Batched decoding step (luban.generation.batch): left-padded ids with their attention mask and position
        ids (the model hides padding itself) -> last-position logits (batch, vocab) and the cache."""
        out = self.model(input_ids=ids, attention_mask=key_mask.long(), position_ids=positions,
                         past_key_values=cache, use_cache=True, **self._last_only)
        return out.logits[:, -1, :], out.past_key_values

    def merged(self):
        """The plain HF model: adapters merged into the base weights (the trained model itself when full)."""
        if not self.is_peft:
            return self.model
        import copy

        return copy.deepcopy(self.model).merge_and_unload()

    def export(self, folder: Path, merge: bool = True) -> None:
        """Write a folder any HF tool loads: merged weights, or base/ + adapter/ when merge is false."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_peft and not merge:
            import copy

            copy.deepcopy(self.model).unload().to(torch.float32).save_pretrained(str(folder / "base"))
            self.model.save_pretrained(str(folder / "adapter"))
            return
        self.merged().to(torch.float32).save_pretrained(str(folder))


def build(cfg, *, source: str, vocab_size: int, device, as_loaded=None, **_) -> CausalLM:
    """The registry's builder for PretrainedLMConfig (luban.models.causal_lm_config): the HF causal LM at `source`
    (its base weights in cfg.base_dtype) on `device`, its embeddings grown to the tokenizer's `vocab_size`, made
    ready to fine-tune: LoRA adapters (finetune: lora), frozen (none), gradient checkpointing. `as_loaded(model)`
    sees the model as loaded, before any adapter (the task measures its reference and baseline there)."""
    hf = load_hf_causal_lm(source, cfg.allow_download, cfg.trust_remote_code, cfg.base_dtype)
    if vocab_size > hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(vocab_size)
    model = CausalLM(hf).to(device)
    if as_loaded is not None:
        as_loaded(model)
    if cfg.finetune == "lora":
        model = CausalLM(add_lora(hf, cfg.lora))
    elif cfg.finetune == "none":
        model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable()
        if cfg.finetune == "lora":
            hf.enable_input_require_grads()
    return model


def load_exported(folder: Path, device: torch.device) -> CausalLM:
    """Bring back what `CausalLM.export` wrote (offline), or what `luban compress --quantize int8-weight |
    int4-weight | bf16` wrote (luban.models.quantized_lm: luban_quant.json beside the weights)."""
    from luban.models.quantized_lm import load_quantized, quant_info

    info = quant_info(folder)
    if info is not None:
        return CausalLM(load_quantized(folder, info)).to(device).eval()
    if (folder / "adapter").is_dir():
        from peft import PeftModel

        base = load_hf_causal_lm(str(folder / "base"))
        model = PeftModel.from_pretrained(base, str(folder / "adapter"), local_files_only=True)
    else:
        model = load_hf_causal_lm(str(folder))
    return CausalLM(model).to(device).eval()
