"""Dynamic batching: many concurrent single-image requests become few engine calls.

A :class:`DynamicBatcher` keeps a bounded queue of items (one preprocessed sample each).
Its workers, one per engine instance, collect up to ``max_batch_size`` items or whatever
arrived within ``max_wait_ms`` of the oldest waiting one, stack them, and run the blocking
engine call in a thread so the event loop keeps serving. Each item's output row goes back
to the request that submitted it.

The wait is adaptive: a free worker waits for company only when the previous batch held
several items (clients answered together tend to come back together). A lone request, at
concurrency 1 or after a quiet spell, runs at once instead of paying the whole wait; under
load batches form as before (Triton's rule). Items that arrive while a batch runs form the
next batch either way.

What a service relies on:

* **Load shedding.** A full queue refuses at once (:class:`QueueFullError`, with a
  ``retry_after`` estimate) instead of growing without bound.
* **Deadlines.** An item whose deadline passes while it waits is answered at the deadline
  (:class:`DeadlineExceededError`) and never computed.
* **Disconnects.** Cancelling the task awaiting :meth:`DynamicBatcher.submit` drops the
  item from the queue, or discards its row if its batch already runs.
* **Graceful shutdown.** :meth:`DynamicBatcher.drain` refuses new work and waits for what
  was accepted; :meth:`DynamicBatcher.close` fails whatever is left and stops the workers.

See docs/serving.md ("Dynamic batching").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from clip_har.errors import (
    BatcherClosedError,
    BatchInputError,
    ClipHarError,
    DeadlineExceededError,
    QueueFullError,
    UsageError,
)
from clip_har.io import plural

logger = logging.getLogger(__name__)

BatchRunner = Callable[[np.ndarray], np.ndarray]
"""A blocking engine call: ``[N, ...]`` stacked items -> ``[N, ...]`` outputs (row i: item i)."""

_RECENT_BATCHES = 32  # batch times kept for the Retry-After estimate
_T = TypeVar("_T")


@dataclass(frozen=True)
class BatchRecord:
    """What one executed batch looked like (for metrics)."""

    size: int
    queue_seconds: tuple[float, ...]  # per item: submit -> batch start
    inference_seconds: float
    worker: int  # which runner (instance) ran it


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)  # identity equality: deque.remove must not compare arrays
class _Item:
    row: np.ndarray
    future: asyncio.Future[np.ndarray]
    submitted: float  # time.monotonic()
    deadline: float | None
    state: _State = _State.QUEUED
    timer: asyncio.TimerHandle | None = None

    def settle(self) -> None:
        """Leave the queue for good: no deadline timer any more."""
        self.state = _State.DONE
        self.stop_timer()

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _timed(runner: BatchRunner, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """Run ``runner`` (in a worker thread) and measure its own time."""
    start = time.perf_counter()
    outputs = np.asarray(runner(batch))
    return outputs, time.perf_counter() - start


class DynamicBatcher:
    """Collects submitted items into batches and runs them on one or more engine instances.

    ``runners`` holds one blocking :data:`BatchRunner` per instance; each gets a worker task
    and its own thread, so instances run in parallel (ONNX Runtime releases the GIL).
    ``on_batch`` is called with a :class:`BatchRecord` after each batch, ``on_expired(n)``
    when ``n`` items expired unrun. Use it from one event loop: :meth:`start` there, submit
    there, then :meth:`drain` and/or :meth:`close`.
    """

    def __init__(
        self,
        runners: Sequence[BatchRunner],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self._runners = list(runners)
        if not self._runners:
            raise UsageError("the batcher needs at least one runner (engine instance)")
        if not all(callable(runner) for runner in self._runners):
            raise UsageError("every batcher runner must be callable")
        if max_batch_size < 1:
            raise UsageError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not (math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise UsageError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise UsageError(f"max_queue must be at least 1, got {max_queue}")
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._on_expired = on_expired

        self._queue: deque[_Item] = deque()  # live waiting items only, oldest first
        self._in_flight = 0
        self._running: dict[int, list[_Item]] = {}  # worker -> its running batch
        self._calls: set[concurrent.futures.Future[tuple[np.ndarray, float]]] = set()
        self._batch_seconds: deque[float] = deque(maxlen=_RECENT_BATCHES)
        self._last_batch_size = 0  # > 1: company is expected, so the next batch waits
        self._wakeup = asyncio.Event()  # set when items arrive
        self._idle = asyncio.Event()  # set when nothing waits and nothing runs
        self._idle.set()
        self._collect_lock = asyncio.Lock()  # one worker collects at a time
        self._workers: list[asyncio.Task[None]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._accepting = True
        self._closing = False
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ state

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items in running batches."""
        return self._in_flight

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` takes new work (false once draining or closed)."""
        return self._accepting

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start one worker task per runner on the running loop (again: no effect)."""
        if self._closing:
            raise BatcherClosedError("the batcher is closed")
        if self._workers:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._runners), thread_name_prefix="clip-har-batch"
        )
        self._workers = [
            asyncio.create_task(self._work(index), name=f"clip-har-batcher-{index}")
            for index in range(len(self._runners))
        ]
        for task in self._workers:
            task.add_done_callback(_log_worker_end)
        logger.debug(
            "batcher started: %s, max_batch_size=%d, max_wait=%.1f ms, max_queue=%d",
            plural(len(self._runners), "instance"),
            self._max_batch_size,
            self._max_wait * 1000,
            self._max_queue,
        )

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, then wait up to ``timeout`` s until queued and running work is done.

        Returns True when everything accepted has finished in time."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            logger.debug(
                "batcher drain timed out: %d waiting, %d running", self.depth, self.in_flight
            )
            return False
        return True

    async def close(self) -> None:
        """Stop the workers; every item still waiting or running fails with
        :class:`BatcherClosedError`. Engine calls already under way cannot be interrupted:
        close waits for them to return (drain first to bound that), so no thread outlives it.
        Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._accepting = False
        while self._queue:
            item = self._queue.popleft()
            item.settle()
            item.fail(BatcherClosedError("the batcher closed before this item ran"))
        for batch in self._running.values():
            for item in batch:
                item.fail(BatcherClosedError("the batcher closed while this item ran"))
        calls = list(self._calls)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if calls:
            await asyncio.wait([asyncio.wrap_future(call) for call in calls])
        self._calls.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # idle threads now: joins at once
        self._workers = []
        self._update_idle()
        self._closed.set()
        logger.debug("batcher closed")

    # ------------------------------------------------------------------ submitting

    async def submit(self, item: np.ndarray, *, deadline: float | None = None) -> np.ndarray:
        """Queue one sample (e.g. pixels ``[3, H, W]``) and return its output row.

        ``deadline`` is a :func:`time.monotonic` value. Raises :class:`QueueFullError` at once
        when ``max_queue`` items wait, :class:`DeadlineExceededError` when the deadline passes
        before its batch runs, :class:`BatcherClosedError` when draining or closed. Cancelling
        the awaiting task drops the item."""
        (queued,) = self._admit([np.asarray(item)], deadline)
        try:
            return await queued.future
        except asyncio.CancelledError:
            self._discard(queued)
            raise

    async def submit_many(self, items: np.ndarray, *, deadline: float | None = None) -> np.ndarray:
        """Queue every row of ``items`` ``[N, ...]`` and return their outputs stacked in order.

        Admission is all-or-nothing (:class:`QueueFullError` unless N items fit now;
        :class:`BatchInputError` when N exceeds ``max_queue`` or is 0). If one row fails,
        the others are dropped and that error is raised."""
        rows = np.asarray(items)
        if rows.ndim < 1 or len(rows) == 0:
            raise BatchInputError("submit_many needs at least one item")
        queued = self._admit(list(rows), deadline)
        try:
            outputs = await asyncio.gather(*(entry.future for entry in queued))
        except BaseException:
            for entry in queued:
                self._discard(entry)
            raise
        return np.stack(outputs)

    def _admit(self, rows: list[np.ndarray], deadline: float | None) -> list[_Item]:
        """Queue ``rows`` together (no await in here, so admission is atomic) or raise."""
        if not self._accepting:
            raise BatcherClosedError(
                "the batcher is closed" if self._closing else "the batcher is draining"
            )
        count = len(rows)
        if count > self._max_queue:
            raise BatchInputError(
                f"{count} items can never be queued: the queue holds at most {self._max_queue}"
            )
        if len(self._queue) + count > self._max_queue:
            retry_after = self._retry_after()
            logger.debug(
                "batcher queue full (%d waiting, %d more asked); retry after %.0f s",
                len(self._queue),
                count,
                retry_after,
            )
            raise QueueFullError(
                f"the inference queue is full ({len(self._queue)} of {self._max_queue} waiting)",
                retry_after=retry_after,
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._report_expired(count)
            raise DeadlineExceededError("the deadline had passed before the item was queued")
        loop = asyncio.get_running_loop()
        queued = []
        for row in rows:
            entry = _Item(row=row, future=loop.create_future(), submitted=now, deadline=deadline)
            if deadline is not None:
                entry.timer = loop.call_later(deadline - now, self._expire, entry)
            queued.append(entry)
        self._queue.extend(queued)
        self._idle.clear()
        self._wakeup.set()
        return queued

    def _retry_after(self) -> float:
        """Seconds until the queue has likely room: batches ahead x recent batch time, >= 1."""
        recent = sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else 0.0
        per_round = self._max_batch_size * len(self._runners)
        rounds = math.ceil((len(self._queue) + self._in_flight) / per_round)
        return float(max(1, math.ceil(rounds * (recent + self._max_wait))))

    def _discard(self, item: _Item) -> None:
        """The submitter gave up: drop a waiting item, or let its running batch skip its row."""
        if item.state is _State.QUEUED:
            self._unqueue(item)
        if not item.future.done():
            item.future.cancel()

    def _expire(self, item: _Item) -> None:
        """Deadline timer: answer a still-waiting item now; it will never be computed."""
        item.timer = None
        if item.state is not _State.QUEUED:
            return
        self._unqueue(item)
        if not item.future.done():
            item.fail(DeadlineExceededError("the deadline passed while the item waited"))
            self._report_expired(1)

    def _unqueue(self, item: _Item) -> None:
        with contextlib.suppress(ValueError):  # already taken out
            self._queue.remove(item)
        item.settle()
        self._update_idle()

    def _update_idle(self) -> None:
        if not self._queue and self._in_flight == 0:
            self._idle.set()

    def _report_expired(self, count: int) -> None:
        logger.debug("%s expired before their batch ran", plural(count, "queued item"))
        if self._on_expired is not None:
            _call_hook(self._on_expired, count)

    # ------------------------------------------------------------------ workers

    async def _work(self, index: int) -> None:
        """Worker ``index``: collect a batch (one worker at a time), run it, repeat."""
        while True:
            async with self._collect_lock:
                batch = await self._collect()
            if batch:
                await self._run(index, batch)

    async def _collect(self) -> list[_Item]:
        """Wait for the first item, then (when the previous batch held several items) until
        the batch is full or the oldest item's ``max_wait`` is over; take the batch."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            remaining = self._queue[0].submitted + self._max_wait - time.monotonic()
            full = len(self._queue) >= self._max_batch_size
            if full or remaining <= 0 or self._last_batch_size <= 1:
                return self._take()
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # 3.10: not the builtin
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take(self) -> list[_Item]:
        """Pop up to ``max_batch_size`` live items of one shape and dtype (others keep their
        place); fail expired ones, skip cancelled ones."""
        now = time.monotonic()
        batch: list[_Item] = []
        kept: list[_Item] = []
        expired = 0
        while self._queue and len(batch) < self._max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # cancelled, not yet unqueued
                item.settle()
            elif item.deadline is not None and item.deadline <= now:
                item.settle()
                item.fail(DeadlineExceededError("the deadline passed while the item waited"))
                expired += 1
            elif batch and (
                item.row.shape != batch[0].row.shape or item.row.dtype != batch[0].row.dtype
            ):
                kept.append(item)
            else:
                item.state = _State.RUNNING
                item.stop_timer()
                batch.append(item)
        self._queue.extendleft(reversed(kept))
        self._in_flight += len(batch)
        self._last_batch_size = len(batch)
        if expired:
            self._report_expired(expired)
        self._update_idle()
        return batch

    async def _run(self, index: int, batch: list[_Item]) -> None:
        """Run one batch on runner ``index`` in its thread and hand each item its row."""
        assert self._executor is not None  # started
        started = time.monotonic()
        queue_seconds = tuple(started - item.submitted for item in batch)
        self._running[index] = batch
        call: concurrent.futures.Future[tuple[np.ndarray, float]] | None = None
        try:
            try:
                stacked = np.stack([item.row for item in batch])
                call = self._executor.submit(_timed, self._runners[index], stacked)
                self._calls.add(call)
                outputs, seconds = await asyncio.wrap_future(call)
                if outputs.ndim == 0 or len(outputs) != len(batch):
                    raise ClipHarError(
                        f"the engine returned {outputs.shape} for a batch of {len(batch)} items"
                    )
            except Exception as error:  # the engine failed: so did every item of the batch
                logger.debug("batch of %d failed on instance %d: %r", len(batch), index, error)
                for item in batch:
                    item.fail(error)
                return
            self._batch_seconds.append(seconds)
            for row, item in zip(outputs, batch, strict=True):
                if not item.future.done():  # skip rows whose submitter went away
                    item.future.set_result(row)
            logger.debug("batch of %d ran on instance %d in %.4f s", len(batch), index, seconds)
            if self._on_batch is not None:
                record = BatchRecord(len(batch), queue_seconds, seconds, index)
                _call_hook(self._on_batch, record)
        finally:
            for item in batch:
                item.state = _State.DONE
            if call is not None and call.done():
                self._calls.discard(call)  # else close() still waits for it
            self._running.pop(index, None)
            self._in_flight -= len(batch)
            self._update_idle()


def _call_hook(hook: Callable[[_T], None], value: _T) -> None:
    """Call a metrics hook; its failure must not stop a worker."""
    try:
        hook(value)
    except Exception:
        logger.exception("batcher hook %r failed", hook)


def _log_worker_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("batcher worker %s died", task.get_name(), exc_info=task.exception())


__all__ = [
    "BatchInputError",
    "BatchRecord",
    "BatchRunner",
    "BatcherClosedError",
    "DeadlineExceededError",
    "DynamicBatcher",
    "QueueFullError",
]
