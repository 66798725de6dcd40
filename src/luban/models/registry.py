"""The model registry: each model's config class (luban/models/<name>_config.py, beside <name>.py, torch-free)
registers itself with @register_model: the tasks it fits, the tasks it is the default for, and its builder, named
as "module:function" and imported only when a model is built. Tasks build models with build_model(cfg.model, ...)
and ask the config's class attributes (ModelSection) what they need; they never compare model types.

Adding a model: <name>.py (the nn.Module and its build function), <name>_config.py (the config class, registered),
an example YAML and its test."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    config: type
    tasks: tuple[str, ...]
    default_for: tuple[str, ...]
    builder: str | dict[str, str]  # "module:function", or one per task


_MODELS: dict[str, ModelEntry] = {}
_loaded = False


def register_model(*, tasks: tuple[str, ...], builder: str | dict[str, str],
                   default_for: tuple[str, ...] = ()):
    """Class decorator: register a model config under its `type`."""
    def add(cls):
        name = cls.model_fields["type"].default
        if name in _MODELS:
            raise RuntimeError(f"model type {name!r} is registered twice")
        _MODELS[name] = ModelEntry(cls, tuple(tasks), tuple(default_for), builder)
        return cls
    return add


def models() -> dict[str, ModelEntry]:
    """Every registered model, by type (imports each luban/models/*_config.py once)."""
    global _loaded
    if not _loaded:
        import luban.models as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.endswith("_config"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _loaded = True
    return _MODELS


def models_for(task: str) -> tuple[type, ...]:
    """The config classes of the models that fit `task`, its default first."""
    fitting = [e for e in models().values() if task in e.tasks]
    fitting.sort(key=lambda e: task not in e.default_for)
    return tuple(e.config for e in fitting)


def build_model(cfg, task: str | None = None, **context):
    """The untrained module for a model config: its builder called with the config and what the task knows
    (vocabulary size, number of classes, ...; each builder takes what it needs)."""
    builder = models()[cfg.type].builder
    if isinstance(builder, dict):
        builder = builder[task]
    module, function = builder.split(":")
    return getattr(importlib.import_module(module), function)(cfg, **context)
