"""What a replica's batches take, and whether it can be trusted with a request right now.

`LatencyTracker` keeps recent batch durations with the time they were measured
(cascade/windowed_quantile.py): old samples age out, so one slow start (a cold cache, a warm-up hiccup) cannot
make a level look too slow forever, and `stale()` tells the engine that a level nobody has run for a while
deserves a probe batch. Its estimate is what the level plan and the scheduler's expiry give cascade/in_time.py.

`Health` is a circuit breaker per replica: repeated failures or a batch that hangs mark it
unhealthy, requests skip it during a cool-down, then it gets one batch to prove itself.
"""

from __future__ import annotations

import time

from loguru import logger

from cascade.windowed_quantile import WindowedQuantile


class LatencyTracker:
    """A high quantile of recent durations; the configured initial value until any sample exists."""

    def __init__(self, window: int, quantile: float, initial_s: float, horizon_s: float = 120.0) -> None:
        self._samples = WindowedQuantile(window, quantile)
        self._initial_s = initial_s
        self._horizon_s = horizon_s
        self._created_s = time.monotonic()
        self.last_sample_s: float | None = None
        # The estimate is read several times per request and changes only when a sample comes or ages out.
        self._cached: tuple[float, float] | None = None  # (estimate, valid until)

    def record(self, seconds: float, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self._samples.add(now_s, seconds)
        self.last_sample_s = now_s
        self._cached = None

    def seed(self, seconds: float, now_s: float | None = None) -> None:
        """A measurement from warm-up: a sample like any other, which ages out like any other."""
        self.record(seconds, now_s)

    def estimate_s(self, now_s: float | None = None) -> float:
        now_s = time.monotonic() if now_s is None else now_s
        if self._cached is not None and now_s < self._cached[1]:
            return self._cached[0]
        # Samples come in the order of the monotonic clock, so those past the horizon are the oldest, and once past
        # it they stay past it: dropped for good. NOTE: a caller whose `now_s` went back in time would have seen
        # them again; every caller reads the clock right before asking.
        oldest = self._samples.oldest()
        while oldest is not None and now_s - oldest.at_s > self._horizon_s:
            self._samples.drop_oldest()
            oldest = self._samples.oldest()
        # Fewer than three: too few to take a quantile of, so be conservative.
        chosen = self._samples.largest() if len(self._samples) < 3 else self._samples.at_quantile()
        estimate = self._initial_s if chosen is None else chosen.seconds
        # Valid until the oldest live sample ages out (or a new one is recorded).
        self._cached = (estimate, float("inf") if oldest is None else oldest.at_s + self._horizon_s)
        return estimate

    def stale(self, after_s: float, now_s: float | None = None) -> bool:
        """No batch measured for `after_s` (or since it was created): the estimate may be out of date."""
        now_s = time.monotonic() if now_s is None else now_s
        since_s = self._created_s if self.last_sample_s is None else self.last_sample_s
        return now_s - since_s > after_s


class Health:
    """Healthy -> unhealthy after `threshold` consecutive failures (or a hang) -> a retry after `cooldown_s`."""

    def __init__(self, name: str, threshold: int, cooldown_s: float) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.consecutive_failures = 0
        self.unhealthy_until_s = 0.0
        self.trips = 0  # times it was marked unhealthy

    def succeeded(self) -> None:
        if self.unhealthy_until_s:
            logger.info("expert {} is healthy again", self.name)
        self.consecutive_failures = 0
        self.unhealthy_until_s = 0.0

    def failed(self, kind: str, now_s: float | None = None) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.threshold:
            self.trip(f"{self.consecutive_failures} failed batches in a row (last: {kind})", now_s)

    def trip(self, why: str, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        if now_s < self.unhealthy_until_s:
            return
        self.unhealthy_until_s = now_s + self.cooldown_s
        self.trips += 1
        logger.warning("expert {} marked unhealthy for {:.0f}s: {}", self.name, self.cooldown_s, why)

    def retry_now(self, now_s: float | None = None) -> None:
        """End a cool-down early (the replica was replaced by a fresh one): the next batch tries it, and one more
        failure marks it unhealthy again; a success closes the breaker."""
        now_s = time.monotonic() if now_s is None else now_s
        if self.unhealthy_until_s > now_s:
            self.unhealthy_until_s = now_s
            logger.info("expert {}: replaced, retried before its cool-down ends", self.name)

    def available(self, now_s: float | None = None) -> bool:
        """False during the cool-down; after it, requests may try again (a success closes the breaker)."""
        now_s = time.monotonic() if now_s is None else now_s
        return now_s >= self.unhealthy_until_s

    def state(self, now_s: float | None = None) -> str:
        if not self.unhealthy_until_s:
            return "healthy"
        return "retrying" if self.available(now_s) else "unhealthy"
