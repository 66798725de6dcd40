"""Device, threads and precision choices, made once per process."""

from __future__ import annotations

import contextlib
import functools

import torch


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from luban.errors import ConfigError

        raise ConfigError("trainer.device: cuda was asked for but no CUDA GPU is visible (use auto or cpu)")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, prefers_bf16_on_cpu: bool) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            from luban.errors import ConfigError

            raise ConfigError("trainer.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and prefers_bf16_on_cpu and cpu_has_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


_threads_set = False
_choice = None  # the automatic choice of the last set_threads, if it was automatic


def set_threads(n: int | None) -> None:
    """Set intra-op threads; unset (None), once per process: the free cores (luban.training.cpu.auto_threads)."""
    global _threads_set, _choice
    if _threads_set and n is None:
        return
    _choice = None
    if n is None:
        from luban.training.cpu import auto_threads

        _choice = auto_threads()
        n = _choice.threads
    torch.set_num_threads(n)
    _threads_set = True


def thread_choice():
    """The automatic choice (luban.training.cpu.ThreadChoice) behind the threads in force, or None when they were
    set explicitly (trainer.num_threads, a model's default, `--threads`)."""
    return _choice if _choice is not None and _choice.threads == torch.get_num_threads() else None
