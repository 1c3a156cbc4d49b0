"""The engine's metrics: prometheus_client Counters, Histograms and Gauges, updated where events happen.

One source of truth for the Prometheus exposition and for the benchmarks' JSON (`snapshot()`, read
back from the same registry). Counters and histograms are written on the engine's threads at the
moment of the event (prometheus_client's types are thread-safe); gauges of live state (in flight,
waiting, queue depths, replica health) are prometheus_client Gauges whose value is read from the
engine's own structures when scraped (`set_function`), so the request path writes nothing for them.

Each engine owns a registry (the miner hands it its own, which also holds the axon's counters), so
engines built side by side in tests and benchmarks never collide.
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cascade.experts.base import WORKER_STAGES
from cascade.request import Status

PREFIX = "sn72_miner"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Share of a request's budget (arrival to deadline) its answer took: above 1.0 it was late.
BUDGET_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 2.0)


@dataclass(frozen=True)
class Totals:
    """A histogram series read back: the sum of its observations and their count."""

    total: float
    n: int


class WorkerCounters(Protocol):
    """What a replica in a worker process counts (cascade/experts/worker.py), read at scrape time."""

    restarts: int
    exits: int
    busy_s: float
    stage_s: dict[str, float]


LATE_CAUSES = ("engine", "arrived_late")  # sn72_miner_late_answers_total{cause}


def _stage_seconds(worker: WorkerCounters, stage: str) -> float:
    return worker.stage_s.get(stage, 0.0)


class EngineStats:
    """The engine's counters and histograms (written at events) and live-state gauges (read at scrape)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(f"{PREFIX}_requests", "Answered requests by how the answer was reached",
                                 ["status"], registry=r)
        self._levels_run = Counter(f"{PREFIX}_levels_run", "Answers by number of levels run", ["levels"], registry=r)
        self._skipped = Counter(f"{PREFIX}_levels_skipped", "Levels skipped: too slow for the time left, or every "
                                "expert out of service", ["level", "reason"], registry=r)
        self._deadline_cuts = Counter(f"{PREFIX}_deadline_cuts", "Requests answered at their deadline with what "
                                      "they had", registry=r)
        self._decode_errors = Counter(f"{PREFIX}_decode_errors", "Payloads refused as images", registry=r)
        self._decode_refused = Counter(f"{PREFIX}_decode_refused", "Images refused from the header for what decoding "
                                       "them would cost (also in decode_errors), by reason: jpeg_scans, "
                                       "decode_work", ["reason"], registry=r)
        self._isolated = Counter(f"{PREFIX}_decode_isolated", "Costly images sent to a decode worker process, by "
                                 "outcome: decoded, refused (not an image), abandoned (killed at the deadline), "
                                 "crashed, busy (no worker or memory before the deadline); restarted counts new "
                                 "worker processes", ["outcome"], registry=r)
        self._late = Counter(f"{PREFIX}_late_answers", "Engine answers handed back after their deadline, by cause: "
                             "engine (the request reached the engine with time left), arrived_late (already past "
                             "the engine's deadline when it got there: a caller's timeout under deadline.margin_s, "
                             "a slow upload, the HTTP layer's queue)", ["cause"], registry=r)
        self._rejected = Counter(f"{PREFIX}_admission_rejected", "Requests answered from the prior: not admitted",
                                 registry=r)
        self._cache_hits = Counter(f"{PREFIX}_cache_hits", "Answers from the result cache", registry=r)
        self._expert_outcomes = Counter(f"{PREFIX}_expert_outcomes", "Expert results and batches by outcome",
                                        ["expert", "outcome"], registry=r)
        self._observer_errors = Counter(f"{PREFIX}_observer_errors", "Observer failures", ["observer"], registry=r)
        self._latency = Histogram(f"{PREFIX}_request_latency_seconds", "Arrival to answer, by how it was reached",
                                  ["status"], buckets=LATENCY_BUCKETS_S, registry=r)
        self._budget = Histogram(f"{PREFIX}_deadline_budget_used_ratio", "Answer latency over the request's budget "
                                 "(arrival to deadline), by status; above 1 is late", ["status"],
                                 buckets=BUDGET_BUCKETS, registry=r)
        self._level_seconds = Histogram(f"{PREFIX}_level_seconds", "Time one level took for one request",
                                        ["level"], buckets=LATENCY_BUCKETS_S, registry=r)
        self._batch_size = Histogram(f"{PREFIX}_batch_size", "Micro-batch sizes", ["replica"],
                                     buckets=BATCH_BUCKETS, registry=r)
        self._batch_seconds = Histogram(f"{PREFIX}_batch_seconds", "Micro-batch compute time", ["replica"],
                                        buckets=LATENCY_BUCKETS_S, registry=r)
        self._in_flight = Gauge(f"{PREFIX}_in_flight", "Requests inside the cascade", registry=r)
        self._waiting = Gauge(f"{PREFIX}_waiting", "Requests waiting for admission", registry=r)
        self._queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests queued per replica", ["replica"], registry=r)
        self._replica_owner: dict[str, object] = {}  # replica -> the batcher its gauges read
        self._healthy = Gauge(f"{PREFIX}_replica_healthy", "1 while the replica takes requests (healthy, or "
                              "retrying after its cool-down), 0 while unhealthy", ["replica"], registry=r)
        self._worker_restarts = Gauge(f"{PREFIX}_worker_restarts", "Times a replica's worker process (worker: "
                                      "process) was restarted after it died or lost its device", ["replica"],
                                      registry=r)
        self._worker_exits = Gauge(f"{PREFIX}_worker_exits", "Times a replica's worker process ended (died, was "
                                   "killed as hung, lost its device) or failed to start again: its rate without "
                                   "restarts is a worker that cannot come back", ["replica"], registry=r)
        self._worker_busy = Gauge(f"{PREFIX}_worker_busy_seconds", "Seconds a replica's worker process spent on "
                                  "the batches it answered (its rate: the share of time the worker is busy)",
                                  ["replica"], registry=r)
        self._worker_stage = Gauge(f"{PREFIX}_worker_stage_seconds", "The worker's busy seconds by stage: unpack, "
                                   "decode, preprocess, forward (queued on a GPU), wait (for the GPU to finish the "
                                   "answers); a long wait is a worker held by its GPU, long host stages one held by "
                                   "its CPU (backends that do not time their stages count unpack only)",
                                   ["replica", "stage"], registry=r)
        self._worker_replicas: set[str] = set()  # replicas whose worker series exist
        # NOTE: labelled children used per request are looked up once and kept (`_child`): `labels()` takes a lock
        # and builds a key on every call, which was half the cost of recording an answer.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # (id of the metric, labels) -> child
        # Every series a dashboard or an alert reads exists from the start, at zero (no gaps, no "no data").
        for status in Status:
            self._requests.labels(status.value)
            self._latency.labels(status.value)
            self._budget.labels(status.value)
        self._levels_run.labels("0")
        for reason in ("jpeg_header", "jpeg_scans", "decode_work"):
            self._decode_refused.labels(reason)
        for outcome in ("decoded", "refused", "abandoned", "crashed", "busy", "restarted"):
            self._isolated.labels(outcome)
        for cause in LATE_CAUSES:
            self._late.labels(cause)

    # -- events (engine threads) -----------------------------------------------------------------
    def answered(self, status: str, levels_run: int, latency_s: float, budget_s: float, late: bool,
                 late_on_arrival: bool = False) -> None:
        self._child(self._requests, status).inc()
        self._child(self._latency, status).observe(latency_s)
        if budget_s > 0:
            self._child(self._budget, status).observe(latency_s / budget_s)
        self._child(self._levels_run, str(levels_run)).inc()
        if late:
            self._child(self._late, LATE_CAUSES[1] if late_on_arrival else LATE_CAUSES[0]).inc()

    def level_known(self, level: int, skip_reasons: tuple[str, ...]) -> None:
        """Create a level's series at zero when the cascade is built."""
        for reason in skip_reasons:
            self._skipped.labels(str(level), reason)
        self._level_seconds.labels(str(level))
        self._levels_run.labels(str(level + 1))

    def level_skipped(self, level: int, reason: str) -> None:
        self._skipped.labels(str(level), reason).inc()

    def level_ran(self, level: int, seconds: float) -> None:
        self._child(self._level_seconds, str(level)).observe(seconds)

    def deadline_cut(self) -> None:
        self._deadline_cuts.inc()

    def decode_failed(self, refused_for: str | None = None) -> None:
        self._decode_errors.inc()
        if refused_for is not None:
            self._child(self._decode_refused, refused_for).inc()

    def isolated_decode(self, outcome: str) -> None:
        """An outcome of a decode worker process (any thread)."""
        self._child(self._isolated, outcome).inc()

    def not_admitted(self) -> None:
        self._rejected.inc()

    def cache_hit(self) -> None:
        self._cache_hits.inc()

    def expert_outcome(self, expert: str, outcome: str) -> None:
        self._child(self._expert_outcomes, expert, outcome).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once (series removed elsewhere are replica gauges, never these)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observer_failed(self, observer: str) -> None:
        self._observer_errors.labels(observer).inc()

    def record_batch(self, expert: str, replica: str, size: int, seconds: float, outcome: str) -> None:
        self._batch_size.labels(replica).observe(size)
        self._batch_seconds.labels(replica).observe(seconds)
        self._expert_outcomes.labels(expert, f"batch_{outcome}").inc()

    # -- live state, read at scrape time ---------------------------------------------------------
    def watch_admission(self, in_flight: Callable[[], float], waiting: Callable[[], float]) -> None:
        self._in_flight.set_function(in_flight)
        self._waiting.set_function(waiting)

    def watch_replica(self, replica: str, queued: Callable[[], float], healthy: Callable[[], float],
                      owner: object = None, worker: WorkerCounters | None = None) -> None:
        self._queue_depth.labels(replica).set_function(queued)
        self._healthy.labels(replica).set_function(healthy)
        if worker is not None:  # a replica in a worker process
            self._worker_restarts.labels(replica).set_function(lambda: worker.restarts)
            self._worker_exits.labels(replica).set_function(lambda: worker.exits)
            self._worker_busy.labels(replica).set_function(lambda: worker.busy_s)
            for stage in WORKER_STAGES:
                self._worker_stage.labels(replica, stage).set_function(functools.partial(_stage_seconds, worker, stage))
            self._worker_replicas.add(replica)
        else:  # the same name now in this process (a reload moved it): the old worker's series go
            self._unwatch_worker(replica)
        self._replica_owner[replica] = owner

    def unwatch_replica(self, replica: str, owner: object) -> None:
        """Stop reading a replica that was freed (unless a newer one of the same name took its series over)."""
        if self._replica_owner.get(replica) is not owner:
            return
        del self._replica_owner[replica]
        self._queue_depth.remove(replica)
        self._healthy.remove(replica)
        self._unwatch_worker(replica)

    def _unwatch_worker(self, replica: str) -> None:
        if replica in self._worker_replicas:
            self._worker_replicas.discard(replica)
            self._worker_restarts.remove(replica)
            self._worker_exits.remove(replica)
            self._worker_busy.remove(replica)
            for stage in WORKER_STAGES:
                self._worker_stage.remove(replica, stage)

    # -- reading back (tests, benchmarks, the summary line) ---------------------------------------
    def samples(self, metric: str, suffix: str = "_total") -> dict[tuple[tuple[str, str], ...], float]:
        """{sorted label pairs: value} of one metric's samples named `<metric><suffix>`."""
        wanted = f"{PREFIX}_{metric}{suffix}"
        out: dict[tuple[tuple[str, str], ...], float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == wanted:
                    out[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def total(self, metric: str) -> int:
        return int(sum(self.samples(metric).values()))

    def by_label(self, metric: str, *labels: str) -> Tally[Any]:
        """A Counter of a labelled counter's values, keyed by the label value (a tuple for several labels)."""
        tally: Tally[Any] = Tally()
        for pairs, value in self.samples(metric).items():
            if not value:
                continue  # series created at zero in advance are not events
            values = dict(pairs)
            key = tuple(values[label] for label in labels)
            tally[key[0] if len(labels) == 1 else key] += int(value)
        return tally

    @property
    def requests(self) -> Tally[Any]:
        return self.by_label("requests", "status")

    @property
    def exits_by_level(self) -> Tally[Any]:
        return Tally({int(levels): n for levels, n in self.by_label("levels_run", "levels").items()})

    @property
    def skipped_levels(self) -> Tally[Any]:
        return Tally({(int(level), why): n for (level, why), n in self.by_label("levels_skipped", "level",
                                                                                "reason").items()})

    @property
    def late_answers(self) -> int:
        return self.total("late_answers")

    @property
    def late_on_arrival(self) -> int:
        return int(self.by_label("late_answers", "cause")[LATE_CAUSES[1]])

    @property
    def decode_errors(self) -> int:
        return self.total("decode_errors")

    @property
    def deadline_cuts(self) -> int:
        return self.total("deadline_cuts")

    @property
    def rejected_admission(self) -> int:
        return self.total("admission_rejected")

    def _histograms(self, metric: str, label: str) -> dict[str, dict[str, float]]:
        """{label value: {"le" bound: cumulative count, "sum": .., "count": ..}} of a labelled histogram."""
        out: dict[str, dict[str, float]] = {}
        for family in self.registry.collect():
            if family.name != f"{PREFIX}_{metric}":
                continue
            for sample in family.samples:
                key = sample.labels.get(label, "")
                entry = out.setdefault(key, {})
                if sample.name.endswith("_bucket"):
                    entry[sample.labels["le"]] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
        return out

    @property
    def batch_sizes(self) -> dict[str, Totals]:
        """Per replica: images batched (`total`) and batches run (`n`)."""
        return {k: Totals(v.get("sum", 0.0), int(v.get("count", 0))) for k, v in
                self._histograms("batch_size", "replica").items()}

    @property
    def batch_seconds(self) -> dict[str, Totals]:
        """Per replica: seconds spent computing batches (`total`) and batches run (`n`)."""
        return {k: Totals(v.get("sum", 0.0), int(v.get("count", 0))) for k, v in
                self._histograms("batch_seconds", "replica").items()}

    def snapshot(self) -> dict[str, object]:
        """Plain-data copy for the benchmarks' JSON (same keys as before the metrics became prometheus types)."""
        sizes = self._histograms("batch_size", "replica")
        histogram, means = {}, {}
        for replica, series in sizes.items():
            bounds = [*[str(b) for b in BATCH_BUCKETS], "inf"]
            cumulative = [series[f"{float(b)}" if b != "inf" else "+Inf"] for b in bounds]
            histogram[replica] = {b: int(c - (cumulative[i - 1] if i else 0)) for i, (b, c) in
                                  enumerate(zip(bounds, cumulative, strict=True))}
            means[replica] = series["sum"] / series["count"] if series.get("count") else 0.0
        return {
            "requests": dict(self.requests),
            "exits_by_levels_run": {str(k): v for k, v in sorted(self.exits_by_level.items())},
            "skipped_levels": {f"{level}:{why}": v for (level, why), v in sorted(self.skipped_levels.items())},
            "deadline_cuts": self.deadline_cuts,
            "decode_errors": self.decode_errors,
            "rejected_admission": self.rejected_admission,
            "late_answers": self.late_answers,
            "late_on_arrival": self.late_on_arrival,
            "batch_size_histogram": histogram,
            "mean_batch_size": means,
            "expert_outcomes": {f"{e}:{o}": n for (e, o), n in sorted(self.by_label("expert_outcomes", "expert",
                                                                                     "outcome").items())},
        }

