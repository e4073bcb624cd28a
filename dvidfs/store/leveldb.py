"""The LevelDB engine driver: the only module that imports plyvel.

One LevelDB database lives in the `leveldb/` directory of a store directory.
LevelDB is safe for concurrent readers and writers from several threads of one
process, applies write batches atomically, and admits one *process* per
database (its LOCK file): a second open raises `StoreBusyError`.  Explaining
*who* holds a store (e.g. a mount) is the store directory's business, not the
engine's.

A full disk (what plyvel 1.5 / LevelDB 1.22 do, measured on a small tmpfs):

* `apply` raises `plyvel.IOError(b"IO error: <file>: No space left on device")`
  (the file is the write-ahead log, or a table being flushed from the
  memtable).  The batch is not applied: it never reaches the memtable, and
  the partial log record is dropped when the database is reopened.  This
  driver raises `NoSpaceError` (ENOSPC) for it.
* After a failed write this `plyvel.DB` cannot be trusted with more writes:
  a failed table flush makes LevelDB refuse every later write (a sticky
  background error, even once space is freed), and a log append that failed
  half-way leaves a broken record in the log, so writes appended after it
  *succeed* but are silently dropped when the database is reopened (the log
  reader skips the rest of the damaged log block).  So after the first failed
  `apply` this engine refuses every write (reads still work) until the store
  is reopened; freeing space is not enough.
* Opening needs free space too: LevelDB writes a new MANIFEST and log on every
  open (and a table when the old log holds writes), even to only read, so a
  store on a full disk cannot be opened at all (`NoSpaceError`).
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator

import plyvel

from dvidfs.errors import DvidfsError, NoSpaceError, NotFoundError, StoreBusyError
from dvidfs.store.engine import Batch, Reader, SnapshotReader

DB_DIR = "leveldb"
_NO_SPACE = "no space left on device"


def _message(exc: BaseException) -> str:
    """plyvel's error text (its argument is bytes)."""
    arg = exc.args[0] if exc.args else ""
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _no_space(exc: BaseException) -> bool:
    return _NO_SPACE in _message(exc).lower()


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
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(f"store {self.path}: disk full, cannot create the store") from None
            raise
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
            if _no_space(exc):
                raise NoSpaceError(
                    f"store {self.path}: disk full, cannot open it (LevelDB writes new files "
                    f"on every open, even to read): free some space and open it again") from None
            raise
        super().__init__(db)
        self._db = db
        self._write_failure: BaseException | None = None  # the first failed apply (see the module doc)

    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` atomically (all or nothing).  With
        `transaction=True` plyvel discards the batch if anything raises while
        it is filled (a bad key or value half-way); without it, plyvel would
        write the part filled so far.

        A full disk raises `NoSpaceError` (nothing was written); after any
        failed write every later one is refused until the store is reopened
        (see the module docstring for why)."""
        if self._write_failure is not None:
            raise self._refused()
        try:
            with self._db.write_batch(transaction=True, sync=sync) as wb:
                for key, value in batch.ops:
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
        except plyvel.IOError as exc:
            self._write_failure = exc
            if _no_space(exc):
                raise NoSpaceError(f"store {self.path}: disk full, nothing was written "
                                   f"(free space, then reopen the store to write again)") from None
            raise

    def _refused(self) -> DvidfsError:
        exc = self._write_failure
        if _no_space(exc):
            return NoSpaceError(f"store {self.path}: disk full, nothing was written (an earlier write "
                                f"ran out of space: free space, then reopen the store to write again)")
        return DvidfsError(f"store {self.path}: nothing was written: an earlier write failed "
                           f"({_message(exc)}); reopen the store to write again")

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
