"""Micro-batching per expert replica: earliest deadline first, expiry, latency and health.

One `MicroBatcher` per (expert, device) lives on the engine's event loop. It never touches tensors:
it forms batches and hands them to the expert (on the replica's own thread for synchronous
backends). Items whose deadline has passed, whose request was already answered, or which cannot
finish before their deadline (cascade/in_time.py) are dropped when they leave the queue, never
computed. Each replica keeps a latency estimate that ages (cascade/latency.py) and a circuit
breaker: repeated failures, out-of-memory errors or a hung batch take it out of service for a
cool-down.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import cast

import numpy as np
from loguru import logger

from cascade import in_time
from cascade.config import SchedulerConfig
from cascade.decode import DecodeError, DeviceJpeg
from cascade.device_errors import is_fatal_device_error, is_out_of_memory
from cascade.experts.base import Expert, ImageInput, check_probabilities
from cascade.latency import Health, LatencyTracker
from cascade.request import Request
from cascade.threads import worker_pool


class Expired(Exception):
    """The item left the queue after its deadline (or could not finish before it): not computed."""


@dataclass(order=True)
class _Item:
    deadline_s: float
    seq: int
    request: Request | None = field(compare=False)  # None: a probe batch on a synthetic image
    image: ImageInput = field(compare=False)  # a DeviceJpeg only for a replica that takes_jpeg
    future: asyncio.Future[float] = field(compare=False)
    enqueued_s: float = field(compare=False)


BatchListener = Callable[[str, str, int, float, str], None]  # expert, replica label, size, seconds, outcome
FatalHandler = Callable[[str, BaseException], None]


@cache
def probe_frame() -> np.ndarray:
    """A grey 640x480 frame: the probe image of a replica that needs host pixels the request has not decoded."""
    return np.full((480, 640, 3), 128, dtype=np.uint8)


class MicroBatcher:
    """Queues requests for one expert replica and runs them in batches of up to `max_batch`."""

    def __init__(
        self,
        expert: Expert,
        sched: SchedulerConfig | None = None,
        listener: BatchListener | None = None,
        on_fatal: FatalHandler | None = None,
    ) -> None:
        sched = sched or SchedulerConfig()
        self.expert = expert
        self.name = expert.name
        self.device = expert.device
        self.replica = expert.label
        self.max_batch = expert.config.max_batch
        self.takes_jpeg = expert.takes_jpeg()  # may be handed encoded JPEGs (it decodes them on its device)
        self.batch_cap = self.max_batch  # lowered after an out-of-memory error, raised back by successes
        self.max_wait_s = expert.config.max_wait_ms / 1000.0
        self.wait_when_idle = expert.config.wait_when_idle
        initial = (expert.config.expected_latency_ms or 50.0) / 1000.0
        self.compute = LatencyTracker(sched.latency_window, sched.latency_quantile, initial, sched.latency_horizon_s)
        self.health = Health(self.replica, sched.unhealthy_after_failures, sched.unhealthy_cooldown_s)
        self._restarts_seen = expert.restarts
        self._hang_factor = sched.hang_factor
        self._hang_min_s = sched.hang_min_ms / 1000.0
        self._listener = listener
        self._on_fatal = on_fatal
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._running_since: list[float] = []  # start times of the batches being computed
        self._successes_since_oom = 0
        self.probing = False
        # Async backends (vLLM, a remote server) batch continuously on their side: keep several of our
        # batches in flight instead of waiting for each to finish (as many as the backend says it uses).
        self._slots = asyncio.Semaphore(expert.batches_in_flight) if expert.is_async else None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._executor = (
            None if expert.is_async else worker_pool(1, f"expert-{self.name}-{self.device}", sched.worker_nice)
        )

    # -- queue side -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.replica}")

    def submit(self, request: Request) -> asyncio.Future[float]:
        """Queue one request; the future resolves to its probability, or raises (Expired, expert errors).

        The caller may cancel the future (its request was answered or ran out of time): the item is
        then dropped unrun, or its result discarded if its batch is already running.
        """
        return self._push(request.deadline_s, request, self.input_of(request))

    def input_of(self, request: Request) -> ImageInput:
        """The request's host pixels once decoded, else its encoded JPEG for a replica that decodes JPEGs itself."""
        if request.image is not None:
            return request.image
        if self.takes_jpeg and request.jpeg is not None:
            return request.jpeg
        raise ValueError(f"{self.replica} needs host pixels, which the request path did not decode")

    def probe(self, image: ImageInput, timeout_s: float = 60.0) -> None:
        """One batch on `image` outside any request, to re-measure a replica nobody has run for a while."""
        if self.probing or self._closed:
            return
        self.probing = True
        if isinstance(image, DeviceJpeg) and not self.takes_jpeg:
            image = probe_frame()
        future = self._push(time.monotonic() + timeout_s, None, image)
        future.add_done_callback(self._probe_done)

    def _probe_done(self, future: asyncio.Future[float]) -> None:
        self.probing = False
        if not future.cancelled():
            future.exception()  # retrieved: a failed probe is counted by the batch, nothing to raise

    def _push(self, deadline_s: float, request: Request | None, image: ImageInput) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(Expired(f"{self.name} is shut down"))
            return future
        heapq.heappush(self._heap, _Item(deadline_s, next(self._seq), request, image, future, time.monotonic()))
        self._wakeup.set()
        return future

    def queued(self) -> int:
        return len(self._heap)

    def available(self, now_s: float | None = None) -> bool:
        """Healthy (or due a retry) and not stuck in a batch far longer than batches take."""
        now_s = time.monotonic() if now_s is None else now_s
        if self.expert.restarts != self._restarts_seen:  # a fresh worker process: worth a try before the cool-down ends
            self._restarts_seen = self.expert.restarts
            self.health.retry_now(now_s)
        if self.expert.down():  # its worker is being replaced: nothing to send until the fresh one is ready
            return False
        if self._running_since:
            hang_s = max(self._hang_min_s, self._hang_factor * self.compute.estimate_s(now_s))
            running_s = now_s - min(self._running_since)
            if running_s > hang_s:
                self.health.trip(f"a batch has been running for {running_s:.1f}s", now_s)
        return self.health.available(now_s)

    def expected_latency_s(self, now_s: float | None = None) -> float:
        """Time a request queued now should take to come back: batches ahead, the running one, its own."""
        compute_s = self.compute.estimate_s(now_s)
        batches_ahead = len(self._heap) // self.batch_cap
        window_s = self.max_wait_s if self.wait_when_idle or self._running_since else 0.0
        return (batches_ahead + (1 if self._running_since else 0) + 1) * compute_s + window_s

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._slots is not None and self._task is not None:
            self._task.cancel()  # it may be waiting for a free slot, which only a finished batch gives
        if self._task is not None:
            await asyncio.gather(self._task, *self._inflight, return_exceptions=True)
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(Expired(f"{self.name} is shut down"))
        self._heap.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- batch side -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        await self.expert.on_loop()  # must not raise: a replica's hook that failed would leave its queue unserved
        while not self._closed:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill()
            if self._slots is None:
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
                continue
            await self._slots.acquire()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_then_release(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run_then_release(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        try:
            await self._run(batch)
        finally:
            self._slots.release()

    async def _fill(self) -> None:
        """Wait until the batch is full or its oldest item has waited `max_wait_ms` (not at all for an idle replica
        that does not wait when idle: what arrives while this batch runs makes the next one)."""
        if not self.wait_when_idle and not self._running_since:
            return
        while len(self._heap) < self.batch_cap and not self._closed:
            oldest_s = min(item.enqueued_s for item in self._heap)
            wait_s = oldest_s + self.max_wait_s - time.monotonic()
            if wait_s <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait_s)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        """Up to `batch_cap` live items in deadline order; dead ones are settled, not computed."""
        now = time.monotonic()
        compute_s = self.compute.estimate_s(now)
        batch: list[_Item] = []
        while self._heap and len(batch) < self.batch_cap:
            item = heapq.heappop(self._heap)
            if item.future.done():  # answered elsewhere or cancelled by the engine
                continue
            # Its own batch is next: only its compute counts (cascade/in_time.py); a probe has no caller waiting.
            if item.request is not None and not in_time.in_time(now, compute_s, item.deadline_s,
                                                                at_deadline_is_late=True):
                item.future.set_exception(Expired(f"{self.name}: deadline passed before compute"))
                continue
            batch.append(item)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        # NOTE: typed as arrays for the Expert interface; a DeviceJpeg is here only if this replica takes_jpeg.
        images = cast(list[np.ndarray], [item.image for item in batch])
        started = time.monotonic()
        self._running_since.append(started)
        outcome = "ok"
        try:
            raw: Sequence[float | DecodeError]
            if self.expert.is_async:
                deadline_s = max(item.deadline_s for item in batch)
                raw = await self.expert.predict_async(images, deadline_s)
            else:
                loop = asyncio.get_running_loop()
                raw = await loop.run_in_executor(self._executor, self.expert.predict_batch, images)
            probabilities = check_probabilities(self.name, raw, len(batch))
        except Exception as exc:  # noqa: BLE001 - a failed batch fails each of its futures, nothing else
            outcome = self._failed(batch, exc)
        else:
            self._succeeded()
            for item, probability in zip(batch, probabilities, strict=True):
                if item.future.done():
                    continue
                if isinstance(probability, DecodeError):  # that image alone: no decoder could read it
                    item.future.set_exception(probability)
                else:
                    item.future.set_result(probability)
        finally:
            self._running_since.remove(started)
        elapsed = time.monotonic() - started
        if outcome == "ok":
            self.compute.record(elapsed)
        if self._listener is not None:
            self._listener(self.name, self.replica, len(batch), elapsed, outcome)

    def _failed(self, batch: list[_Item], exc: Exception) -> str:
        outcome = "oom" if is_out_of_memory(exc) else "error"
        logger.warning("expert {} failed a batch of {} ({}): {!r}", self.replica, len(batch), outcome, exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
        if outcome == "oom" and self.batch_cap > 1:
            self.batch_cap = max(1, len(batch) // 2)
            self._successes_since_oom = 0
            logger.warning("expert {}: batches capped at {} after running out of memory", self.replica,
                           self.batch_cap)
        self.health.failed(outcome)
        if self._on_fatal is not None and is_fatal_device_error(exc):
            self._on_fatal(self.replica, exc)
        return outcome

    def _succeeded(self) -> None:
        self.health.succeeded()
        if self.batch_cap < self.max_batch:
            self._successes_since_oom += 1
            if self._successes_since_oom >= 16:  # memory pressure passes: grow back slowly
                self.batch_cap = min(self.max_batch, self.batch_cap * 2)
                self._successes_since_oom = 0
