"""When a caller stops waiting, from what it sent: the unsigned timeout header and its nonce.

The timeout header is not signed (docs/protocol.md): it is never trusted beyond a cap, and anything
that is not a finite positive number is the cap. Nonces of bittensor >= 7.2 are the time the caller
signed the request, in nanoseconds: the caller's clock started then, a little before the request
reached us (network, queues), so up to `trust_s` of that age is counted against its budget.
"""

from __future__ import annotations

import math
import time
from typing import Any


def sane_timeout(value: Any, cap_s: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return cap_s
    return min(seconds, cap_s) if math.isfinite(seconds) and seconds > 0 else cap_s


def client_deadline(arrival_s: float, timeout_s: float, nonce: Any, trust_s: float) -> float:
    """Monotonic time at which the caller gives up on this request."""
    start_s = arrival_s
    if trust_s > 0 and isinstance(nonce, int) and not isinstance(nonce, bool):
        age_s = (time.time_ns() - nonce) / 1e9
        if 0.0 < age_s < 3600.0:
            start_s = min(arrival_s, max(time.monotonic() - age_s, arrival_s - trust_s))
    return start_s + timeout_s
