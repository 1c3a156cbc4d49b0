"""Request slots of the HTTP layer, shared fairly between callers (defect 5 of the second red-team pass,
docs/security.md).

At most `total` requests are inside the app at once, the rest wait their turn in arrival order (one event
loop shared among a thousand requests finishes all of them late; a bounded number at a time is first come,
first served). A slot is held while the request's body is read and while it is answered, so one caller
that sends bodies slowly (or many requests at once) could hold every slot and make everyone else wait:
each caller (an address, which no header can change) holds at most `per_caller` slots; its further
requests wait for one of its own to finish, and never delay another caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RequestSlots:
    def __init__(self, total: int, per_caller: int) -> None:
        self._slots = asyncio.Semaphore(total)
        self._per_caller = per_caller
        self._callers: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # caller -> (its share, [users])
        self.waiting = 0  # requests waiting for their turn (their caller's share or a slot)

    @asynccontextmanager
    async def turn(self, caller: str) -> AsyncIterator[None]:
        """Wait for a slot within the caller's share; hold it for the block."""
        share, users = self._callers.setdefault(caller, (asyncio.Semaphore(self._per_caller), [0]))
        users[0] += 1
        try:
            self.waiting += 1
            try:
                await share.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    share.release()
                    raise
            finally:
                self.waiting -= 1
            try:
                yield
            finally:
                self._slots.release()
                share.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._callers[caller]  # bounded by the callers with a request here now

    def callers(self) -> int:
        return len(self._callers)


class ByteBudget:
    """Bytes of request bodies in flight, shared like the slots: at most `total` in all and `total // 2` per caller.

    A request reserves its body's declared length when its body is first read (after the axon verified it) and
    gives it back when it is over: the bodies, their JSON and the synapses made from them are bounded by it.
    A reservation that does not fit waits (within the body deadline) until others are given back.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.per_caller = max(1, total // 2)
        self.used = 0
        self._by_caller: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def _fits(self, caller: str, nbytes: int) -> bool:
        return self.used + nbytes <= self.total and self._by_caller.get(caller, 0) + nbytes <= self.per_caller

    def try_reserve(self, caller: str, nbytes: int) -> int | None:
        """Reserve `nbytes` (at most a caller's share) if they fit now (no wait): what was reserved, or None."""
        nbytes = min(nbytes, self.per_caller)
        if not self._fits(caller, nbytes):
            return None
        self.used += nbytes
        self._by_caller[caller] = self._by_caller.get(caller, 0) + nbytes
        return nbytes

    async def reserve(self, caller: str, nbytes: int) -> int:
        """Wait until `nbytes` (at most a caller's share) fit; returns what was reserved, for `release`."""
        nbytes = min(nbytes, self.per_caller)
        while not self._fits(caller, nbytes):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.used += nbytes
        self._by_caller[caller] = self._by_caller.get(caller, 0) + nbytes
        return nbytes

    def release(self, caller: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self.used -= nbytes
        left = self._by_caller.get(caller, 0) - nbytes
        if left > 0:
            self._by_caller[caller] = left
        else:
            self._by_caller.pop(caller, None)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again whether it fits now
            if not waiter.done():
                waiter.set_result(None)
