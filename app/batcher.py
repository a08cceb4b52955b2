"""Dynamic batching: rows from concurrent requests become one ONNX Runtime call.

A request submits its rows and awaits a future. A batch starts once the queue holds
`max_batch_size` rows, or its oldest row has waited `max_batch_delay`, or nobody else
could join it; it runs in a thread, and each caller gets exactly its rows back. A
failed batch fails every caller in it; the batcher carries on. The queue is bounded:
past `max_queue_rows`, `submit` refuses at once so latency stays bounded.

There is no worker task: batches start from the callbacks where they become due (a
submit, a finished batch, the deadline timer). Under load, every extra turn of the
event loop between "due" and "started" leaves the model idle while the loop answers
the previous batch's callers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

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
    sources: int = 1  # distinct submitters (front-end processes) whose rows the batch holds


class RunsInProgress:
    """When each model run now under way began, over all the batchers that share it: one that
    never ends (a hung GPU call) leaves the event loop free, so only this shows it. Thread-safe:
    runs begin and end in the inference threads, and are read on the loop."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._began: dict[int, float] = {}
        self._tokens = itertools.count()

    def begin(self) -> int:
        token = next(self._tokens)
        self._began[token] = self._clock()
        return token

    def end(self, token: int) -> None:
        self._began.pop(token, None)

    def longest_s(self) -> float:
        """How long the oldest run still under way has taken so far; 0 when none is."""
        began = tuple(self._began.values())
        return self._clock() - min(began) if began else 0.0


