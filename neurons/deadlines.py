"""When a caller stops waiting, from what it sent: the unsigned timeout header and its nonce.

The timeout header is not signed (docs/protocol.md): it is never trusted beyond a cap, and anything
that is not a finite positive number is the cap. Nonces of bittensor >= 7.2 are the time the caller
signed the request, in nanoseconds: the caller's clock started then, before the request reached us
(its own queues, the network, our accept queue), and that time counts against its budget.

Two estimates, each a high quantile of recent durations that are worth less as they age (`decayed`):
`ServiceTime` per caller (what the HTTP turn judges a request by: cascade/in_time.py) and `ResponseLag` (what
the engine's deadline keeps back for the way out). Both keep their window in cascade/windowed_quantile.py,
ordered by `decay_rank`, an order that ageing never changes: a read is an index, not a sort of the window.
"""

from __future__ import annotations

import math
import time
from typing import Any

from cascade.windowed_quantile import WindowedQuantile

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


def decayed(seconds: float, age_s: float, half_life_s: float) -> float:
    """What a duration measured `age_s` ago still says about now: half as much every `half_life_s`.

    Every estimate that can refuse or shorten work is made of such values, so a burst of slow requests stops
    steering decisions by itself, with no new measurement needed: a refusal never feeds its estimate, and an
    estimate that only new samples could lower would refuse forever (the outside attack of 4 Dec: every 9 s
    request got 408 for minutes after 25 s of slow images, until a restart).
    """
    return seconds * 0.5 ** (max(0.0, age_s) / half_life_s)


def decay_rank(at_s: float, seconds: float, half_life_s: float) -> float:
    """An order of measurements by what they are worth (`decayed`) that holds at every later time.

    At any `now_s` after both were measured, `decayed(a, now_s - at_a)` < `decayed(b, now_s - at_b)` exactly when
    log2(a) + at_a / half_life_s < log2(b) + at_b / half_life_s: time halves every value alike, so the order of the
    window never changes while it ages, and a quantile needs no sort (cascade/windowed_quantile.py).
    """
    return math.log2(seconds) + at_s / half_life_s if seconds > 0 else -math.inf


def _sorted_quantile(values: list[float], quantile: float) -> float:
    values.sort()
    return values[min(len(values) - 1, int(quantile * len(values)))]


class _DecayingWindow:
    """Recent durations, each worth less as it ages (`decayed`), and the quantile of what they are worth now."""

    def __init__(self, window: int, quantile: float, half_life_s: float) -> None:
        self._samples = WindowedQuantile(window, quantile)
        self._half_life_s = half_life_s
        self._latest_at_s = -math.inf  # of every measurement kept so far (an evicted one only costs a sort)

    def add(self, seconds: float, at_s: float) -> None:
        self._latest_at_s = max(self._latest_at_s, at_s)
        self._samples.add(at_s, seconds, decay_rank(at_s, seconds, self._half_life_s))

    def quantile_s(self, now_s: float) -> float | None:
        """None without measurements."""
        if now_s < self._latest_at_s:
            # A measurement from after `now_s` (a clock read before it was recorded) is worth all it measured, which
            # its rank does not say: the whole window, sorted as it always was. The request path never gets here.
            return _sorted_quantile([decayed(seconds, now_s - at_s, self._half_life_s) for at_s, seconds
                                     in self._samples], self._samples.quantile)
        sample = self._samples.at_quantile()
        return None if sample is None else decayed(sample.seconds, now_s - sample.at_s, self._half_life_s)


class ServiceTime:
    """How long a caller's answered requests took from their turn to their response: a high quantile of its own
    recent samples, each worth less as it ages (`decayed`). 0 for a caller without samples.

    Per caller (its verified hotkey), so that no caller's requests can make another's look hopeless: an attacker's
    slow images, sent with a long timeout and answered at its end, judged only the attacker's own later requests.
    Looked up by the hotkey a request claims before its signature is checked: a lie can only hurt the liar (it
    gets another caller's estimate); only verified answers record samples. The HTTP layer asks cascade/in_time.py
    whether a request that got its turn can still be answered with this estimate.

    NOTE: a service time is at most the request's own budget (the engine answers by the deadline), so a caller's
    samples are censored by its own timeout; with another caller's timeouts they would not compare at all.
    NOTE: the fastest answer is the prior's, so this over-estimates what a request that would only get the prior
    needs; skipping one a little early costs nothing the caller would have scored.
    """

    def __init__(self, window: int = 32, quantile: float = 0.75, half_life_s: float = 5.0,
                 max_callers: int = 4096) -> None:
        self._samples: dict[str, _DecayingWindow] = {}  # caller -> its recent service times
        self._window = window
        self._quantile = quantile
        self._half_life_s = half_life_s  # fixed: the kept samples are ordered by it (`decay_rank`)
        self._max_callers = max_callers

    @property
    def half_life_s(self) -> float:
        return self._half_life_s

    def record(self, caller: str, seconds: float, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        samples = self._samples.pop(caller, None)  # re-inserted last: the dict is kept in order of last use
        if samples is None:
            samples = _DecayingWindow(self._window, self._quantile, self._half_life_s)
            if len(self._samples) >= self._max_callers:
                del self._samples[next(iter(self._samples))]  # the caller answered longest ago
        samples.add(max(0.0, seconds), now_s)
        self._samples[caller] = samples

    def estimate_s(self, caller: str | None, now_s: float | None = None) -> float:
        samples = self._samples.get(caller) if caller else None
        if samples is None:
            return 0.0
        estimate_s = samples.quantile_s(time.monotonic() if now_s is None else now_s)
        return 0.0 if estimate_s is None else estimate_s


class ResponseLag:
    """How long answers take to leave once the engine has them (serialising, headers, the loop's queue).

    Under a burst the axon's single loop falls behind and an answer ready at the engine's deadline can
    leave after the caller's: the engine's deadline keeps back `reserve_s()`, a high quantile of the
    recent lags (at least the configured margin), so it answers earlier when the way out is slow.

    Each lag is worth less as it ages (`decayed`): the loop's slowness during a burst says less and less about
    it afterwards, and the reserve returns to the floor when answers stop coming rather than staying at its
    burst value (up to half the timeout cap) until some sixty answers have displaced it.
    """

    def __init__(self, floor_s: float, ceiling_s: float, window: int = 64, quantile: float = 0.9,
                 half_life_s: float = 10.0) -> None:
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self._lags = _DecayingWindow(window, quantile, half_life_s)
        self._half_life_s = half_life_s  # fixed: the kept lags are ordered by it (`decay_rank`)

    @property
    def half_life_s(self) -> float:
        return self._half_life_s

    def record(self, seconds: float, now_s: float | None = None) -> None:
        self._lags.add(max(0.0, seconds), time.monotonic() if now_s is None else now_s)

    def reserve_s(self, now_s: float | None = None) -> float:
        lag_s = self._lags.quantile_s(time.monotonic() if now_s is None else now_s)
        if lag_s is None:
            return self.floor_s
        return min(self.ceiling_s, max(self.floor_s, 1.5 * lag_s + 0.05))
