"""The engine's counters: one source of truth for the bench's JSON and the Prometheus exposition.

Written only on the engine's loop thread; read (as a snapshot) from other threads. Histograms keep
fixed buckets so a Prometheus collector can publish them without a second copy of the data.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: `le` upper bounds, plus +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


@dataclass
class EngineStats:
    requests: Counter[str] = field(default_factory=Counter)  # by Status value
    exits_by_level: Counter[int] = field(default_factory=Counter)  # levels run when the answer left
    skipped_levels: Counter[tuple[int, str]] = field(default_factory=Counter)  # (level index, too_slow/unavailable)
    deadline_cuts: int = 0  # requests answered by the lifetime timer with what they had (or the prior)
    decode_errors: int = 0
    rejected_admission: int = 0
    late_answers: int = 0  # answers handed back after their deadline (should stay 0)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    batch_sizes: dict[str, Histogram] = field(default_factory=dict)
    batch_seconds: dict[str, Histogram] = field(default_factory=dict)
    expert_outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (expert, ok/error/expired)

    def record_batch(self, expert: str, device: str, size: int, seconds: float, outcome: str) -> None:
        key = f"{expert}@{device}"
        self.batch_sizes.setdefault(key, Histogram(BATCH_BUCKETS)).observe(size)
        self.batch_seconds.setdefault(key, Histogram(LATENCY_BUCKETS_S)).observe(seconds)
        self.expert_outcomes[(expert, f"batch_{outcome}")] += 1

    def snapshot(self) -> dict[str, object]:
        """Plain-data copy for JSON reports."""
        return {
            "requests": dict(self.requests),
            "exits_by_levels_run": {str(k): v for k, v in sorted(self.exits_by_level.items())},
            "skipped_levels": {f"{level}:{why}": v for (level, why), v in sorted(self.skipped_levels.items())},
            "deadline_cuts": self.deadline_cuts,
            "decode_errors": self.decode_errors,
            "rejected_admission": self.rejected_admission,
            "late_answers": self.late_answers,
            "batch_size_histogram": {
                key: dict(zip([str(b) for b in (*BATCH_BUCKETS, "inf")], h.counts, strict=True))
                for key, h in self.batch_sizes.items()
            },
            "mean_batch_size": {key: (h.total / h.n if h.n else 0.0) for key, h in self.batch_sizes.items()},
            "expert_outcomes": {f"{e}:{o}": n for (e, o), n in sorted(self.expert_outcomes.items())},
        }
