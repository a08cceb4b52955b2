"""Dynamic batching: rows from concurrent requests become one ONNX Runtime call.

A request submits its rows and awaits a future. One worker task per batcher takes
the queue once it holds `max_batch_size` rows or the oldest row has waited
`max_batch_delay`, runs the batch in a thread, and hands each caller exactly its
rows. A failed batch fails every caller in it; the worker carries on. The queue is
bounded: past `max_queue_rows`, `submit` refuses at once so latency stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("app.batcher")


class QueueFullError(Exception):
    """The queue holds `max_queue_rows`; the caller should retry later."""


class BatcherClosedError(Exception):
    """The batcher is shutting down and accepts no new rows."""


class InferenceError(Exception):
    """The batch this request was part of failed."""


@dataclass
class BatchStats:
    """Passed to the `on_batch` hook after each batch (for metrics)."""

    rows: int
    requests: int
    queue_waits: list[float]
    inference_seconds: float
    failed: bool


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_batch_delay_s: float = 0.002,
        max_queue_rows: int = 256,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        can_grow: Callable[[int], bool] | None = None,
        max_concurrent_batches: int = 1,
        name: str = "batcher",
    ) -> None:
        """``can_grow(queued_requests)`` says whether another request may still join the batch;
        when it says no, the batch goes at once instead of waiting out the delay for nobody.

        ``max_concurrent_batches``: batches handed to the executor at once. Above 1, a full batch
        starts while the previous one still runs, which hides this loop's per-batch work behind
        the model's when requests pile up; a partial batch still waits for a free model."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_delay_s < 0:
            raise ValueError("max_batch_delay_s must not be negative")
        if max_queue_rows < 1:
            raise ValueError("max_queue_rows must be at least 1")
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be at least 1")
        self._run_batch = run_batch
        self.max_concurrent_batches = max_concurrent_batches
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_rows = max_queue_rows
        self._executor = executor
        self._on_batch = on_batch
        self._can_grow = can_grow
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name=f"batcher:{self.name}")

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Queue ``rows`` (a batch of one or more inputs) and wait for their outputs."""
        if self._closing:
            raise BatcherClosedError(f"{self.name} is shutting down")
        count = len(rows)
        if count == 0:
            raise ValueError("submit needs at least one row")
        if self._queued_rows + count > self.max_queue_rows:
            raise QueueFullError(f"{self.name}: {self._queued_rows} rows queued, limit {self.max_queue_rows}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future))
        self._queued_rows += count
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop accepting rows, finish everything already queued, stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # While the model is busy, arriving rows make the next batch bigger.
                await self._wait_for_model()
                await self._wait_for_batch()
                batch = self._take_batch()
                if not batch:
                    continue
                task = asyncio.create_task(self._execute(loop, batch))
                self._running.add(task)
                task.add_done_callback(self._batch_done)
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    def _may_start(self) -> bool:
        """A batch starts when the model is free, or beside running ones (up to the limit) if it is
        full. A partial batch waits for a free model and grows meanwhile: on a GPU, two small
        batches side by side took longer than one bigger batch after the other (S1 on an H100:
        1,154 against 1,842 req/s)."""
        if not self._running:
            return True
        if len(self._running) >= self.max_concurrent_batches:
            return False
        return self._queued_rows >= self.max_batch_size or self._closing

    async def _wait_for_model(self) -> None:
        while not self._may_start():
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _wait_for_batch(self) -> None:
        deadline = self._queue[0].enqueued + self.max_batch_delay_s
        # A submit or the deadline timer wakes us. The timer is re-armed on every wake-up: event-loop
        # timers (uvloop's have millisecond resolution) may fire a little before `deadline`, and waiting
        # again without one would hold a lone request until the next arrives.
        loop = asyncio.get_running_loop()
        while self._queued_rows < self.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            if self._can_grow is not None and not self._can_grow(len(self._queue)):
                return
            self._wakeup.clear()
            timer = loop.call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if batch and rows + len(item.rows) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= len(item.rows)
            if item.future.done():  # the caller went away (cancelled)
                continue
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        inputs = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
        total = len(inputs)
        failed = False
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, inputs)
            if len(outputs) != total:
                raise InferenceError(f"model returned {len(outputs)} rows for a batch of {total}")
        except Exception as exc:
            failed = True
            log.error("%s: batch of %d rows failed: %s", self.name, total, exc)
            error = exc if isinstance(exc, InferenceError) else InferenceError(f"inference failed: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            offset = 0
            for item in batch:
                n = len(item.rows)
                if not item.future.done():
                    item.future.set_result(outputs[offset : offset + n])
                offset += n
        finally:
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        rows=total,
                        requests=len(batch),
                        queue_waits=[started - item.enqueued for item in batch],
                        inference_seconds=time.perf_counter() - started,
                        failed=failed,
                    )
                )
