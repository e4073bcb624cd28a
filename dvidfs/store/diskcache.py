"""A local disk cache of immutable values (the S3 engine's packs).

Why: every large value of an S3 store lives in an immutable pack object and is
named by pack and offset (`s3._Blob.name`), so a copy fetched once is valid
forever: no revalidation, no invalidation.  The engine's memory LRU forgets
everything when the process ends; this cache keeps fetched values in files so
the next mount or server of the same store (or another process on this
machine) reads them from the local disk instead of a ranged GET.

Layout: `<root>/<2 hex>/<32 hex>`, the hex being a hash of the value's name;
a file holds the value's bytes alone, and its length is checked on every read
(the engine knows each value's size), so a file torn by a crash or a full disk
is never served: it is removed and fetched again.  Files are written to a
temporary name and renamed into place, so readers see a whole file or none.

Bounded: once the bytes added since the last trim exceed a tenth of
`max_bytes`, a background thread totals the files and removes the least
recently used (by mtime: a hit touches its file) until at most 80% of
`max_bytes` remain.  A cache that cannot write (disk full, read-only) logs once
and is skipped: a read never fails because of the cache.

Concurrency: any number of threads and processes may share a root (names are
immutable; renames are atomic; a value written twice is the same bytes).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading

log = logging.getLogger("dvidfs.store.diskcache")

TRIM_TO = 0.8     # a trim leaves at most this fraction of max_bytes
TRIM_EVERY = 0.1  # ... and runs after this fraction of max_bytes was added


class DiskCache:
    """Values by name in files under `root`, at most about `max_bytes` of them."""

    def __init__(self, root: str | os.PathLike, max_bytes: int) -> None:
        self.root = os.fspath(root)
        self.max_bytes = max_bytes
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()
        self._added = 0
        self._trimming = False
        self._warned = False
        self.hits = self.misses = 0

    def _path(self, name: str) -> str:
        h = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
        return os.path.join(self.root, h[:2], h)

    def get(self, name: str, size: int) -> bytes | None:
        """The value `name` if a whole copy (`size` bytes) is here, else None."""
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                data = f.read(size + 1)
        except OSError:
            self.misses += 1
            return None
        if len(data) != size:              # torn or foreign: never served
            self._remove(path)
            self.misses += 1
            return None
        try:
            os.utime(path)                 # recently used: trimmed last
        except OSError:
            pass
        self.hits += 1
        return data

    def put(self, name: str, data: bytes) -> None:
        """Keep a copy of value `name` (best effort: errors are logged once)."""
        path = self._path(name)
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            self._remove(tmp)
            if not self._warned:
                self._warned = True
                log.warning("local cache %s: cannot keep values (%s); reading without it", self.root, exc)
            return
        with self._lock:
            self._added += len(data)
            if self._trimming or self._added < TRIM_EVERY * self.max_bytes:
                return
            self._trimming, self._added = True, 0
        threading.Thread(target=self._trim_quietly, name="dvidfs-diskcache-trim", daemon=True).start()

    def trim(self) -> int:
        """Remove the least recently used files until at most TRIM_TO of
        `max_bytes` remain (when over `max_bytes`); returns the bytes kept."""
        files = []
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, e.path))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return total
        files.sort()
        for _, size, path in files:
            if total <= TRIM_TO * self.max_bytes:
                break
            self._remove(path)
            total -= size
        return total

    def _trim_quietly(self) -> None:
        try:
            self.trim()
        except OSError as exc:
            log.warning("local cache %s: trimming failed: %s", self.root, exc)
        finally:
            with self._lock:
                self._trimming = False

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
