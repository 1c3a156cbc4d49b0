"""One level of the cascade at run time: its experts' replicas, whether it fits, and running it.

A level runs the experts that are available (a replica healthy or due its retry), each on the
replica expected to answer soonest. It is skipped when its expected latency does not fit the time
left; a level skipped for time whose estimate nobody has refreshed for `latency_stale_s` gets a
probe batch outside any request, so one slow measurement cannot keep it skipped forever.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from cascade import consensus
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

    def pick(self, expert: str, now_s: float) -> MicroBatcher | None:
        """The available replica expected to answer soonest (None: all out of service)."""
        live = [b for b in self.batchers[expert] if b.available(now_s)]
        return min(live, key=lambda b: b.expected_latency_s(now_s)) if live else None

    def choose(self, now_s: float) -> dict[str, MicroBatcher]:
        picks = {name: self.pick(name, now_s) for name in self.batchers}
        return {name: batcher for name, batcher in picks.items() if batcher is not None}

    @staticmethod
    def needs_pixels(chosen: dict[str, MicroBatcher]) -> bool:
        """Whether a replica chosen to run needs host pixels (it cannot decode the request's JPEG itself)."""
        return any(not batcher.takes_jpeg for batcher in chosen.values())

    def plan(self, time_left_s: float, now_s: float, probe_image: ImageInput) -> tuple[Plan, dict[str, MicroBatcher]]:
        chosen = self.choose(now_s)
        if not chosen:
            return Plan.UNAVAILABLE, {}
        expected_s = max(b.expected_latency_s(now_s) for b in chosen.values())
        if time_left_s > 0 and expected_s <= time_left_s:
            return Plan.RUN, chosen
        for batcher in chosen.values():
            if batcher.compute.stale(self.stale_after_s, now_s) and not batcher.queued():
                batcher.probe(probe_image)
        return Plan.TOO_SLOW, {}

    async def run(
        self, chosen: dict[str, MicroBatcher], request: Request, time_left_s: float,
        on_answer: AnswerSink, on_failure: FailureSink,
    ) -> bool:
        """Run the chosen experts together; answers are handed over as each arrives. True if cut short."""
        futures = {batcher.submit(request): name for name, batcher in chosen.items()}
        for future, name in futures.items():
            future.add_done_callback(functools.partial(self._settled, name, on_answer, on_failure))
        cut_short = True
        try:
            _, pending = await asyncio.wait(futures, timeout=max(0.0, time_left_s))
            cut_short = bool(pending)
        finally:  # also when the request's own deadline cancels us
            for future, name in futures.items():
                if not future.done():
                    future.cancel()  # dropped unrun if still queued; its result discarded if running
                    on_failure(name, "timeout", None)
        return cut_short

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
