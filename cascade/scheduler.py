"""Micro-batching per expert replica: earliest deadline first, expiry, online latency estimates.

One `MicroBatcher` per (expert, device) lives on the engine's event loop. It never touches tensors:
it forms batches and hands them to the expert (on the replica's own thread for synchronous
backends). Items whose deadline has passed, whose request was already answered, or which cannot
finish before their deadline are dropped when they leave the queue, never computed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from cascade.experts.base import Expert, check_probabilities
from cascade.request import Request

ASYNC_BATCHES_IN_FLIGHT = 8


class Expired(Exception):
    """The item left the queue after its deadline (or could not finish before it): not computed."""


class LatencyTracker:
    """A high quantile of recent durations, with a starting value until there are enough samples."""

    def __init__(self, window: int, quantile: float, initial_s: float) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._initial_s = initial_s

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)

    def estimate_s(self) -> float:
        if len(self._samples) < 3:
            return max([self._initial_s, *self._samples])
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, int(self._quantile * len(ordered)))
        return ordered[index]

    def seed(self, seconds: float) -> None:
        """Set the starting value (from warm-up) without counting it as a sample."""
        self._initial_s = seconds


@dataclass(order=True)
class _Item:
    deadline_s: float
    seq: int
    request: Request = field(compare=False)
    future: asyncio.Future[float] = field(compare=False)
    enqueued_s: float = field(compare=False)


BatchListener = Callable[[str, str, int, float, str], None]  # expert, device, size, seconds, outcome
FatalHandler = Callable[[str, BaseException], None]

# Messages of errors after which the device's context is unusable: every later batch would fail too.
_FATAL_DEVICE_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "cuda driver",
    "context is destroyed",
    "an illegal instruction",
    "uncorrectable ecc",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """A lost CUDA context (not an out-of-memory, which a smaller batch may survive)."""
    text = str(exc).lower()
    return "out of memory" not in text and any(marker in text for marker in _FATAL_DEVICE_ERRORS)


class MicroBatcher:
    """Queues requests for one expert replica and runs them in batches of up to `max_batch`."""

    def __init__(
        self,
        expert: Expert,
        window: int = 256,
        quantile: float = 0.95,
        listener: BatchListener | None = None,
        on_fatal: FatalHandler | None = None,
    ) -> None:
        self.expert = expert
        self.name = expert.name
        self.device = expert.device
        self.max_batch = expert.config.max_batch
        self.max_wait_s = expert.config.max_wait_ms / 1000.0
        initial = (expert.config.expected_latency_ms or 50.0) / 1000.0
        self.compute = LatencyTracker(window, quantile, initial)
        self._listener = listener
        self._on_fatal = on_fatal
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._running = 0  # batches being computed (async backends may run several at once)
        # Async backends (vLLM, a remote server) batch continuously on their side: keep several of our
        # batches in flight instead of waiting for each to finish.
        self._slots = asyncio.Semaphore(ASYNC_BATCHES_IN_FLIGHT) if expert.is_async else None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._executor = (
            None if expert.is_async else ThreadPoolExecutor(1, thread_name_prefix=f"expert-{self.name}-{self.device}")
        )

    # -- queue side -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}-{self.device}")

    def submit(self, request: Request) -> asyncio.Future[float]:
        """Queue one request; the future resolves to its probability, or raises (Expired, expert errors)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(Expired(f"{self.name} is shut down"))
            return future
        heapq.heappush(self._heap, _Item(request.deadline_s, next(self._seq), request, future, time.monotonic()))
        self._wakeup.set()
        return future

    def queued(self) -> int:
        return len(self._heap)

    def expected_latency_s(self) -> float:
        """Time a request queued now should take to come back: batches ahead, the running one, its own."""
        compute_s = self.compute.estimate_s()
        batches_ahead = len(self._heap) // self.max_batch
        return (batches_ahead + (1 if self._running else 0) + 1) * compute_s + self.max_wait_s

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
        """Wait until the batch is full or its oldest item has waited `max_wait_ms`."""
        while len(self._heap) < self.max_batch and not self._closed:
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
        """Up to `max_batch` live items in deadline order; dead ones are settled, not computed."""
        now = time.monotonic()
        compute_s = self.compute.estimate_s()
        batch: list[_Item] = []
        while self._heap and len(batch) < self.max_batch:
            item = heapq.heappop(self._heap)
            if item.future.done():  # answered elsewhere or cancelled by the engine
                continue
            if item.deadline_s <= now + compute_s:
                item.future.set_exception(Expired(f"{self.name}: deadline passed before compute"))
                continue
            batch.append(item)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        images = [item.request.image for item in batch]
        started = time.monotonic()
        self._running += 1
        outcome = "ok"
        try:
            if self.expert.is_async:
                deadline_s = max(item.deadline_s for item in batch)
                raw = await self.expert.predict_async(images, deadline_s)
            else:
                loop = asyncio.get_running_loop()
                raw = await loop.run_in_executor(self._executor, self.expert.predict_batch, images)
            probabilities = check_probabilities(self.name, raw, len(batch))
        except Exception as exc:  # noqa: BLE001 - a failed batch fails each of its futures, nothing else
            outcome = "error"
            logger.warning("expert {} on {} failed a batch of {}: {!r}", self.name, self.device, len(batch), exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if self._on_fatal is not None and is_fatal_device_error(exc):
                self._on_fatal(f"{self.name}@{self.device}", exc)
        else:
            for item, probability in zip(batch, probabilities, strict=True):
                if not item.future.done():
                    item.future.set_result(probability)
        finally:
            self._running -= 1
        elapsed = time.monotonic() - started
        if outcome == "ok":
            self.compute.record(elapsed)
        if self._listener is not None:
            self._listener(self.name, self.device, len(batch), elapsed, outcome)
