"""What the engine calls once per training batch: a `TrainStep`.

A task's `train_step()` returns one. The engine (luban.training.engine.fit) owns everything around the step: the
epochs, resume from checkpoints/last, the best checkpoint and early stopping on the validation metric, history.jsonl,
TensorBoard, step-level logging every trainer.log_every steps, mid-epoch evaluation (trainer.eval_steps), progress
with ETA, and the per-epoch callbacks (tune pruning, MLflow). The step owns its optimizers and what one batch does
with them:

- `LossStep` (every task but the GAN): one loss, one optimizer from the trainer config, with precision (fp16 grad
  scaling), trainer.l1, trainer.grad_clip and trainer.grad_accumulation.
- a task may return its own subclass: image generation's `GANStep` (luban.tasks.image_generation) updates a
  discriminator and a generator with two Adam optimizers per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from luban.config import TrainerConfig
from luban.errors import TrainingDiverged
from luban.training.hardware import autocast
from luban.training.optim import build_optimizer, build_scheduler, clip_grad_norm


class Batches:
    """A sized, re-iterable list of batches, collated lazily (what distributed training shards by row)."""

    def __init__(self, index_batches: list[list[int]], collate: Callable[[list[int]], dict]):
        self.index_batches, self.collate = index_batches, collate

    def __len__(self):
        return len(self.index_batches)

    def __iter__(self):
        for idx in self.index_batches:
            yield self.collate(idx)


@dataclass
class StepResult:
    """One batch's outcome: its training loss (the progress line's loss, history's train_loss), what the batch
    counts (batch["size"]: samples or tokens), whether an optimizer step was taken (it counts toward the step
    number, trainer.log_every and trainer.eval_steps), and the step's own scalars (history gets their epoch means,
    TensorBoard/MLflow their values at each logging step). `processed`: what the throughput counts where it differs
    from size (an instruction-tuning batch reads every token, prompt and template included, and trains on the
    reply tokens alone: batch["processed"])."""

    loss: float
    size: int
    stepped: bool = True
    values: dict[str, float] = field(default_factory=dict)
    processed: int | None = None


class TrainStep:
    """The engine's view of how a task trains. Subclasses implement `batches`, `start` and `__call__`."""

    unit = "samples"  # what StepResult.size counts: throughput is reported as <unit>/s
    distributed = True  # trains on Ray workers (trainer.distributed); a step that cannot says so here

    # what checkpoints/last saves and --resume restores; set by start()
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None

    def batches(self, epoch: int) -> Iterable[dict]:
        """The training batches of `epoch` (sized; tasks.base.Batches for distributed training)."""
        raise NotImplementedError

    def start(self, model: nn.Module, cfg: TrainerConfig, n_batches: int, device: torch.device, precision: str,
              workdir: Path) -> None:
        """Before the first batch (and before a --resume restores state): build the optimizer(s)/scheduler(s)."""
        raise NotImplementedError

    def start_epoch(self) -> None:
        """At the start of each epoch."""

    def __call__(self, model: nn.Module, batch: dict, *, index: int, count: int, epoch: int) -> StepResult:
        """Train on batch `index` of `count` of `epoch` (0-based)."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def autocast_precision(self, precision: str) -> str:
        """The precision evaluation runs in (the engine's autocast): the run's precision by default."""
        return precision

    def validation_loss(self, model: nn.Module) -> float | None:
        """The step's loss on validation rows (history val_loss), or None; called under no_grad in eval mode."""
        return None

    def end_epoch(self, model: nn.Module, record: dict, workdir: Path) -> None:
        """After the epoch's evaluation, before its history record is written: the step may add to it."""

    def epoch_text(self, record: dict, metric: str, improved: bool) -> str | None:
        """The epoch's progress line; None: the engine's (train_loss, val metric, throughput)."""
        return None


def mean_loss(model: nn.Module, batches, loss_fn: Callable) -> float:
    """`loss_fn` averaged over `batches` (weighted by batch["size"]); a progress bar (log lines off a terminal) when
    it runs for more than a second."""
    from luban.training.progress import track

    total, n = 0.0, 0
    for batch in track(batches, "validation loss", unit="batches", delay=1.0):
        bs = batch["size"]
        total += float(loss_fn(model, batch)) * bs
        n += bs
    return total / n if n else float("nan")


def _l1_penalty(model: nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2)


class LossStep(TrainStep):
    """One loss, one optimizer: `loss(model, batch)` on every batch of `batches(epoch)`, with the trainer's
    optimizer and schedule, precision, L1, gradient clipping and accumulation. `val_batches()` (the validation rows
    in the form `loss` takes; None: none) and `val_loss` (default `loss`) give history's val_loss."""

    def __init__(self, batches: Callable[[int], Iterable[dict]], loss: Callable[[nn.Module, dict], torch.Tensor],
                 *, val_batches: Callable[[], Iterable[dict] | None] | None = None,
                 val_loss: Callable | None = None, unit: str = "samples"):
        self._batches, self.loss, self.val_batches = batches, loss, val_batches
        self.val_loss, self.unit = val_loss or loss, unit

    def batches(self, epoch):
        return self._batches(epoch)

    def start(self, model, cfg, n_batches, device, precision, workdir):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.accum = cfg.grad_accumulation
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, cfg.epochs * math.ceil(n_batches / self.accum))
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def start_epoch(self):
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, model, batch, *, index, count, epoch):
        cfg, scaler, optimizer = self.cfg, self.scaler, self.optimizer
        with autocast(self.device, self.precision):
            loss = self.loss(model, batch)
        if cfg.l1 > 0:
            loss = loss + cfg.l1 * _l1_penalty(model)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at epoch {epoch + 1}, batch {index + 1}")
        (scaler.scale(loss / self.accum) if scaler else loss / self.accum).backward()
        stepped = (index + 1) % self.accum == 0 or index + 1 == count
        if stepped:
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.grad_clip:
                clip_grad_norm(model, cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return StepResult(loss.item(), batch["size"], stepped, processed=batch.get("processed"))

    def validation_loss(self, model):
        batches = self.val_batches() if self.val_batches is not None else None
        return None if batches is None else mean_loss(model, batches, self.val_loss)

