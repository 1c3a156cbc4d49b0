"""Which event loop the engine and the axon's HTTP server run on.

uvloop (libuv, as uvicorn and vLLM's API server use) runs the same asyncio code with cheaper callbacks,
futures' wake-ups and socket reads: the request path's loop is the miner's ceiling (docs/performance.md),
and under uvloop it carried ~30% more requests a second with experts that cost nothing. The standard
library's loop stays one setting away (`asyncio`), for a platform without uvloop or to rule it out.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

EventLoopKind = Literal["uvloop", "asyncio"]


def new_event_loop(kind: EventLoopKind) -> asyncio.AbstractEventLoop:
    """A fresh loop of `kind`."""
    return asyncio.new_event_loop() if kind == "asyncio" else _uvloop().new_event_loop()


def uvicorn_loop(kind: EventLoopKind) -> str:
    """uvicorn's `loop` setting for `kind` (checked here, so a missing uvloop fails before the server starts)."""
    if kind == "uvloop":
        _uvloop()
    return kind


def _uvloop() -> Any:
    """The uvloop module; its absence is an error that says how to do without it."""
    try:
        import uvloop
    except ImportError as exc:
        raise RuntimeError("event_loop is uvloop but uvloop is not installed (it has no Windows build): "
                           "install it, or set event_loop: asyncio") from exc
    return uvloop
