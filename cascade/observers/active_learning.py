"""Active learning: keep the finished requests worth retraining on, without touching the request path.

`on_finished` (the engine's loop thread) only runs `select()` and a `put_nowait` onto a bounded queue.
A daemon writer thread drains the queue into the store (al_store.ALStore: content-addressed images,
SQLite index, bounded by items and bytes). A full queue, a full disk or an unwritable folder only ever
drop samples: they are counted in `stats()` and warned about, rate-limited, never felt by a request.

Operator commands: `python -m cascade.observers.active_learning --help` (or `sn72-al`), see
docs/active_learning.md.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

from cascade.config import ActiveLearningConfig
from cascade.consensus import sigmoid
from cascade.observers.al_store import AddOutcome, AddResult, ALStore, Reason, Sample
from cascade.observers.base import Finished, Observer
from cascade.request import ExpertAnswer, Status

_CUT_SHORT = (Status.DEADLINE, Status.PRIOR)


def select(finished: Finished, config: ActiveLearningConfig, rng: random.Random) -> Reason | None:
    """Why this request is worth keeping, the most informative reason first; None: not kept.

    The random draw happens only when no other reason applies, so it samples "the rest". Disagreement compares
    the experts' calibrated, weighted answers (`weighted_probability`), not their raw probabilities.
    """
    if finished.image_bytes is None:
        return None
    result = finished.result
    if config.keep_labelled and finished.job.testnet_label in (0, 1):
        return Reason.LABELLED
    if config.keep_deadline_cut and result.status in _CUT_SHORT:
        return Reason.DEADLINE
    if len(result.answers) >= 2:
        # What each expert contributes to the pooled answer, not its raw output: an expert whose calibration or
        # weight makes it uninformative (a random-weight model answering 0.02 to everything, fitted to T >> 1 or
        # weight 0) sits at 0.5 here and can no longer make every request look like a disagreement.
        opinions = [weighted_probability(answer) for answer in result.answers]
        if max(opinions) - min(opinions) > config.disagreement:
            return Reason.DISAGREEMENT
    if abs(result.probability - 0.5) < config.uncertain_band:
        return Reason.UNCERTAIN
    if config.sample_rate > 0.0 and rng.random() < config.sample_rate:
        return Reason.SAMPLE
    return None


def weighted_probability(answer: ExpertAnswer) -> float:
    """sigmoid(weight * calibrated logit): the expert's answer as the pooling counts it (0.5: no evidence)."""
    return sigmoid(answer.weight * answer.logit)


def to_sample(finished: Finished, reason: Reason, created_at: float) -> Sample:
    """The record the store keeps (built on the writer thread: the request path never pays for it)."""
    assert finished.image_bytes is not None
    result, label = finished.result, finished.job.testnet_label
    width, height = finished.image_size if finished.image_size is not None else (None, None)
    experts = tuple(
        {"expert": a.expert, "level": a.level, "probability": a.probability, "logit": a.logit, "weight": a.weight}
        for a in result.answers
    )
    return Sample(
        image=finished.image_bytes, reason=reason, created_at=created_at, hotkey=finished.job.hotkey,
        width=width, height=height, probability=result.probability, experts=experts,
        levels_run=result.levels_run, status=result.status.value, label=label if label in (0, 1) else None,
        cascade_version=finished.cascade_version,
    )


class SampleSink(Protocol):
    """What the writer thread writes into (ALStore; tests pass gated fakes)."""

    def add(self, sample: Sample) -> AddResult: ...

    def close(self) -> None: ...


@dataclass
class ALStats:
    """Counters since start; a plain snapshot, for logs and the metrics exporter."""

    kept_by_reason: dict[str, int] = field(default_factory=lambda: {reason.value: 0 for reason in Reason})
    skipped_no_image: int = 0  # selected nothing because the payload never decoded
    dropped_queue_full: int = 0  # the writer was behind: dropped on the request path, never waited for
    dropped_write_error: int = 0  # the store could not be opened or written (disk full, unwritable folder)
    rejected_full: int = 0  # the store was full of more informative records
    evicted: int = 0
    duplicates: int = 0  # the image was already stored: its `seen` count went up instead
    written: int = 0  # new records committed (image and record durable)
    queue_depth: int = 0
    store_open: bool = False


