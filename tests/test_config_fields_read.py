"""Every setting of every task's config is read somewhere in luban (a static check): a field nothing reads is a
setting that silently does nothing, like the old trainer.log_every."""

import re
from pathlib import Path

from pydantic import BaseModel

from luban.config import TASK_CONFIGS, _section_class
from luban.models.registry import models

SRC = Path(__file__).resolve().parents[1] / "src" / "luban"
# where settings are defined, not read
DEFINITIONS = {SRC / "config.py", SRC / "config_base.py"} | set((SRC / "models").glob("*_config.py"))
# read generically: the config's own keys (task), or by their YAML path (search.space, tune's --set)
GENERIC = {"task"}


def _fields(cls: type[BaseModel], prefix: str = ""):
    for name, field in cls.model_fields.items():
        yield prefix + name, name
        sub = _section_class(field.annotation)
        if sub is not None and name != "model":
            yield from _fields(sub, prefix + name + ".")


def _every_field():
    out = {}
    for task, cls in TASK_CONFIGS.items():
        for path, name in _fields(cls):
            out.setdefault(name, f"{task}: {path}")
    for type_name, entry in models().items():
        for path, name in _fields(entry.config):
            out.setdefault(name, f"model {type_name}: model.{path}")
    return out


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py")) if p not in DEFINITIONS)


def unread(code: str) -> list[str]:
    """The config fields `code` never reads: not as an attribute (cfg.trainer.lr), a key ("lr"), nor a keyword or
    parameter of the code a section is passed to (**cfg.model.model_dump() into a module's constructor)."""
    out = []
    for name, where in sorted(_every_field().items()):
        if name not in GENERIC and not re.search(rf"\.{name}\b|[\"']{name}[\"']|\b{name}\s*[:=]", code):
            out.append(where)
    return out


def test_every_config_field_is_read_somewhere():
    assert unread(_source()) == []


def test_the_check_catches_an_unread_setting():
    """With the lines that read trainer.log_every gone (as in the old code), the check names it."""
    code = "\n".join(line for line in _source().splitlines() if "log_every" not in line)
    assert [w for w in unread(code) if w.endswith("trainer.log_every")]
