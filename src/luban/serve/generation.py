"""Scheduling of text generation: continuous batching, and every active sequence advances one token per turn.

Generations of a model that decodes requests together (`Predictor.stream_events_batch`) share one batch: a new
request joins the running batch at the next step (its prompt read in one prefill pass, then merged), each row keeps
its own sampling settings, and a finished or disconnected row leaves at once. Sequences of models that cannot batch
(e.g. seq2seq) are single jobs; the batch and those take turns round-robin, all on the model's own thread, so a
generation never races a predict batch of the same model and a short request is never stuck behind a long one. Up
to `max_active` sequences are active at once; later ones wait in FIFO order and, past `max_queued` waiting, are
refused (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator
from concurrent.futures import Executor
from typing import Callable, Iterator

from luban.serve.batching import QueueFull, drain_worker

END = object()


class Job:
    def __init__(self, make: Callable[[], Iterator[dict]], loop: asyncio.AbstractEventLoop,
                 request: dict | None = None):
        self.make, self.iterator, self.request = make, None, request
        self.finished = False
        self.forward_sizes: list[int] = []
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
        if isinstance(self.iterator, Generator):  # a generator left mid-way runs its cleanup (finally) now
            try:
                self.iterator.close()
            except Exception:  # noqa: BLE001
                pass

    def cancel(self) -> None:
        self.cancelled = True

    # a Job is also a scheduling unit of one member (see Cohort)
    def members(self) -> list["Job"]:
        return [] if self.finished else [self]

    def pairs(self) -> list:
        ev = self.step()
        self.forward_sizes = [1] if isinstance(ev, dict) and ev.get("token") is not None else []
        return [(self, ev)]

    def finish(self, job: "Job") -> None:
        self.finished = True

    def drop(self, job: "Job") -> None:
        self.finished = True

    async def __aiter__(self):
        while True:
            ev = await self.events.get()
            if ev is END:
                return
            if isinstance(ev, BaseException):
                raise ev
            yield ev


class Cohort:
    """Jobs decoded in one batch (the model's `stream_events_batch`, continuous: later jobs join it)."""

    def __init__(self, jobs: list[Job], batcher: Callable[[list[dict]], object]):
        self.batcher, self.batch = batcher, None
        self.jobs: dict[int, Job] = {}  # the batch's request index -> job
        self.incoming = list(jobs)      # admitted, handed to the batch at its next step (on the model thread)
        self.live = list(jobs)
        self.forward_sizes: list[int] = []

    def members(self) -> list[Job]:
        return list(self.live)

    def add(self, jobs: list[Job]) -> None:
        self.incoming += jobs
        self.live += jobs

    def pairs(self) -> list:
        """One decoding step of every live member, on the model thread: [(job, event or exception)]."""
        try:
            if self.incoming:
                jobs, self.incoming = self.incoming, []
                requests = [j.request for j in jobs]
                if self.batch is None:
                    self.batch = self.batcher(requests)
                    index = list(range(len(jobs)))
                else:
                    index = self.batch.add(requests)
                self.jobs.update(zip(index, jobs, strict=True))
            out = [(self.jobs[i], ev) for i, ev in self.batch.step()]
            self.forward_sizes = list(self.batch.forward_sizes)
            return out
        except Exception as e:  # noqa: BLE001 - the batch failed as a whole: every member is told
            self.forward_sizes = []
            return [(j, e) for j in self.live]

    def finish(self, job: Job) -> None:
        if job in self.live:
            self.live.remove(job)

    def drop(self, job: Job) -> None:
        """A cancelled member leaves the batch (its cache rows are freed at the next step)."""
        self.finish(job)
        if job in self.incoming:
            self.incoming.remove(job)
        for i, j in self.jobs.items():
            if j is job:
                self.batch.cancel(i)

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()


class GenerationScheduler:
    def __init__(self, executor: Executor, max_active: int = 8, max_queued: int = 64,
                 on_change: Callable[[int, int], None] | None = None,
                 on_tokens: Callable[[int], None] | None = None,
                 batcher: Callable[[list[dict]], object] | None = None,
                 on_step: Callable[[int], None] | None = None):
        self.executor, self.max_active, self.max_queued = executor, max_active, max_queued
        self.on_change, self.on_tokens, self.on_step = on_change, on_tokens, on_step
        self.batcher = batcher  # the model's stream_events_batch, when it decodes requests together
        self.pending: deque[Job] = deque()
        self.active: list = []  # scheduling units: Cohorts and single Jobs
        self.max_active_seen = 0
        self.forwards = self.sequence_steps = 0  # model calls, and sequences advanced by them (mean batch)
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

    def submit(self, make: Callable[[], Iterator[dict]], request: dict | None = None) -> Job:
        """Queue one generation: `make` starts it alone; `request` ({"prompt"|"messages", knobs}) lets it join a
        cohort when the model decodes requests together."""
        if self._closing:
            raise QueueFull(len(self.pending), 5)
        self._ensure_running()
        if len(self.pending) >= self.max_queued:
            raise QueueFull(len(self.pending), 1 + len(self.pending) / max(1.0, self._steps_per_second))
        job = Job(make, self._loop, request if self.batcher is not None else None)
        self.pending.append(job)
        self._changed()
        self._wake.set()
        return job

    def submit_many(self, makes: list[Callable[[], Iterator[dict]]],
                    requests: list[dict | None] | None = None) -> list[Job]:
        """All or nothing: n choices of one request either all queue or the request is refused."""
        if self._closing or len(self.pending) + len(makes) > self.max_queued:
            self._ensure_running()
            raise QueueFull(len(self.pending), 1 + len(self.pending) / max(1.0, self._steps_per_second))
        return [self.submit(m, r) for m, r in zip(makes, requests or [None] * len(makes), strict=True)]

    def active_sequences(self) -> int:
        return sum(len(u.members()) for u in self.active)

    def _changed(self):
        if self.on_change:
            self.on_change(self.active_sequences(), len(self.pending))

    async def close(self, timeout: float = 30.0) -> None:
        self._closing = True
        await drain_worker(self._task, self._wake, timeout)

    @staticmethod
    def _step_all(units: list) -> list:
        return [u.pairs() for u in units]

    def _admit(self) -> None:
        admitted = []
        while self.pending and self.active_sequences() + len(admitted) < self.max_active:
            job = self.pending.popleft()
            if not job.cancelled:
                admitted.append(job)
        together = [j for j in admitted if j.request is not None]
        if together:
            cohort = next((u for u in self.active if isinstance(u, Cohort)), None)
            if cohort is not None:  # continuous batching: newcomers join the running batch
                cohort.add(together)
            else:
                self.active.append(Cohort(together, self.batcher))
        self.active += [j for j in admitted if j.request is None]

    async def _close_unit(self, unit) -> None:
        self.active.remove(unit)
        await self._loop.run_in_executor(self.executor, unit.close)

    async def _run_forever(self):
        import time

        while True:
            self._admit()
            self.max_active_seen = max(self.max_active_seen, self.active_sequences())
            self._changed()
            if not self.active:
                if self._closing and not self.pending:
                    return
                self._wake.clear()
                if not self.pending:
                    await self._wake.wait()
                continue
            for unit in list(self.active):
                for j in [j for j in unit.members() if j.cancelled]:
                    unit.drop(j)
                if not unit.members():
                    await self._close_unit(unit)
            units = list(self.active)
            if not units:
                continue
            t0 = time.perf_counter()
            results = await self._loop.run_in_executor(self.executor, self._step_all, units)
            dt = time.perf_counter() - t0
            stepped = sum(len(r) for r in results)
            if dt > 0 and stepped:
                self._steps_per_second = 0.9 * self._steps_per_second + 0.1 * (stepped / dt)
            tokens = 0
            for unit, pairs in zip(units, results, strict=True):
                for job, ev in pairs:
                    job.events.put_nowait(ev)
                    if ev is END or isinstance(ev, BaseException):
                        unit.finish(job)
                        continue
                    if ev.get("token") is not None:
                        tokens += 1
                    if ev.get("finish_reason"):  # the last event: no need for another turn
                        job.events.put_nowait(END)
                        unit.finish(job)
                for n in unit.forward_sizes:  # sequences each model call advanced
                    self.forwards += 1
                    self.sequence_steps += n
                    if self.on_step:
                        self.on_step(n)
                if not unit.members():
                    await self._close_unit(unit)
            if tokens and self.on_tokens:
                self.on_tokens(tokens)
