"""What the axon did with each request, counted by outcome (never by caller), and one summary line a minute.

A refusal costs one counter increment, not a log line: a flood of 55 refusals a second used to
write ~0.9 GB of ERROR lines a day. `summarise` writes one line per interval: answers by status,
their latency (p50/p99, arrival to response, as the HTTP layer saw it), refusals and closed
connections by reason, exits by number of levels run and the active-learning queue, so the log's
volume is bounded whatever the traffic. At DEBUG level each refusal is also logged on its own.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

# bittensor's axon logs one ERROR line per refused or failed request ("Type#uuid: message"; its logger strips the
# trailing space when the exception has no text, as Starlette's ClientDisconnect has none).
_AXON_ERROR_LINE = re.compile(r"^\w+#[0-9a-f-]{36}:(?: |$)")
_LATENCY_SAMPLES = 20_000  # per interval; beyond it a uniform reservoir keeps the quantiles honest


class AxonOutcomes:
    """Thread-safe counts of axon outcomes (`refused_*`, `answered_*`, `closed_*`, `late_*`) and response latencies."""

    def __init__(self, registry: CollectorRegistry | None = None, summary_interval_s: float = 60.0) -> None:
        self.registry = registry or CollectorRegistry()
        self._counter = Counter("sn72_miner_axon", "Axon-side outcomes: refusals by reason, answers, closed "
                                "connections, late answers", ["outcome"], registry=self.registry)
        for outcome in ("late_answer", "late_other", "late_skipped", "refused_unverified", "refused_rate_limit"):
            self._counter.labels(outcome)  # the series alerts read exist from the start, at zero
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._exits_reported: dict[int, int] = {}
        self._latencies_s: list[float] = []
        self._latency_seen = 0
        self._rng = random.Random(0)
        self._interval_s = summary_interval_s
        self._last_summary_s = time.monotonic()

    def track_http(self, guard: Any, slots: int) -> None:
        """Requests being processed and waiting their turn at the HTTP layer, read at scrape time, and how many it
        lets in at once (`slots`: all front processes together), so `active` can be read against it."""
        gauge = Gauge("sn72_miner_http_requests", "Requests at the HTTP layer", ["state"], registry=self.registry)
        gauge.labels("active").set_function(lambda: guard.active)
        gauge.labels("waiting").set_function(lambda: guard.waiting)
        Gauge("sn72_miner_http_request_slots", "Requests the HTTP layer lets in at once (axon.max_concurrent_requests "
              "as served, every front process together)", registry=self.registry).set(slots)

    def add(self, outcome: str, count: int = 1) -> None:
        self._counter.labels(outcome).inc(count)
        with self._lock:
            self._totals[outcome] = self._totals.get(outcome, 0) + count
        if not outcome.startswith("answered_"):
            logger.debug("axon: {}", outcome)

    def observe_latency(self, seconds: float) -> None:
        """One response's arrival-to-send time, for this interval's p50/p99."""
        with self._lock:
            self._latency_seen += 1
            if len(self._latencies_s) < _LATENCY_SAMPLES:
                self._latencies_s.append(seconds)
            else:
                slot = self._rng.randrange(self._latency_seen)
                if slot < _LATENCY_SAMPLES:
                    self._latencies_s[slot] = seconds

    def get(self, outcome: str) -> int:
        with self._lock:
            return self._totals.get(outcome, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def summarise(self, now_s: float | None = None, force: bool = False,
                  exits_by_level: Mapping[int, int] | None = None, al_queue: int | None = None) -> str | None:
        """The line for the interval just ended, at most once per interval (None: not due yet).

        `exits_by_level` (levels run -> answers, since start) and `al_queue` come from the engine.
        """
        now_s = time.monotonic() if now_s is None else now_s
        if not force and now_s - self._last_summary_s < self._interval_s:
            return None
        totals = self.snapshot()
        with self._lock:
            latencies, self._latencies_s, self._latency_seen = sorted(self._latencies_s), [], 0
        window = {k: v - self._reported.get(k, 0) for k, v in totals.items()}
        window = {k: v for k, v in window.items() if v > 0}
        elapsed_s = now_s - self._last_summary_s
        self._reported, self._last_summary_s = totals, now_s
        answers = {k.removeprefix("answered_"): v for k, v in window.items() if k.startswith("answered_")}
        others = {k: v for k, v in window.items() if not k.startswith("answered_")}
        parts = [f"last {elapsed_s:.0f}s: {sum(answers.values())} answered" + (f" ({_listing(answers)})"
                                                                                   if answers else "")]
        if latencies:
            p50 = latencies[int(0.50 * (len(latencies) - 1))]
            p99 = latencies[int(0.99 * (len(latencies) - 1))]
            parts.append(f"latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms")
        parts.append(f"refused or closed {sum(others.values())}" + (f" ({_listing(others)})" if others else ""))
        if exits_by_level is not None:
            exits = {k: v - self._exits_reported.get(k, 0) for k, v in exits_by_level.items()}
            self._exits_reported = dict(exits_by_level)
            parts.append("exits by levels run " + (", ".join(f"{k}: {v}" for k, v in sorted(exits.items()) if v)
                                                   or "none"))
        if al_queue is not None:
            parts.append(f"AL queue {al_queue}")
        line = "; ".join(parts)
        logger.log("WARNING" if others else "INFO", "summary {}", line)
        return line


def _listing(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


class DropAxonErrorLines(logging.Filter):
    """Keeps bittensor's per-request lines out of the log (the outcomes are counted instead).

    Its axon logs one ERROR line per refused or failed request, and its synapse header parser one per
    malformed header: both are the caller's doing, so a flood of them would be a flood of log lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        per_request = path.endswith("bittensor/core/synapse.py") or (
            path.endswith("bittensor/core/axon.py") and _AXON_ERROR_LINE.match(record.getMessage()) is not None
        )
        if per_request:
            self.dropped += 1
            return False
        return True


def quiet_bittensor_request_logs() -> DropAxonErrorLines:
    """Install the filter on bittensor's logger (idempotent enough: one filter per call)."""
    dropper = DropAxonErrorLines()
    logging.getLogger("bittensor").addFilter(dropper)
    return dropper
