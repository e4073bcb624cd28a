"""A bounded, thread-safe LRU of rendered file bytes (slices, sparsevols).

Keys carry the node and a per-(node, instance) write generation, so a write
makes old entries unreachable instead of having to find and delete them.
Worker threads read and fill it concurrently, hence the lock.
"""
from __future__ import annotations

import threading
from collections import OrderedDict


class RenderCache:
    def __init__(self, budget: int = 256 << 20):
        self.budget, self.used = budget, 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value: bytes) -> None:
        if len(value) > self.budget // 4:
            return
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self.used += len(value)
            while self.used > self.budget:
                _, old = self._d.popitem(last=False)
                self.used -= len(old)
