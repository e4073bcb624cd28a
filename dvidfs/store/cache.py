"""A bounded, thread-safe LRU with a byte budget.

Used twice: decoded blocks (`data/volume.py`, shared by all instances of a
store) and rendered files (`fs/tree.py`).  Keys must change when the content
can: callers put a write generation in the key, so a write makes old entries
unreachable instead of having to find and delete them (no reader can slip a
stale entry in after a delete that way).  Worker threads read and fill it
concurrently, hence the lock.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


def nbytes(value: Any) -> int:
    """Size of bytes or numpy arrays (anything with .nbytes or len())."""
    n = getattr(value, "nbytes", None)
    return int(n) if n is not None else len(value)


class LRUCache:
    def __init__(self, budget: int, sizeof: Callable[[Any], int] = nbytes):
        self.budget, self.used = budget, 0
        self._sizeof = sizeof
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable):
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
            else:
                self.hits += 1
                self._d.move_to_end(key)
            return v

    def put(self, key: Hashable, value: Any) -> None:
        size = self._sizeof(value)
        if size > self.budget // 4:
            return
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self.used += size
            while self.used > self.budget:
                _, old = self._d.popitem(last=False)
                self.used -= self._sizeof(old)
