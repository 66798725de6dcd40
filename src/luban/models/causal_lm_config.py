"""The config of luban.models.causal_lm (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from luban.config_base import ModelSection, Section
from luban.models.registry import register_model


class LoraConfig(Section):
    r: int = Field(8, gt=0, description="adapter rank")
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(
        None, description="module names to adapt; default: PEFT's choice for the architecture, else all-linear")


@register_model(tasks=("text_generation",), builder="luban.models.causal_lm:build")
class PretrainedLMConfig(ModelSection):
    """Any Hugging Face causal LM (AutoModelForCausalLM): full fine-tuning or LoRA adapters (PEFT)."""

    type: Literal["pretrained_lm"] = "pretrained_lm"
    pretrained: ClassVar[bool] = True
    own_tokenizer: ClassVar[bool] = True  # preprocessing.tokenizer is the model's own
    path: str = Field(description="HF model folder, or a hub id with allow_download: true")
    allow_download: bool = False
    trust_remote_code: bool = False
    finetune: Literal["full", "lora", "none"] = Field("lora", description="none: evaluate/generate only")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    base_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the frozen base weights under LoRA (bfloat16: QLoRA-style half memory)")
    merge_adapters: bool = Field(True, description="LoRA: merge the adapters into the saved model (plain HF "
                                 "folder); false keeps base + adapter")
    gradient_checkpointing: bool = False
