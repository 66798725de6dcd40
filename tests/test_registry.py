"""The model registry: every model's config lives beside its module, registers itself, and builds through it."""

import importlib
import re
from pathlib import Path

import pytest

from luban.config import TASKS, validate
from luban.models.registry import build_model, models, models_for

SRC = Path(__file__).resolve().parents[1] / "src" / "luban"


def test_every_task_has_one_default_model_and_every_model_a_task():
    for task in TASKS:
        fitting = models_for(task)
        assert fitting, task
        defaults = [name for name, e in models().items() if task in e.default_for]
        assert len(defaults) == 1, (task, defaults)
        assert fitting[0].model_fields["type"].default == defaults[0]
    for name, entry in models().items():
        assert entry.tasks and set(entry.tasks) <= set(TASKS), name


def test_model_configs_live_beside_their_modules_and_name_importable_builders():
    for name, entry in models().items():
        module = entry.config.__module__
        assert module.startswith("luban.models.") and module.endswith("_config"), (name, module)
        beside = SRC / "models" / (module.rsplit(".", 1)[1].removesuffix("_config") + ".py")
        assert beside.is_file(), (name, beside)
        builders = entry.builder.values() if isinstance(entry.builder, dict) else [entry.builder]
        for builder in builders:
            assert builder is not None, name  # the registry builds every model, none is left to its task
            mod, fn = builder.split(":")
            assert callable(getattr(importlib.import_module(mod), fn)), builder


def test_tasks_never_compare_model_types():
    for path in (SRC / "tasks").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.type (==|!=|in) ", text), path.name


@pytest.mark.parametrize("model, context, cls", [
    ({"type": "textcnn", "embedding_dim": 8, "num_filters": 4}, dict(vocab_size=20, num_classes=3, pad_id=0),
     "TextCNN"),
    ({"type": "ngram_bag"}, dict(vocab_size=20, num_classes=2, pad_id=0), "NgramBag"),
])
def test_build_model_uses_the_registered_builder(model, context, cls):
    cfg = validate({"task": "text_classification", "data": {"train": "t.csv", "columns": {"text": "t", "label": "l"}},
                    "model": model})
    built = build_model(cfg.model, cfg.task, max_length=16, **context)
    assert type(built).__name__ == cls
    if cls == "TextCNN":
        assert built.embed.embedding_dim == 8
