"""The cascade service: loads the experts, then answers each job before its deadline, by itself.

The engine owns a thread with its own asyncio loop: the miner's event loop only hands jobs over
(`submit`, thread-safe) and never waits on model work. A job's lifetime is owned by the engine
(cascade/lifetime.py): the future `submit` returns always resolves by the job's deadline, and a
caller cancelling it changes nothing inside the engine.

`reload()` puts a new cascade in service without stopping (cascade/serving.py): replicas whose
model and settings are unchanged are kept, the others are loaded and warmed beside the serving
ones, then one assignment on the loop swaps the cascade; the old one is freed when its last
request has been answered.

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

from cascade import consensus
from cascade.config import CascadeConfig, EngineConfig
from cascade.decode import DecodeError, DecodeRefused
from cascade.event_loop import new_event_loop
from cascade.experts.base import Expert
from cascade.experts.registry import build_expert
from cascade.experts.worker import WorkerExpert
from cascade.levels import Level, Plan
from cascade.lifetime import RequestPath
from cascade.observers.base import Observer, ObserverRunner
from cascade.placement import DeviceInfo, visible_devices
from cascade.replicas import ExpertFactory, Replicas
from cascade.request import Job, Result
from cascade.scheduler import MicroBatcher
from cascade.serving import (
    Loading,
    ReloadKind,
    ReloadRefused,
    ReloadReport,
    ServingCascade,
    decode_side,
    defers_jpegs,
    fits,
    model_stamp,
    plan_reload,
    without,
)
from cascade.stats import EngineStats
from cascade.threads import worker_pool

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
        self.config = config
        self._on_fatal = on_fatal or _exit_for_restart
        self.replicas = Replicas(config, expert_factory, worker_factory)
        self.stats = EngineStats(registry)  # its metrics go into `registry` (the miner's), else a registry of its own
        self.observers = ObserverRunner(list(observers), on_error=self.stats.observer_failed)
        self._decoder = worker_pool(config.scheduler.decode_workers, "decode", config.scheduler.worker_nice)
        # Eval mode (sn72_tools/evaluation): every level runs on every image, neither exit nor skip.
        self.path = RequestPath(config, self.stats, self.observers, self._decoder, run_every_level)
        self.stats.watch_admission(lambda: self.path.admission.in_flight, self.path.admission.waiting)
        self._retiring: list[ServingCascade] = []  # replaced, freed once no request holds them
        self._freeing: set[asyncio.Task[None]] = set()
        self._unfreed = 0  # replaced cascades whose replicas are not yet released
        self._reload_lock = threading.Lock()
        # The GPUs and their free memory, asked at start-up and before each reload (tests simulate some).
        self.devices: Callable[[], list[DeviceInfo]] = visible_devices
        self._loop = new_event_loop(config.scheduler.event_loop)
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
        asyncio.run_coroutine_threadsafe(self._serve_first(loading.placed), self._loop).result()
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

    async def _serve_first(self, placed: dict[str, list[Expert]]) -> None:
        self.path.serve(await self._build_serving(self.config.cascade, placed, {}))

    async def _build_serving(self, cascade: CascadeConfig, placed: dict[str, list[Expert]],
                             kept: dict[str, list[MicroBatcher]]) -> ServingCascade:
        """Levels over the kept batchers and new ones for the `placed` replicas (on the loop: batchers start here)."""
        sched = self.config.scheduler
        levels = []
        for index, level_config in enumerate(cascade.levels):
            level = Level(index, level_config, stale_after_s=sched.latency_stale_s)
            self.stats.level_known(index, (Plan.TOO_SLOW.value, Plan.UNAVAILABLE.value))
            for expert_config in level_config.experts:
                if expert_config.name in kept:
                    level.batchers[expert_config.name] = list(kept[expert_config.name])
                    continue
                batchers = []
                for expert in placed[expert_config.name]:
                    batcher = MicroBatcher(expert, sched, self.stats.record_batch, self._on_fatal)
                    seeded = self.replicas.warm_batch_s(expert)
                    if expert_config.expected_latency_ms is None and seeded:
                        batcher.compute.seed(seeded)
                    batcher.start()
                    self.stats.watch_replica(batcher.replica, batcher.queued,
                                             functools.partial(_takes_requests, batcher), owner=batcher,
                                             worker=expert if isinstance(expert, WorkerExpert) else None)
                    batchers.append(batcher)
                level.batchers[expert_config.name] = batchers
            levels.append(level)
        serving = ServingCascade(cascade, levels, consensus.Pooling.from_config(cascade))
        serving.decode_min_side = decode_side([b.expert.input_side() for b in serving.replicas()])
        serving.defer_jpegs = defers_jpegs(levels)
        old = self.path.serving.stamps
        serving.stamps = {e.name: old[e.name] if e.name in kept else model_stamp(e.model) for e in cascade.experts()}
        return serving

    # -- hot reload -----------------------------------------------------------------------------
    def reload(self, cascade: CascadeConfig) -> ReloadReport:
        """Put `cascade` in service without dropping a request (any thread but the engine's loop).

        Raises ReloadRefused (placement, load, warmup, closed) and leaves the serving cascade as it was.
        """
        from cascade.placement import PlacementError, plan_placement

        with self._reload_lock:
            began = time.monotonic()
            if not self.started:
                raise ReloadRefused("closed", "the engine is not running")
            serving = self.path.serving
            plan = plan_reload(serving, cascade)
            if plan.kind is ReloadKind.UNCHANGED:
                return ReloadReport(plan.kind, cascade.version, [], len(serving.replicas()), [], 0.0, 0.0)
            loading = Loading()
            if plan.to_load:
                devices = self.devices()
                try:  # the new replicas beside every replica loaded now (the device's free memory says so)
                    slots = plan_placement(plan.to_load, devices)
                except PlacementError as exc:
                    fits_alone = fits(cascade, without(devices, [serving, *self._retiring]))
                    raise ReloadRefused("placement", f"the new cascade does not fit beside the serving one: {exc}"
                                        + ("" if fits_alone else " (nor without it)"), restart_fits=fits_alone) from exc
                failure = None
                try:
                    self.replicas.load(slots, plan.to_load, loading)
                except Exception as exc:  # noqa: BLE001 - whatever fails, the serving cascade stays: say why
                    failure = ReloadRefused(loading.stage, f"{loading.replica}: {exc!r}")
                if failure is not None:  # raised out here, its traceback (which holds the replica) is gone
                    self.replicas.discard(loading.take())
                    raise failure
            load_s = time.monotonic() - began
            loaded = [e.label for e in loading.experts()]
            swap = asyncio.run_coroutine_threadsafe(self._swap(cascade, loading.placed, plan.kept), self._loop)
            while True:
                try:
                    new = swap.result(1.0)
                    break
                except concurrent.futures.TimeoutError:
                    if not self.started and swap.cancel():  # closed meanwhile: the swap never ran
                        self.replicas.discard(loading.take())
                        raise ReloadRefused("closed", "the engine stopped before the new cascade went in") from None
            return ReloadReport(plan.kind, new.version, loaded, sum(len(b) for b in plan.kept.values()), plan.dropped,
                                load_s, time.monotonic() - began)

    async def _swap(self, cascade: CascadeConfig, placed: dict[str, list[Expert]],
                    kept: dict[str, list[MicroBatcher]]) -> ServingCascade:
        new = await self._build_serving(cascade, placed, kept)
        old = self.path.serving
        self.path.serve(new)  # requests from now on start on the new cascade
        self.config = self.config.model_copy(update={"cascade": cascade})
        self.path.cache.clear()  # its answers are the old cascade's
        self._retiring.append(old)
        self._unfreed += 1
        old.retire(self._free_when_idle)
        return new

    def _free_when_idle(self, old: ServingCascade) -> None:
        if not self.started:  # closing: close() stops every replica and releases every expert itself
            return
        task = self._loop.create_task(self._free(old))
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _free(self, old: ServingCascade) -> None:
        """Close the replicas of a retired, idle cascade that no other cascade uses, and release their models."""
        live = {id(b) for c in (self.path.serving, *self._retiring) if c is not old for b in c.replicas()}
        gone = [b for b in dict.fromkeys(old.replicas()) if id(b) not in live]
        for batcher in gone:
            await batcher.close()
            self.stats.unwatch_replica(batcher.replica, batcher)
        experts = [b.expert for b in gone]
        self._retiring.remove(old)
        del gone, old  # the experts' last references are now `experts`, which `discard` empties
        try:
            if experts:  # a calibration swap keeps every replica: nothing to release, no collection
                await asyncio.get_running_loop().run_in_executor(None, self.replicas.discard, experts, "replaced")
        finally:
            self._unfreed -= 1

    def retiring(self) -> int:
        """Replaced cascades not yet freed (requests still hold them, or their models are being released)."""
        return self._unfreed

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
            cascades = (self.path.serving, *self._retiring)
            for batcher in dict.fromkeys(b for c in cascades for b in c.replicas()):
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

