"""Runs each request through the levels, cheapest first, and always answers before its deadline.

The engine owns a thread with its own asyncio loop: the miner's event loop only hands jobs over
(`submit`, thread-safe, returns a concurrent future) and never waits on model work. Per request:
decode (worker threads) -> cache / coalescing -> admission -> levels -> observers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from cascade import consensus
from cascade.admission import Admission
from cascade.cache import ResultCache
from cascade.config import EngineConfig, ExpertConfig, LevelConfig
from cascade.decode import Decoded, DecodeError, decode_image, decode_payload, hash_bytes
from cascade.experts.base import Expert
from cascade.experts.registry import build_expert
from cascade.observers.base import Finished, Observer, ObserverRunner
from cascade.request import ExpertAnswer, Job, Request, Result, Status
from cascade.scheduler import Expired, MicroBatcher
from cascade.stats import EngineStats

ExpertFactory = Callable[[ExpertConfig, str], Expert]

FATAL_EXIT_CODE = 70  # EX_SOFTWARE: pm2 (autorestart) starts a fresh process with a fresh CUDA context


def _exit_for_restart(replica: str, exc: BaseException) -> None:
    """A dead device context fails every later batch: exit now and let the supervisor restart us."""
    logger.critical("device context of {} is lost ({!r}); exiting with code {} for a restart", replica, exc,
                    FATAL_EXIT_CODE)
    os._exit(FATAL_EXIT_CODE)


@dataclass
class _Level:
    index: int
    config: LevelConfig
    # expert name -> its replicas' batchers
    batchers: dict[str, list[MicroBatcher]] = field(default_factory=dict)

    def pick(self, expert: str) -> MicroBatcher:
        """The replica expected to answer soonest."""
        return min(self.batchers[expert], key=lambda b: b.expected_latency_s())

    def expected_latency_s(self) -> float:
        """Slowest expert of the level, each on its best replica."""
        return max(self.pick(name).expected_latency_s() for name in self.batchers)


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
        run_every_level: bool = False,
    ) -> None:
        self.config = config
        self.pooling = consensus.Pooling.from_config(config.cascade)
        # Eval mode (cascade/evaluation): every level runs on every image, neither exit nor skip.
        self.run_every_level = run_every_level
        self._on_fatal = on_fatal or _exit_for_restart
        self.observers = ObserverRunner(list(observers))
        self._expert_factory = expert_factory
        self.stats = EngineStats()
        self.cache = ResultCache(config.scheduler.cache_size, config.scheduler.cache_ttl_s)
        self.admission = Admission(
            config.scheduler.max_in_flight, config.scheduler.max_in_flight_per_hotkey, config.scheduler.max_waiting
        )
        self._levels: list[_Level] = []
        self._experts: list[Expert] = []
        self._pending_by_hash: dict[str, asyncio.Future[Result]] = {}
        self._warm_batch_s: dict[int, float] = {}  # id(expert) -> slowest warm-up batch
        self._decode_min_side: int | None = None  # set once the experts are loaded
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop", daemon=True)
        self._decoder = concurrent.futures.ThreadPoolExecutor(config.scheduler.decode_workers, "decode")
        self._active = 0
        self.startup: StartupReport | None = None
        self.started = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> StartupReport:
        """Place, load and warm every expert, then start the loop. Raises on any failure."""
        from cascade.placement import describe_plan, plan_placement, visible_devices

        began = time.monotonic()
        # NOTE: process-wide. Expert threads drop the GIL inside every torch call and must win it
        # back from the loop and decode threads; at Python's 5 ms default a batch of small calls
        # waits longer for the GIL than for the GPU.
        sys.setswitchinterval(self.config.scheduler.gil_switch_interval_ms / 1000.0)
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
        self._decode_min_side = None if None in sides else max(s for s in sides if s is not None)
        logger.info("JPEGs decoded with both sides >= {} (the largest expert input)", self._decode_min_side or "full")
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
            level = _Level(index, level_config)
            for expert_config in level_config.experts:
                batchers = []
                for expert in placed[expert_config.name]:
                    batcher = MicroBatcher(
                        expert, sched.latency_window, sched.latency_quantile, self.stats.record_batch, self._on_fatal
                    )
                    seeded = self._warm_batch_s.get(id(expert), 0.0)
                    if expert_config.expected_latency_ms is None and seeded:
                        batcher.compute.seed(seeded)
                    batcher.start()
                    batchers.append(batcher)
                level.batchers[expert_config.name] = batchers
            self._levels.append(level)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop batchers, observers and threads. Requests already answered are unaffected."""
        if not self.started:
            self._decoder.shutdown(wait=False)
            return
        self.started = False

        async def _close() -> None:
            for level in self._levels:
                for batchers in level.batchers.values():
                    for batcher in batchers:
                        await batcher.close()

        try:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self.observers.close()
            for expert in self._experts:
                expert.close()

    # -- public API -----------------------------------------------------------------------------
    def submit(self, job: Job) -> concurrent.futures.Future[Result]:
        """Thread-safe. The future resolves to a Result, or raises DecodeError for a bad payload."""
        if not self.started:
            raise RuntimeError("engine is not started")
        return asyncio.run_coroutine_threadsafe(self._handle(job), self._loop)

    def active(self) -> int:
        """Jobs submitted and not yet answered (for draining)."""
        return self._active

    def queue_depths(self) -> dict[str, int]:
        return {
            f"{b.name}@{b.device}": b.queued()
            for level in self._levels
            for batchers in level.batchers.values()
            for b in batchers
        }

    # -- the request path (engine loop) ---------------------------------------------------------
    async def _handle(self, job: Job) -> Result:
        self._active += 1
        try:
            return await self._answer(job)
        except DecodeError:
            self.stats.decode_errors += 1
            raise
        finally:
            self._active -= 1

    async def _answer(self, job: Job) -> Result:
        loop = asyncio.get_running_loop()
        limits = self.config.decode
        data, image_hash, decoded = await loop.run_in_executor(self._decoder, self._prepare, job.payload)
        cached = self.cache.get(image_hash)
        if cached is not None:
            return self._finish(job, self._as_cached(job, cached), image_hash, data, None)
        shared = self._pending_by_hash.get(image_hash)
        if shared is not None:  # the same image is being answered for someone else right now
            try:
                time_left_s = max(0.0, job.deadline_s - time.monotonic())
                first = await asyncio.wait_for(asyncio.shield(shared), timeout=time_left_s)
            except DecodeError:
                raise  # the same bytes: the same refusal, counted in _handle
            except Exception:  # noqa: BLE001 - the first asker timed out or failed: answer this one from the prior
                return self._finish(job, self._prior(job, 0, ("coalesced",)), image_hash, data, None)
            return self._finish(job, self._as_cached(job, first), image_hash, data, None)
        own: asyncio.Future[Result] = loop.create_future()
        self._pending_by_hash[image_hash] = own
        try:
            if decoded is None:  # skipped as a likely repeat, but not answered after all
                decoded = await loop.run_in_executor(self._decoder, decode_image, data, limits, self._decode_min_side)
            request = Request(job, decoded.image, image_hash, data)
            result = await self._admit_and_run(request)
            if result.status in (Status.CONFIDENT, Status.EXHAUSTED):
                self.cache.put(image_hash, result)
            own.set_result(result)
            return self._finish(job, result, image_hash, data, decoded.original_size)
        except BaseException as exc:
            if not own.done():
                own.set_exception(exc)
                own.exception()  # mark retrieved: waiters handle it themselves
            raise
        finally:
            self._pending_by_hash.pop(image_hash, None)

    def _prepare(self, payload: str) -> tuple[bytes, str, Decoded | None]:
        """Decoder thread: base64, hash and (unless the image is a likely repeat) pixels, in one hop.

        One executor round trip per request instead of three: under load every hop is a wait for the
        GIL. The repeat check reads loop-owned state without a lock; a wrong guess costs one more hop.
        """
        data = decode_payload(payload, self.config.decode)
        image_hash = hash_bytes(data)
        if self.cache.contains(image_hash) or image_hash in self._pending_by_hash:
            return data, image_hash, None
        return data, image_hash, decode_image(data, self.config.decode, self._decode_min_side)

    async def _admit_and_run(self, request: Request) -> Result:
        job = request.job
        admitted = await self.admission.acquire(job.hotkey, job.stake, job.deadline_s, time.monotonic())
        if not admitted:
            self.stats.rejected_admission += 1
            return self._prior(job, 0, ("admission",))
        try:
            return await self._run_levels(request)
        finally:
            self.admission.release(job.hotkey)

    async def _run_levels(self, request: Request) -> Result:
        guard_s = self.config.scheduler.answer_guard_ms / 1000.0
        answers: list[ExpertAnswer] = []
        failures: list[str] = []
        levels_run = 0
        probability = self.config.cascade.prior
        status = Status.EXHAUSTED
        routing = not self.run_every_level  # the one place eval mode turns exits and latency skips off
        for level in self._levels:
            time_left_s = request.deadline_s - time.monotonic() - guard_s
            if time_left_s <= 0 or (routing and level.expected_latency_s() > time_left_s):
                self.stats.skipped_levels[level.index] += 1
                status = Status.DEADLINE
                break
            cut_short = await self._run_level(level, request, time_left_s, answers, failures)
            levels_run += 1
            if answers:
                probability = self.pooling.level_probability(level.index, answers)
            if cut_short:
                status = Status.DEADLINE
                break
            if answers and routing and self.pooling.should_exit(level.index, probability):
                status = Status.CONFIDENT
                break
        if not answers:
            return self._prior(request.job, levels_run, tuple(failures))
        return Result(
            request_id=request.request_id,
            probability=probability,
            status=status,
            levels_run=levels_run,
            answers=tuple(answers),
            latency_ms=(time.monotonic() - request.job.arrival_s) * 1000.0,
            failures=tuple(failures),
        )

    async def _run_level(
        self, level: _Level, request: Request, time_left_s: float, answers: list[ExpertAnswer], failures: list[str]
    ) -> bool:
        """Run the level's experts together; True if the deadline cut it short."""
        futures = {level.pick(name).submit(request): name for name in level.batchers}
        done, pending = await asyncio.wait(futures, timeout=time_left_s)
        configs = {e.name: e for e in level.config.experts}
        for future in pending:
            future.cancel()  # the batcher skips cancelled items; nothing is computed for them
            failures.append(f"{futures[future]}:timeout")
            self.stats.expert_outcomes[(futures[future], "timeout")] += 1
        for future in done:
            name = futures[future]
            exc = future.exception()
            if exc is None:
                answers.append(consensus.make_answer(configs[name], level.index, future.result()))
                self.stats.expert_outcomes[(name, "answered")] += 1
            else:
                kind = "expired" if isinstance(exc, Expired) else "error"
                failures.append(f"{name}:{kind}")
                self.stats.expert_outcomes[(name, kind)] += 1
        return bool(pending)

    def _prior(self, job: Job, levels_run: int, failures: tuple[str, ...]) -> Result:
        logger.warning("request {} answered from the prior (failures: {})", job.request_id, failures or "none")
        return Result(
            request_id=job.request_id,
            probability=self.config.cascade.prior,
            status=Status.PRIOR,
            levels_run=levels_run,
            latency_ms=(time.monotonic() - job.arrival_s) * 1000.0,
            failures=failures,
        )

    @staticmethod
    def _as_cached(job: Job, result: Result) -> Result:
        return Result(
            request_id=job.request_id,
            probability=result.probability,
            status=Status.CACHED,
            levels_run=0,
            answers=result.answers,
            latency_ms=(time.monotonic() - job.arrival_s) * 1000.0,
        )

    def _finish(
        self, job: Job, result: Result, image_hash: str, data: bytes, size: tuple[int, int] | None
    ) -> Result:
        now = time.monotonic()
        self.stats.requests[result.status.value] += 1
        self.stats.exits_by_level[result.levels_run] += 1
        self.stats.latency.observe(now - job.arrival_s)
        if job.deadline_s and now > job.deadline_s:
            self.stats.late_answers += 1
        self.observers.notify(Finished(job, result, image_hash, data, size, self.config.cascade.version))
        return result
