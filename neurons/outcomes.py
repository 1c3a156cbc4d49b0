"""What the axon did with each request, counted by outcome (never by caller), logged as a summary.

A refusal costs one counter increment, not a log line: a flood of 55 refusals a second used to
write ~0.9 GB of ERROR lines a day. `summarise` writes at most one line per interval with the
refusals of that interval by reason, so the log's volume is bounded whatever the traffic.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

# bittensor's axon logs one ERROR line per refused or failed request ("Type#uuid: message").
_AXON_ERROR_LINE = re.compile(r"^\w+#[0-9a-f-]{36}: ")


class AxonOutcomes:
    """Thread-safe counts of axon outcomes (`refused_*`, `answered_*`, `closed_*`, `late_*`)."""

    def __init__(self, registry: CollectorRegistry | None = None, summary_interval_s: float = 60.0) -> None:
        self.registry = registry or CollectorRegistry()
        self._counter = Counter("sn72_miner_axon", "Axon-side outcomes: refusals by reason, answers, closed "
                                "connections", ["outcome"], registry=self.registry)
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._interval_s = summary_interval_s
        self._last_summary_s = time.monotonic()

    def track_http(self, guard: Any) -> None:
        """Requests being processed and waiting their turn at the HTTP layer, read at scrape time."""
        gauge = Gauge("sn72_miner_http_requests", "Requests at the HTTP layer", ["state"], registry=self.registry)
        gauge.labels("active").set_function(lambda: guard.active)
        gauge.labels("waiting").set_function(lambda: guard.waiting)

    def add(self, outcome: str, count: int = 1) -> None:
        self._counter.labels(outcome).inc(count)
        with self._lock:
            self._totals[outcome] = self._totals.get(outcome, 0) + count

    def get(self, outcome: str) -> int:
        with self._lock:
            return self._totals.get(outcome, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def summarise(self, now_s: float | None = None, force: bool = False) -> str | None:
        """One line with the refusals since the last line, at most once per interval (None: nothing to say)."""
        now_s = time.monotonic() if now_s is None else now_s
        if not force and now_s - self._last_summary_s < self._interval_s:
            return None
        totals = self.snapshot()
        window = {k: v - self._reported.get(k, 0) for k, v in totals.items() if not k.startswith("answered_")}
        window = {k: v for k, v in window.items() if v > 0}
        elapsed_s = now_s - self._last_summary_s
        self._reported = totals
        self._last_summary_s = now_s
        if not window:
            return None
        parts = ", ".join(f"{k} {v}" for k, v in sorted(window.items(), key=lambda kv: -kv[1]))
        line = f"refused or closed in the last {elapsed_s:.0f}s: {sum(window.values())} ({parts})"
        logger.warning(line)
        return line


class DropAxonErrorLines(logging.Filter):
    """Keeps bittensor's per-request error lines out of the log (the outcomes are counted instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.endswith("axon.py") and _AXON_ERROR_LINE.match(record.getMessage()):
            self.dropped += 1
            return False
        return True


def quiet_bittensor_request_logs() -> DropAxonErrorLines:
    """Install the filter on bittensor's logger (idempotent enough: one filter per call)."""
    dropper = DropAxonErrorLines()
    logging.getLogger("bittensor").addFilter(dropper)
    return dropper
