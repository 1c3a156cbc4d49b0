"""A high quantile of the most recent measurements, read without sorting them.

Three estimates steer whether work is still worth starting (cascade/in_time.py): how long a caller's requests
take (neurons/deadlines.py `ServiceTime`), how long answers take to leave (`ResponseLag`) and how long a
replica's batches take (cascade/latency.py `LatencyTracker`). Each is a quantile of a fixed number of recent
measurements, read at least once per request. `WindowedQuantile` keeps them twice: in arrival order (which one
leaves when a new one comes) and sorted by rank (the quantile is an index). A measurement costs a binary search
and an insertion into a list of at most `window`; a read costs an index. The estimators used to sort the whole
window on every read.

The quantile is the measurement at index min(n - 1, int(quantile * n)) of the n kept, sorted by rank: the rule
the estimators have always used. numpy.quantile has no method that equals it (its "inverted_cdf" takes the
order statistic below when quantile * n is a whole number; the others interpolate or round otherwise).

NOTE: a plain list and `bisect`, not `sortedcontainers.SortedList`: for the windows used (32, 64, 256) the list is
about twice as fast (a SortedList pays for its sublists, which only pay off from some ten thousand items).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple


class Sample(NamedTuple):
    at_s: float  # when it was measured (time.monotonic)
    seconds: float


# (rank, arrival number, measured at, seconds): the arrival number is unique, so entries never compare further and
# the one to remove is found by its (rank, arrival number) alone.
_Entry = tuple[float, int, float, float]


class WindowedQuantile:
    """The `window` most recent measurements; the one at `quantile` of them by rank (by default its duration)."""

    def __init__(self, window: int, quantile: float) -> None:
        if window < 1:
            raise ValueError(f"a window holds at least one measurement, not {window}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, not {quantile}")
        self.window = window
        self.quantile = quantile
        self._arrivals: deque[_Entry] = deque()
        self._ranked: list[_Entry] = []
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._arrivals)

    def __iter__(self) -> Iterator[Sample]:
        """The measurements kept, oldest first."""
        return (Sample(at_s, seconds) for _, _, at_s, seconds in self._arrivals)

    def add(self, at_s: float, seconds: float, rank: float | None = None) -> None:
        """Keep a measurement, ordered by `rank` (its duration unless given); the oldest leaves a full window."""
        entry = (seconds if rank is None else rank, next(self._numbers), at_s, seconds)
        if len(self._arrivals) >= self.window:
            self.drop_oldest()
        self._arrivals.append(entry)
        bisect.insort(self._ranked, entry)

    def oldest(self) -> Sample | None:
        if not self._arrivals:
            return None
        _, _, at_s, seconds = self._arrivals[0]
        return Sample(at_s, seconds)

    def drop_oldest(self) -> None:
        entry = self._arrivals.popleft()
        del self._ranked[bisect.bisect_left(self._ranked, entry)]

    def at_quantile(self) -> Sample | None:
        """The measurement at the quantile by rank (None while there is none)."""
        if not self._ranked:
            return None
        _, _, at_s, seconds = self._ranked[min(len(self._ranked) - 1, int(self.quantile * len(self._ranked)))]
        return Sample(at_s, seconds)

    def largest(self) -> Sample | None:
        """The measurement of the highest rank (None while there is none)."""
        if not self._ranked:
            return None
        _, _, at_s, seconds = self._ranked[-1]
        return Sample(at_s, seconds)
