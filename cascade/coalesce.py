"""One computation per distinct image in flight: later askers of the same image wait for the first.

The first asker owns the computation. Whatever happens to it (answered, cut short by its own
deadline, failed), its peers receive a Result, never its exception or cancellation: a peer whose
owner was cut short and which has more time left computes the image itself. Loop-thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from cascade.request import Result, Status

FULL_ANSWERS = (Status.CONFIDENT, Status.EXHAUSTED)


@dataclass(eq=False)
class Shared:
    deadline_s: float  # the owner's
    # Made for the first peer only: most images have none, and a future per request is loop time for nothing.
    # NOTE: no peer can arrive after the owner publishes: publishing and unregistering happen in one loop step.
    future: asyncio.Future[Result] | None = None
    peers: int = 0  # requests waiting for it now

    async def wait(self) -> Result:
        """The owner's result; our own cancellation (deadline) never cancels the shared computation."""
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        self.peers += 1
        try:
            return await asyncio.shield(self.future)
        finally:
            self.peers -= 1

    def serves(self, result: Result, deadline_s: float) -> bool:
        """Whether the owner's result is the best a peer with `deadline_s` could hope for."""
        return result.status in FULL_ANSWERS or self.deadline_s >= deadline_s

    def settled(self) -> bool:
        """Whether no peer waits for a result any more (none ever did, or one was handed over)."""
        return self.future is None or self.future.done()


class Owner:
    """The registration of the request computing an image. `close` it on every exit (a `finally`)."""

    def __init__(self, pending: dict[str, Shared], image_hash: str, shared: Shared) -> None:
        self._pending = pending
        self._image_hash = image_hash
        self.shared = shared

    def publish(self, result: Result) -> None:
        future = self.shared.future
        if future is not None and not future.done():
            future.set_result(result)

    def close(self, fallback: Callable[[], Result]) -> None:
        """Unregister; peers still waiting get `fallback()` if nothing was published (called only then)."""
        if self._pending.get(self._image_hash) is self.shared:
            del self._pending[self._image_hash]
        if not self.shared.settled():
            self.publish(fallback())


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

    def own(self, image_hash: str, deadline_s: float) -> Owner:
        """Register as the computation for `image_hash`; the caller closes the Owner on any exit.

        NOTE: not a context manager: a generator-based one cost ~5% of the request path's loop time (py-spy).
        """
        shared = Shared(deadline_s)
        self._pending[image_hash] = shared
        return Owner(self._pending, image_hash, shared)
