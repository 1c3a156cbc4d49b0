"""The cascade service: loads the experts, then answers each job before its deadline, by itself.

The engine owns a thread with its own asyncio loop: the miner's event loop only hands jobs over
(`submit`, thread-safe) and never waits on model work. A job's lifetime is owned by the engine
(cascade/lifetime.py): the future `submit` returns always resolves by the job's deadline, and a
caller cancelling it changes nothing inside the engine.

`reload()` puts a new cascade in service without stopping (cascade/reloading.py, which decides with
cascade/serving.py): replicas whose model and settings are unchanged are kept, the others are loaded and warmed
beside the serving ones, then one assignment on the loop swaps the cascade; the old one is freed when its last
request has been answered. The replicas themselves are kept by cascade/replicas.py.

The engine sets nothing process-wide (the interpreter's switch interval, the allocator, the frozen heap): the
process's owner does, around `start()` (cascade/process_settings.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry

from cascade.config import CascadeConfig, EngineConfig
from cascade.decode import DecodeError, DecodeRefused
from cascade.event_loop import new_event_loop
from cascade.exit_codes import EXIT_DEVICE
from cascade.experts.registry import build_expert
from cascade.levels import Level
from cascade.lifetime import RequestPath
from cascade.observers.base import Observer, ObserverRunner
from cascade.placement import DeviceInfo, visible_devices
from cascade.reloading import HotSwap
from cascade.replicas import ExpertFactory, Replicas
from cascade.request import Job, Result
from cascade.serving import Loading, ReloadReport, ServingCascade
from cascade.stats import EngineStats
from cascade.threads import worker_pool


class EngineClosed(RuntimeError):
    """The engine stopped before the job was answered."""


def _exit_for_restart(replica: str, exc: BaseException) -> None:
    """A dead device context fails every later batch: exit now and let the supervisor restart us."""
    logger.critical("device context of {} is lost ({!r}); exiting with code {} for a restart", replica, exc,
                    EXIT_DEVICE)
    os._exit(EXIT_DEVICE)  # pm2 (autorestart) starts a fresh process with a fresh CUDA context


@dataclass(frozen=True)
class StartupReport:
    placement: dict[str, list[str]]  # expert -> devices
    load_s: dict[str, float]  # per replica label ("name@device", "name@device#k" for several on one device)
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
        worker_factory: ExpertFactory | None = None,
    ) -> None:
        self.replicas = Replicas(config, expert_factory, worker_factory)
        self.stats = EngineStats(registry)  # its metrics go into `registry` (the miner's), else a registry of its own
        self.observers = ObserverRunner(list(observers), on_error=self.stats.observer_failed)
        self._decoder = worker_pool(config.scheduler.decode_workers, "decode", config.scheduler.worker_nice)
        # Eval mode (sn72_tools/evaluation): every level runs on every image, neither exit nor skip.
        self.path = RequestPath(config, self.stats, self.observers, self._decoder, run_every_level)
        self.stats.watch_admission(lambda: self.path.admission.in_flight, self.path.admission.waiting)
        # The GPUs and their free memory, asked at start-up and before each reload (tests simulate some).
        self.devices: Callable[[], list[DeviceInfo]] = visible_devices
        self._loop = new_event_loop(config.scheduler.event_loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop", daemon=True)
        self._hot_swap = HotSwap(config, self.path, self.replicas, self.stats, self._loop,
                                 on_fatal or _exit_for_restart, lambda: self.started)
        self._tasks: set[asyncio.Task[Result]] = set()
        self.startup: StartupReport | None = None
        self.started = False

    @property
    def config(self) -> EngineConfig:
        """The engine's settings with the cascade in service (a reload replaces the cascade, nothing else)."""
        return self._hot_swap.config

    @property
    def admission(self):  # type: ignore[no-untyped-def]
        return self.path.admission

    @property
    def run_every_level(self) -> bool:
        """Eval mode: every level on every image, no early exit, no skipping for time."""
        return not self.path.routing

    @run_every_level.setter
    def run_every_level(self, value: bool) -> None:
        self.path.routing = not value

    @property
    def levels(self) -> list[Level]:
        return self.path.levels

    @property
    def serving(self) -> ServingCascade:
        return self.path.serving

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> StartupReport:
        """Place, load and warm every expert, then start the loop. Raises on any failure.

        Process-wide settings are the process owner's (cascade/process_settings.py `start_with_process_settings`).
        """
        from cascade.placement import describe_plan, plan_placement

        began = time.monotonic()
        devices = self.devices()
        experts = self.config.cascade.experts()
        slots = plan_placement(experts, devices)
        logger.info("{}", describe_plan(slots, experts, devices))
        loading = Loading()
        try:
            self.replicas.load(slots, experts, loading)
        except BaseException:
            self.replicas.discard(loading.take(), "start-up failed")  # worker processes among them end now, not at exit
            raise
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._hot_swap.serve_first(loading.placed), self._loop).result()
        logger.info("JPEGs decoded with both sides >= {} (the largest expert input){}",
                    self.path.serving.decode_min_side or "full",
                    "; for level 1 on its GPUs (nvJPEG)" if self.path.serving.defer_jpegs else "")
        self.started = True
        self.startup = StartupReport(
            placement={name: [e.device for e in replicas] for name, replicas in loading.placed.items()},
            load_s=loading.load_s,
            warmup_s=loading.warmup_s,
            total_s=time.monotonic() - began,
        )
        logger.info("engine ready: cold start {:.2f}s", self.startup.total_s)
        return self.startup

    # -- hot reload (cascade/reloading.py) -------------------------------------------------------
    def reload(self, cascade: CascadeConfig) -> ReloadReport:
        """Put `cascade` in service without dropping a request (any thread but the engine's loop).

        Raises ReloadRefused (placement, load, warmup, closed) and leaves the serving cascade as it was.
        """
        return self._hot_swap.reload(cascade, self.devices)

    def retiring(self) -> int:
        """Replaced cascades not yet freed (requests still hold them, or their models are being released)."""
        return self._hot_swap.retiring()

    def prestart_decode_workers(self) -> None:
        """Start the decode worker processes in the background (cascade/decode_pool.py), so that the first costly
        image does not wait for one; the miner calls this once it serves."""
        if self.path.isolated is not None:
            self.path.isolated.prestart()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop batchers, observers and threads. Jobs still running are answered with EngineClosed."""
        if not self.started:
            self._decoder.shutdown(wait=False)
            if self.path.isolated is not None:
                self.path.isolated.close()
            return
        self.started = False

        async def _close() -> None:
            for task in list(self._tasks):
                task.cancel()
            for batcher in dict.fromkeys(b for c in self._hot_swap.cascades() for b in c.replicas()):
                await batcher.close()

        try:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            # Decodes still running would call back into the loop once it is gone: let them end first.
            self.path.budget.close()
            self._decoder.shutdown(wait=True, cancel_futures=True)
            if self.path.isolated is not None:
                self.path.isolated.close()
            self.observers.close()
            self.replicas.close()

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
            self.stats.decode_failed(exc.reason if isinstance(exc, DecodeRefused) else None)
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


def _settle(answer: concurrent.futures.Future[Result], result: Result | None, exc: BaseException | None) -> None:
    """Hand the outcome to the caller's future, unless the caller already cancelled it."""
    try:
        if exc is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # the caller gave up on it; the engine's work is done either way

