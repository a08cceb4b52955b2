"""The dynamic batcher, deterministically: no model, a function that records its batches.

No test sleeps to let something happen: each waits for the state it needs (`until`), and
a "still waiting" check uses `asyncio.wait(..., timeout=0.1)`, which cannot fail by being slow."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.batcher import Batcher, BatchStats, InferenceError, QueueFullError, RunsInProgress

LONG = 60.0  # a deadline no test reaches: flushes must be size-triggered


async def until(condition, timeout: float = 10.0) -> None:
    """Wait, on the event loop, until ``condition()`` holds (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Echoes each row's id back (times 10) and records batch sizes; can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = 0  # batches that reached the function (and may be held at the gate)
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.started += 1
        self.gate.wait(10)
        self.batches.append(batch[:, 0].tolist())
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return batch * 10


def rows(*ids: int) -> np.ndarray:
    return np.array([[i] for i in ids])


@pytest.fixture
async def executor():
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


async def make(recorder: Recorder, executor, **kw) -> Batcher:
    b = Batcher(recorder, executor=executor, **kw)
    b.start()
    return b


async def test_full_batch_flushes_without_waiting_for_the_deadline(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=4, max_batch_delay_s=LONG)
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(rows(i)) for i in range(4))), 5)
    assert [r.tolist() for r in results] == [[[0]], [[10]], [[20]], [[30]]]
    assert rec.batches == [[0, 1, 2, 3]]
    await b.close()


async def test_partial_batch_waits_for_the_deadline(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=4, max_batch_delay_s=LONG)
    pending = asyncio.ensure_future(b.submit(rows(1)))
    done, _ = await asyncio.wait({pending}, timeout=0.1)
    assert not done  # one row, batch not full, deadline far away: still waiting
    await b.close()  # closing flushes what is queued
    assert (await pending).tolist() == [[10]]
    assert rec.batches == [[1]]


async def test_deadline_flushes_a_partial_batch(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=32, max_batch_delay_s=0.01)
    assert (await asyncio.wait_for(b.submit(rows(5)), 5)).tolist() == [[50]]
    assert rec.batches == [[5]]
    await b.close()


async def test_multi_row_requests_get_exactly_their_rows_in_order(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=6, max_batch_delay_s=LONG)
    first = asyncio.ensure_future(b.submit(rows(1, 2, 3)))
    second = asyncio.ensure_future(b.submit(rows(4)))
    third = asyncio.ensure_future(b.submit(rows(5, 6)))
    a, c, d = await asyncio.wait_for(asyncio.gather(first, second, third), 5)
    assert a.tolist() == [[10], [20], [30]]
    assert c.tolist() == [[40]]
    assert d.tolist() == [[50], [60]]
    assert rec.batches == [[1, 2, 3, 4, 5, 6]]
    await b.close()


async def test_a_batch_never_exceeds_max_rows_and_requests_are_not_split(executor) -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the first batch so the rest queue up behind it
    b = await make(rec, executor, max_batch_size=4, max_batch_delay_s=LONG)
    futures = [asyncio.ensure_future(b.submit(rows(i, i))) for i in range(0, 12, 2)]
    await until(lambda: rec.started == 1 and b.queued_rows == 8)  # one batch held, the rest queued
    rec.gate.set()
    await b.close()
    await asyncio.gather(*futures)
    assert all(len(batch) <= 4 for batch in rec.batches)
    assert sorted(x for batch in rec.batches for x in batch) == sorted(x for i in range(0, 12, 2) for x in (i, i))
    for batch in rec.batches:  # each request's two rows travel together
        assert batch[0::2] == batch[1::2]


