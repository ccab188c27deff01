"""Dynamic micro-batching: requests that arrive within ``max_wait`` of the first one waiting
share one forward pass (up to ``max_batch``). The event loop hands each image to one model
worker thread through a queue and awaits an asyncio future; the worker gathers a batch,
scores it with one call and resolves the futures from its thread. A request that gave up
(timed out) before its batch formed is dropped from it."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ApiError


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its request's timeout meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class MicroBatcher:
    """``score(items) -> results`` (one result per item, in order) runs on one worker thread,
    at most ``max_batch`` items a call; ``on_batch(n, seconds)`` is told each call's size.
    ``arriving()``: how many items are on their way (requests being read or decoded); a batch
    stops waiting when none is and the queue is empty, so a lone request never waits."""

    def __init__(self, score: Callable[[list], Sequence], max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None,
                 arriving: Callable[[], int] | None = None) -> None:  # fmt: skip
        self._score = score
        self._arriving = arriving or (lambda: 1)
        self.max_batch, self.max_wait_s, self.max_queue = int(max_batch), float(max_wait_s), int(max_queue)
        self._on_batch = on_batch or (lambda n, s: None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="igd-fast-model", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: Any) -> Any:
        """The item's result (awaited; cancelling the await drops the item if not yet scored)."""
        if self._queue.qsize() >= self.max_queue:
            raise ApiError(503, "overloaded", f"{self.max_queue} images are already waiting for the model; retry "
                           "later", {"Retry-After": "1"})  # fmt: skip
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the batches already queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """(the batch starting with ``first``, whether the stop sentinel was met)."""
        jobs, deadline = [first], time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            if self._queue.empty() and self._arriving() <= 0:
                break  # nobody else is coming: waiting would only add latency
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            jobs = [j for j in jobs if not j.future.done()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        try:
            results = list(self._score([j.item for j in jobs]))
            outcomes = [(r, None) for r in results]
        except Exception as e:  # noqa: BLE001 - one bad item must not fail the others: score them alone
            outcomes = [self._alone(j) for j in jobs] if len(jobs) > 1 else [(None, e)]
        self._on_batch(len(jobs), time.perf_counter() - t0)
        for job, (value, error) in zip(jobs, outcomes):
            try:
                job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
            except RuntimeError:  # its event loop is closed (shutting down): nobody waits any more
                pass

    def _alone(self, job: _Job) -> tuple[Any, BaseException | None]:
        try:
            return self._score([job.item])[0], None
        except Exception as e:  # noqa: BLE001 - handed to the request, which answers 500
            return None, e
