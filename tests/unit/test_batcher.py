"""The dynamic batcher: batch formation, load shedding, deadlines, disconnects, instances,
drain and close.

No assertion depends on timing: the test runners block until the test lets them go, so items
pile up in the queue exactly when the test wants, and every wait has only a safety bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from clip_har.errors import (
    BatcherClosedError,
    BatchInputError,
    ClipHarError,
    DeadlineExceededError,
    QueueFullError,
)
from clip_har.inference.batcher import BatchRecord, DynamicBatcher

T = TypeVar("T")
SAFETY = 30.0  # seconds: only ever reached when a test is broken


class Runner:
    """Doubles each batch and records the item values it saw.

    When ``gated``, each call waits for a permit from :meth:`allow`; :meth:`entered` waits
    until the next call has started."""

    def __init__(self, *, gated: bool = True, fail_on: float | None = None) -> None:
        self.gated = gated
        self.fail_on = fail_on
        self.batches: list[list[float]] = []
        self._permits = threading.Semaphore(0)
        self._entries = threading.Semaphore(0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch[:, 0].tolist())
        self._entries.release()
        if self.gated and not self._permits.acquire(timeout=SAFETY):
            raise RuntimeError("the test never let this batch run")
        if self.fail_on is not None and self.fail_on in batch[:, 0]:
            raise RuntimeError("engine failure")
        return batch * 2

    def allow(self, calls: int = 1) -> None:
        for _ in range(calls):
            self._permits.release()

    async def entered(self) -> None:
        assert await asyncio.to_thread(self._entries.acquire, True, SAFETY)


def item(value: float, width: int = 2) -> np.ndarray:
    return np.full((width,), value, dtype=np.float32)


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), SAFETY))  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (the bound only catches broken tests)."""
    give_up = time.monotonic() + SAFETY
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def started(batcher: DynamicBatcher, *runners: Runner) -> AsyncIterator[DynamicBatcher]:
    await batcher.start()
    try:
        yield batcher
    finally:
        for runner in runners:
            runner.allow(1000)
        await batcher.close()


def test_batches_are_capped_and_items_arriving_during_a_batch_form_the_next() -> None:
    runner = Runner()
    records: list[BatchRecord] = []

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_batch_size=4, max_wait_ms=0, on_batch=records.append)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            rest = [asyncio.create_task(batcher.submit(item(v))) for v in range(1, 11)]
            await until(lambda: batcher.depth == 10)
            assert batcher.in_flight == 1
            runner.allow(4)
            outputs = await asyncio.gather(first, *rest)
            assert [float(out[0]) for out in outputs] == [2.0 * v for v in range(11)]
            assert batcher.depth == 0 and batcher.in_flight == 0

    run(scenario)
    assert runner.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [record.size for record in records] == [1, 4, 4, 2]
    assert all(len(r.queue_seconds) == r.size and r.worker == 0 for r in records)
    assert all(r.inference_seconds >= 0 and min(r.queue_seconds) >= 0 for r in records)


def test_a_full_batch_runs_without_waiting_for_max_wait() -> None:
    runner = Runner(gated=False)

    async def scenario() -> np.ndarray:
        batcher = DynamicBatcher([runner], max_batch_size=4, max_wait_ms=600_000)
        async with started(batcher):
            return await batcher.submit_many(np.stack([item(v) for v in range(4)]))

    assert run(scenario)[:, 0].tolist() == [0, 2, 4, 6]
    assert runner.batches == [[0, 1, 2, 3]]


def test_a_lone_request_runs_at_once_instead_of_waiting_max_wait() -> None:
    """Concurrency 1: nothing else is coming, so a 10-minute max_wait is not paid (the run
    bound would fail the test long before it)."""
    runner = Runner(gated=False)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher([runner], max_batch_size=32, max_wait_ms=600_000)
        async with started(batcher):
            return [await batcher.submit(item(v)) for v in range(3)]

    assert [out.tolist() for out in run(scenario)] == [[0, 0], [2, 2], [4, 4]]
    assert runner.batches == [[0], [1], [2]]


def test_after_a_batch_of_several_a_new_request_waits_for_company() -> None:
    """Clients answered together come back together: the next request waits to batch."""
    runner = Runner(gated=False)

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_batch_size=2, max_wait_ms=600_000)
        async with started(batcher):
            await batcher.submit_many(np.stack([item(0), item(1)]))
            first = asyncio.create_task(batcher.submit(item(2)))
            await asyncio.sleep(0.05)  # an eager worker would have taken it by now
            assert batcher.depth == 1 and batcher.in_flight == 0
            second = asyncio.create_task(batcher.submit(item(3)))
            await asyncio.gather(first, second)

    run(scenario)
    assert runner.batches == [[0, 1], [2, 3]]


