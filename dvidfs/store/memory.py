"""An in-memory ordered engine for fast unit tests (same interface as LevelDB).

The store is an immutable *state*: keys in byte order, cut into chunks of at
most 2 * `chunk_size` keys, with a list of each chunk's last key to find a chunk by
bisection.  `apply` builds a new state under a writer lock, copying only the
list of chunks and the chunks the batch touches (copy-on-write), and publishes
it with one reference assignment.  So readers never lock and never see part of
a batch, a `snapshot()` is O(1) (it keeps the state of that moment), and a
cursor reads the state it was created on, as LevelDB's iterators read an
implicit snapshot.

Threads: any number of concurrent readers and writers (writers are
serialised); as with LevelDB, one cursor or snapshot is used by one thread.
Nothing is persisted: `close()` drops the data.
"""
from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from contextlib import contextmanager
from typing import Iterator

from dvidfs.store.engine import Batch, Reader, SnapshotReader

CHUNK_SIZE = 1024   # a chunk above twice this many keys is split into chunks of this many


class IteratorInvalidError(RuntimeError):
    """key(), value() or next() on a cursor that is not on a key
    (plyvel raises its own IteratorInvalidError there)."""


class _State:
    """One immutable version of the whole store."""

    __slots__ = ("chunks", "lasts", "size")

    def __init__(self, chunks: list[tuple[list[bytes], list[bytes]]], size: int) -> None:
        self.chunks = chunks                      # [(keys, values)], none empty, in order
        self.lasts = [c[0][-1] for c in chunks]   # last key of each chunk
        self.size = size                          # chunks hold at most 2 * size keys

    def get(self, key: bytes) -> bytes | None:
        ci = bisect_left(self.lasts, key)
        if ci == len(self.lasts):
            return None
        ks, vs = self.chunks[ci]
        j = bisect_left(ks, key)
        return vs[j] if ks[j] == key else None    # j < len(ks): ks[-1] >= key

    def raw_iterator(self) -> _Cursor:
        return _Cursor(self)

    def applied(self, changes: dict[bytes, bytes | None]) -> _State:
        """A new state with `changes` (key -> value, or None to delete) applied;
        untouched chunks are shared with this state."""
        items = sorted(changes.items())
        chunks, lasts = self.chunks, self.lasts
        if not chunks:
            return _State(_cut([(k, v) for k, v in items if v is not None], self.size), self.size)
        ikeys = [k for k, _ in items]
        last = len(chunks) - 1
        out: list = []
        prev = i = 0
        while i < len(items):
            # items are sorted, so each chunk's changes are one run of them
            ci = min(bisect_left(lasts, ikeys[i], prev), last)
            j = len(items) if ci == last else bisect_right(ikeys, lasts[ci], i)
            out.extend(chunks[prev:ci])
            out.extend(_changed_chunk(chunks[ci], items[i:j], self.size))
            prev, i = ci + 1, j
        out.extend(chunks[prev:])
        return _State(out, self.size)


def _changed_chunk(chunk, group, size: int) -> list[tuple[list[bytes], list[bytes]]]:
    """Copies of one chunk with `group` (sorted (key, value-or-None)) applied:
    none if it ends up empty, several if it grew too big."""
    ks, vs = chunk
    if len(group) * 8 > len(ks):     # many changes: rebuild
        merged = dict(zip(ks, vs))
        for k, v in group:
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return _cut(sorted(merged.items()), size)
    ks, vs = ks.copy(), vs.copy()    # few changes: copy and edit in place
    lo = 0
    for k, v in group:
        lo = p = bisect_left(ks, k, lo)
        if p < len(ks) and ks[p] == k:
            if v is None:
                del ks[p], vs[p]
            else:
                vs[p] = v
        elif v is not None:
            ks.insert(p, k)
            vs.insert(p, v)
    # (at most len/8 changes: the chunk cannot have emptied)
    return [(ks, vs)] if len(ks) <= 2 * size else _cut(list(zip(ks, vs)), size)


def _cut(items: list[tuple[bytes, bytes]], size: int) -> list[tuple[list[bytes], list[bytes]]]:
    """Sorted (key, value) items as chunks of at most 2 * size keys."""
    if not items:
        return []
    step = len(items) if len(items) <= 2 * size else size
    out = []
    for i in range(0, len(items), step):
        part = items[i:i + step]
        out.append(([k for k, _ in part], [v for _, v in part]))
    return out


class _Cursor:
    """seek / valid / key / value / next over one state, with the semantics
    of plyvel's raw iterator (unpositioned until the first seek)."""

    __slots__ = ("_state", "_ci", "_j", "_keys", "_vals")

    def __init__(self, state: _State) -> None:
        self._state = state
        self._ci = len(state.chunks)   # invalid until seek
        self._j = 0
        self._keys: list[bytes] = []
        self._vals: list[bytes] = []

    def _at(self, ci: int, j: int) -> None:
        self._ci, self._j = ci, j
        if ci < len(self._state.chunks):
            self._keys, self._vals = self._state.chunks[ci]

    def seek(self, key: bytes) -> None:
        ci = bisect_left(self._state.lasts, key)
        self._at(ci, bisect_left(self._state.chunks[ci][0], key) if ci < len(self._state.lasts) else 0)

    def seek_to_first(self) -> None:
        self._at(0, 0)

    def valid(self) -> bool:
        return self._ci < len(self._state.chunks)

    def key(self) -> bytes:
        if self._ci >= len(self._state.chunks):
            raise IteratorInvalidError("cursor is not on a key")
        return self._keys[self._j]

    def value(self) -> bytes:
        if self._ci >= len(self._state.chunks):
            raise IteratorInvalidError("cursor is not on a key")
        return self._vals[self._j]

    def next(self) -> None:
        if self._ci >= len(self._state.chunks):
            raise IteratorInvalidError("cursor is not on a key")
        j = self._j + 1
        if j < len(self._keys):
            self._j = j
        else:
            self._at(self._ci + 1, 0)

    def close(self) -> None:
        pass


def _as_bytes(b, what: str) -> bytes:
    if type(b) is bytes:
        return b
    if isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(b)
    raise TypeError(f"{what} must be bytes, not {type(b).__name__}")


class MemoryEngine(Reader):
    """An ordered key/value engine held in memory (see the module docstring).
    `chunk_size` only tunes the copy-on-write granularity (tests use a tiny
    one to exercise chunk boundaries)."""

    atomic_batches = True

    def __init__(self, *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        super().__init__(None)
        self._state = _State([], chunk_size)
        self._write_lock = threading.Lock()
        self._closed = False

    def _current(self) -> _State:
        if self._closed:
            raise RuntimeError("engine is closed")
        return self._state

    def get(self, key: bytes) -> bytes | None:
        return self._current().get(key)

    def _raw_iterator(self) -> _Cursor:
        return _Cursor(self._current())

    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` atomically: the changes are collected
        (and checked) first, so a batch that fails half-way changes nothing."""
        changes: dict[bytes, bytes | None] = {}
        for key, value in batch.ops:
            changes[_as_bytes(key, "key")] = None if value is None else _as_bytes(value, "value")
        if not changes:
            self._current()
            return
        with self._write_lock:
            self._state = self._current().applied(changes)

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """A consistent read view, O(1): the state of this moment."""
        reader = SnapshotReader(self._current())
        try:
            yield reader
        finally:
            reader.close()

    def close(self) -> None:
        self._closed = True
        self._state = _State([], self._state.size)