async def test_failed_batch_fails_every_caller_and_the_batcher_goes_on(executor) -> None:
    rec = Recorder()
    rec.fail_next = True
    b = await make(rec, executor, max_batch_size=3, max_batch_delay_s=LONG)
    results = await asyncio.gather(*(b.submit(rows(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, InferenceError) and "boom" in str(r) for r in results)
    ok = await asyncio.gather(*(b.submit(rows(i)) for i in range(3)))
    assert [r.tolist() for r in ok] == [[[0]], [[10]], [[20]]]
    await b.close()


async def test_wrong_number_of_outputs_is_an_error_for_everyone(executor) -> None:
    b = Batcher(lambda batch: batch[:1], executor=executor, max_batch_size=2, max_batch_delay_s=LONG)
    b.start()
    results = await asyncio.gather(b.submit(rows(1)), b.submit(rows(2)), return_exceptions=True)
    assert all(isinstance(r, InferenceError) and "1 rows for a batch of 2" in str(r) for r in results)
    await b.close()


async def test_queue_bound_rejects_at_once_and_every_accepted_request_is_answered(executor) -> None:
    rec = Recorder()
    rec.gate.clear()
    b = await make(rec, executor, max_batch_size=2, max_batch_delay_s=0, max_queue_rows=4)
    first = asyncio.ensure_future(b.submit(rows(0, 1)))  # taken by the worker, held at the gate
    await until(lambda: rec.started == 1)
    accepted = [asyncio.ensure_future(b.submit(rows(i))) for i in range(2, 6)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="limit 4"):
        await b.submit(rows(99))
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *accepted), 5)
    assert [r[:, 0].tolist() for r in results] == [[0, 10], [20], [30], [40], [50]]
    await b.close()


async def test_cancelled_caller_is_dropped_from_its_batch(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=3, max_batch_delay_s=LONG)
    gone = asyncio.ensure_future(b.submit(rows(1)))
    await asyncio.sleep(0)
    gone.cancel()
    stays = asyncio.ensure_future(b.submit(rows(2)))
    await until(lambda: b.queued_rows == 2)  # the cancelled row is still queued beside it
    await b.close()
    assert (await stays).tolist() == [[20]]
    assert rec.batches == [[2]]


async def test_stats_hook_sees_every_batch(executor) -> None:
    seen: list[BatchStats] = []
    b = Batcher(lambda x: x, executor=executor, max_batch_size=2, max_batch_delay_s=LONG, on_batch=seen.append)
    b.start()
    await asyncio.gather(*(b.submit(rows(i)) for i in range(4)))
    await b.close()
    assert [(s.rows, s.requests, s.failed) for s in seen] == [(2, 2, False), (2, 2, False)]
    assert all(len(s.queue_waits) == 2 for s in seen)


async def test_stats_count_the_requests_that_rows_stand_for(executor) -> None:
    """A front end sends several requests' rows as one submission: each request waited."""
    seen: list[BatchStats] = []
    b = Batcher(lambda x: x, executor=executor, max_batch_size=4, max_batch_delay_s=LONG, on_batch=seen.append)
    b.start()
    await asyncio.gather(b.enqueue(rows(1, 2, 3), requests=2), b.enqueue(rows(4), requests=1))
    await b.close()
    assert [(s.rows, s.requests, len(s.queue_waits)) for s in seen] == [(4, 3, 3)]


