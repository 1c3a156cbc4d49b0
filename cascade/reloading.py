"""Cascades put into service on the engine's loop, and the replaced ones freed (hot reload).

`HotSwap` builds the served form of a cascade (its levels over micro-batchers, one per loaded replica) for the first
cascade at start-up and for each reload. A reload loads and warms the replicas it needs beside the serving ones (off
the loop), then one assignment on the loop swaps the cascade (cascade/serving.py says what a reload keeps, loads and
frees); the old cascade is retired and its replicas that the new one does not keep are closed and released once its
last request has been answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable

from cascade import consensus
from cascade.config import CascadeConfig, EngineConfig
from cascade.experts.base import Expert
from cascade.experts.worker import WorkerExpert
from cascade.levels import Level, Plan
from cascade.lifetime import RequestPath
from cascade.placement import DeviceInfo
from cascade.replicas import Replicas
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


class HotSwap:
    """The engine's serving cascade, changed without stopping; `config` follows the cascade in service."""

    def __init__(self, config: EngineConfig, path: RequestPath, replicas: Replicas, stats: EngineStats,
                 loop: asyncio.AbstractEventLoop, on_fatal: Callable[[str, BaseException], None],
                 running: Callable[[], bool]) -> None:
        self.config = config
        self._path = path
        self._replicas = replicas
        self._stats = stats
        self._loop = loop
        self._on_fatal = on_fatal  # a batcher's lost device context
        self._running = running  # the engine is started and not closing
        self._retiring: list[ServingCascade] = []  # replaced, freed once no request holds them
        self._freeing: set[asyncio.Task[None]] = set()
        self._unfreed = 0  # replaced cascades whose replicas are not yet released
        self._lock = threading.Lock()

    def cascades(self) -> tuple[ServingCascade, ...]:
        """The serving cascade and the replaced ones not yet freed (engine loop only)."""
        return (self._path.serving, *self._retiring)

    def retiring(self) -> int:
        """Replaced cascades not yet freed (requests still hold them, or their models are being released)."""
        return self._unfreed

    async def serve_first(self, placed: dict[str, list[Expert]]) -> None:
        """Start-up: the config's cascade over the replicas just loaded (on the loop)."""
        self._path.serve(await self._build_serving(self.config.cascade, placed, {}))

    async def _build_serving(self, cascade: CascadeConfig, placed: dict[str, list[Expert]],
                             kept: dict[str, list[MicroBatcher]]) -> ServingCascade:
        """Levels over the kept batchers and new ones for the `placed` replicas (on the loop: batchers start here)."""
        sched = self.config.scheduler
        levels = []
        for index, level_config in enumerate(cascade.levels):
            level = Level(index, level_config, stale_after_s=sched.latency_stale_s)
            self._stats.level_known(index, (Plan.TOO_SLOW.value, Plan.UNAVAILABLE.value))
            for expert_config in level_config.experts:
                if expert_config.name in kept:
                    level.batchers[expert_config.name] = list(kept[expert_config.name])
                    continue
                batchers = []
                for expert in placed[expert_config.name]:
                    batcher = MicroBatcher(expert, sched, self._stats.record_batch, self._on_fatal)
                    seeded = self._replicas.warm_batch_s(expert)
                    if expert_config.expected_latency_ms is None and seeded:
                        batcher.compute.seed(seeded)
                    batcher.start()
                    self._stats.watch_replica(batcher.replica, batcher.queued,
                                              functools.partial(_takes_requests, batcher), owner=batcher,
                                              worker=expert if isinstance(expert, WorkerExpert) else None)
                    batchers.append(batcher)
                level.batchers[expert_config.name] = batchers
            levels.append(level)
        serving = ServingCascade(cascade, levels, consensus.Pooling.from_config(cascade))
        serving.decode_min_side = decode_side([b.expert.input_side() for b in serving.replicas()])
        serving.defer_jpegs = defers_jpegs(levels)
        old = self._path.serving.stamps
        serving.stamps = {e.name: old[e.name] if e.name in kept else model_stamp(e.model) for e in cascade.experts()}
        return serving

    # -- hot reload -----------------------------------------------------------------------------
    def reload(self, cascade: CascadeConfig, devices: Callable[[], list[DeviceInfo]]) -> ReloadReport:
        """Put `cascade` in service without dropping a request (any thread but the engine's loop).

        `devices`: the GPUs and their free memory, asked only when replicas are to be loaded.
        Raises ReloadRefused (placement, load, warmup, closed) and leaves the serving cascade as it was.
        """
        from cascade.placement import PlacementError, plan_placement

        with self._lock:
            began = time.monotonic()
            if not self._running():
                raise ReloadRefused("closed", "the engine is not running")
            serving = self._path.serving
            plan = plan_reload(serving, cascade)
            if plan.kind is ReloadKind.UNCHANGED:
                return ReloadReport(plan.kind, cascade.version, [], len(serving.replicas()), [], 0.0, 0.0)
            loading = Loading()
            if plan.to_load:
                now = devices()
                try:  # the new replicas beside every replica loaded now (the device's free memory says so)
                    slots = plan_placement(plan.to_load, now)
                except PlacementError as exc:
                    fits_alone = fits(cascade, without(now, [serving, *self._retiring]))
                    raise ReloadRefused("placement", f"the new cascade does not fit beside the serving one: {exc}"
                                        + ("" if fits_alone else " (nor without it)"), restart_fits=fits_alone) from exc
                failure = None
                try:
                    self._replicas.load(slots, plan.to_load, loading)
                except Exception as exc:  # noqa: BLE001 - whatever fails, the serving cascade stays: say why
                    failure = ReloadRefused(loading.stage, f"{loading.replica}: {exc!r}")
                if failure is not None:  # raised out here, its traceback (which holds the replica) is gone
                    self._replicas.discard(loading.take())
                    raise failure
            load_s = time.monotonic() - began
            loaded = [e.label for e in loading.experts()]
            swap = asyncio.run_coroutine_threadsafe(self._swap(cascade, loading.placed, plan.kept), self._loop)
            while True:
                try:
                    new = swap.result(1.0)
                    break
                except concurrent.futures.TimeoutError:
                    if not self._running() and swap.cancel():  # closed meanwhile: the swap never ran
                        self._replicas.discard(loading.take())
                        raise ReloadRefused("closed", "the engine stopped before the new cascade went in") from None
            return ReloadReport(plan.kind, new.version, loaded, sum(len(b) for b in plan.kept.values()), plan.dropped,
                                load_s, time.monotonic() - began)

    async def _swap(self, cascade: CascadeConfig, placed: dict[str, list[Expert]],
                    kept: dict[str, list[MicroBatcher]]) -> ServingCascade:
        new = await self._build_serving(cascade, placed, kept)
        old = self._path.serving
        self._path.serve(new)  # requests from now on start on the new cascade
        self.config = self.config.model_copy(update={"cascade": cascade})
        self._path.cache.clear()  # its answers are the old cascade's
        self._retiring.append(old)
        self._unfreed += 1
        old.retire(self._free_when_idle)
        return new

    # -- retirement -----------------------------------------------------------------------------
    def _free_when_idle(self, old: ServingCascade) -> None:
        if not self._running():  # closing: the engine's close() stops every replica and releases every expert itself
            return
        task = self._loop.create_task(self._free(old))
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _free(self, old: ServingCascade) -> None:
        """Close the replicas of a retired, idle cascade that no other cascade uses, and release their models."""
        live = {id(b) for c in (self._path.serving, *self._retiring) if c is not old for b in c.replicas()}
        gone = [b for b in dict.fromkeys(old.replicas()) if id(b) not in live]
        for batcher in gone:
            await batcher.close()
            self._stats.unwatch_replica(batcher.replica, batcher)
        experts = [b.expert for b in gone]
        self._retiring.remove(old)
        del gone, old  # the experts' last references are now `experts`, which `discard` empties
        try:
            if experts:  # a calibration swap keeps every replica: nothing to release, no collection
                await asyncio.get_running_loop().run_in_executor(None, self._replicas.discard, experts, "replaced")
        finally:
            self._unfreed -= 1


def _takes_requests(batcher: MicroBatcher) -> float:
    """1.0 while the replica takes requests (healthy or due its retry, its worker not being replaced), for the
    health gauge."""
    return 0.0 if batcher.expert.down() or batcher.health.state(time.monotonic()) == "unhealthy" else 1.0
