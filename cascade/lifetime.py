"""A request's whole life in the engine, owned in one place, in small steps.

`RequestPath.run(job)` is the only owner of a request. It runs the work in a timeout scope that
ends at the deadline (less a guard); if time runs out the work is cancelled where it waits and it
answers with the best it already knows (the pooled answers so far, else the prior). Callers never
cancel anything: they wait for the answer, which always comes by the deadline.

The work, step by step, each a method tested on its own:
  admit      a slot (bounded in flight; stake and deadline order the waiters), released on any exit
  decode     base64, hash, header checks, pixels (decode threads shared by caller, memory budget, until the
             deadline; an image whose estimated work is costly in a worker process killed at the deadline); a JPEG
             that the first level's GPU experts decode themselves is left encoded, and decoded here only
             when a level whose experts need host arrays is about to run (docs/decoding.md)
  cache      the same image answered recently: that answer
  coalesce   the same image in flight for someone else: wait for it (or compute, if its owner was cut)
  compute    the levels, cheapest first, until confident, exhausted, or out of time
Every exit path, cancellation included, goes through the `finally` of the step that took a
resource: the admission slot, the coalescing registration, the queued batcher items.

A request computes on the cascade that was serving when it started (`Progress.serving`, held until
it is answered): a reload (cascade/serving.py) swaps `RequestPath.serving` without touching it.
Admission, the result cache and the decode budget belong to the path and outlive every cascade.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from cascade import consensus, in_time
from cascade.admission import Admission
from cascade.cache import ResultCache
from cascade.coalesce import Coalescer, Shared
from cascade.config import EngineConfig
from cascade.decode import (
    DecodeBusy,
    Decoded,
    DecodeError,
    DeviceJpeg,
    HeavyImage,
    MemoryBudget,
    decode_or_defer,
    decode_or_isolate,
    decode_payload,
    device_jpeg_or_none,
    hash_bytes,
)
from cascade.decode_pool import FairThreads, IsolatedDecoder
from cascade.levels import Level, Plan
from cascade.observers.base import Finished, ObserverRunner
from cascade.request import ExpertAnswer, Job, Request, Result, Status
from cascade.serving import ServingCascade
from cascade.stats import EngineStats


@dataclass
class Progress:
    """What a request has learnt so far: enough to answer at any moment."""

    job: Job
    serving: ServingCascade  # the cascade this request computes on, from start to answer
    answers: list[ExpertAnswer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    levels_run: int = 0
    level: int = 0  # the level whose pooling gives the answer (the last one that ran or is running)
    image_hash: str | None = None
    image_bytes: bytes | None = None
    image_size: tuple[int, int] | None = None
    refused: DecodeError | None = None  # an expert could not decode the image (device decoder and PIL)

    def result(self, status: Status) -> Result:
        """The answers so far pooled as their level pools them, with `status`; the prior when none answered."""
        latency_ms = (time.monotonic() - self.job.arrival_s) * 1000.0
        if not self.answers:
            return Result(self.job.request_id, self.serving.config.prior, Status.PRIOR, self.levels_run, (),
                          latency_ms, tuple(self.failures))
        probability = self.serving.pooling.level_probability(self.level, self.answers)
        return Result(self.job.request_id, probability, status, self.levels_run, tuple(self.answers), latency_ms,
                      tuple(self.failures))


def shared_result(job: Job, result: Result, status: Status) -> Result:
    """Another request's answer, handed to `job` (from the cache or a coalesced computation)."""
    return Result(job.request_id, result.probability, status, 0, result.answers,
                  (time.monotonic() - job.arrival_s) * 1000.0)


_JPEG_BASE64 = "/9j/"  # what every JPEG (FF D8 FF) looks like in base64