async def test_closed_batcher_refuses_new_rows(executor) -> None:
    b = Batcher(lambda x: x, executor=executor)
    b.start()
    await b.close()
    from app.batcher import BatcherClosedError

    with pytest.raises(BatcherClosedError):
        await b.submit(rows(1))


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_batch_delay_s": -1}, {"max_queue_rows": 0}])
def test_arguments_are_validated(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Batcher(lambda x: x, **kwargs)


def test_a_lone_request_is_flushed_by_the_deadline_under_uvloop() -> None:
    """uvloop's millisecond timers can fire just before the deadline; a lone row must still go out."""
    import time

    import uvloop

    async def scenario() -> list[float]:
        pool = ThreadPoolExecutor(1)
        b = Batcher(lambda x: x, executor=pool, max_batch_size=32, max_batch_delay_s=0.0015)
        b.start()
        waits = []
        for _ in range(50):
            started = time.perf_counter()
            await asyncio.wait_for(b.submit(rows(1)), 2)
            waits.append(time.perf_counter() - started)
        await b.close()
        pool.shutdown()
        return waits

    waits = uvloop.run(scenario())
    assert max(waits) < 1.0  # answered by the deadline, not by the 2 s guard (or never)


async def test_no_waiting_when_nobody_else_can_join(executor) -> None:
    clock = FakeClock()
    rec = Recorder()

    def slow_model(batch: np.ndarray) -> np.ndarray:
        clock.advance(2 * LONG)  # batches take longer than the delay, so waiting is worth it
        return rec(batch)

    in_flight = 1  # only the request already queued
    b = Batcher(
        slow_model,
        executor=executor,
        max_batch_size=32,
        max_batch_delay_s=LONG,
        can_grow=lambda queued: in_flight > queued,
        clock=clock,
    )
    b.start()
    assert (await asyncio.wait_for(b.submit(rows(3)), 5)).tolist() == [[30]]  # not held for the 60 s delay
    in_flight = 2  # another request is on its way: wait for it
    first = asyncio.ensure_future(b.submit(rows(1)))
    done, _ = await asyncio.wait({first}, timeout=0.1)
    assert not done
    second = asyncio.ensure_future(b.submit(rows(2)))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert rec.batches == [[3], [1, 2]]
    await b.close()


async def test_a_partial_batch_waits_for_company_no_longer_than_batches_take_to_run(executor) -> None:
    """Someone else is always in flight (a closed loop of clients), and the delay is a minute: once
    batches are known to take 50 ms, a partial batch leaves after waiting about that long. A row
    that arrives later waits at most one run for the next batch."""

    def fifty_ms_model(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return batch * 10

    b = Batcher(fifty_ms_model, executor=executor, max_batch_size=2, max_batch_delay_s=LONG, can_grow=lambda _: True)
    b.start()
    await asyncio.wait_for(asyncio.gather(b.submit(rows(1)), b.submit(rows(2))), 5)  # full: runs at once
    sent = time.perf_counter()
    assert (await asyncio.wait_for(b.submit(rows(3)), 5)).tolist() == [[30]]  # not held for the minute
    assert time.perf_counter() - sent >= 0.05 + 0.04  # it waited for company (about one run), then ran
    await b.close()


class Overlap:
    """Holds every batch until released and records how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(batch))
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        return batch * 10


@pytest.mark.parametrize("concurrent", [1, 2])
async def test_at_most_max_concurrent_batches_run_at_once(concurrent: int) -> None:
    pool = ThreadPoolExecutor(4)
    rec = Overlap()
    b = Batcher(rec, executor=pool, max_batch_size=2, max_batch_delay_s=0, max_concurrent_batches=concurrent)
    b.start()
    pending = [asyncio.ensure_future(b.submit(rows(i, i))) for i in range(8)]  # each a full batch
    await until(lambda: rec.running == concurrent)
    assert rec.running == concurrent  # the rest wait in the queue for a free slot
    assert b.queued_rows == 2 * (8 - concurrent)
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert [r.tolist() for r in results] == [[[i * 10], [i * 10]] for i in range(8)]
    assert rec.peak == concurrent
    await b.close()
    pool.shutdown()


async def test_close_waits_for_batches_still_running(executor) -> None:
    rec = Overlap()
    b = Batcher(rec, executor=executor, max_batch_size=1, max_batch_delay_s=0, max_concurrent_batches=2)
    b.start()
    pending = [asyncio.ensure_future(b.submit(rows(i))) for i in range(2)]
    await until(lambda: rec.running == 2)
    closing = asyncio.ensure_future(b.close())
    done, _ = await asyncio.wait({closing}, timeout=0.1)
    assert not done  # both batches are still held
    rec.gate.set()
    await asyncio.wait_for(closing, 5)
    assert [r.tolist() for r in await asyncio.gather(*pending)] == [[[0]], [[10]]]


async def test_a_partial_batch_waits_for_the_running_one_and_grows(executor) -> None:
    rec = Overlap()
    b = Batcher(rec, executor=executor, max_batch_size=4, max_batch_delay_s=0, max_concurrent_batches=2)
    b.start()
    first = asyncio.ensure_future(b.submit(rows(0)))
    await until(lambda: rec.running == 1)
    later = [asyncio.ensure_future(b.submit(rows(i))) for i in (1, 2)]
    done, _ = await asyncio.wait(set(later), timeout=0.1)
    assert not done
    assert rec.running == 1  # two rows would not fill a batch: they wait rather than run beside it
    assert b.queued_rows == 2
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert rec.peak == 1
    assert rec.sizes == [1, 2]  # then they went together
    await b.close()


class RecordingPool(ThreadPoolExecutor):
    """A real pool that also notes, on the event loop's thread, each batch handed to it."""

    def __init__(self, threads: int = 2) -> None:
        super().__init__(threads)
        self.handed: list[int] = []
        self.calls: list[list[tuple[int, ...]]] = []  # the shape of each part handed over

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.handed.append(sum(len(part) for part in args[0]))  # the batch's rows, joined or not yet
        self.calls.append([part.shape for part in args[0]])
        return super().submit(fn, *args, **kwargs)


async def test_the_next_batch_starts_before_the_finished_batchs_callers_resume() -> None:
    """While the event loop answers one batch's callers, the model already runs the next batch."""
    pool = RecordingPool()
    rec = Recorder()
    rec.gate.clear()
    b = Batcher(rec, executor=pool, max_batch_size=2, max_batch_delay_s=LONG)  # only full batches go
    b.start()
    seen_on_resume: list[list[int]] = []

    async def caller(i: int) -> None:
        await b.submit(rows(i))
        seen_on_resume.append(list(pool.handed))

    first = [asyncio.ensure_future(caller(i)) for i in (0, 1)]
    await until(lambda: rec.started == 1)  # the first batch is in the pool, held at the gate
    second = [asyncio.ensure_future(caller(i)) for i in (2, 3)]
    await until(lambda: b.queued_rows == 2)
    assert pool.handed == [2]  # one batch at a time: the second waits for the model
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(*first, *second), 5)
    assert seen_on_resume[0] == [2, 2]  # the second batch was handed over before the first caller ran on
    assert rec.batches == [[0, 1], [2, 3]]
    await b.close()
    pool.shutdown()


async def test_with_one_thread_the_next_full_batch_runs_without_a_turn_of_the_event_loop() -> None:
    """One inference thread and two batches handed over: the second waits in the thread's queue and
    starts the moment the first ends, even while the event loop is busy elsewhere."""
    pool = RecordingPool(threads=1)
    rec = Recorder()
    rec.gate.clear()
    b = Batcher(rec, executor=pool, max_batch_size=2, max_batch_delay_s=LONG, max_concurrent_batches=2)
    b.start()
    pending = [asyncio.ensure_future(b.submit(rows(i))) for i in range(4)]
    await until(lambda: rec.started == 1 and b.queued_rows == 0)
    assert pool.handed == [2, 2]  # both batches are with the pool, the second behind the held first
    rec.gate.set()
    deadline = time.monotonic() + 5
    while len(rec.batches) < 2 and time.monotonic() < deadline:  # holds the event loop meanwhile
        time.sleep(0.001)
    assert rec.batches == [[0, 1], [2, 3]]
    results = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert [r.tolist() for r in results] == [[[0]], [[10]], [[20]], [[30]]]
    await b.close()
    pool.shutdown()


async def test_a_batch_waiting_for_the_thread_counts_as_queue_wait_not_inference() -> None:
    seen: list[BatchStats] = []
    clock = FakeClock()
    gate = threading.Event()
    calls = 0

    def one_second_model(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        gate.wait(10)  # held until both batches are with the pool
        clock.advance(1.0)
        return batch

    pool = ThreadPoolExecutor(1)
    b = Batcher(
        one_second_model,
        executor=pool,
        max_batch_size=2,
        max_batch_delay_s=LONG,
        max_concurrent_batches=2,
        on_batch=seen.append,
        clock=clock,
    )
    b.start()
    pending = [asyncio.ensure_future(b.submit(rows(i))) for i in range(4)]
    await until(lambda: calls == 1 and b.queued_rows == 0)  # the second batch waits for the thread
    gate.set()
    await asyncio.wait_for(asyncio.gather(*pending), 5)
    await b.close()
    pool.shutdown()
    assert [s.rows for s in seen] == [2, 2]
    assert [s.inference_seconds for s in seen] == [1.0, 1.0]  # the model's time only
    assert seen[0].queue_waits == [0.0, 0.0]
    assert seen[1].queue_waits == [1.0, 1.0]  # the second batch waited in the thread for the first


async def test_without_an_executor_the_batcher_runs_its_own() -> None:
    b = Batcher(lambda x: x * 2, max_batch_size=4, max_batch_delay_s=0)
    b.start()
    assert (await asyncio.wait_for(b.submit(rows(21)), 5)).tolist() == [[42]]
    await b.close()


async def test_submit_before_start_is_a_clear_error() -> None:
    b = Batcher(lambda x: x)
    with pytest.raises(RuntimeError, match="start"):
        await b.submit(rows(1))


class Threads(Recorder):
    """A Recorder that also notes which thread ran each batch, and can be made slow."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.takes = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if self.takes:
            time.sleep(self.takes)
        return super().__call__(batch)


async def test_a_lone_row_runs_on_the_event_loop_once_one_row_is_known_to_be_quick(executor) -> None:
    """At one request at a time, the hand-off to the inference thread and back costs more than a
    small model's run; the first lone row measures the run in the thread."""
    rec = Threads()
    in_flight = 1
    b = await make(rec, executor, max_batch_delay_s=LONG, inline_below_s=0.5, can_grow=lambda q: in_flight > q)
    loop_thread = threading.get_ident()
    for i in range(3):
        assert (await asyncio.wait_for(b.submit(rows(i)), 5)).tolist() == [[i * 10]]
    assert rec.threads[0] != loop_thread
    assert rec.threads[1:] == [loop_thread, loop_thread]
    # A failure there fails its caller only, as in the thread.
    rec.fail_next = True
    with pytest.raises(InferenceError, match="boom"):
        await asyncio.wait_for(b.submit(rows(7)), 5)
    assert (await asyncio.wait_for(b.submit(rows(8)), 5)).tolist() == [[80]]
    assert rec.threads[-1] == loop_thread
    await b.close()


async def test_rows_run_in_the_thread_when_others_are_in_flight_or_the_model_is_slow(executor) -> None:
    rec = Threads()
    in_flight = 1
    b = await make(rec, executor, max_batch_delay_s=0.001, inline_below_s=0.05, can_grow=lambda q: in_flight > q)
    loop_thread = threading.get_ident()
    await asyncio.wait_for(b.submit(rows(1)), 5)  # measured in the thread
    in_flight = 2  # another request is on its way (decoding, say): it may join, so no inline run
    await asyncio.wait_for(b.submit(rows(2)), 5)
    assert loop_thread not in rec.threads
    in_flight = 1
    rec.takes = 0.1  # slower than the threshold: once measured, it stays in the thread
    await asyncio.wait_for(b.submit(rows(3)), 5)  # inline (the last run was quick), and measured slow
    for _ in range(10):
        await asyncio.wait_for(b.submit(rows(4)), 5)
    assert rec.threads[2] == loop_thread
    assert loop_thread not in rec.threads[3:]
    await b.close()


async def test_without_can_grow_or_threshold_nothing_runs_on_the_loop(executor) -> None:
    for kw in ({"inline_below_s": 1.0}, {"inline_below_s": 0.0, "can_grow": lambda q: False}):
        rec = Threads()
        b = await make(rec, executor, max_batch_delay_s=0.001, **kw)
        for i in range(3):
            await asyncio.wait_for(b.submit(rows(i)), 5)
        assert threading.get_ident() not in rec.threads
        await b.close()


async def test_requests_read_in_one_turn_share_batches_in_the_thread_instead_of_each_running_alone_on_the_loop(
    executor,
) -> None:
    """A server reads several requests in one turn of its loop, and each is counted in flight only
    when its own handler runs: the first one's row sees nobody else yet. It waits out the turn, so
    the others join it in the thread's batches; run at once on the loop, each would run alone, one
    after another, and answer before the next was even counted, so the next ran alone too."""
    rec = Threads()
    in_flight = 0

    async def handler(i: int) -> np.ndarray:
        nonlocal in_flight
        in_flight += 1  # admitted as its handler runs
        try:
            return await b.submit(rows(i))
        finally:
            in_flight -= 1

    b = await make(rec, executor, max_batch_delay_s=0.001, inline_below_s=0.5, can_grow=lambda q: in_flight > q)
    loop_thread = threading.get_ident()
    await asyncio.wait_for(handler(0), 5)  # measures one row in the thread
    await asyncio.wait_for(handler(1), 5)  # alone: runs on the loop
    assert rec.threads[1] == loop_thread and rec.batches == [[0], [1]]
    results = await asyncio.wait_for(asyncio.gather(*(handler(i) for i in range(2, 8))), 5)
    assert [r.tolist() for r in results] == [[[i * 10]] for i in range(2, 8)]
    assert loop_thread not in rec.threads[2:]
    assert sorted(row for batch in rec.batches[2:] for row in batch) == list(range(2, 8))
    assert max(len(batch) for batch in rec.batches[2:]) > 1
    await b.close()


async def test_rows_taken_out_of_a_queued_submission_are_not_run(executor) -> None:
    """A front end's message holds several requests; one that hangs up has its rows taken out."""
    rec = Recorder()
    dropped: list[int] = []
    b = await make(rec, executor, max_batch_size=8, max_batch_delay_s=0.05, on_drop=dropped.append)
    future = b.enqueue(rows(1, 2, 3, 4), requests=3)
    assert b.drop_rows(future, 1, 3)  # the second request's two rows
    assert b.queued_rows == 2 and dropped == [2]
    assert not b.drop_rows(future, 0, 2)  # all that is left: that is a cancel, not a drop
    assert (await asyncio.wait_for(future, 5)).tolist() == [[10], [40]]
    assert rec.batches == [[1, 4]]
    assert not b.drop_rows(future, 0, 1)  # ran: nothing to take out any more
    await b.close()


async def test_rows_that_do_not_fit_together_fail_their_batch_and_the_batcher_goes_on(executor) -> None:
    rec = Recorder()
    b = await make(rec, executor, max_batch_size=2, max_batch_delay_s=LONG)
    results = await asyncio.gather(b.submit(rows(1)), b.submit(np.zeros((1, 2))), return_exceptions=True)
    assert all(isinstance(r, InferenceError) for r in results), results
    assert rec.batches == []  # the model never saw them
    ok = await asyncio.gather(b.submit(rows(3)), b.submit(rows(4)))
    assert [r.tolist() for r in ok] == [[[30]], [[40]]]
    await b.close()


async def test_a_batch_handed_over_while_another_runs_is_joined_before_the_thread_takes_it() -> None:
    """The copy overlaps the running batch; rows that do not fit together fail there, and only their callers."""
    pool = RecordingPool(threads=1)
    rec = Recorder()
    rec.gate.clear()
    b = Batcher(rec, executor=pool, max_batch_size=2, max_batch_delay_s=LONG, max_concurrent_batches=2)
    b.start()
    first = [asyncio.ensure_future(b.submit(rows(i))) for i in (1, 2)]
    await until(lambda: rec.started == 1)  # held in the model
    misfits = await asyncio.wait_for(
        asyncio.gather(b.submit(rows(5)), b.submit(np.zeros((1, 2))), return_exceptions=True), 5
    )
    assert all(isinstance(r, InferenceError) for r in misfits), misfits
    assert len(pool.handed) == 1  # they never reached the thread
    second = [asyncio.ensure_future(b.submit(rows(i))) for i in (3, 4)]
    await until(lambda: len(pool.handed) == 2)
    assert pool.calls[1] == [(2, 1)]  # one array of both rows: joined on the loop while the first ran
    assert rec.started == 1
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*first, *second), 5)
    assert [r.tolist() for r in results] == [[[10]], [[20]], [[30]], [[40]]]
    await b.close()
    pool.shutdown()


