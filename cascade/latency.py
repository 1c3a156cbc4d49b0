"""What a replica's batches take, and whether it can be trusted with a request right now.

`LatencyTracker` keeps recent batch durations with the time they were measured: old samples age
out, so one slow start (a cold cache, a warm-up hiccup) cannot make a level look too slow forever,
and `stale()` tells the engine that a level nobody has run for a while deserves a probe batch.

`Health` is a circuit breaker per replica: repeated failures or a batch that hangs mark it
unhealthy, requests skip it during a cool-down, then it gets one batch to prove itself.
"""

from __future__ import annotations

import time
from collections import deque

from loguru import logger


class LatencyTracker:
    """A high quantile of recent durations; the configured initial value until any sample exists."""

    def __init__(self, window: int, quantile: float, initial_s: float, horizon_s: float = 120.0) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (measured at, seconds)
        self._quantile = quantile
        self._initial_s = initial_s
        self._horizon_s = horizon_s
        self._created_s = time.monotonic()
        self.last_sample_s: float | None = None
        # The estimate is read several times per request and changes only when a sample comes or ages out.
        self._cached: tuple[float, float] | None = None  # (estimate, valid until)

    def record(self, seconds: float, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self._samples.append((now_s, seconds))
        self.last_sample_s = now_s
        self._cached = None

    def seed(self, seconds: float, now_s: float | None = None) -> None:
        """A measurement from warm-up: a sample like any other, which ages out like any other."""
        self.record(seconds, now_s)

    def estimate_s(self, now_s: float | None = None) -> float:
        now_s = time.monotonic() if now_s is None else now_s
        if self._cached is not None and now_s < self._cached[1]:
            return self._cached[0]
        live_at = [at_s for at_s, _ in self._samples if now_s - at_s <= self._horizon_s]
        live = [seconds for at_s, seconds in self._samples if now_s - at_s <= self._horizon_s]
        if not live:
            estimate = self._initial_s
        elif len(live) < 3:
            estimate = max(live)  # too few to take a quantile of: be conservative
        else:
            live.sort()
            estimate = live[min(len(live) - 1, int(self._quantile * len(live)))]
        # Valid until the oldest live sample ages out (or a new one is recorded).
        self._cached = (estimate, min(live_at) + self._horizon_s if live_at else float("inf"))
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

    def available(self, now_s: float | None = None) -> bool:
        """False during the cool-down; after it, requests may try again (a success closes the breaker)."""
        now_s = time.monotonic() if now_s is None else now_s
        return now_s >= self.unhealthy_until_s

    def state(self, now_s: float | None = None) -> str:
        if not self.unhealthy_until_s:
            return "healthy"
        return "retrying" if self.available(now_s) else "unhealthy"
