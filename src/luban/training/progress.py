"""Progress for every step that can take more than a few seconds, in one small API.

    with stage("baseline", total=3, unit="models") as p:   # a bar with count, rate and ETA on a terminal
        ...; p.advance()
    for batch in track(batches, "evaluation", unit="batches"): ...

On a terminal (stderr is a tty) every open stage is a rich bar (nested stages share one display; a stage without a
total shows a spinner and the elapsed time). Off a terminal (CI, nohup, k8s) the same stage becomes plain log lines
on stderr: one every `log_every` advances (when given) or every `log_seconds` seconds (default 30, also while a
stage makes no visible progress: a long scikit-learn fit still says it is alive), each with the count, the caller's
fields (loss, lr, ...), the rate, the elapsed time and the ETA, and a closing line for a stage that printed any.
`LUBAN_PROGRESS=bar|lines|off` forces a mode; `LUBAN_LOG_SECONDS` sets the default period of the lines.
Inside `silent()` (the trials of `luban tune`, which report one line per trial instead) nothing is printed.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Sized
import sys
import threading
import time
from contextlib import contextmanager

_SILENT = contextvars.ContextVar("luban_silent_progress", default=False)
DEFAULT_LOG_SECONDS = 30.0


@contextmanager
def silent():
    """No progress bar or epoch lines from training loops run in this context (this thread)."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


def mode() -> str:
    """"bar" (rich, on a terminal), "lines" (plain log lines) or "off"."""
    forced = os.environ.get("LUBAN_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    return "bar" if sys.stderr.isatty() else "lines"


def default_log_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("LUBAN_LOG_SECONDS", DEFAULT_LOG_SECONDS)))
    except ValueError:
        return DEFAULT_LOG_SECONDS


def duration(seconds: float | None) -> str:
    """3.2s, 45s, 5m07s, 2h03m."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate_text(n: float, seconds: float, unit: str) -> str:
    r = n / max(seconds, 1e-9)
    return f"{r:.0f} {unit}/s" if r >= 10 else f"{r:.2f} {unit}/s"


class _Display:
    """The one rich display every open stage shares (rich allows a single live display at a time), and the
    heartbeat thread that prints log lines of stages that go quiet off a terminal."""

    def __init__(self):
        self.lock = threading.RLock()
        self.bar = None
        self.stages: list[Stage] = []
        self.heart: threading.Thread | None = None
        self.stop = threading.Event()

    def open(self, st: "Stage") -> None:
        with self.lock:
            self.stages.append(st)
            if st.mode == "bar":
                if self.bar is None:
                    from rich.console import Console
                    from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                                               TimeElapsedColumn, TimeRemainingColumn)
                    from rich.progress import Progress as RichProgress

                    self.bar = RichProgress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                            MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                            console=Console(stderr=True), transient=True)
                    self.bar.start()
                st.task_id = self.bar.add_task(st.name, total=st.total, info="")
            elif st.mode == "lines" and self.heart is None:
                self.stop = threading.Event()  # its own: a stopping heartbeat may not have woken up yet
                self.heart = threading.Thread(target=self._beat, args=(self.stop,), name="luban-progress",
                                              daemon=True)
                self.heart.start()

    def close(self, st: "Stage") -> None:
        with self.lock:
            if st in self.stages:
                self.stages.remove(st)
            if self.bar is not None and st.task_id is not None:
                self.bar.remove_task(st.task_id)
                if not any(s.mode == "bar" for s in self.stages):
                    self.bar.stop()
                    self.bar = None
            if self.heart is not None and not any(s.mode == "lines" for s in self.stages):
                self.stop.set()
                self.heart = None

    def print(self, msg: str) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.console.print(msg, markup=False, highlight=False)
            else:
                print(msg, file=sys.stderr, flush=True)

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            with self.lock:
                for st in list(self.stages):
                    if st.mode == "lines" and st.log_seconds and \
                            time.perf_counter() - st.last_line >= st.log_seconds:
                        st.emit()


_DISPLAY = _Display()


def say(msg: str) -> None:
    """A line of a training loop with its own format (stderr, above any bar), unless silenced."""
    if not _SILENT.get():
        _DISPLAY.print(msg)


class Stage:
    """One step of a command: `advance(n, **fields)` as it goes; see the module docstring."""

    def __init__(self, name: str, total: int | None = None, unit: str = "items", log_every: int | None = None,
                 log_seconds: float | None = None, delay: float = 0.0):
        self.name, self.total, self.unit = name, (int(total) if total else None), unit
        self.log_every = log_every
        self.log_seconds = default_log_seconds() if log_seconds is None else log_seconds
        self.mode = "off" if _SILENT.get() else mode()
        self.done, self.fields, self.lines = 0, {}, 0
        self.t0 = self.last_line = time.perf_counter()
        self.last_done, self.task_id = 0, None
        self.delay, self.opened = delay, False  # delay: a bar only for a step still running after that long
        if self.mode != "off" and not delay:
            self._open()

    def _open(self) -> None:
        self.opened = True
        _DISPLAY.open(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        if not self.total or self.done <= 0:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def advance(self, n: int = 1, line: bool = False, **fields) -> None:
        """`n` more done; `fields` (name -> value, shown as given) describe the state; `line=True` forces a log
        line off a terminal now (a training loop's logging step)."""
        self.done += n
        self.update(**fields)
        if self.mode != "lines":
            return
        due = line or (self.log_every and self.done - self.last_done >= self.log_every) or \
            (self.log_seconds and time.perf_counter() - self.last_line >= self.log_seconds)
        if due:
            self.emit()

    def update(self, **fields) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.mode != "off" and not self.opened and self.elapsed >= self.delay:
            self._open()
        if self.mode == "bar" and _DISPLAY.bar is not None and self.task_id is not None:
            _DISPLAY.bar.update(self.task_id, completed=self.done, info=self._info())

    def _info(self) -> str:
        return "  ".join(f"{k} {v}" if k != "rate" else str(v) for k, v in self.fields.items())

    def line(self) -> str:
        count = f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)" if self.total \
            else f"{self.done} {self.unit}" if self.done else "running"
        parts = [f"{self.name}: {count}"]
        info = self._info()
        if info:
            parts.append(info)
        if "rate" not in self.fields and self.done:
            parts.append(rate_text(self.done, self.elapsed, self.unit))
        parts.append(f"elapsed {duration(self.elapsed)}")
        if self.total:
            parts.append(f"ETA {duration(self.eta())}")
        return "  ".join(parts)

    def emit(self) -> None:
        """Print the log line now (off a terminal)."""
        if self.mode == "lines":
            self.lines += 1
            self.last_line, self.last_done = time.perf_counter(), self.done
            _DISPLAY.print(self.line())

    def print(self, msg: str) -> None:
        """A line above the bar (or a plain line), unless silenced."""
        if self.mode != "off":
            _DISPLAY.print(msg)

    def close(self) -> None:
        if self.opened:
            _DISPLAY.close(self)
        if self.mode == "lines" and self.lines:
            _DISPLAY.print(f"{self.name}: done, {self.done} {self.unit} in {duration(self.elapsed)}"
                           if self.done else f"{self.name}: done in {duration(self.elapsed)}")


