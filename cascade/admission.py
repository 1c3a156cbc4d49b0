"""A bounded number of requests inside the cascade; who goes next when it is full.

When the miner is saturated, waiting requests are admitted by (caller below its own in-flight cap,
highest stake, earliest deadline): a flood from one hotkey queues behind everyone else instead of
pushing their requests past their deadlines. The axon's own priority value orders nothing
(SN72.md), so this is where ordering lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class _Waiter:
    hotkey: str
    stake: float
    deadline_s: float
    future: asyncio.Future[bool]


class Admission:
    """Loop-thread only. `acquire` waits for a slot until the deadline; `release` hands it on.

    Every acquire that returns True is matched by exactly one release (the engine's `slot` context).
    """

    def __init__(self, max_in_flight: int, max_per_hotkey: int, max_waiting: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_hotkey = max_per_hotkey
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.per_hotkey: Counter[str] = Counter()
        self._waiting: list[_Waiter] = []

    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, hotkey: str, stake: float, deadline_s: float) -> AsyncIterator[bool]:
        """`async with admission.slot(...) as admitted`: the slot, if granted, is released on any exit."""
        admitted = await self.acquire(hotkey, stake, deadline_s, time.monotonic())
        try:
            yield admitted
        finally:
            if admitted:
                self.release(hotkey)

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
        if self._eligible(hotkey) and not self._waiting:
            self._take(hotkey)
            return True
        if len(self._waiting) >= self.max_waiting:
            return False
        waiter = _Waiter(hotkey, stake, deadline_s, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._hand_on()
        admitted = False
        try:
            admitted = await asyncio.wait_for(asyncio.shield(waiter.future), timeout=max(0.0, deadline_s - now_s))
            return admitted
        except TimeoutError:
            return False
        finally:
            if not admitted:
                self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        """A waiter that will not use its slot: out of the room, and any slot it was given handed back."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
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

    def _hand_on(self) -> None:
        """Admit waiting requests while slots are free: fewest in flight for the caller, stake, deadline."""
        while self._waiting and self.in_flight < self.max_in_flight:
            candidates = [w for w in self._waiting if self.per_hotkey[w.hotkey] < self.max_per_hotkey]
            if not candidates:
                return
            best = min(candidates, key=lambda w: (self.per_hotkey[w.hotkey], -w.stake, w.deadline_s))
            self._waiting.remove(best)
            if best.future.done():
                continue
            self._take(best.hotkey)
            best.future.set_result(True)
