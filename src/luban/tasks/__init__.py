"""One file per task. `config.TASKS` names each task's training and inference classes (TaskSpec.code); they are
imported here only when a run trains or loads."""

from __future__ import annotations

import importlib

from luban.config import TASKS


def task_classes(name: str):
    """(Task class, TaskPredictor class) of task `name`."""
    module, task, predictor = TASKS[name].code.split(":")
    mod = importlib.import_module(f"luban.tasks.{module}")
    return getattr(mod, task), getattr(mod, predictor)
