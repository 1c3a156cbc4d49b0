"""Answers by image hash: the same image sent again is answered at once and consistently."""

from __future__ import annotations

import time
from collections import OrderedDict

from cascade.request import Result


class ResultCache:
    """Bounded LRU with a time to live. Touched only on the engine's loop thread."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, Result]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, now_s: float | None = None) -> Result | None:
        if self._size == 0:
            return None
        now_s = time.monotonic() if now_s is None else now_s
        entry = self._items.get(key)
        if entry is None or entry[0] < now_s:
            if entry is not None:
                del self._items[key]
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return entry[1]

    def contains(self, key: str) -> bool:
        """Membership without touching the LRU order (safe to call from another thread)."""
        return key in self._items

    def put(self, key: str, result: Result, now_s: float | None = None) -> None:
        if self._size == 0:
            return
        now_s = time.monotonic() if now_s is None else now_s
        self._items[key] = (now_s + self._ttl_s, result)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every answer (a new cascade answers differently)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
