"""A request's whole life in the engine, owned in one place, in small steps.

`RequestPath.run(job)` is the only owner of a request. It runs the work in a timeout scope that
ends at the deadline (less a guard); if time runs out the work is cancelled where it waits and it
answers with the best it already knows (the pooled answers so far, else the prior). Callers never
cancel anything: they wait for the answer, which always comes by the deadline.

The work, step by step, each a method tested on its own:
  admit      a slot (bounded in flight; stake and deadline order the waiters), released on any exit
  decode     the request's image (cascade/request_image.py owns its state and decides where each step runs):
             base64, hash and header checks, then pixels or a JPEG left encoded for the first level's GPU
             experts; host pixels later only when a level whose experts need arrays is about to run
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
from cascade.decode import DecodeBusy, DecodeError, MemoryBudget
from cascade.decode_pool import IsolatedDecoder
from cascade.levels import Level, Plan
from cascade.observers.base import Finished, ObserverRunner
from cascade.request import ExpertAnswer, Job, Request, Result, Status
from cascade.request_image import ImageDecoders, RequestImage
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
    image: RequestImage | None = None  # once its payload checked out: its bytes and hash go to the observers
    image_size: tuple[int, int] | None = None  # reported only for a request that computed its own image
    refused: DecodeError | None = None  # an expert could not decode the image (device decoder and PIL)
    started_s: float = field(default_factory=time.monotonic)  # when the engine took the request up

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


class RequestPath:
    def __init__(self, config: EngineConfig, stats: EngineStats, observers: ObserverRunner,
                 decoder: concurrent.futures.Executor, run_every_level: bool = False) -> None:
        self.config = config  # scheduler and decode settings; the cascade is `serving.config`
        self.serving = ServingCascade.empty(config.cascade)  # the engine puts the loaded one here
        self.routing = not run_every_level  # eval mode: no early exit, no skipping for time
        self.stats = stats
        self.observers = observers
        sched = config.scheduler
        self.admission = Admission(self.room(self.serving), sched.max_in_flight_per_hotkey, sched.max_waiting)
        self.cache = ResultCache(sched.cache_size, sched.cache_ttl_s)
        self.images = ImageDecoders(config.decode, decoder, sched.decode_workers, sched.inline_check_max_bytes,
                                    self.cache, stats.isolated_decode)
        self.guard_s = sched.answer_guard_ms / 1000.0

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

    # The decode capacity, for the engine (which closes it) and tests.
    @property
    def budget(self) -> MemoryBudget:
        return self.images.budget

    @property
    def isolated(self) -> IsolatedDecoder | None:
        return self.images.isolated

    # The serving cascade's parts, for readers outside the request path (a request uses its own).
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
            image = self.images.image(job, progress.serving)
            try:
                await image.check()
            except DecodeBusy:
                progress.failures.append("decode_busy")
                return self.best(progress, Status.PRIOR)
            progress.image = image
            assert image.hash is not None
            cached = self.cache.get(image.hash)
            if cached is not None:
                self.stats.cache_hit()
                return shared_result(job, cached, Status.CACHED)
            return await self.coalesce_or_compute(job, progress, image)
        finally:
            admission.release(job.hotkey)

    # -- steps ----------------------------------------------------------------------------------
    async def _host_pixels(self, image: RequestImage, progress: Progress) -> bool:
        """The image's host pixels for a level whose experts need arrays. False (the level is not run) when they
        cannot be decoded in time, or at all after an earlier level answered; DecodeError when nothing answered
        (the PIL path's answer)."""
        try:
            await image.host_pixels()
        except DecodeBusy:
            progress.failures.append("decode_busy")
            return False
        except DecodeError:
            if not progress.answers:
                raise
            progress.failures.append("decode_error")
            return False
        return True

    async def coalesce_or_compute(self, job: Job, progress: Progress, image: RequestImage) -> Result:
        assert image.hash is not None
        coalescer = progress.serving.coalescer
        shared: Shared | None
        while (shared := coalescer.get(image.hash)) is not None:
            first = await shared.wait()
            if shared.serves(first, job.deadline_s):
                return shared_result(job, first, Status.COALESCED)
            # Its owner had less time than we have and was cut short: compute the image ourselves.
        owner = coalescer.own(image.hash, job.deadline_s)
        try:
            try:
                request = await image.request()
            except DecodeBusy:
                progress.failures.append("decode_busy")
                return self.best(progress, Status.PRIOR)
            progress.image_size = image.size
            result = await self.compute(request, image, progress)
            # An answer of a cascade already replaced would outlive it in the cache: not kept.
            if result.status in (Status.CONFIDENT, Status.EXHAUSTED) and progress.serving is self.serving:
                self.cache.put(image.hash, result)
            owner.publish(result)
            return result
        finally:  # peers still waiting get the best known if nothing was published (cut short, failed)
            owner.close(lambda: self.best(progress, Status.DEADLINE))

    async def compute(self, request: Request, image: RequestImage, progress: Progress) -> Result:
        """The levels, cheapest first: exit when confident, stop when the next one cannot finish in time."""
        status = Status.EXHAUSTED
        pooling = progress.serving.pooling
        for level in progress.serving.levels:
            now_s = time.monotonic()
            time_left_s = in_time.time_left_s(request.deadline_s, now_s, self.guard_s)
            plan, chosen = level.plan(time_left_s if self.routing else float("inf"), now_s, image.probe())
            if plan is Plan.UNAVAILABLE:  # every expert of this level is out of service: try the next level
                self.stats.level_skipped(level.index, plan.value)
                continue
            if plan is Plan.TOO_SLOW:  # the later levels are slower still
                self.stats.level_skipped(level.index, plan.value)
                status = Status.DEADLINE
                break
            if image.needs_host_pixels(level, chosen) and not await self._host_pixels(image, progress):
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
        late = bool(job.deadline_s) and now_s > job.deadline_s
        self.stats.answered(result.status.value, result.levels_run, now_s - job.arrival_s, budget_s, late,
                            late_on_arrival=late and progress.started_s >= job.deadline_s)
        if result.status is Status.PRIOR:
            logger.debug("request {} answered from the prior (failures: {})", job.request_id,
                         ", ".join(result.failures) or "none")
        image = progress.image
        image_hash, image_bytes = (image.hash, image.data) if image is not None else (None, None)
        self.observers.notify(Finished(job, result, image_hash, image_bytes, progress.image_size,
                                       progress.serving.version))
        return result


