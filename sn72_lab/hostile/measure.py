"""What the red team measures per attack and the line each attack must pass (set by the second red-team pass,
docs/security.md).

An attack is judged by what it does to the honest validator and to the miner's resources, not only by the statuses
it gets back:

- the honest validator's share of requests answered in time with a model answer (a 200 whose prediction is not
  the cascade's prior: the prior is what the miner sends when no model answered in time, so it scores like a
  coin toss and hides a stalled cascade behind a 200);
- the p50/p99 latency of every honest request (a miss counts with the time it took, up to the client's timeout);
- 500s, from the attack's replies and the validator's;
- the miner's resident memory peak above its level when the attack started, and its open-descriptor peak
  (psutil on the miner's pid, sampled on a thread while the attack runs: a peak between two end points is seen).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PassLine:
    """The line every attack must pass (the second red-team pass's defaults; small runs may scale it, and say so)."""

    min_model_share: float = 0.99  # honest requests answered in time with a model answer
    max_p99_ms: float = 1000.0  # honest requests' p99 latency
    max_server_errors: int = 0  # 500s in the attack's replies and the validator's
    max_rss_growth_mb: float = 300.0  # the miner's resident memory peak above its level at the attack's start

    def failures(self, share: float | None, p99_ms: float | None, server_errors: int,
                 rss_growth_mb: float | None) -> list[str]:
        """What misses the line (empty: passed). No honest request in the window is a failure: nothing was shown."""
        out = []
        if share is None:
            out.append("no honest request in the window")
        elif share < self.min_model_share:
            out.append(f"model answers in time {share:.1%} < {self.min_model_share:.0%}")
        if p99_ms is not None and p99_ms > self.max_p99_ms:
            out.append(f"honest p99 {p99_ms:.0f} ms > {self.max_p99_ms:.0f} ms")
        if server_errors > self.max_server_errors:
            out.append(f"{server_errors} x 500")
        if rss_growth_mb is not None and rss_growth_mb > self.max_rss_growth_mb:
            out.append(f"peak RSS +{rss_growth_mb:.0f} MB > {self.max_rss_growth_mb:.0f} MB")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResourcePeaks:
    start_rss_mb: float
    peak_rss_mb: float
    end_rss_mb: float
    peak_fds: int

    @property
    def peak_growth_mb(self) -> float:
        return self.peak_rss_mb - self.start_rss_mb

    @property
    def kept_mb(self) -> float:
        return self.end_rss_mb - self.start_rss_mb


class ResourceSampler:
    """`with ResourceSampler(pid) as sampler: ...; sampler.peaks` samples RSS and open fds every `interval_s`.

    NOTE: sampling misses a spike shorter than the interval; VmHWM would not (but resetting it needs the
    miner's /proc/PID/clear_refs, which a red team on another user's process may not write). 20 ms is well under
    the time any image takes to decode and be freed.
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._start_mb = self._peak_mb = self._end_mb = self._rss_mb()
        self._peak_fds = self._fds()

    def _serving(self) -> list[Any]:
        """The miner and its front processes (`axon.processes`: bodies and connections live there), re-listed each
        second."""
        now_s = time.monotonic()
        if now_s - getattr(self, "_listed_s", -1.0) >= 1.0:
            self._listed_s = now_s
            try:
                self._fronts = [child for child in self._process.children()
                                if "neurons.front" in " ".join(child.cmdline())]
            except Exception:  # noqa: BLE001 - as below
                self._fronts = []
        return [self._process, *getattr(self, "_fronts", [])]

    def _rss_mb(self) -> float:
        total = 0.0
        for process in self._serving():
            try:
                total += float(process.memory_info().rss) / (1024 * 1024)
            except Exception:  # noqa: BLE001 - psutil raises NoSuchProcess/AccessDenied/ZombieProcess: a dead miner
                continue
        return total

    def _fds(self) -> int:
        total = 0
        for process in self._serving():
            try:
                total += int(process.num_fds())
            except Exception:  # noqa: BLE001 - as above
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._peak_mb = max(self._peak_mb, self._rss_mb())
            self._peak_fds = max(self._peak_fds, self._fds())

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._end_mb = self._rss_mb()
        self._peak_mb = max(self._peak_mb, self._end_mb)

    @property
    def peaks(self) -> ResourcePeaks:
        return ResourcePeaks(self._start_mb, self._peak_mb, self._end_mb, self._peak_fds)