class _RateLimitedWarnings:
    """One warning per key and interval, with the count of those held back since."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        logger.warning(message + " ({} more held back since the last such warning)", *args, held)


_Item = tuple[Finished, Reason, float]


class ActiveLearningObserver(Observer):
    """Selects on the request path, writes on its own daemon thread, drops rather than waits."""

    name = "active_learning"

    def __init__(
        self,
        config: ActiveLearningConfig,
        *,
        store_factory: Callable[[], SampleSink] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._factory = store_factory or (
            lambda: ALStore(config.directory, max_items=config.max_items, max_bytes=config.max_bytes)
        )
        self._rng = rng if rng is not None else random.Random()
        self._clock, self._wall_clock = clock, wall_clock
        self._queue: deque[_Item] = deque()  # bounded by config.queue_size under _cond: put never blocks
        self._cond = threading.Condition()
        self._busy = False  # the writer holds an item it has taken off the queue
        self._closing = False
        self._stats = ALStats()
        # The same counts as prometheus_client types, incremented with the stats; the miner registers them.
        self._events = Counter("sn72_miner_active_learning", "Active-learning samples by what happened to them",
                               ["kind"], registry=None)
        self._warnings = _RateLimitedWarnings(config.warn_interval_s, clock)
        self._store: SampleSink | None = None
        self._next_open_s = 0.0
        self._thread = threading.Thread(target=self._run, name="al-writer", daemon=True)
        self._thread.start()

    # ----- request path -----------------------------------------------------------------------------

    def on_finished(self, finished: Finished) -> None:
        reason = select(finished, self.config, self._rng)
        if reason is None:
            if finished.image_bytes is None:
                with self._cond:
                    self._count("skipped_no_image")
            return
        item = (finished, reason, self._wall_clock())
        with self._cond:
            if self._closing:
                return
            full = len(self._queue) >= self.config.queue_size
            if full:
                self._count("dropped_queue_full")
            else:
                self._queue.append(item)
                self._stats.kept_by_reason[reason.value] += 1
                self._events.labels(f"kept_{reason.value}").inc()
                self._cond.notify_all()
        if full:
            self._warnings.warn("queue", "active learning: writer is behind ({} samples waiting), sample dropped",
                                self.config.queue_size)

    def stats(self) -> ALStats:
        with self._cond:
            return replace(self._stats, kept_by_reason=dict(self._stats.kept_by_reason),
                           queue_depth=len(self._queue), store_open=self._store is not None)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued sample has been handled (written or counted as dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (bounded by `timeout_s`), then close the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("active learning: writer did not finish within {:.1f} s; {} samples not written",
                           timeout_s, len(self._queue))

    # ----- writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        self._open_store()  # at start: recovery runs now, not on the first kept sample
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:  # closing and drained
                    break
                item = self._queue.popleft()
                self._busy = True
            try:
                self._write(*item)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 - closing must not raise into engine shutdown (house rule 6)
                logger.warning("active learning: closing the store failed: {!r}", exc)

    def _open_store(self) -> SampleSink | None:
        if self._store is not None:
            return self._store
        now = self._clock()
        if now < self._next_open_s:
            return None
        try:
            store = self._factory()
        except Exception as exc:  # noqa: BLE001 - unwritable folder, disk full, busy or corrupt store: retried later
            self._next_open_s = now + self.config.reopen_interval_s
            self._warnings.warn("open", "active learning: cannot open store {} ({!r}); samples are dropped until it"
                                " opens", self.config.directory, exc)
            return None
        with self._cond:
            self._store = store
        return store

    def _write(self, finished: Finished, reason: Reason, created_at: float) -> None:
        store = self._open_store()
        if store is None:
            with self._cond:
                self._count("dropped_write_error")
            return
        try:
            result = store.add(to_sample(finished, reason, created_at))
        except Exception as exc:  # noqa: BLE001 - disk full, I/O error: the sample is lost, the store stays usable
            with self._cond:
                self._count("dropped_write_error")
            self._warnings.warn("write", "active learning: sample dropped, store write failed: {!r}", exc)
            return
        with self._cond:
            if result.outcome is AddOutcome.ADDED:
                self._count("written")
                self._count("evicted", len(result.evicted))
            elif result.outcome is AddOutcome.DUPLICATE:
                self._count("duplicates")
            else:
                self._count("rejected_full")

    def _count(self, kind: str, n: int = 1) -> None:
        """Under `_cond`: one of ALStats' counters, and the same Prometheus counter."""
        setattr(self._stats, kind, getattr(self._stats, kind) + n)
        self._events.labels(kind).inc(n)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Publish the counters, the writer's queue depth and whether the store is open (gauges)."""
        for kind in ("written", "duplicates", "evicted", "rejected_full", "dropped_queue_full", "dropped_write_error",
                     "skipped_no_image", *(f"kept_{reason.value}" for reason in Reason)):
            self._events.labels(kind)
        registry.register(self._events)
        Gauge("sn72_miner_active_learning_queue_depth", "Samples waiting for the writer", registry=registry
              ).set_function(lambda: self.stats().queue_depth)
        Gauge("sn72_miner_active_learning_store_open", "1 while the store is open for writing", registry=registry
              ).set_function(lambda: float(self.stats().store_open))

