"""Worker threads that yield the CPU to the request path when the machine is saturated.

Linux schedules threads one by one, each with its own niceness. Decoding and CPU inference are the
engine's optional work (a request can always be answered from what is known, or the prior); the
axon's event loop and the engine's own loop are not: without them nothing is answered at all. Under
a burst on a small machine, nice workers leave the CPU to those two first.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


def lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by `nice` (best effort: not every system allows it)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError:
        pass


def worker_pool(workers: int, name: str, nice: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,))
