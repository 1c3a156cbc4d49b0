"""The cascade service: loads the experts, then answers each job before its deadline, by itself.

The engine owns a thread with its own asyncio loop: the miner's event loop only hands jobs over
(`submit`, thread-safe) and never waits on model work. A job's lifetime is owned by the engine
(cascade/lifetime.py): the future `submit` returns always resolves by the job's deadline, and a
caller cancelling it changes nothing inside the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry

from cascade import consensus
from cascade.allocator import return_large_blocks
from cascade.config import EngineConfig, ExpertConfig
from cascade.decode import DecodeError
from cascade.experts.base import Expert
from cascade.experts.registry import build_expert
from cascade.levels import Level, Plan
from cascade.lifetime import RequestPath
from cascade.observers.base import Observer, ObserverRunner
from cascade.request import Job, Result
from cascade.scheduler import MicroBatcher
from cascade.stats import EngineStats
from cascade.threads import worker_pool

ExpertFactory = Callable[[ExpertConfig, str], Expert]

FATAL_EXIT_CODE = 70  # EX_SOFTWARE: pm2 (autorestart) starts a fresh process with a fresh CUDA context


class EngineClosed(RuntimeError):
    """The engine stopped before the job was answered."""


def _exit_for_restart(replica: str, exc: BaseException) -> None:
    """A dead device context fails every later batch: exit now and let the supervisor restart us."""
    logger.critical("device context of {} is lost ({!r}); exiting with code {} for a restart", replica, exc,
                    FATAL_EXIT_CODE)
    os._exit(FATAL_EXIT_CODE)


@dataclass(frozen=True)
class StartupReport:
    placement: dict[str, list[str]]  # expert -> devices
    load_s: dict[str, float]  # per replica "name@device"
    warmup_s: dict[str, float]
    total_s: float


class Engine:
    """In-process cascade service. `start()` loads and warms every expert; `submit()` answers jobs."""

    def __init__(
        self,
        config: EngineConfig,
        observers: Sequence[Observer] = (),
        expert_factory: ExpertFactory = build_expert,
        on_fatal: Callable[[str, BaseException], None] | None = None,
        registry: CollectorRegistry | None = None,
        run_every_level: bool = False,
    ) -> None:
        self.config = config
        self._on_fatal = on_fatal or _exit_for_restart
        self._expert_factory = expert_factory
        self.stats = EngineStats(registry)  # its metrics go into `registry` (the miner's), else a registry of its own
        self.observers = ObserverRunner(list(observers), on_error=self.stats.observer_failed)
        self._decoder = worker_pool(config.scheduler.decode_workers, "decode", config.scheduler.worker_nice)
        # Eval mode (cascade/evaluation): every level runs on every image, neither exit nor skip.
        self.path = RequestPath(config, self.stats, self.observers, self._decoder, run_every_level)
        self.stats.watch_admission(lambda: self.path.admission.in_flight, self.path.admission.waiting)
        self._experts: list[Expert] = []
        self._warm_batch_s: dict[int, float] = {}  # id(expert) -> slowest warm-up batch
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop", daemon=True)
        self._tasks: set[asyncio.Task[Result]] = set()
        self.startup: StartupReport | None = None
        self.started = False

    @property
    def admission(self):  # type: ignore[no-untyped-def]
        return self.path.admission

    @property
    def cache(self):  # type: ignore[no-untyped-def]
        return self.path.cache

    @property
    def run_every_level(self) -> bool:
        """Eval mode: every level on every image, no early exit, no skipping for time."""
        return not self.path.routing

    @run_every_level.setter
    def run_every_level(self, value: bool) -> None:
        self.path.routing = not value

    @property
    def pooling(self) -> consensus.Pooling:
        return self.path.pooling

    @property
    def levels(self) -> list[Level]:
        return self.path.levels

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> StartupReport:
        """Place, load and warm every expert, then start the loop. Raises on any failure."""
        from cascade.placement import describe_plan, plan_placement, visible_devices

        began = time.monotonic()
        # NOTE: process-wide. Expert threads drop the GIL inside every torch call and must win it
        # back from the loop and decode threads; at Python's 5 ms default a batch of small calls
        # waits longer for the GIL than for the GPU.
        sys.setswitchinterval(self.config.scheduler.gil_switch_interval_ms / 1000.0)
        return_large_blocks(self.config.decode.mmap_threshold_bytes)
        devices = visible_devices()
        experts = self.config.cascade.experts()
        slots = plan_placement(experts, devices)
        logger.info("{}", describe_plan(slots, experts, devices))
        by_name = {e.name: e for e in experts}
        load_s: dict[str, float] = {}
        warmup_s: dict[str, float] = {}
        placed: dict[str, list[Expert]] = {}
        for slot in slots:
            key = f"{slot.expert}@{slot.device}"
            t0 = time.monotonic()
            expert = self._expert_factory(by_name[slot.expert], slot.device)
            expert.load()
            load_s[key] = time.monotonic() - t0
            warmup_s[key], self._warm_batch_s[id(expert)] = self._warm_up(expert)
            self._experts.append(expert)
            placed.setdefault(slot.expert, []).append(expert)
            logger.info("loaded {} in {:.2f}s, warm-up {:.2f}s, {:.2f} GB held", key, load_s[key], warmup_s[key],
                        expert.memory_bytes() / 2**30)
        sides = [expert.input_side() for expert in self._experts]
        self.path.decode_min_side = None if None in sides else max(s for s in sides if s is not None)
        logger.info("JPEGs decoded with both sides >= {} (the largest expert input)",
                    self.path.decode_min_side or "full")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._build_levels(placed), self._loop).result()
        self.started = True
        self.startup = StartupReport(
            placement={name: [e.device for e in replicas] for name, replicas in placed.items()},
            load_s=load_s,
            warmup_s=warmup_s,
            total_s=time.monotonic() - began,
        )
        logger.info("engine ready: cold start {:.2f}s", self.startup.total_s)
        return self.startup

    def _warm_up(self, expert: Expert) -> tuple[float, float]:
        """Dummy batches, so the first real request is as fast as the hundredth.

        Returns (total warm-up seconds, slowest full batch seconds); the latter seeds the batcher's
        latency estimate until real batches have been measured.
        """
        if expert.config.warmup_batches == 0 or expert.is_async:
            return 0.0, 0.0
        t0 = time.monotonic()
        slowest = 0.0
        for _ in range(expert.config.warmup_batches):
            for batch in expert.warmup_batches():
                b0 = time.monotonic()
                expert.predict_batch(batch)
                slowest = max(slowest, time.monotonic() - b0)
        return time.monotonic() - t0, slowest

    async def _build_levels(self, placed: dict[str, list[Expert]]) -> None:
        sched = self.config.scheduler
        for index, level_config in enumerate(self.config.cascade.levels):
            level = Level(index, level_config, stale_after_s=sched.latency_stale_s)
            self.stats.level_known(index, (Plan.TOO_SLOW.value, Plan.UNAVAILABLE.value))
            for expert_config in level_config.experts:
                batchers = []
                for expert in placed[expert_config.name]:
                    batcher = MicroBatcher(expert, sched, self.stats.record_batch, self._on_fatal)
                    seeded = self._warm_batch_s.get(id(expert), 0.0)
                    if expert_config.expected_latency_ms is None and seeded:
                        batcher.compute.seed(seeded)
                    batcher.start()
                    self.stats.watch_replica(batcher.replica, batcher.queued,
                                             functools.partial(_takes_requests, batcher))
                    batchers.append(batcher)
                level.batchers[expert_config.name] = batchers
            self.path.levels.append(level)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop batchers, observers and threads. Jobs still running are answered with EngineClosed."""
        if not self.started:
            self._decoder.shutdown(wait=False)
            return
        self.started = False

        async def _close() -> None:
            for task in list(self._tasks):
                task.cancel()
            for batcher in (b for level in self.path.levels for b in level.replicas()):
                await batcher.close()

        try:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            # Decodes still running would call back into the loop once it is gone: let them end first.
            self.path.budget.close()
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self.observers.close()
            for expert in self._experts:
                expert.close()

    # -- public API -----------------------------------------------------------------------------
    def submit(self, job: Job) -> concurrent.futures.Future[Result]:
        """Thread-safe. The future resolves to a Result by the job's deadline, or raises DecodeError.

        The future is the caller's: cancelling it (a caller that gave up) does not touch the engine,
        which finishes the job on its own and releases everything it took.
        """
        if not self.started:
            raise RuntimeError("engine is not started")
        answer: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._begin, job, answer)
        return answer

    def _begin(self, job: Job, answer: concurrent.futures.Future[Result]) -> None:
        if not self.started:
            _settle(answer, None, EngineClosed("the engine stopped before the job started"))
            return
        task = self._loop.create_task(self.path.run(job))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, answer))

    def _done(self, answer: concurrent.futures.Future[Result], task: asyncio.Task[Result]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            _settle(answer, None, EngineClosed("the engine stopped before the job was answered"))
            return
        exc = task.exception()
        if isinstance(exc, DecodeError):
            self.stats.decode_failed()
        _settle(answer, None if exc is not None else task.result(), exc)

    def active(self) -> int:
        """Jobs submitted and not yet answered (for draining)."""
        return len(self._tasks)

    def queue_depths(self) -> dict[str, int]:
        return {b.replica: b.queued() for level in self.path.levels for b in level.replicas()}

    def replica_states(self) -> dict[str, str]:
        """healthy / unhealthy / retrying per replica (for metrics)."""
        now_s = time.monotonic()
        return {b.replica: b.health.state(now_s) for level in self.path.levels for b in level.replicas()}


def _takes_requests(batcher: MicroBatcher) -> float:
    """1.0 while the replica takes requests (healthy or due its retry), for the health gauge."""
    return 0.0 if batcher.health.state(time.monotonic()) == "unhealthy" else 1.0


def _settle(answer: concurrent.futures.Future[Result], result: Result | None, exc: BaseException | None) -> None:
    """Hand the outcome to the caller's future, unless the caller already cancelled it."""
    try:
        if exc is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # the caller gave up on it; the engine's work is done either way
