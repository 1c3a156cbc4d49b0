"""Whether a request can still be answered in time: the one rule behind every decision to give up on work early.

Work that cannot end by its caller's deadline only takes time from work that can, so five places stop it before
it starts. They ask one question, "does `now + need` end by the deadline?", of different estimates of the need,
because each knows a different part of what is left:

- The HTTP turn (neurons/http_guard.py): `ServiceTime` (neurons/deadlines.py), a high quantile of this caller's
  own recent turn-to-response times. Before the body is read nothing is known of the image; what this caller's
  requests took covers all of it (body, decode, cascade, the way out), and it is per caller so that no one's slow
  images judge another's requests.
- Admission (cascade/admission.py): no need at all. A slot is worth waiting for until the deadline itself; what
  the request needs once admitted is judged level by level, with better knowledge than a guess at the door.
- The request path (cascade/lifetime.py): the time left to its levels, the deadline less the answer guard (time
  kept back to hand the answer over): `time_left_s`.
- The level plan (cascade/levels.py), with that time left: per chosen expert, its replica's expected latency
  (batches queued ahead, the running one and its own, each the batch compute quantile of cascade/latency.py, plus
  the batching window); the slowest chosen expert's. `fits`.
- The scheduler's expiry (cascade/scheduler.py): one batch's compute (the same quantile). The item is leaving the
  queue now: no batch is ahead of it any more.

Where they must differ, they do: the scheduler does not keep back the answer guard (the request path's own scope
cuts the request at deadline - guard; the expiry only saves compute that could not help at all).
The boundary (ending exactly at the deadline) differs too, as it always has, and is kept so that no decision's
outcome changed when they moved here: the HTTP turn and the plan count an end exactly at the deadline as in time,
the scheduler as late (`at_deadline_is_late`), and the plan needs some time left at all (`fits`). Only a clock
reading equal to the deadline to the last bit tells them apart.

An unknown need (None: nothing measured yet) gives no reason to give up before the deadline itself: it counts as
zero. (Today every estimator answers with a number: `ServiceTime` 0 for a caller it has not timed, the latency
tracker the configured initial value.)
"""

from __future__ import annotations


def time_left_s(deadline_s: float, now_s: float, keep_back_s: float = 0.0) -> float:
    """Seconds from `now_s` to `deadline_s`, less `keep_back_s` (negative once past)."""
    return deadline_s - now_s - keep_back_s


def in_time(now_s: float, need_s: float | None, deadline_s: float, *, at_deadline_is_late: bool = False) -> bool:
    """Whether work that needs `need_s` seconds from `now_s` (clock times: time.monotonic) ends by `deadline_s`."""
    end_s = now_s + (0.0 if need_s is None else need_s)
    return end_s < deadline_s if at_deadline_is_late else end_s <= deadline_s


def fits(need_s: float | None, time_left_s: float) -> bool:
    """Whether work that needs `need_s` fits in `time_left_s` from now: some time is left, and it ends by then."""
    return time_left_s > 0 and in_time(0.0, need_s, time_left_s)