class RequestPath:
    def __init__(self, config: EngineConfig, stats: EngineStats, observers: ObserverRunner,
                 decoder: concurrent.futures.Executor, run_every_level: bool = False) -> None:
        self.config = config  # scheduler and decode settings; the cascade is `serving.config`
        self.serving = ServingCascade.empty(config.cascade)  # the engine puts the loaded one here
        self.routing = not run_every_level  # eval mode: no early exit, no skipping for time
        self.stats = stats
        self.observers = observers
        self.decoder = decoder
        self.threads = FairThreads(decoder, config.scheduler.decode_workers)
        sched = config.scheduler
        self.admission = Admission(self.room(self.serving), sched.max_in_flight_per_hotkey, sched.max_waiting)
        self.cache = ResultCache(sched.cache_size, sched.cache_ttl_s)
        self.budget = MemoryBudget(config.decode.budget_bytes)
        self.isolated = (IsolatedDecoder(config.decode, self.budget, stats.isolated_decode)
                         if config.decode.isolated_workers else None)
        self.isolate_above = config.decode.isolate_above_work if self.isolated is not None else None
        self.guard_s = sched.answer_guard_ms / 1000.0
        self.inline_max_chars = sched.inline_check_max_bytes

    def serve(self, serving: ServingCascade) -> None:
        """Put `serving` in service (engine loop): requests from now on start on it; admission fits its replicas."""
        self.serving = serving
        self.admission.resize(self.room(serving))

    def room(self, serving: ServingCascade) -> int:
        """Requests admitted at once: `max_in_flight`, else `max_in_flight_per_replica` per first-level replica (a
        second GPU needs its own batches in flight; with one GPU's room the two replicas take turns)."""
        sched = self.config.scheduler
        if sched.max_in_flight is not None:
            return sched.max_in_flight
        replicas = len(serving.levels[0].replicas()) if serving.levels else 1
        return sched.max_in_flight_per_replica * max(1, replicas)

    # The serving cascade's parts, for readers outside the request path (a request uses its own).
    @property
    def prior(self) -> float:
        return self.serving.config.prior

    @property
    def pooling(self) -> consensus.Pooling:
        return self.serving.pooling

    @property
    def levels(self) -> list[Level]:
        return self.serving.levels

    @property
    def coalescer(self) -> Coalescer:
        return self.serving.coalescer

    def best(self, progress: Progress, status: Status) -> Result:
        return progress.result(status)

    # -- the lifetime ---------------------------------------------------------------------------
    async def run(self, job: Job) -> Result:
        """The answer by the deadline, always (DecodeError for a payload that is not an acceptable image)."""
        serving = self.serving.enter()  # left when answered: the last user frees a retired cascade
        try:
            progress = Progress(job, serving)
            # NOTE: a timeout scope, not a task of its own and a wait: per request that saved a task, a waiter
            # and a timer handle (~10% of the request path's interpreter time at 1,900 requests/s, py-spy).
            # The loop's clock is time.monotonic(), as the deadline is.
            try:
                async with asyncio.timeout_at(job.deadline_s - self.guard_s):
                    result = await self.answer(job, progress)
            except TimeoutError:
                # The cancellation has unwound the work (its finally blocks released the slot, the coalescing
                # entry and queued work; none of them waits on anything): answer with the best known.
                self.stats.deadline_cut()
                result = self.best(progress, Status.DEADLINE)
            return self.finish(job, result, progress)
        finally:
            serving.leave()

    async def answer(self, job: Job, progress: Progress) -> Result:
        # NOTE: no async context manager for the slot: a generator-based one cost ~3% of the loop's time (py-spy).
        admission = self.admission
        admitted = admission.try_take(job.hotkey) or await admission.acquire(job.hotkey, job.stake, job.deadline_s,
                                                                             time.monotonic())
        if not admitted:
            self.stats.not_admitted()
            progress.failures.append("admission")
            return self.best(progress, Status.PRIOR)
        try:
            try:
                data, image_hash, decoded = await self.decode(job, progress.serving)
            except DecodeBusy:
                progress.failures.append("decode_busy")
                return self.best(progress, Status.PRIOR)
            progress.image_hash, progress.image_bytes = image_hash, data
            cached = self.cache.get(image_hash)
            if cached is not None:
                self.stats.cache_hit()
                return shared_result(job, cached, Status.CACHED)
            return await self.coalesce_or_compute(job, progress, data, decoded)
        finally:
            admission.release(job.hotkey)

    # -- steps ----------------------------------------------------------------------------------
    async def decode(self, job: Job,
                     serving: ServingCascade | None = None) -> tuple[bytes, str, Decoded | DeviceJpeg | None]:
        serving = serving or self.serving
        payload, deadline_s = job.payload, job.deadline_s
        if serving.defer_jpegs and len(payload) <= self.inline_max_chars and payload.startswith(_JPEG_BASE64):
            # A JPEG bound for the device decoder, small enough to check here: base64, hash and header on the loop
            # cost less than the decode pool's round trip (two thread hand-offs, each a wait for the interpreter
            # lock; +32% requests/s with null experts in a worker on two cores, +7% on two H200s:
            # docs/performance.md). Pixels, where PIL must make them, are still made in the pool.
            data, image_hash, checked = self._prepare(payload, deadline_s, serving, header_only=True)
            assert not isinstance(checked, HeavyImage)  # a header check leaves pixels, costly or not, for later
            return data, image_hash, checked
        data, image_hash, decoded = await self.threads.run(job.hotkey, job.stake, deadline_s, self._prepare, payload,
                                                           deadline_s, serving)
        return data, image_hash, await self._isolated(decoded, job)

    async def _isolated(self, decoded: Decoded | DeviceJpeg | HeavyImage | None,
                        job: Job) -> Decoded | DeviceJpeg | None:
        """A costly image's pixels from a worker process (killed if the deadline comes first); others as they are."""
        if not isinstance(decoded, HeavyImage):
            return decoded
        assert self.isolated is not None
        return await self.isolated.decode(decoded, job.hotkey, job.stake, job.deadline_s)

    def _prepare(self, payload: str, deadline_s: float, serving: ServingCascade,
                 header_only: bool = False) -> tuple[bytes, str, Decoded | DeviceJpeg | HeavyImage | None]:
        """Decoder thread: base64, hash and (unless the image is a likely repeat) pixels, in one hop.

        One executor round trip per request instead of three: under load every hop is a wait for the
        GIL. The repeat check reads loop-owned state without a lock; a wrong guess costs one more hop.
        `header_only` (on the loop): no pixels; None leaves a JPEG that needs them to the pool, as a repeat.
        """
        data = decode_payload(payload, self.config.decode)
        image_hash = hash_bytes(data)
        if self.cache.contains(image_hash) or image_hash in serving.coalescer:
            return data, image_hash, None
        if header_only:
            return data, image_hash, device_jpeg_or_none(data, self.config.decode, serving.decode_min_side)
        return data, image_hash, self._first_pixels(data, deadline_s, serving)

    def _first_pixels(self, data: bytes, deadline_s: float,
                      serving: ServingCascade) -> Decoded | DeviceJpeg | HeavyImage:
        """Pixels, or the checked JPEG left encoded where the first level's experts decode it on their device, or a
        costly image left for a worker process."""
        if serving.defer_jpegs:
            return decode_or_defer(data, self.config.decode, serving.decode_min_side, self.budget, deadline_s,
                                   self.isolate_above)
        return self._pixels(data, deadline_s, serving.decode_min_side)

    def _pixels(self, data: bytes, deadline_s: float, min_side: int | None) -> Decoded | HeavyImage:
        return decode_or_isolate(data, self.config.decode, min_side, self.budget, deadline_s, self.isolate_above)

    async def _host_pixels(self, request: Request, progress: Progress) -> bool:
        """Decode a deferred JPEG (decode pool) for a level whose experts need arrays: only requests that reach
        such a level pay for it. False (the level is not run) when it cannot be decoded in time, or at all
        after an earlier level answered; DecodeError when nothing answered (the PIL path's answer)."""
        job = request.job
        try:
            pixels = await self.threads.run(job.hotkey, job.stake, request.deadline_s, self._pixels,
                                            request.image_bytes, request.deadline_s, progress.serving.decode_min_side)
            decoded = await self._isolated(pixels, job)
        except DecodeBusy:
            progress.failures.append("decode_busy")
            return False
        except DecodeError:
            if not progress.answers:
                raise
            progress.failures.append("decode_error")
            return False
        assert isinstance(decoded, Decoded)
        request.image = decoded.image
        return True

    async def coalesce_or_compute(self, job: Job, progress: Progress, data: bytes,
                                  decoded: Decoded | DeviceJpeg | None) -> Result:
        assert progress.image_hash is not None
        coalescer = progress.serving.coalescer
        shared: Shared | None
        while (shared := coalescer.get(progress.image_hash)) is not None:
            first = await shared.wait()
            if shared.serves(first, job.deadline_s):
                return shared_result(job, first, Status.COALESCED)
            # Its owner had less time than we have and was cut short: compute the image ourselves.
        owner = coalescer.own(progress.image_hash, job.deadline_s)
        try:
            if decoded is None:  # skipped as a likely repeat but not answered after all, or checked on the loop
                try:
                    made = await self.threads.run(job.hotkey, job.stake, job.deadline_s, self._first_pixels, data,
                                                  job.deadline_s, progress.serving)
                    decoded = await self._isolated(made, job)
                except DecodeBusy:
                    progress.failures.append("decode_busy")
                    return self.best(progress, Status.PRIOR)
                assert decoded is not None
            if isinstance(decoded, DeviceJpeg):
                progress.image_size = decoded.size
                request = Request(job, None, progress.image_hash, data, jpeg=decoded)
            else:
                progress.image_size = decoded.original_size
                request = Request(job, decoded.image, progress.image_hash, data)
            result = await self.compute(request, progress)
            # An answer of a cascade already replaced would outlive it in the cache: not kept.
            if result.status in (Status.CONFIDENT, Status.EXHAUSTED) and progress.serving is self.serving:
                self.cache.put(progress.image_hash, result)
            owner.publish(result)
            return result
        finally:  # peers still waiting get the best known if nothing was published (cut short, failed)
            owner.close(lambda: self.best(progress, Status.DEADLINE))

    async def compute(self, request: Request, progress: Progress) -> Result:
        """The levels, cheapest first: exit when confident, stop when the next one cannot finish in time."""
        status = Status.EXHAUSTED
        pooling = progress.serving.pooling
        for level in progress.serving.levels:
            now_s = time.monotonic()
            time_left_s = in_time.time_left_s(request.deadline_s, now_s, self.guard_s)
            probe_image = request.image if request.image is not None else request.jpeg
            assert probe_image is not None
            plan, chosen = level.plan(time_left_s if self.routing else float("inf"), now_s, probe_image)
            if plan is Plan.UNAVAILABLE:  # every expert of this level is out of service: try the next level
                self.stats.level_skipped(level.index, plan.value)
                continue
            if plan is Plan.TOO_SLOW:  # the later levels are slower still
                self.stats.level_skipped(level.index, plan.value)
                status = Status.DEADLINE
                break
            if request.image is None and level.needs_pixels(chosen) and not await self._host_pixels(request, progress):
                status = Status.DEADLINE
                break
            progress.level = level.index
            try:
                await level.run(chosen, request, self._answer_sink(progress), self._failure_sink(progress))
            finally:  # a level the deadline cut short counts as run, with what it answered in time
                self.stats.level_ran(level.index, time.monotonic() - now_s)
                progress.levels_run += 1
            if progress.refused is not None and not progress.answers:
                raise progress.refused  # no decoder could read it: refused as the PIL path refuses it
            if self.routing and progress.answers and pooling.should_exit(
                level.index, pooling.level_probability(level.index, progress.answers)
            ):
                status = Status.CONFIDENT
                break
        return self.best(progress, status)

    def _answer_sink(self, progress: Progress) -> Callable[[ExpertAnswer], None]:
        def record(answer: ExpertAnswer) -> None:
            progress.answers.append(answer)
            self.stats.expert_outcome(answer.expert, "answered")

        return record

    def _failure_sink(self, progress: Progress) -> Callable[[str, str, BaseException | None], None]:
        def record(expert: str, kind: str, error: BaseException | None) -> None:
            progress.failures.append(f"{expert}:{kind}")
            self.stats.expert_outcome(expert, kind)
            if isinstance(error, DecodeError):
                progress.refused = error

        return record

    def finish(self, job: Job, result: Result, progress: Progress) -> Result:
        now_s = time.monotonic()
        budget_s = job.deadline_s - job.arrival_s if job.deadline_s else 0.0
        self.stats.answered(result.status.value, result.levels_run, now_s - job.arrival_s, budget_s,
                            late=bool(job.deadline_s) and now_s > job.deadline_s)
        if result.status is Status.PRIOR:
            logger.debug("request {} answered from the prior (failures: {})", job.request_id,
                         ", ".join(result.failures) or "none")
        self.observers.notify(Finished(job, result, progress.image_hash, progress.image_bytes, progress.image_size,
                                       progress.serving.version))
        return result


