"""The LevelDB engine driver: the only module that imports plyvel.

One LevelDB database lives in the `leveldb/` directory of a store directory.
LevelDB is safe for concurrent readers and writers from several threads of one
process, applies write batches atomically, and admits one *process* per
database (its LOCK file): a second open raises `StoreBusyError`.  Explaining
*who* holds a store (e.g. a mount) is the store directory's business, not the
engine's.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import plyvel

from dvidfs.errors import NotFoundError, StoreBusyError
from dvidfs.store.engine import Batch, Reader, SnapshotReader

DB_DIR = "leveldb"


class LevelDBEngine(Reader):
    """One LevelDB database inside a store directory (`path/leveldb`).

    Without `create` the database must exist (`NotFoundError` otherwise); with
    it, the store directory and database are created if missing."""

    atomic_batches = True

    def __init__(self, path: str | os.PathLike, create: bool = False, *,
                 write_buffer_size: int = 64 << 20, block_size: int = 64 << 10,
                 lru_cache_size: int = 64 << 20) -> None:
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
                write_buffer_size=write_buffer_size,
                block_size=block_size,
                lru_cache_size=lru_cache_size,
            )
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreBusyError(
                    f"store {self.path} is in use by another process "
                    f"(LevelDB admits one process at a time)") from None
            raise
        super().__init__(db)
        self._db = db

    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` atomically (all or nothing).  With
        `transaction=True` plyvel discards the batch if anything raises while
        it is filled (a bad key or value half-way); without it, plyvel would
        write the part filled so far."""
        with self._db.write_batch(transaction=True, sync=sync) as wb:
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
