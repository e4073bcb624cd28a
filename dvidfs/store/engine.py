"""The ordered key/value protocol that every storage engine implements.

Why this module exists: everything above the store layer (versioned reads,
the version DAG, the data types) needs only a small ordered key/value
interface: point gets, range scans in byte order, atomic write batches and
snapshots.  This module names that interface (`OrderedKV`, `Cursor`) and holds
the engine-independent pieces built on it (`Batch`, `Reader`,
`SnapshotReader`), so an engine is a thin driver and another ordered engine
(RocksDB, LMDB, Badger-like, or the in-memory one used by unit tests) can sit
behind the same code.  Everything works on bytes keys and values.

Engines: `dvidfs.store.leveldb.LevelDBEngine` (the on-disk store) and
`dvidfs.store.memory.MemoryEngine` (fast unit tests).  Only engine driver
modules import a client library (plyvel lives in `dvidfs.store.leveldb`
alone); this module imports none, and code above the store layer should
depend on `OrderedKV` / `Reader`, not on a driver.

Concurrency contract: an engine is safe for concurrent readers and writers
from several threads of one process; cursors and snapshots are not shared
between threads (each read builds its own).  A batch applied by an engine
whose `atomic_batches` is true is seen by every reader either entirely or not
at all.  An engine may admit only one *process* per store (LevelDB does): a
second open then fails with `StoreBusyError`.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import ClassVar, Iterator, Protocol, runtime_checkable


class Batch:
    """Writes collected in memory and applied by an engine's `apply` (all or
    nothing on engines with `atomic_batches`)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def __len__(self) -> int:
        return len(self.ops)


@runtime_checkable
class Cursor(Protocol):
    """A raw ordered cursor (the semantics of plyvel's raw iterator).

    A new cursor is not positioned: `valid()` is false until `seek`.
    `seek(key)` moves to the first key >= `key` (invalid if there is none);
    `next()` moves to the following key (invalid past the last one).
    `key()`, `value()` and `next()` on an invalid cursor raise.  A cursor
    reads one consistent view, taken when it was created.  A remote engine's
    cursor may also offer `plan(ranges)`: the [start, stop) ranges about to be
    read, in order, so it fetches their values ahead (`Reader.scan_lazy` and
    versioned scans call it when it is there)."""

    def seek(self, key: bytes) -> None: ...
    def valid(self) -> bool: ...
    def key(self) -> bytes: ...
    def value(self) -> bytes: ...
    def next(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class OrderedKV(Protocol):
    """What an engine offers.  Engines subclass `Reader` (which supplies
    `scan`, `scan_lazy` and `cursor` from the engine's raw cursor) and add
    `apply`, `snapshot` and `close`."""

    #: Capability: `apply` is all-or-nothing and readers never see part of a batch.
    atomic_batches: ClassVar[bool]

    def get(self, key: bytes) -> bytes | None:
        """The value stored under `key`, or None."""

    def scan(self, start: bytes, stop: bytes, include_value: bool = True) -> Iterator:
        """Keys in [start, stop) in byte order: (key, value) pairs, or keys
        alone with include_value=False."""

    def scan_lazy(self, start: bytes, stop: bytes) -> Iterator:
        """(key, fetch) pairs for keys in [start, stop); `fetch()` is only
        valid until the next item."""

    def cursor(self) -> AbstractContextManager[Cursor]:
        """A raw `Cursor` over one consistent view, closed on exit."""

    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` (atomically if `atomic_batches`);
        `sync` asks a persistent engine to flush before returning."""

    def snapshot(self) -> AbstractContextManager[Reader]:
        """A `Reader` that sees the store as it was when the snapshot was
        taken: later writes and deletes are invisible to it."""

    def close(self) -> None:
        """Release the engine (idempotent)."""


class Reader:
    """Point reads and ordered range scans over one consistent view.

    `source` offers get(key) and raw_iterator() (a `Cursor`); subclasses may
    instead override `get` and `_raw_iterator`."""

    def __init__(self, source) -> None:
        self._src = source

    def get(self, key: bytes) -> bytes | None:
        return self._src.get(key)

    def scan(self, start: bytes, stop: bytes, include_value: bool = True) -> Iterator:
        """Keys in [start, stop) in byte order; (key, value) pairs or keys."""
        for k, fetch in self.scan_lazy(start, stop):
            yield (k, fetch()) if include_value else k

    def scan_lazy(self, start: bytes, stop: bytes) -> Iterator:
        """(key, fetch) pairs for keys in [start, stop): `fetch()` returns the value
        and is only valid until the next item, so values nobody asks for are never
        copied out of the engine."""
        with self.cursor() as it:
            plan = getattr(it, "plan", None)
            if plan is not None:   # a remote engine (S3) fetches the range's values ahead, in parallel
                plan([(start, stop)])
            it.seek(start)
            while it.valid():
                k = it.key()
                if k >= stop:
                    break
                yield k, it.value
                it.next()

    @contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """A raw cursor for hot loops in the store layer (versioned scans): it has
        seek(key), valid(), key(), value() and next(), and one cursor can serve
        many ranges by seeking, which costs a fraction of a new iterator."""
        it = self._raw_iterator()
        try:
            yield it
        finally:
            self._done_with(it)

    def _raw_iterator(self):
        return self._src.raw_iterator()

    def _done_with(self, it) -> None:
        it.close()


class SnapshotReader(Reader):
    """A snapshot used by one thread for one read: its scans reuse cursors and
    `seek`, which costs a fraction of opening a cursor per scan (a yz slice is
    ~1,000 short scans).  A scan started while another is still being consumed
    takes another cursor, so interleaving stays correct."""

    def __init__(self, snap) -> None:
        super().__init__(snap)
        self._idle: list = []

    def _raw_iterator(self):
        return self._idle.pop() if self._idle else self._src.raw_iterator()

    def _done_with(self, it) -> None:
        self._idle.append(it)

    def close(self) -> None:
        for it in self._idle:
            it.close()
        self._idle.clear()