def test_max_wait_zero_runs_only_what_is_already_queued() -> None:
    runner = Runner(gated=False)

    async def scenario() -> np.ndarray:
        batcher = DynamicBatcher([runner], max_batch_size=32, max_wait_ms=0)
        async with started(batcher):
            return await batcher.submit(item(3))

    assert run(scenario).tolist() == [6, 6]
    assert runner.batches == [[3]]


def test_a_full_queue_refuses_at_once_with_retry_after_and_loses_nothing() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_batch_size=8, max_wait_ms=0, max_queue=3)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            queued = [asyncio.create_task(batcher.submit(item(v))) for v in (1, 2, 3)]
            await until(lambda: batcher.depth == 3)
            with pytest.raises(QueueFullError) as refused:
                await batcher.submit(item(4))
            assert refused.value.retry_after >= 1
            assert isinstance(refused.value, ClipHarError)
            assert batcher.depth == 3
            runner.allow(2)
            outputs = await asyncio.gather(first, *queued)
            assert [float(out[0]) for out in outputs] == [0, 2, 4, 6]

    run(scenario)
    assert runner.batches == [[0], [1, 2, 3]]


def test_an_expired_item_is_answered_at_its_deadline_and_never_computed() -> None:
    runner = Runner()
    expired: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0, on_expired=expired.append)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            with pytest.raises(DeadlineExceededError):  # answered while the engine is busy
                await batcher.submit(item(1), deadline=time.monotonic() + 0.05)
            assert batcher.depth == 0
            with pytest.raises(DeadlineExceededError):  # already past: refused at once
                await batcher.submit(item(2), deadline=time.monotonic() - 1)
            runner.allow()
            assert (await first).tolist() == [0, 0]

    run(scenario)
    assert runner.batches == [[0]]
    assert expired == [1, 1]


def test_a_cancelled_waiting_submit_is_dropped_from_the_queue() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            gone = asyncio.create_task(batcher.submit(item(1)))
            await until(lambda: batcher.depth == 1)
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert batcher.depth == 0
            runner.allow(2)
            assert (await first)[0] == 0
            assert (await batcher.submit(item(2)))[0] == 4

    run(scenario)
    assert runner.batches == [[0], [2]]


def test_a_submit_cancelled_while_its_batch_runs_is_discarded_without_error() -> None:
    runner = Runner()
    loop_errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            kept = asyncio.create_task(batcher.submit(item(1)))
            gone = asyncio.create_task(batcher.submit(item(2)))
            await until(lambda: batcher.depth == 2)
            runner.allow()
            await runner.entered()  # the batch [1, 2] is inside the engine
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            runner.allow()
            assert (await first)[0] == 0 and (await kept)[0] == 2
            runner.allow()
            assert (await batcher.submit(item(3)))[0] == 6

    run(scenario)
    assert runner.batches == [[0], [1, 2], [3]]
    assert loop_errors == []


def test_an_engine_failure_fails_its_whole_batch_and_the_next_batch_works() -> None:
    runner = Runner(fail_on=99)

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            doomed = [asyncio.create_task(batcher.submit(item(v))) for v in (99, 5, 6)]
            await until(lambda: batcher.depth == 3)
            runner.allow(3)
            assert (await first)[0] == 0
            results = await asyncio.gather(*doomed, return_exceptions=True)
            assert all(isinstance(r, RuntimeError) and str(r) == "engine failure" for r in results)
            assert (await batcher.submit(item(7)))[0] == 14

    run(scenario)
    assert runner.batches == [[0], [99, 5, 6], [7]]


def test_a_wrong_number_of_engine_rows_fails_the_batch() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher([lambda batch: batch[:1]], max_batch_size=2, max_wait_ms=0)
        async with started(batcher):
            with pytest.raises(ClipHarError, match="batch of 2"):
                await batcher.submit_many(np.stack([item(1), item(2)]))

    run(scenario)


def test_two_instances_run_two_batches_at_the_same_time() -> None:
    both_inside = threading.Barrier(2, timeout=SAFETY)  # breaks unless both calls overlap
    records: list[BatchRecord] = []

    def meeting_runner(batch: np.ndarray) -> np.ndarray:
        both_inside.wait()
        return batch * 2

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(
            [meeting_runner, meeting_runner],
            max_batch_size=1,
            max_wait_ms=0,
            on_batch=records.append,
        )
        async with started(batcher):
            return list(await asyncio.gather(batcher.submit(item(1)), batcher.submit(item(2))))

    assert [float(out[0]) for out in run(scenario)] == [2, 4]
    assert sorted(record.worker for record in records) == [0, 1]


