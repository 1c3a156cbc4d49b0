"""When a caller stops waiting, from what it sent: the unsigned timeout header and its nonce.

The timeout header is not signed (docs/protocol.md): it is never trusted beyond a cap, and anything
that is not a finite positive number is the cap. Nonces of bittensor >= 7.2 are the time the caller
signed the request, in nanoseconds: the caller's clock started then, before the request reached us
(its own queues, the network, our accept queue), and that time counts against its budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

_HOUR_NS = 3600 * 1_000_000_000


def sane_timeout(value: Any, cap_s: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return cap_s
    return min(seconds, cap_s) if math.isfinite(seconds) and seconds > 0 else cap_s


def nonce_age_s(nonce: Any) -> float | None:
    """Seconds since the caller signed, by our clock (None: not a timestamp nonce)."""
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        return None
    age_ns = time.time_ns() - nonce
    # Compared as integers first: a nonce of hundreds of digits (unsigned headers can claim anything) is no
    # timestamp, and its age would not even fit a float (OverflowError, a 500 before any check).
    return age_ns / 1e9 if -_HOUR_NS < age_ns < _HOUR_NS else None


def sent_before_arrival_s(nonce: Any, arrival_s: float, trust_s: float, now_s: float | None = None) -> float:
    """How long before its arrival here the caller sent the request, by its signed nonce (at most `trust_s`).

    That is the caller's own queueing, the network and our accept queue: time its timeout has already
    spent. NOTE: a caller whose clock runs behind ours makes its requests look older than they are; the
    cap bounds what that costs (answering up to `trust_s` early, never late). A clock ahead of ours
    makes the age negative: then only the arrival counts.
    """
    age_s = nonce_age_s(nonce)
    if age_s is None:
        return 0.0
    now_s = time.monotonic() if now_s is None else now_s
    return min(max(0.0, age_s - (now_s - arrival_s)), trust_s)


def client_deadline(arrival_s: float, timeout_s: float, before_arrival_s: float) -> float:
    """Monotonic time at which the caller gives up: its timeout from when it sent the request."""
    return arrival_s - before_arrival_s + timeout_s


class ResponseLag:
    """How long answers take to leave once the engine has them (serialising, headers, the loop's queue).

    Under a burst the axon's single loop falls behind and an answer ready at the engine's deadline can
    leave after the caller's: the engine's deadline keeps back `reserve_s()`, a high quantile of the
    recent lags (at least the configured margin), so it answers earlier when the way out is slow.
    """

    def __init__(self, floor_s: float, ceiling_s: float, window: int = 64, quantile: float = 0.9) -> None:
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self._lags: deque[float] = deque(maxlen=window)
        self._quantile = quantile

    def record(self, seconds: float) -> None:
        self._lags.append(max(0.0, seconds))

    def reserve_s(self) -> float:
        if not self._lags:
            return self.floor_s
        ordered = sorted(self._lags)
        lag_s = ordered[min(len(ordered) - 1, int(self._quantile * len(ordered)))]
        return min(self.ceiling_s, max(self.floor_s, 1.5 * lag_s + 0.05))
