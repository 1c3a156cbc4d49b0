"""One level of the cascade at run time: its experts' replicas, whether it fits, and running it.

A level runs the experts that are available (a replica healthy or due its retry), each on the
replica expected to answer soonest. It is skipped when its expected latency does not fit the time
left (cascade/in_time.py); a level skipped for time whose estimate nobody has refreshed for
`latency_stale_s` gets a probe batch outside any request, so one slow measurement cannot keep it
skipped forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from cascade import consensus, in_time
from cascade.config import ExpertConfig, LevelConfig
from cascade.decode import DecodeError
from cascade.experts.base import ImageInput
from cascade.request import ExpertAnswer, Request
from cascade.scheduler import Expired, MicroBatcher

AnswerSink = Callable[[ExpertAnswer], None]
FailureSink = Callable[[str, str, BaseException | None], None]  # expert, kind, the error (None: timeout)


class Plan(enum.Enum):
    RUN = "run"
    TOO_SLOW = "too_slow"  # its expected latency does not fit the time left
    UNAVAILABLE = "unavailable"  # every expert of the level is out of service


@dataclass
class Level:
    index: int
    config: LevelConfig
    batchers: dict[str, list[MicroBatcher]] = field(default_factory=dict)  # expert name -> replicas
    stale_after_s: float = 10.0

    def __post_init__(self) -> None:
        self.experts: dict[str, ExpertConfig] = {e.name: e for e in self.config.experts}

    def replicas(self) -> list[MicroBatcher]:
        return [b for batchers in self.batchers.values() for b in batchers]

    def choose(self, now_s: float) -> tuple[dict[str, MicroBatcher], float]:
        """Per expert, the available replica expected to answer soonest (ties: the shorter queue), and the latest
        of their expected answers. An expert whose replicas are all out of service is left out.

        NOTE: run for every request at every level: one pass over the replicas, each estimate read once.
        """
        chosen: dict[str, MicroBatcher] = {}
        latest_s = 0.0
        for name, batchers in self.batchers.items():
            best: MicroBatcher | None = None
            best_key = (float("inf"), 0)
            for batcher in batchers:
                if batcher.available(now_s):
                    key = (batcher.expected_latency_s(now_s), batcher.queued())
                    if key < best_key:
                        best, best_key = batcher, key
            if best is not None:
                chosen[name] = best
                latest_s = max(latest_s, best_key[0])
        return chosen, latest_s

    @staticmethod
    def needs_pixels(chosen: dict[str, MicroBatcher]) -> bool:
        """Whether a replica chosen to run needs host pixels (it cannot decode the request's JPEG itself)."""
        return any(not batcher.takes_jpeg for batcher in chosen.values())

    def plan(self, time_left_s: float, now_s: float, probe_image: ImageInput) -> tuple[Plan, dict[str, MicroBatcher]]:
        """Run the level if its slowest chosen expert's expected latency fits `time_left_s` (cascade/in_time.py)."""
        chosen, expected_s = self.choose(now_s)
        if not chosen:
            return Plan.UNAVAILABLE, {}
        if in_time.fits(expected_s, time_left_s):
            return Plan.RUN, chosen
        for batcher in chosen.values():
            if batcher.compute.stale(self.stale_after_s, now_s) and not batcher.queued():
                batcher.probe(probe_image)
        return Plan.TOO_SLOW, {}

    async def run(
        self, chosen: dict[str, MicroBatcher], request: Request, on_answer: AnswerSink, on_failure: FailureSink,
    ) -> None:
        """Run the chosen experts together until every one has settled; answers are handed over as each arrives.

        The request's deadline scope (cascade/lifetime.py) ends it by cancelling this task: experts still out are
        then cancelled (dropped unrun if queued, their result discarded if running) and reported as timeouts. No
        timer of its own: the scope's would fire at the same instant.
        """
        futures = {batcher.submit(request): name for name, batcher in chosen.items()}
        for future, name in futures.items():
            future.add_done_callback(functools.partial(self._settled, name, on_answer, on_failure))
        try:
            if len(futures) == 1:
                # One expert (most levels): its future awaited as it is, not through asyncio.wait's set and waiter.
                with contextlib.suppress(Exception):  # its failure is reported by _settled, as asyncio.wait's is
                    await next(iter(futures))
            else:
                await asyncio.wait(futures)
        finally:  # the request's deadline cancelled us
            for future, name in futures.items():
                # A future awaited directly was cancelled with this task (`_settled` reports nothing for it).
                if future.cancelled() or not future.done():
                    future.cancel()
                    on_failure(name, "timeout", None)

    def _settled(
        self, name: str, on_answer: AnswerSink, on_failure: FailureSink, future: asyncio.Future[float]
    ) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            on_answer(consensus.make_answer(self.experts[name], self.index, future.result()))
        else:
            kind = "expired" if isinstance(exc, Expired) else "bad_image" if isinstance(exc, DecodeError) else "error"
            on_failure(name, kind, exc)