async def test_without_joining_while_running_the_thread_gets_the_rows_as_they_came() -> None:
    pool = RecordingPool(threads=1)
    rec = Recorder()
    rec.gate.clear()
    b = Batcher(
        rec,
        executor=pool,
        max_batch_size=2,
        max_batch_delay_s=LONG,
        max_concurrent_batches=2,
        join_while_running=False,
    )
    b.start()
    pending = [asyncio.ensure_future(b.submit(rows(i))) for i in range(4)]
    await until(lambda: len(pool.handed) == 2)
    assert pool.calls[1] == [(1, 1), (1, 1)]  # joined by the thread, after the first batch's run
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert [r.tolist() for r in results] == [[[0]], [[10]], [[20]], [[30]]]
    await b.close()
    pool.shutdown()


async def test_runs_in_progress_show_how_long_a_run_has_gone_on_over_every_batcher(executor) -> None:
    """What the inference process watches for a run that never ends (app.host): a held run counts
    from when it reached the model, not from when it was queued, and is gone once it returns."""
    clock = FakeClock()
    runs = RunsInProgress(clock=clock)
    held, free = Recorder(), Recorder()
    held.gate.clear()
    a = await make(held, executor, max_batch_size=1, runs=runs, clock=clock)
    b = await make(free, executor, max_batch_size=1, runs=runs, clock=clock)
    assert runs.longest_s() == 0.0
    stuck = asyncio.ensure_future(a.submit(rows(1)))
    await until(lambda: held.started == 1)
    clock.advance(5.0)
    assert (await b.submit(rows(2))).tolist() == [[20]]  # another batcher's run, begun and ended meanwhile
    clock.advance(2.0)
    assert runs.longest_s() == 7.0
    held.gate.set()
    assert (await stuck).tolist() == [[10]]
    assert runs.longest_s() == 0.0
    await a.close()
    await b.close()
