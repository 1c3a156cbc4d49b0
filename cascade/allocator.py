"""Make the C allocator give large blocks back to the operating system (glibc; a no-op elsewhere).

glibc raises its mmap threshold every time a large mmapped block is freed (up to 32 MiB), so after
one big image the next big buffers come from the heap of whichever thread's arena served them, and
freeing them does not shrink the process: one 80-megapixel PNG left the miner 1.5 GB larger for
good. A fixed threshold keeps every block above it in its own mapping, returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from loguru import logger

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from <malloc.h>


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def return_large_blocks(mmap_threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold (no dynamic raise); True if it took effect."""
    libc = _libc()
    if libc is None or mmap_threshold_bytes <= 0:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold_bytes)))
    if ok:
        logger.info("allocator: blocks of {} KiB and more are returned to the OS when freed",
                    mmap_threshold_bytes // 1024)
    return ok

