"""Dynamic micro-batching: concurrent requests to one model share one `predict` call (one forward pass).

Every task predictor takes a list of inputs and returns one result per input, so the batcher needs nothing
task-specific: requests wait in a per-model queue; the first waits at most `max_wait_ms` for company (or until
`max_batch_size` inputs are gathered); their inputs are concatenated, predicted in one call on a model replica's
own thread, and the results are split back, each caller getting exactly its own. Requests are merged only when
their predict options (e.g. top_k) agree. When a merged call fails on bad input, each request of the batch is run
on its own, so an error names the caller's own input (and the other callers still get their results).

With several replicas of a model (independent copies, each on its own thread: `luban serve --replicas N`), a batch
goes to whichever replica is free, so N forward passes run at once (onnxruntime and PyTorch release the GIL).

A full queue refuses new work at once (`QueueFull`, answered 503 + Retry-After); a caller that gives up
(timeout, disconnect) is dropped from the queue before it costs a forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable

BatchFn = Callable[[list, dict], list]



async def drain_worker(task, wake, timeout: float, running=()) -> None:
    """Let a queue's worker task finish what is queued (and the batches still `running`), then stop; cancel it
    when that takes longer than `timeout` seconds. The queue has already stopped taking new work."""
    if task is None or task.done() or wake is None:
        return
    wake.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
        if running:
            await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), timeout)
    except (asyncio.TimeoutError, RuntimeError):
        task.cancel()

class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: float):
        super().__init__(f"queue full ({depth} inputs waiting)")
        self.depth, self.retry_after = depth, retry_after


@dataclass
class _Request:
    inputs: list
    options: dict
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    inputs: int = 0
    max_inputs: int = 0        # the largest batch seen (inputs)
    max_requests: int = 0      # the most requests merged into one call
    last_requests: int = 0
    seconds: float = 0.0       # time in forward passes (summed over replicas)

    def mean_seconds_per_input(self) -> float:
        return self.seconds / self.inputs if self.inputs else 0.05


class MicroBatcher:
    """`fn(inputs, options) -> results` run on `executor`; or `replicas`: a list of (fn, executor) pairs."""

    def __init__(self, fn: BatchFn | None = None, executor: Executor | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int, int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 replicas: list[tuple[BatchFn, Executor]] | None = None):
        self.replicas = list(replicas) if replicas else [(fn, executor)]
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch, self.on_depth = on_batch, on_depth
        self.stats = BatchStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Request] = deque()
        self._depth = 0
        self._wake: asyncio.Event | None = None
        self._free: asyncio.Queue | None = None
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._closing = False

    # ---------------------------------------------------------------------------------------------- clients
    @property
    def depth(self) -> int:
        return self._depth

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            if self._loop is not loop:  # a new event loop (tests start several): start afresh on it
                self._queue.clear()
                self._depth = 0
                self._running = set()
            self._loop, self._wake = loop, asyncio.Event()
            self._free = asyncio.Queue()
            for i in range(len(self.replicas)):
                self._free.put_nowait(i)
            self._task = loop.create_task(self._run_forever(), name="luban-batcher")

    async def submit(self, inputs: list, options: dict | None = None) -> tuple[list, int]:
        """The results for `inputs` and the size (inputs) of the forward pass that produced them."""
        if self._closing:
            raise QueueFull(self._depth, 5)
        self._ensure_running()
        n = len(inputs)
        if self._depth + n > self.max_queue and self._depth > 0:
            wait = self._depth * self.stats.mean_seconds_per_input() / len(self.replicas)
            raise QueueFull(self._depth, wait + 0.5)
        options = options or {}
        req = _Request(list(inputs), options, tuple(sorted(options.items())), self._loop.create_future())
        self._queue.append(req)
        self._set_depth(self._depth + n)
        self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:  # the caller gave up (timeout, disconnect): drop it if still queued
            try:
                self._queue.remove(req)
                self._set_depth(self._depth - n)
            except ValueError:
                pass
            raise

    async def close(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: refuse new work, finish what is queued and running."""
        self._closing = True
        await drain_worker(self._task, self._wake, timeout, self._running)

    # ---------------------------------------------------------------------------------------------- worker
    def _set_depth(self, d: int) -> None:
        self._depth = d
        if self.on_depth:
            self.on_depth(d)

    def _take(self) -> list[_Request]:
        """The oldest request plus the queued requests with the same options, up to max_batch_size inputs."""
        first = self._queue.popleft()
        batch, n = [first], len(first.inputs)
        skipped = []
        while self._queue and n < self.max_batch_size:
            r = self._queue.popleft()
            if r.key == first.key and n + len(r.inputs) <= self.max_batch_size:
                batch.append(r)
                n += len(r.inputs)
            else:
                skipped.append(r)
                if len(skipped) > 64:
                    break
        self._queue.extendleft(reversed(skipped))
        self._set_depth(self._depth - n)
        return batch

    def _queued_compatible(self, key: tuple) -> int:
        return sum(len(r.inputs) for r in self._queue if r.key == key)

    async def _run_forever(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            replica = await self._free.get()  # a batch forms only when a replica can take it: as large as it gets
            if not self._queue:
                self._free.put_nowait(replica)
                continue
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait
            # wait for company until the deadline, unless the batch is already full
            while (not self._closing and self._queued_compatible(first.key) < self.max_batch_size
                   and (left := deadline - time.perf_counter()) > 0):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
                if not self._queue or self._queue[0] is not first:
                    break
            batch = [r for r in self._take() if not r.future.done()] if self._queue else []
            if not batch:
                self._free.put_nowait(replica)
                continue
            task = self._loop.create_task(self._dispatch(batch, replica))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, batch: list[_Request], replica: int) -> None:
        try:
            await self._run(batch, replica)
        finally:
            self._free.put_nowait(replica)

    async def _run(self, batch: list[_Request], replica: int) -> None:
        fn, executor = self.replicas[replica]
        inputs = [x for r in batch for x in r.inputs]
        t0 = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(executor, fn, inputs, batch[0].options)
            if not isinstance(results, list) or len(results) != len(inputs):
                raise RuntimeError(f"predict returned {len(results) if isinstance(results, list) else results!r} "
                                   f"results for {len(inputs)} inputs")
        except Exception as e:  # noqa: BLE001 - delivered to the callers
            if len(batch) == 1:
                self._deliver(batch[0], exc=e)
            else:  # find whose input it was: each request on its own
                for r in batch:
                    await self._run([r], replica)
                return
        else:
            start = 0
            for r in batch:
                mine = results[start:start + len(r.inputs)]
                if start:
                    mine = [_relabel(x, start + j, j) for j, x in enumerate(mine)]
                self._deliver(r, (mine, len(inputs)))
                start += len(r.inputs)
        secs = time.perf_counter() - t0
        s = self.stats
        s.batches += 1
        s.inputs += len(inputs)
        s.seconds += secs
        s.max_inputs = max(s.max_inputs, len(inputs))
        s.max_requests = max(s.max_requests, len(batch))
        s.last_requests = len(batch)
        if self.on_batch:
            self.on_batch(len(inputs), len(batch), secs)

    @staticmethod
    def _deliver(r: _Request, result: Any = None, exc: BaseException | None = None) -> None:
        if r.future.done():
            return
        if exc is not None:
            r.future.set_exception(exc)
        else:
            r.future.set_result(result)


def _relabel(result, merged: int, own: int):
    """Predictors name in-memory inputs by position ("input 7"); in a merged batch, give back the caller's own."""
    if isinstance(result, dict):
        placeholder = f"input {merged + 1}"
        if placeholder in result.values():
            return {k: (f"input {own + 1}" if v == placeholder else v) for k, v in result.items()}
    return result