def test_submit_many_keeps_order_across_batches() -> None:
    runner = Runner(gated=False)
    rows = np.stack([item(v) for v in range(7)])

    async def scenario() -> np.ndarray:
        batcher = DynamicBatcher([runner], max_batch_size=3, max_wait_ms=0)
        async with started(batcher):
            return await batcher.submit_many(rows)

    np.testing.assert_array_equal(run(scenario), rows * 2)
    assert runner.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_submit_many_is_admitted_all_or_nothing() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_batch_size=8, max_wait_ms=0, max_queue=4)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            pair = asyncio.create_task(batcher.submit_many(np.stack([item(1), item(2)])))
            await until(lambda: batcher.depth == 2)
            with pytest.raises(QueueFullError):
                await batcher.submit_many(np.stack([item(v) for v in (3, 4, 5)]))
            assert batcher.depth == 2
            with pytest.raises(BatchInputError, match="at most 4") as too_many:
                await batcher.submit_many(np.stack([item(v) for v in range(5)]))
            assert isinstance(too_many.value, ValueError)
            with pytest.raises(BatchInputError):
                await batcher.submit_many(np.zeros((0, 2), dtype=np.float32))
            fits = asyncio.create_task(batcher.submit_many(np.stack([item(6), item(7)])))
            await until(lambda: batcher.depth == 4)
            runner.allow(2)
            assert (await first)[0] == 0
            assert (await pair)[:, 0].tolist() == [2, 4]
            assert (await fits)[:, 0].tolist() == [12, 14]

    run(scenario)
    assert runner.batches == [[0], [1, 2, 6, 7]]


def test_items_of_another_shape_wait_for_their_own_batch() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            narrow = asyncio.create_task(batcher.submit(item(1, width=2)))
            wide = asyncio.create_task(batcher.submit(item(2, width=3)))
            narrow_too = asyncio.create_task(batcher.submit(item(3, width=2)))
            await until(lambda: batcher.depth == 3)
            runner.allow(3)
            assert (await wide).tolist() == [4, 4, 4]
            assert (await narrow).tolist() == [2, 2] and (await narrow_too).tolist() == [6, 6]
            assert (await first)[0] == 0

    run(scenario)
    assert runner.batches == [[0], [1, 3], [2]]


def test_drain_refuses_new_work_and_waits_for_what_was_accepted() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            accepted = [asyncio.create_task(batcher.submit(item(0)))]
            await runner.entered()
            accepted += [asyncio.create_task(batcher.submit(item(v))) for v in (1, 2)]
            await until(lambda: batcher.depth == 2)
            draining = asyncio.create_task(batcher.drain(timeout=SAFETY))
            await until(lambda: not batcher.accepting)
            with pytest.raises(BatcherClosedError):
                await batcher.submit(item(3))
            with pytest.raises(BatcherClosedError):
                await batcher.submit_many(np.stack([item(4)]))
            assert not draining.done()
            runner.allow(2)
            assert await draining is True
            assert [float(out[0]) for out in await asyncio.gather(*accepted)] == [0, 2, 4]
            assert batcher.depth == 0 and batcher.in_flight == 0

    run(scenario)
    assert runner.batches == [[0], [1, 2]]


def test_drain_reports_work_that_did_not_finish_in_time() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner], max_wait_ms=0)
        async with started(batcher, runner):
            first = asyncio.create_task(batcher.submit(item(0)))
            await runner.entered()
            assert await batcher.drain(timeout=0.01) is False  # the engine is held
            runner.allow()
            assert (await first)[0] == 0
            assert await batcher.drain(timeout=SAFETY) is True

    run(scenario)


def test_close_fails_every_waiter_and_leaves_no_tasks_or_threads() -> None:
    runner = Runner()

    async def scenario() -> None:
        batcher = DynamicBatcher([runner, runner], max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        running = [asyncio.create_task(batcher.submit(item(v))) for v in (0, 1)]
        await runner.entered()
        await runner.entered()
        waiting = asyncio.create_task(batcher.submit(item(2)))
        await until(lambda: batcher.depth == 1)
        closing = asyncio.create_task(batcher.close())
        for task in [waiting, *running]:
            with pytest.raises(BatcherClosedError):
                await task
        runner.allow(2)  # the engine calls under way return; close waits for them
        await closing
        await batcher.close()  # idempotent
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("clip-har-batch")]
        assert batcher.depth == 0 and batcher.in_flight == 0 and not batcher.accepting
        with pytest.raises(BatcherClosedError):
            await batcher.submit(item(3))
        with pytest.raises(BatcherClosedError):
            await batcher.start()

    run(scenario)
    assert not [t for t in threading.enumerate() if t.name.startswith("clip-har-batch")]
    assert sorted(runner.batches) == [[0], [1]]


@pytest.mark.parametrize(
    "settings",
    [
        {"runners": []},
        {"max_batch_size": 0},
        {"max_queue": 0},
        {"max_wait_ms": -1.0},
        {"max_wait_ms": float("nan")},
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"runners": [Runner(gated=False)], **settings}
    runners = arguments.pop("runners")
    with pytest.raises(ClipHarError):
        DynamicBatcher(runners, **arguments)