@contextmanager
def stage(name: str, total: int | None = None, unit: str = "items", **kw):
    """A progress stage (see the module docstring); yields the Stage."""
    st = Stage(name, total, unit, **kw)
    try:
        yield st
    finally:
        st.close()


def track(iterable, name: str, total: int | None = None, unit: str = "items", **kw):
    """Iterate `iterable` under a stage, advancing once per item."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    with stage(name, total, unit, **kw) as st:
        for item in iterable:
            yield item
            st.advance()


class Progress:
    """The shared training loop's progress: a bar over the remaining batches of the fit (loss, lr, throughput,
    ETA) on a terminal; off it, one line per `log_every` optimizer steps (the engine calls `advance(line=True)`)
    or every `log_seconds`; one line per epoch everywhere."""

    def __init__(self, total: int, unit: str = "samples", log_seconds: float | None = None, quiet: bool = False):
        self.unit = unit
        self.silent = _SILENT.get() or quiet
        if quiet:  # e.g. the other workers of a distributed run: rank 0 reports
            token = _SILENT.set(True)
        self.stage = Stage("train", total=total, unit="batches", log_seconds=log_seconds)
        if quiet:
            _SILENT.reset(token)

    def update(self, epoch: int, epochs: int, loss: float, speed: float, *, step: int | None = None,
               lr: float | None = None, line: bool = False):
        if self.stage.mode == "off":  # tune trials, cv folds, other ranks: count the batch, format nothing
            self.stage.done += 1
            return
        fields = {"epoch": f"{epoch}/{epochs}"}
        if step is not None:
            fields["step"] = str(step)
        fields["loss"] = f"{loss:.4f}"
        if lr is not None:
            fields["lr"] = f"{lr:.3g}"
        fields["rate"] = f"{speed:.0f} {self.unit}/s"
        self.stage.advance(1, line=line, **fields)

    def epoch_line(self, record: dict, metric: str, improved: bool, text: str | None = None):
        """The epoch's line: `text` (a training step's own format) or epoch_text's."""
        if not self.silent:  # also with LUBAN_PROGRESS=off: that turns off bars and step lines, not epochs
            _DISPLAY.print(text if text is not None else epoch_text(record, metric, improved, self.unit))

    def close(self):
        self.stage.close()


def epoch_text(record: dict, metric: str, improved: bool, unit: str = "samples") -> str:
    val = record.get(f"val_{metric}", float("nan"))
    loss = f"  val_loss {record['val_loss']:.4f}" if isinstance(record.get("val_loss"), (int, float)) \
        and metric != "loss" else ""
    head = (f"epoch {record['epoch']}{' (step %d)' % record['step'] if record.get('partial') else ''}: "
            f"train_loss {record['train_loss']:.4f}{loss}  val_{metric} {val:.4f}{' *' if improved else ''}")
    if record.get("partial"):  # a mid-epoch evaluation (trainer.eval_steps): the epoch's line gives the speed
        return head
    speed = record.get(f"{unit}_per_s", record.get("samples_per_s", 0.0))
    return f"{head}  {speed:.0f} {unit}/s  {record.get('epoch_seconds', 0.0):.1f}s"
