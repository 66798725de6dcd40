"""A rich progress bar (loss, samples/s, ETA) on a terminal; one plain line per epoch everywhere — except inside
`silent()` (the trials of `luban tune`, which report one line per trial instead)."""

from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager

_SILENT = contextvars.ContextVar("luban_silent_progress", default=False)


@contextmanager
def silent():
    """No progress bar or epoch lines from training loops run in this context (this thread)."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


def say(msg: str) -> None:
    """An epoch line of a training loop with its own format (stderr), unless silenced."""
    if not _SILENT.get():
        print(msg, file=sys.stderr, flush=True)


class Progress:
    def __init__(self, total: int):
        self.bar = None
        self.silent = _SILENT.get()
        if sys.stderr.isatty() and total > 0 and not self.silent:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                    MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                    TextColumn("{task.fields[speed]:.0f} samples/s"), TimeRemainingColumn(),
                                    transient=True)
            self.task = self.bar.add_task("train", total=total, epoch="", loss=0.0, speed=0.0)
            self.bar.start()

    def update(self, epoch: int, epochs: int, loss: float, speed: float):
        if self.bar is not None:
            self.bar.update(self.task, advance=1, epoch=f"{epoch}/{epochs}", loss=loss, speed=speed)

    def epoch_line(self, record: dict, metric: str, improved: bool):
        if self.silent:
            return
        val = record.get(f"val_{metric}", float("nan"))
        msg = (f"epoch {record['epoch']}: train_loss {record['train_loss']:.4f}  "
               f"val_{metric} {val:.4f}{' *' if improved else ''}  "
               f"{record['samples_per_s']:.0f} samples/s  {record['epoch_seconds']:.1f}s")
        if self.bar is not None:
            self.bar.console.print(msg)
        else:
            say(msg)

    def close(self):
        if self.bar is not None:
            self.bar.stop()
