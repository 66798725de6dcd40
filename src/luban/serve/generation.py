"""Fair scheduling of text generation: every active sequence decodes one token per turn, round-robin.

A generation is an iterator of step events (`Predictor.stream_events`). Up to `max_active` of them are active at
once; the scheduler advances each by one step per round, all on the model's own thread (so a generation never
races a predict batch of the same model), and pushes each event to its caller. A short request is never stuck
behind a long one, streaming and non-streaming requests share the model fairly, and requests beyond the active
slots wait in FIFO order; past `max_queued` waiting, new ones are refused (503 + Retry-After). A caller that
disconnects is dropped at the next turn and its iterator closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Iterator

from luban.serve.batching import QueueFull, drain_worker

END = object()


class Job:
    def __init__(self, make: Callable[[], Iterator[dict]], loop: asyncio.AbstractEventLoop):
        self.make, self.iterator = make, None
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.loop = loop

    def step(self):
        """One decoding step on the model thread: an event dict, END, or an exception."""
        try:
            if self.iterator is None:
                self.iterator = self.make()
            return next(self.iterator, END)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            return e

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self):
        while True:
            ev = await self.events.get()
            if ev is END:
                return
            if isinstance(ev, BaseException):
                raise ev
            yield ev


class GenerationScheduler:
    def __init__(self, executor: Executor, max_active: int = 8, max_queued: int = 64,
                 on_change: Callable[[int, int], None] | None = None,
                 on_tokens: Callable[[int], None] | None = None):
        self.executor, self.max_active, self.max_queued = executor, max_active, max_queued
        self.on_change, self.on_tokens = on_change, on_tokens
        self.pending: deque[Job] = deque()
        self.active: list[Job] = []
        self.max_active_seen = 0
        self._loop = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._steps_per_second = 20.0

    def _ensure_running(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            if self._loop is not loop:
                self.pending.clear()
                self.active.clear()
            self._loop, self._wake = loop, asyncio.Event()
            self._task = loop.create_task(self._run_forever(), name="luban-generation")

    def submit(self, make: Callable[[], Iterator[dict]]) -> Job:
        if self._closing:
            raise QueueFull(len(self.pending), 5)
        self._ensure_running()
        if len(self.pending) >= self.max_queued:
            raise QueueFull(len(self.pending), 1 + len(self.pending) / max(1.0, self._steps_per_second))
        job = Job(make, self._loop)
        self.pending.append(job)
        self._changed()
        self._wake.set()
        return job

    def submit_many(self, makes: list[Callable[[], Iterator[dict]]]) -> list[Job]:
        """All or nothing: n choices of one request either all queue or the request is refused."""
        if self._closing or len(self.pending) + len(makes) > self.max_queued:
            self._ensure_running()
            raise QueueFull(len(self.pending), 1 + len(self.pending) / max(1.0, self._steps_per_second))
        return [self.submit(m) for m in makes]

    def _changed(self):
        if self.on_change:
            self.on_change(len(self.active), len(self.pending))

    async def close(self, timeout: float = 30.0) -> None:
        self._closing = True
        await drain_worker(self._task, self._wake, timeout)

    @staticmethod
    def _step_all(jobs: list[Job]) -> list:
        return [j.step() for j in jobs]

    async def _run_forever(self):
        import time

        while True:
            while self.pending and len(self.active) < self.max_active:
                job = self.pending.popleft()
                if not job.cancelled:
                    self.active.append(job)
            self.max_active_seen = max(self.max_active_seen, len(self.active))
            self._changed()
            if not self.active:
                if self._closing and not self.pending:
                    return
                self._wake.clear()
                if not self.pending:
                    await self._wake.wait()
                continue
            for j in [j for j in self.active if j.cancelled]:
                self.active.remove(j)
                await self._loop.run_in_executor(self.executor, j.close)
            jobs = list(self.active)
            if not jobs:
                continue
            t0 = time.perf_counter()
            events = await self._loop.run_in_executor(self.executor, self._step_all, jobs)
            dt = time.perf_counter() - t0
            if dt > 0:
                self._steps_per_second = 0.9 * self._steps_per_second + 0.1 * (len(jobs) / dt)
            tokens = 0
            for job, ev in zip(jobs, events, strict=True):
                job.events.put_nowait(ev)
                if ev is END or isinstance(ev, BaseException):
                    self.active.remove(job)
                    continue
                if ev.get("token") is not None:
                    tokens += 1
                if ev.get("finish_reason"):  # the last event: no need for another turn
                    job.events.put_nowait(END)
                    self.active.remove(job)
                    await self._loop.run_in_executor(self.executor, job.close)
            if tokens and self.on_tokens:
                self.on_tokens(tokens)
