"""Prometheus exposition of the engine's own counters, read at scrape time.

A custom collector publishes `EngineStats` when Prometheus scrapes (the axon's own outcomes are
prometheus_client Counters in the same registry, see neurons/outcomes.py): nothing is written
twice, and the request path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from cascade.stats import Histogram

PREFIX = "sn72_miner"


def _histogram(name: str, doc: str, labels: list[str], series: Mapping[tuple[str, ...], Histogram]) -> Any:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, hist in series.items():
        family.add_metric(list(label_values), hist.cumulative(), sum_value=hist.total)
    return family


class EngineCollector(Collector):
    """Reads an engine whenever the registry is collected."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        stats = self.engine.stats
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Answered requests by how the answer was reached",
                                       labels=["status"])
        for status, count in stats.requests.items():
            requests.add_metric([status], count)
        yield requests
        exits = CounterMetricFamily(f"{PREFIX}_levels_run", "Answers by number of levels run", labels=["levels"])
        for levels, count in stats.exits_by_level.items():
            exits.add_metric([str(levels)], count)
        yield exits
        skipped = CounterMetricFamily(f"{PREFIX}_levels_skipped", "Levels skipped: too slow for the time left, or "
                                      "every expert out of service", labels=["level", "reason"])
        for (level, reason), count in stats.skipped_levels.items():
            skipped.add_metric([str(level), reason], count)
        yield skipped
        yield CounterMetricFamily(f"{PREFIX}_deadline_cuts", "Requests answered at their deadline with what they had",
                                  value=stats.deadline_cuts)
        healthy = GaugeMetricFamily(f"{PREFIX}_replica_healthy", "1 if the replica takes requests (healthy or "
                                    "retrying after its cool-down), 0 while unhealthy", labels=["replica", "state"])
        for replica, state in self.engine.replica_states().items():
            healthy.add_metric([replica, state], 0.0 if state == "unhealthy" else 1.0)
        yield healthy
        yield CounterMetricFamily(f"{PREFIX}_decode_errors", "Payloads refused as images", value=stats.decode_errors)
        yield CounterMetricFamily(f"{PREFIX}_late_answers", "Answers after their deadline", value=stats.late_answers)
        yield CounterMetricFamily(f"{PREFIX}_admission_rejected", "Requests answered from the prior: not admitted",
                                  value=stats.rejected_admission)
        yield CounterMetricFamily(f"{PREFIX}_cache_hits", "Answers from the result cache", value=self.engine.cache.hits)
        outcomes = CounterMetricFamily(f"{PREFIX}_expert_outcomes", "Expert results by outcome",
                                       labels=["expert", "outcome"])
        for (expert, outcome), count in stats.expert_outcomes.items():
            outcomes.add_metric([expert, outcome], count)
        yield outcomes
        yield _histogram(f"{PREFIX}_request_latency_seconds", "Arrival to answer", [], {(): stats.latency})
        yield _histogram(f"{PREFIX}_batch_size", "Micro-batch sizes", ["replica"],
                         {(k,): h for k, h in stats.batch_sizes.items()})
        yield _histogram(f"{PREFIX}_batch_seconds", "Micro-batch compute time", ["replica"],
                         {(k,): h for k, h in stats.batch_seconds.items()})
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests queued per replica", labels=["replica"])
        for replica, queued in self.engine.queue_depths().items():
            depth.add_metric([replica], queued)
        yield depth
        yield GaugeMetricFamily(f"{PREFIX}_in_flight", "Requests inside the cascade",
                                value=self.engine.admission.in_flight)
        yield GaugeMetricFamily(f"{PREFIX}_waiting", "Requests waiting for admission",
                                value=self.engine.admission.waiting())
        errors = CounterMetricFamily(f"{PREFIX}_observer_errors", "Observer failures", labels=["observer"])
        for name, count in self.engine.observers.errors.items():
            errors.add_metric([name], count)
        yield errors
        for observer in self.engine.observers.observers:
            stats_fn = getattr(observer, "stats", None)
            if callable(stats_fn):
                family = CounterMetricFamily(f"{PREFIX}_{observer.name}", f"{observer.name} counters", labels=["kind"])
                for kind, count in _flatten(stats_fn()).items():
                    family.add_metric([kind], count)
                yield family


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Numbers of a (nested) dict or dataclass, keyed by dotted path."""
    if hasattr(value, "__dataclass_fields__"):
        value = {k: getattr(value, k) for k in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix.rstrip("."): float(value)}
    return {}


def build_registry(engine: Any, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The engine's collector in `registry` (the miner's own, holding its axon counters), or a new one."""
    registry = registry or CollectorRegistry()
    registry.register(EngineCollector(engine))
    return registry


def start_metrics_server(
    host: str, port: int, engine: Any, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """Serve /metrics on host:port from a daemon thread."""
    registry = build_registry(engine, registry)
    start_http_server(port, addr=host, registry=registry)
    return registry
