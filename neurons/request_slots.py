"""Request slots of the HTTP layer, shared fairly between callers (issue 25).

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