@dataclass
class _Run:
    outputs: np.ndarray
    began: float
    ended: float


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    source: int
    requests: int  # the callers' requests the rows stand for (several, from a front end's message)


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
        on_drop: Callable[[int], None] | None = None,
        max_concurrent_batches: int = 1,
        inline_below_s: float = 0.0,
        join_while_running: bool = True,
        runs: RunsInProgress | None = None,
        name: str = "batcher",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``can_grow(queued_requests)`` says whether another request may still join the batch;
        when it says no, the batch goes at once instead of waiting out the delay for nobody.

        ``max_concurrent_batches``: batches handed to the executor at once. Above 1, a full batch is
        handed over while the previous one still runs, so this loop's per-batch work hides behind the
        model's when requests pile up: with one executor thread it starts the moment the previous one
        ends, with no turn of the event loop in between; with more threads, beside it. A partial
        batch still waits for a free model.

        ``on_drop(rows)``: rows skipped because their caller stopped waiting (it hung up).

        ``inline_below_s``: a batch of one row runs right on the event loop, not in the executor,
        when no other batch runs, nothing else is queued or in flight (``can_grow`` says no, so it
        is needed), and the last one-row batch took less than this. One request at a time then
        skips two thread hand-offs; nobody waits meanwhile (a request that arrives would have
        waited for the model anyway). The row first waits for the callbacks already scheduled on
        this turn of the loop: requests read in the same turn are often not counted in flight yet,
        and would otherwise each run alone, one after another, on the loop. 0: never.

        ``join_while_running``: a batch handed over while another runs has its rows joined on this
        loop meanwhile, not by the inference thread after that run. Right where the model is the
        limit (ONNX Runtime on the CPU: one process answered 5% more S4 requests); where this
        loop is (a GPU fed by many front ends), False keeps the copy off it.

        ``runs``: where each batch's model run is entered while it lasts.

        ``executor`` runs the batches; without one, the batcher makes its own and shuts it down on close.

        ``clock`` (seconds) times the delay and the statistics; tests pass a fake one."""
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
        self.inline_below_s = inline_below_s
        self.join_while_running = join_while_running
        self._runs = runs
        self._lone_row_s: float | None = None  # how long one-row batches take, smoothed; None: not run yet
        self._run_s: float | None = None  # how long batches take, smoothed; None: none has run yet
        self._executor = executor
        self._owns_executor = executor is None
        self._on_batch = on_batch
        self._can_grow = can_grow
        self._on_drop = on_drop
        self._clock = clock
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for: _Pending | None = None  # the queue head the timer is set for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Future[None]] = set()  # one per batch, done once its callers have answers
        self._lone_wait: asyncio.Handle | None = None  # a lone row waiting out the turn before it runs inline
        self._turn_waited = False  # in that wait's callback: a lone row may now run inline

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        """Bind to the running event loop (and make the executor, if none was given)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrent_batches, thread_name_prefix=self.name)

    async def submit(self, rows: np.ndarray, source: int = 0) -> np.ndarray:
        """Queue ``rows`` (a batch of one or more inputs) and wait for their outputs. ``source`` names
        the submitter (a front-end process), for the statistics."""
        return await self.enqueue(rows, source)

    def enqueue(self, rows: np.ndarray, source: int = 0, requests: int = 1) -> asyncio.Future[np.ndarray]:
        """`submit` without a coroutine: the future of ``rows``' outputs, for callers that answer from
        a callback. Cancelling the future drops the rows if they have not run yet. ``requests``: how
        many requests the rows stand for, for the statistics (each waited in the queue)."""
        if self._closing:
            raise BatcherClosedError(f"{self.name} is shutting down")
        if self._loop is None:
            raise RuntimeError(f"{self.name}: start() the batcher before submitting")
        count = len(rows)
        if count == 0:
            raise ValueError("submit needs at least one row")
        if self._queued_rows + count > self.max_queue_rows:
            raise QueueFullError(f"{self.name}: {self._queued_rows} rows queued, limit {self.max_queue_rows}")
        future: asyncio.Future[np.ndarray] = self._loop.create_future()
        self._queue.append(_Pending(rows, future, self._clock(), source, requests))
        self._queued_rows += count
        self._schedule()
        return future

    def drop_rows(self, future: asyncio.Future[np.ndarray], start: int, stop: int) -> bool:
        """Take rows ``start:stop`` out of the submission whose outputs ``future`` will hold, while it
        is still queued (one of the requests it stands for has gone); its outputs then lack them.
        False when it is no longer queued (its batch runs or ran): the rows stay."""
        for item in self._queue:
            if item.future is future:
                count = stop - start
                if count <= 0 or start < 0 or stop > len(item.rows) or count == len(item.rows):
                    return False  # nothing to drop, or all of it: cancel the future instead
                item.rows = np.delete(item.rows, slice(start, stop), axis=0)
                item.requests = max(1, item.requests - 1)
                self._queued_rows -= count
                if self._on_drop is not None:
                    self._on_drop(count)
                return True
        return False

    async def close(self) -> None:
        """Stop accepting rows, finish everything already queued, then return."""
        self._closing = True
        if self._loop is None:
            return
        self._schedule()  # closing makes every queued row due
        while self._running:  # a finishing batch starts the next before it leaves the set
            await asyncio.wait(set(self._running))
        if self._timer is not None:
            self._timer.cancel()
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False)

    def _schedule(self) -> None:
        """Start every batch that is due, and time the deadline of the one that waits for it.

        Called where something changes (a submit, a finished batch, the deadline timer), so a due
        batch starts right there, not on a later turn of the event loop."""
        self._dispatch()
        if not self._queue or not self._may_start() or self._lone_wait is not None:
            return  # nothing waits, it waits for a running batch to finish, or it waits out the turn
        head = self._queue[0]
        if self._timer is not None:
            if self._timer_for is head:
                return
            self._timer.cancel()
        assert self._loop is not None
        # Event-loop timers (uvloop's have millisecond resolution) may fire a little early; the
        # callback re-arms until the deadline has really passed.
        self._timer = self._loop.call_later(max(self._due_in(), 0.0), self._on_timer)
        self._timer_for = head

    def _on_timer(self) -> None:
        self._timer = self._timer_for = None
        self._schedule()

    def _may_start(self) -> bool:
        """A batch starts when the model is free, or beside running ones (up to the limit) if it is
        full. A partial batch waits for a free model and grows meanwhile (docs/decisions/0004)."""
        if not self._running:
            return True
        if len(self._running) >= self.max_concurrent_batches:
            return False
        return self._queued_rows >= self.max_batch_size or self._closing

    def _due_in(self) -> float:
        """Seconds until the batch at the head of the queue should go; zero or less: now.

        A partial batch waits for company at most `max_batch_delay_s`, and no longer than batches
        have been taking to run (`_run_s`). Waiting longer cannot pay: a row that arrives after the
        batch left waits at most one run for the next one, while every row already queued would
        wait the whole delay. On a GPU a batch runs in a fraction of a millisecond, and with the
        full delay a closed loop of clients got one batch every 2 ms whatever the GPU could do."""
        if self._queued_rows >= self.max_batch_size or self._closing:
            return 0.0
        if self._can_grow is not None and not self._can_grow(len(self._queue)):
            return 0.0
        delay = self.max_batch_delay_s
        if self._run_s is not None and self._run_s < delay:
            delay = self._run_s
        return self._queue[0].enqueued + delay - self._clock()

    def _dispatch(self) -> None:
        """Start every batch that is due and may start now."""
        while self._queue and self._may_start() and self._due_in() <= 0:
            inline = self._lone_row_may_run_inline()
            if inline and not self._turn_waited:
                if self._lone_wait is None:
                    assert self._loop is not None
                    self._lone_wait = self._loop.call_soon(self._after_turn)
                return
            batch = self._take_batch()
            if batch:
                self._start(batch, inline=inline and len(batch) == 1)

    def _after_turn(self) -> None:
        self._lone_wait = None
        self._turn_waited = True
        try:
            self._schedule()
        finally:
            self._turn_waited = False

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = dropped = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the caller went away (cancelled): its rows are not run
                self._queue.popleft()
                self._queued_rows -= len(item.rows)
                dropped += len(item.rows)
                continue
            if batch and rows + len(item.rows) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= len(item.rows)
            batch.append(item)
            rows += len(item.rows)
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
        return batch

    def _start(self, batch: list[_Pending], *, inline: bool = False) -> None:
        """Hand ``batch`` to the executor (``inline``: run it here, see ``inline_below_s``). Its
        completion comes back with one loop callback, not the two hops (and a task step) of awaiting
        `run_in_executor`."""
        assert self._loop is not None and self._executor is not None
        loop = self._loop
        done: asyncio.Future[None] = loop.create_future()
        parts = [item.rows for item in batch]
        # A batch runs (ONNX Runtime lets go of the GIL): the rows are joined here meanwhile, not by
        # the inference thread once that run ends, where the copy stands between the two runs. With
        # the model idle, the thread joins them: the copy would wait for nothing.
        join_here = len(parts) > 1 and bool(self._running) and self.join_while_running
        self._running.add(done)
        started = self._clock()
        if join_here:
            try:
                parts = [np.concatenate(parts)]
            except Exception as exc:  # rows that do not fit together: their callers fail, not the loop
                self._fail_soon(batch, started, done, exc)
                return
        if inline:
            ran: Future[_Run] = Future()
            try:
                ran.set_result(self._timed_run(parts))
            except Exception as exc:
                ran.set_exception(exc)
            self._finish(batch, started, done, ran)
            return
        try:
            work = self._executor.submit(self._timed_run, parts)
        except RuntimeError as exc:  # the executor is shut down
            self._fail_soon(batch, started, done, exc)
            return
        work.add_done_callback(lambda work: loop.call_soon_threadsafe(self._finish, batch, started, done, work))

    def _fail_soon(self, batch: list[_Pending], started: float, done: asyncio.Future[None], exc: Exception) -> None:
        """``batch`` never reached the model: its callers get ``exc`` on the next turn of the loop."""
        assert self._loop is not None
        failed: Future[_Run] = Future()
        failed.set_exception(exc)
        self._loop.call_soon(self._finish, batch, started, done, failed)

    def _lone_row_may_run_inline(self) -> bool:
        """Whether the queue's next batch is one row that may run on the event loop: see ``inline_below_s``."""
        if self._lone_row_s is None or self._lone_row_s >= self.inline_below_s or self._closing:
            return False
        if self._running or len(self._queue) != 1 or len(self._queue[0].rows) != 1:
            return False
        return self._can_grow is not None and not self._can_grow(1)

    def _timed_run(self, parts: list[np.ndarray]) -> _Run:
        """In the executor's thread: the batch (its rows joined, unless `_start` did), and when it
        really ran (it may have waited for the thread)."""
        runs = self._runs
        token = runs.begin() if runs is not None else None
        try:
            began = self._clock()
            outputs = self._run_batch(parts[0] if len(parts) == 1 else np.concatenate(parts))
            return _Run(outputs, began, self._clock())
        finally:
            if token is not None:
                assert runs is not None
                runs.end(token)

    def _finish(self, batch: list[_Pending], started: float, done: asyncio.Future[None], work: Future[_Run]) -> None:
        self._running.discard(done)
        # The next batch starts (or its timer is set) before this batch's callers get their answers:
        # each answer schedules its caller's continuation, and anything scheduled after them waits
        # until all have run, with the model idle meanwhile (docs/decisions/0001).
        self._schedule()
        total = sum(len(item.rows) for item in batch)
        failed = False
        began: float = started  # a batch that failed has no timing of its own
        ended: float | None = None
        try:
            run = work.result()
            outputs, began, ended = run.outputs, run.began, run.ended
            if len(outputs) != total:
                raise InferenceError(f"model returned {len(outputs)} rows for a batch of {total}")
            took = ended - began
            self._run_s = took if self._run_s is None else 0.8 * self._run_s + 0.2 * took
            if total == 1:  # smoothed, but one slow run is enough to stop running them on the loop
                lone = self._lone_row_s
                self._lone_row_s = took if lone is None or took >= self.inline_below_s else 0.8 * lone + 0.2 * took
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
            done.set_result(None)
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        rows=total,
                        requests=sum(item.requests for item in batch),
                        queue_waits=[began - item.enqueued for item in batch for _ in range(item.requests)],
                        inference_seconds=(ended if ended is not None else self._clock()) - began,
                        failed=failed,
                        sources=len({item.source for item in batch}),
                    )
                )
