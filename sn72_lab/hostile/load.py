"""An honest validator beside the attack: signed requests at a fixed rate through a real bittensor dendrite.

It runs open-loop (a request leaves every 1/rate seconds on average, whether or not the previous one was
answered) on its own thread and event loop, so an attack that stalls the miner shows up as late or missing
answers here. Gaps are jittered (0.5 to 1.5 times the mean, as a validator's loop is no metronome): at exact
intervals the validator phase-locks with a token bucket's refill and the outcome of a flood depends on luck. Each
request carries a distinct image (no cache hits).

A 200 whose prediction equals the cascade's prior (`prior`) is counted apart: the miner sends the prior when no
model answered in time, so a stalled cascade still answers 200 (the red team's line counts model answers in time).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sn72_lab.hostile.wire import Target
from sn72_tools.client import Outcome, axon_info, encode_jpeg, make_dendrite, percentiles, query, synthetic_image


@dataclass(frozen=True)
class LoadStats:
    sent: int
    answered: int  # 200 with a prediction in [0, 1], within the timeout
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    model_answered: int = 0  # answered (as above) and not with the prior
    latency_p50_ms: float = float("nan")  # every request, a miss at the time it took (up to the timeout)
    latency_p99_ms: float = float("nan")
    server_errors: int = 0  # 500s

    @property
    def model_share(self) -> float | None:
        """Share of requests answered in time with a model answer (None: no request in the window)."""
        return self.model_answered / self.sent if self.sent else None

    @property
    def answer_rate(self) -> float:
        return self.answered / self.sent if self.sent else float("nan")

    def summary(self) -> str:
        if not self.sent:
            return "no requests"
        return f"{self.answered}/{self.sent} answered, p50 {self.p50_ms:.0f} ms, p99 {self.p99_ms:.0f} ms"


class ValidatorLoad:
    """`with ValidatorLoad(wallet, target, rate_per_s=1.0) as load: ...; stats = load.stats(t0, t1)`."""

    def __init__(self, wallet: Any, target: Target, rate_per_s: float = 1.0, timeout_s: float = 9.0,
                 first_seed: int = 1_000_000, prior: float | None = 0.5) -> None:
        self.wallet = wallet
        self.prior = prior  # None: the miner's prior is unknown, every valid 200 counts as a model answer
        self.target = target
        self.interval_s = 1.0 / rate_per_s
        self._jitter = random.Random()
        self.timeout_s = timeout_s
        self._seed = first_seed
        self._records: list[tuple[float, asyncio.Future[Outcome]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="validator-load", daemon=True)

    def __enter__(self) -> ValidatorLoad:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        dendrite = make_dendrite(self.wallet)
        axon = axon_info(self.target.host, self.target.port, self.target.miner_hotkey)
        tasks: list[asyncio.Task[Outcome]] = []
        self._ready.set()
        next_s = time.monotonic()
        try:
            while not self._stop.is_set():
                image = encode_jpeg(synthetic_image(self._seed))
                self._seed += 1
                task = asyncio.ensure_future(query(dendrite, axon, image, timeout_s=self.timeout_s))
                tasks.append(task)
                with self._lock:
                    self._records.append((time.monotonic(), task))
                next_s += self.interval_s * self._jitter.uniform(0.5, 1.5)
                await asyncio.sleep(max(0.0, next_s - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await dendrite.aclose_session()

    def stats(self, start_s: float, end_s: float) -> LoadStats:
        """Requests sent in [start_s, end_s] (monotonic), once each has been answered or timed out."""
        with self._lock:
            chosen = [task for sent_s, task in self._records if start_s <= sent_s <= end_s]
        deadline_s = time.monotonic() + self.timeout_s + 5
        while not all(task.done() for task in chosen) and time.monotonic() < deadline_s:
            time.sleep(0.05)
        outcomes = [task.result() for task in chosen if task.done() and not task.exception()]
        good = [o for o in outcomes if o.ok and o.latency_s <= self.timeout_s]
        model = [o for o in good if self.prior is None or o.prediction != self.prior]
        points = percentiles([o.latency_s * 1000 for o in good], (50, 99))
        # A request that never completed (an exception in the client) counts at the timeout.
        every_ms = [o.latency_s * 1000 for o in outcomes] + [self.timeout_s * 1000] * (len(chosen) - len(outcomes))
        every = percentiles(every_ms, (50, 99))
        statuses = Counter(o.status_code for o in outcomes)
        return LoadStats(len(chosen), len(good), points["p50"], points["p99"], dict(statuses), len(model),
                         every["p50"], every["p99"], statuses.get(500, 0))
