"""The one-line-a-minute summary: answers, latency quantiles, refusals by reason, exits by level, AL queue."""

from __future__ import annotations

from loguru import logger

from neurons.outcomes import AxonOutcomes


def test_one_line_per_interval_with_the_interval_counts_only():
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        outcomes = AxonOutcomes(summary_interval_s=60.0)
        start = outcomes._last_summary_s
        for _ in range(98):
            outcomes.add("answered_confident")
        outcomes.add("answered_prior", 2)
        for ms in range(1, 101):
            outcomes.observe_latency(ms / 1000)
        outcomes.add("refused_unregistered", 7)
        outcomes.add("closed_header_timeout")
        assert outcomes.summarise(now_s=start + 30, exits_by_level={1: 80, 2: 20}, al_queue=3) is None  # not due
        line = outcomes.summarise(now_s=start + 60, exits_by_level={1: 80, 2: 20}, al_queue=3)
        assert line == ("last 60s: 100 answered (confident 98, prior 2); latency p50 50 ms p99 99 ms; refused or "
                        "closed 8 (refused_unregistered 7, closed_header_timeout 1); exits by levels run 1: 80, 2: 20; "
                        "AL queue 3")
        outcomes.add("answered_confident", 5)
        quiet = outcomes.summarise(now_s=start + 120, exits_by_level={1: 85, 2: 20}, al_queue=0)
        assert quiet == "last 60s: 5 answered (confident 5); refused or closed 0; exits by levels run 1: 5; AL queue 0"
    finally:
        logger.remove(sink)
    assert [level for level, message in lines if message.startswith("summary ")] == ["WARNING", "INFO"]
    assert sum(1 for _, message in lines if message.startswith("axon: refused_")) == 0  # DEBUG, below INFO
