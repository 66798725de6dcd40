"""What every command that trains or re-measures a run shares, once: `prepare(cfg)` (the task with its data read,
cleaned, split and featurized, exactly as at training), `build_model(task)` (seeded) and `evaluate(task, model)`
(detailed metrics per split). `luban train` (luban.pipeline), the Ray workers (luban.training.distributed) and
export/compression/distillation (luban.compress) call these."""

from __future__ import annotations

import contextlib
import io
import random
from typing import Callable

import numpy as np
import torch
from torch import nn

from luban.config import LOWER_IS_BETTER, RunConfig
from luban.evaluate.slices import capture
from luban.tasks import task_classes
from luban.tasks.base import Task
from luban.training.hardware import autocast, set_threads
from luban.training.progress import stage


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare(cfg: RunConfig, *, threads: int | None = None, check: Callable[[Task], None] | None = None,
            hook: Callable[[Task], None] | None = None, quiet: bool = False) -> Task:
    """The config's task, prepared: threads set (trainer.num_threads unless `threads`), seeded, its data read and
    featurized under a progress stage; every data error surfaces here. `check(task)` runs before any data is read
    (a refusal that needs no data); `hook(task)` after (e.g. distillation's teacher targets); `quiet` hides what
    preparing prints on stdout."""
    set_threads((cfg.trainer.num_threads or cfg.model.default_threads) if threads is None else threads)
    seed_everything(cfg.seed)
    task = task_classes(cfg.task)[0](cfg)
    if check is not None:
        check(task)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext(), \
            stage("prepare (read, clean, featurize)"):
        frames = task.read_frames()
        task.slice_source = capture(cfg, frames)  # evaluation.slices: read before cleaning keeps only model inputs
        task.prepare(frames)
        if hook is not None:
            hook(task)
    return task


def build_model(task: Task) -> nn.Module:
    """The task's model, freshly initialized from the config's seed (every run and every worker alike)."""
    seed_everything(task.cfg.seed)
    return task.build_model()


def early_stopping_mode(cfg: RunConfig, task: Task) -> str:
    """"min" or "max": how the early-stopping metric improves (trainer.early_stopping.mode, or by the metric)."""
    es = cfg.trainer.early_stopping
    if es.mode != "auto":
        return es.mode
    metric = es.metric or task.main_metric
    return "min" if metric in LOWER_IS_BETTER else "max"


def evaluate(task: Task, model: nn.Module, splits=("validation", "test"), precision: str = "fp32") -> dict:
    """Detailed metrics of `model` (a torch module or a wrapped ONNX session) on each of the task's `splits`."""
    model.eval()
    out = {}
    with torch.no_grad(), autocast(task.device, precision), \
            stage("evaluation", total=len(splits), unit="splits") as p:
        for s in splits:
            p.update(split=s)
            out[s] = task.evaluate(model, s, detailed=True)
            p.advance()
    return out
