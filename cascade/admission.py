"""A bounded number of requests inside the cascade; who goes next when it is full.

When the miner is saturated, waiting requests are admitted by (caller below its own in-flight cap,
highest stake, earliest deadline): a flood from one hotkey queues behind everyone else instead of
pushing their requests past their deadlines. The axon's own priority value orders nothing
(docs/protocol.md), so this is where ordering lives. A request waits for its slot until its deadline at
most (cascade/in_time.py says why no estimate of its work shortens that wait).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass

from cascade import in_time


@dataclass(eq=False)
class _Waiter:
    hotkey: str
    stake: float
    deadline_s: float
    future: asyncio.Future[bool]
    seq: int = 0
    queued: bool = True  # still in its hotkey's queue (False once handed a slot or gone)

    def key(self) -> tuple[float, float, int]:
        """Order within one hotkey's queue: highest stake, earliest deadline, first come."""
        return (-self.stake, self.deadline_s, self.seq)

    def __lt__(self, other: _Waiter) -> bool:
        return self.key() < other.key()


class Admission:
    """Loop-thread only. `acquire` waits for a slot until the deadline; `release` hands it on.

    Every `try_take` or `acquire` that returns True is matched by exactly one release (the request path's `finally`).
    Waiters are kept in one heap per hotkey, so handing a slot on looks at each waiting caller's best request
    (a few dozen validators at most), not at every waiting request: under a flood the waiting room holds
    thousands, and a scan of all of them at every release cost more than the requests' own work.
    """

    def __init__(self, max_in_flight: int, max_per_hotkey: int, max_waiting: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_hotkey = max_per_hotkey
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.per_hotkey: Counter[str] = Counter()
        self._queues: dict[str, list[_Waiter]] = {}  # hotkey -> heap of its waiters (gone ones removed lazily)
        self._waiting = 0
        self._seq = itertools.count()

    def waiting(self) -> int:
        return self._waiting

    def resize(self, max_in_flight: int) -> None:
        """A new bound (the cascade's replicas changed): more room admits waiters now; less lets in-flight finish."""
        self.max_in_flight = max_in_flight
        self._hand_on()

    def try_take(self, hotkey: str) -> bool:
        """A slot at once if one is free and nobody waits for one (no coroutine: the common case, per request)."""
        if self._eligible(hotkey) and not self._waiting:
            self._take(hotkey)
            return True
        return False

    def _eligible(self, hotkey: str) -> bool:
        return self.in_flight < self.max_in_flight and self.per_hotkey[hotkey] < self.max_per_hotkey

    def _take(self, hotkey: str) -> None:
        self.in_flight += 1
        self.per_hotkey[hotkey] += 1

    async def acquire(self, hotkey: str, stake: float, deadline_s: float, now_s: float) -> bool:
        """True once admitted; False when the waiting room is full or the deadline came first.

        Cancellation (the request's own deadline, enforced by the engine) leaves nothing behind: the
        waiter leaves the room, and a slot granted at the same instant is handed on.
        """
        if self.try_take(hotkey):
            return True
        if self._waiting >= self.max_waiting:
            return False
        waiter = _Waiter(hotkey, stake, deadline_s, asyncio.get_running_loop().create_future(), next(self._seq))
        heapq.heappush(self._queues.setdefault(hotkey, []), waiter)
        self._waiting += 1
        self._hand_on()
        admitted = False
        try:
            # No estimate of what the request needs once admitted: the levels judge that (cascade/in_time.py).
            async with asyncio.timeout(max(0.0, in_time.time_left_s(deadline_s, now_s))):
                admitted = await asyncio.shield(waiter.future)
            return admitted
        except TimeoutError:
            return False
        finally:
            if not admitted:
                self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        """A waiter that will not use its slot: out of the room, and any slot it was given handed back."""
        if waiter.queued:  # left in its heap, skipped when it comes up
            waiter.queued = False
            self._waiting -= 1
        if not waiter.future.done():
            waiter.future.cancel()
        elif not waiter.future.cancelled() and waiter.future.result():
            self.release(waiter.hotkey)

    def release(self, hotkey: str) -> None:
        self.in_flight -= 1
        self.per_hotkey[hotkey] -= 1
        if self.per_hotkey[hotkey] <= 0:
            del self.per_hotkey[hotkey]
        self._hand_on()

    def _head(self, hotkey: str) -> _Waiter | None:
        """The best waiter still queued for `hotkey` (gone ones at the top are dropped on the way)."""
        queue = self._queues[hotkey]
        while queue and not queue[0].queued:
            heapq.heappop(queue)
        if not queue:
            del self._queues[hotkey]
            return None
        return queue[0]

    def _hand_on(self) -> None:
        """Admit waiting requests while slots are free: fewest in flight for the caller, stake, deadline."""
        while self._waiting and self.in_flight < self.max_in_flight:
            best: _Waiter | None = None
            best_key: tuple[int, float, float, int] | None = None
            for hotkey in list(self._queues):
                head = self._head(hotkey)
                if head is None or self.per_hotkey[hotkey] >= self.max_per_hotkey:
                    continue
                key = (self.per_hotkey[hotkey], *head.key())
                if best_key is None or key < best_key:
                    best, best_key = head, key
            if best is None:
                return
            heapq.heappop(self._queues[best.hotkey])
            best.queued = False
            self._waiting -= 1
            if best.future.done():
                continue
            self._take(best.hotkey)
            best.future.set_result(True)
