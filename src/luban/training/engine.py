"""The training loop, the one every task trains in.

A task hands the engine its `TrainStep` (luban.training.step: what one batch does with the step's optimizers) and
`evaluate_fn(model) -> metrics`; the engine does the rest: epochs, early stopping on a validation metric, best/last
checkpoints with optimizer/scheduler/RNG state, exact --resume, history.jsonl (with `val_loss`, the step's own loss
on validation, when it gives one), TensorBoard, step-level logging and a progress bar (log lines off a terminal,
every `trainer.log_every` steps), mid-epoch evaluation (`trainer.eval_steps`) and per-epoch callbacks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from luban.config import TrainerConfig
from luban.training import checkpoint
from luban.training.hardware import autocast
from luban.training.progress import Progress
from luban.training.step import Batches, TrainStep


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_value: float
    stopped_early: bool
    train_seconds: float
    epochs_run: int
    samples_per_second: float = 0.0
    notes: list[str] = field(default_factory=list)
    earlier_fit_seconds: float = 0.0  # fit time of the sessions before a --resume (up to their last checkpoint)


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


class _TensorBoard:
    def __init__(self, folder: Path | None, purge_step: int | None):
        self.writer = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def log(self, values: dict, step: int):
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                self.writer.add_scalar(k.replace("_", "/", 1), v, step)
        self.writer.flush()

    def log_step(self, values: dict, step: int):
        """Step-level scalars (train loss and lr every trainer.log_every steps, as HF Trainer's logging_steps)."""
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"step/{k}", v, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def start_fit(workdir: Path, resume: bool, model, optimizer, scheduler, scaler) -> tuple[dict, Path]:
    """A fresh loop state, or the one saved in checkpoints/last when resuming; history.jsonl rewritten to match."""
    ckpt = workdir / "checkpoints"
    state = {"epoch": 0, "step": 0, "best_value": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0, "stopped_early": False}
    if resume and (ckpt / "last").is_dir():
        state = checkpoint.load_last(ckpt / "last", model, optimizer, scheduler, scaler)
        print(f"resuming after epoch {state['epoch']} (step {state['step']})", file=sys.stderr)
    # time and samples add up across --resume: fit_seconds/train_samples persist in checkpoints/last
    state.setdefault("train_samples", 0)
    state["earlier_fit_seconds"] = state.get("fit_seconds", 0.0)
    state["session_start"] = time.perf_counter()
    history_path = workdir / "history.jsonl"
    history_path.write_text("".join(json.dumps(h) + "\n" for h in state["history"]), encoding="utf-8")
    return state, history_path


def close_epoch(state: dict, record: dict, *, metric: str, mode: str, model: nn.Module, ckpt: Path,
                history_path: Path, tb: "_TensorBoard", patience: int | None) -> bool:
    """End-of-epoch bookkeeping shared by every training loop: history (file + TensorBoard), the best checkpoint
    by `metric`, early stopping. Returns whether this epoch is the new best."""
    value = record.get(f"val_{metric}", record.get(metric, float("nan")))
    partial = record.get("partial", False)  # a mid-epoch evaluation (trainer.eval_steps)
    state["history"].append(record)
    state["fit_seconds"] = state["earlier_fit_seconds"] + time.perf_counter() - state["session_start"]
    with open(history_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    tb.log(record, state["step"])
    state["last_value"] = value
    improved = _better(value, state["best_value"], mode)
    if improved:
        state.update(best_value=value, best_epoch=record["epoch"], bad_epochs=0)
        checkpoint.save_weights(model, ckpt / "best")
    else:
        state["bad_epochs"] += 1
    if not partial:
        state["epoch"] = record["epoch"]
    if patience is not None and state["bad_epochs"] >= patience:
        state["stopped_early"] = True
    return improved


def shard_batches(batches, rank: int, world_size: int):
    """This worker's part of every batch (rows rank, rank + world, ...), so the global batch and the number of
    steps match a single-process run; batches too small to give every worker a row are skipped by all."""
    if world_size == 1:
        return batches
    if not isinstance(batches, Batches):
        raise ValueError("distributed training needs batches with index_batches (tasks.base.Batches)")
    return type(batches)([b[rank::world_size] for b in batches.index_batches if len(b) >= world_size],
                         batches.collate)


def evaluate_with_loss(model: nn.Module, evaluate_fn: Callable, step: TrainStep, device: torch.device,
                       precision: str) -> dict:
    """evaluate_fn's metrics, plus `loss` (the step's loss on validation) when the step gives one and the
    metrics do not already hold a loss."""
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        val = dict(evaluate_fn(model))
        if "loss" not in val:
            loss = step.validation_loss(model)
            if loss is not None:
                val["loss"] = loss
    return val


def no_training(workdir: Path) -> FitResult:
    """The result of a model computed, not trained (a task's train_step() is None): an empty history."""
    (workdir / "history.jsonl").write_text("", encoding="utf-8")
    return FitResult(history=[], best_epoch=0, best_value=float("nan"), stopped_early=False, train_seconds=0.0,
                     epochs_run=0)


def fit(model: nn.Module, step: TrainStep, *, evaluate_fn: Callable, cfg: TrainerConfig, metric: str, mode: str,
        device: torch.device, precision: str, workdir: Path, resume: bool = False, tensorboard: bool = True,
        on_epoch_end: Callable | None = None, rank: int = 0, world_size: int = 1,
        on_log: Callable | None = None) -> FitResult:
    """Train `model` in place with `step` (a task's train_step()); on return it holds the best weights by `metric`
    on validation (`evaluate_fn(model)`'s metrics).

    With world_size > 1 (Ray Train workers), `model` is the DDP-wrapped module, each worker trains on its shard of
    every batch, and `workdir` is where this worker writes (only rank 0's is the run directory).
    `on_log(values, step)`: step-level train loss/lr every trainer.log_every steps (MLflow); `on_epoch_end(state)`
    after each epoch's checkpoint (tune pruning, MLflow)."""
    ckpt = workdir / "checkpoints"
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # optimizer, checkpoints
    batches_of = step.batches if world_size == 1 else lambda epoch: shard_batches(step.batches(epoch), rank,
                                                                                   world_size)
    n_batches = len(batches_of(0))
    step.start(core, cfg, n_batches, device, precision, workdir)
    state, history_path = start_fit(workdir, resume, core, step.optimizer, step.scheduler, step.scaler)
    tb = _TensorBoard(workdir / "events" if tensorboard else None, purge_step=state["step"] or None)

    patience, unit, eval_precision = cfg.early_stopping.patience, step.unit, step.autocast_precision(precision)
    progress = Progress(total=(cfg.epochs - state["epoch"]) * n_batches, unit=unit, log_seconds=cfg.log_seconds,
                        quiet=rank != 0)
    evaluate = lambda: evaluate_with_loss(model, evaluate_fn, step, device, eval_precision)  # noqa: E731

    def close(record: dict) -> None:
        improved = close_epoch(state, record, metric=metric, mode=mode, model=core, ckpt=ckpt,
                               history_path=history_path, tb=tb, patience=patience)
        if rank == 0:
            progress.epoch_line(record, metric, improved, step.epoch_text(record, metric, improved))

    try:
        for epoch in range(state["epoch"], cfg.epochs):
            if state["stopped_early"]:
                break
            model.train()
            batches = batches_of(epoch)
            t_epoch, loss_sum, loss_n, epoch_samples = time.perf_counter(), 0.0, 0, 0
            win_sum, win_n = 0.0, 0  # the train loss since the last log line
            sums, seen = {}, 0  # the step's own scalars summed over the epoch's batches, and their count
            val, val_step, eval_seconds = None, -1, 0.0
            step.start_epoch()
            for i, batch in enumerate(batches):
                out = step(model, batch, index=i, count=len(batches), epoch=epoch)
                bs = out.size
                loss_sum += out.loss * bs
                loss_n += bs
                win_sum += out.loss * bs
                win_n += bs
                epoch_samples += bs if out.processed is None else out.processed
                seen += 1
                for k, v in out.values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if out.stepped:
                    state["step"] += 1
                elapsed = time.perf_counter() - t_epoch - eval_seconds
                lr = step.lr
                log_now = out.stepped and state["step"] % cfg.log_every == 0
                if log_now and rank == 0:
                    values = {"train_loss": win_sum / max(win_n, 1), **out.values, "lr": lr}
                    tb.log_step(values, state["step"])
                    if on_log is not None:
                        on_log(values, state["step"])
                    win_sum, win_n = 0.0, 0
                progress.update(epoch + 1, cfg.epochs, loss_sum / loss_n, epoch_samples / max(elapsed, 1e-9),
                                step=state["step"], lr=lr, line=log_now and rank == 0)
                if out.stepped and cfg.eval_steps and state["step"] % cfg.eval_steps == 0:
                    t_eval = time.perf_counter()
                    val, val_step = evaluate(), state["step"]
                    eval_seconds += time.perf_counter() - t_eval
                    if i + 1 < len(batches):  # the epoch's own evaluation closes it below
                        close({"epoch": round(epoch + (i + 1) / len(batches), 4), "step": state["step"],
                               "train_loss": loss_sum / max(loss_n, 1), **{k: v / seen for k, v in sums.items()},
                               "lr": lr, "partial": True, **{f"val_{k}": v for k, v in val.items()}})
                        model.train()
                        if state["stopped_early"]:
                            break
            train_time = time.perf_counter() - t_epoch - eval_seconds  # mid-epoch evaluations are not training
            state["train_seconds"] += train_time
            state["train_samples"] += epoch_samples * world_size
            if val is None or val_step != state["step"]:
                val = evaluate()
            record = {"epoch": epoch + 1, "step": state["step"], "train_loss": loss_sum / max(loss_n, 1),
                      **{k: v / seen for k, v in sums.items()}, "lr": step.lr,
                      f"{unit}_per_s": epoch_samples / max(train_time, 1e-9), "epoch_seconds": round(train_time, 3),
                      **{f"val_{k}": v for k, v in val.items()}}
            step.end_epoch(core, record, workdir)
            close(record)
            checkpoint.save_last(ckpt / "last", core, step.optimizer, step.scheduler, step.scaler, state)
            if on_epoch_end is not None:
                on_epoch_end(state)
    finally:
        progress.close()
        tb.close()
    return finish_fit(core, state, ckpt, keep=cfg.keep)


def finish_fit(model: nn.Module, state: dict, ckpt: Path, keep: str = "best") -> FitResult:
    """Restore the best weights (keep="best"; "last" keeps the model as the last epoch left it) and summarize the
    run (shared by every training loop). best_epoch/best_value describe the weights kept."""
    best_epoch, best_value = state["best_epoch"], state["best_value"]
    if keep == "last" and state["history"]:
        best_epoch, best_value = state["epoch"], state.get("last_value")
    elif (ckpt / "best").is_dir():
        checkpoint.load_weights(model, ckpt / "best")
    # every session's samples over every session's fit time, so a resumed run reports the whole run
    earlier = state.get("earlier_fit_seconds", 0.0)
    wall = earlier + time.perf_counter() - state["session_start"]
    samples = state["train_samples"]
    return FitResult(history=state["history"], best_epoch=best_epoch,
                     best_value=best_value if best_value is not None else float("nan"),
                     stopped_early=state["stopped_early"], train_seconds=state["train_seconds"],
                     epochs_run=state["epoch"], samples_per_second=samples / max(wall, 1e-9),
                     earlier_fit_seconds=earlier)
