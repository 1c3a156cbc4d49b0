"""One computation per distinct image in flight: later askers of the same image wait for the first.

The first asker owns the computation. Whatever happens to it (answered, cut short by its own
deadline, failed), its peers receive a Result, never its exception or cancellation: a peer whose
owner was cut short and which has more time left computes the image itself. Loop-thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cascade.request import Result, Status

FULL_ANSWERS = (Status.CONFIDENT, Status.EXHAUSTED)


@dataclass
class Shared:
    future: asyncio.Future[Result]
    deadline_s: float  # the owner's
    peers: int = 0  # requests waiting for it now

    async def wait(self) -> Result:
        """The owner's result; our own cancellation (deadline) never cancels the shared computation."""
        self.peers += 1
        try:
            return await asyncio.shield(self.future)
        finally:
            self.peers -= 1

    def serves(self, result: Result, deadline_s: float) -> bool:
        """Whether the owner's result is the best a peer with `deadline_s` could hope for."""
        return result.status in FULL_ANSWERS or self.deadline_s >= deadline_s


class Owner:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def publish(self, result: Result) -> None:
        if not self.shared.future.done():
            self.shared.future.set_result(result)


class Coalescer:
    def __init__(self) -> None:
        self._pending: dict[str, Shared] = {}

    def __contains__(self, image_hash: str) -> bool:
        """Safe to call from another thread (a decode worker guessing a repeat); a wrong guess costs a hop."""
        return image_hash in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, image_hash: str) -> Shared | None:
        return self._pending.get(image_hash)

    @contextlib.contextmanager
    def own(self, image_hash: str, deadline_s: float, fallback: Callable[[], Result]) -> Iterator[Owner]:
        """Register as the computation for `image_hash`; on any exit, peers get a Result (`fallback()` if none)."""
        shared = Shared(asyncio.get_running_loop().create_future(), deadline_s)
        self._pending[image_hash] = shared
        owner = Owner(shared)
        try:
            yield owner
        finally:
            if self._pending.get(image_hash) is shared:
                del self._pending[image_hash]
            owner.publish(fallback())
