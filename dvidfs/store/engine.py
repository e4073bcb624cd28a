"""The ordered key/value engine: the only module that imports plyvel.

The interface is deliberately small (get, range iteration, atomic batches,
snapshots) so another ordered engine (RocksDB, LMDB, Badger-like) can sit
behind it later.  Everything above works on bytes keys and values.

Concurrency: LevelDB is safe for concurrent readers and writers from several
threads of one process; iterators and snapshots are not shared between threads
here (each read builds its own).  Only one *process* may open a store: a second
open fails with `StoreBusyError`, which names the mount point if a mount holds it.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterator

import plyvel

from dvidfs.errors import NotFoundError, StoreBusyError

DB_DIR = "leveldb"
MOUNT_MARKER = "mounted-at.json"


class Batch:
    """Writes collected in memory and applied atomically by `Engine.apply`."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def __len__(self) -> int:
        return len(self.ops)


class Reader:
    """Point reads and ordered range scans over one consistent view."""

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
        copied out of LevelDB."""
        with self.cursor() as it:
            it.seek(start)
            while it.valid():
                k = it.key()
                if k >= stop:
                    break
                yield k, it.value
                it.next()

    @contextmanager
    def cursor(self) -> Iterator:
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
    """A snapshot used by one thread for one read: its scans reuse LevelDB
    iterators and `seek`, which costs a fraction of opening an iterator per
    scan (a yz slice is ~1,000 short scans).  A scan started while another is
    still being consumed takes another iterator, so interleaving stays correct."""

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


class Engine(Reader):
    """One LevelDB database inside a store directory."""

    def __init__(self, path: str | os.PathLike, create: bool = False) -> None:
        self.path = os.fspath(path)
        db_path = os.path.join(self.path, DB_DIR)
        if not create and not os.path.isdir(db_path):
            raise NotFoundError(f"no dvidfs store at {self.path} (run `dvidfs init {self.path}` first)")
        os.makedirs(self.path, exist_ok=True)
        try:
            # Values are already lz4/gzip-compressed: LevelDB's snappy would only cost CPU.
            db = plyvel.DB(
                db_path,
                create_if_missing=create,
                compression=None,
                write_buffer_size=64 << 20,
                block_size=64 << 10,
                lru_cache_size=64 << 20,
            )
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreBusyError(_busy_message(self.path)) from None
            raise
        super().__init__(db)
        self._db = db

    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` atomically (all or nothing)."""
        with self._db.write_batch(sync=sync) as wb:
            for key, value in batch.ops:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """A consistent read view: a slice assembled from many scans sees
        either all or none of a concurrent write batch."""
        snap = self._db.snapshot()
        reader = SnapshotReader(snap)
        try:
            yield reader
        finally:
            reader.close()
            snap.close()

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    # -- mount marker: lets a second process explain *why* the store is busy --
    def mark_mounted(self, mountpoint: str) -> None:
        with open(os.path.join(self.path, MOUNT_MARKER), "w") as f:
            json.dump({"mountpoint": os.path.abspath(mountpoint), "pid": os.getpid()}, f)

    def clear_mounted(self) -> None:
        try:
            os.unlink(os.path.join(self.path, MOUNT_MARKER))
        except FileNotFoundError:
            pass


def _busy_message(path: str) -> str:
    try:
        with open(os.path.join(path, MOUNT_MARKER)) as f:
            info = json.load(f)
        return (f"store {path} is in use: it is mounted at {info['mountpoint']} (pid {info['pid']}); "
                f"work through the mount or unmount it first (`dvidfs umount {info['mountpoint']}`)")
    except (OSError, ValueError, KeyError):
        return f"store {path} is in use by another process (LevelDB admits one process at a time)"
