"""Name (dentry) invalidations, off the FUSE loop, one worker thread per mount.

`pyfuse3.invalidate_entry` blocks until the kernel has dropped the name, and
the kernel takes the parent directory's lock to do it: called from the trio
loop that answers FUSE requests it can deadlock (pyfuse3#2), so names are
queued to a thread.  pyfuse3 has such a queue (`invalidate_entry_async`), but
its worker ends for good when the first `pyfuse3.main()` of a process returns
(the stop sentinel is sent and the queue is kept): a second mount in the same
process (tests, a server that remounts) would queue names nobody drops, and
the kernel would keep showing a deleted instance.  This worker lives exactly
as long as its mount.
"""
from __future__ import annotations

import logging
import queue
import threading

import pyfuse3

log = logging.getLogger("dvidfs.fs")


class EntryInvalidator:
    """`submit(parent_inode, name)` queues a name to drop; `close()` ends the
    worker after what is queued (`fs/mount.py:fuse_main`, when the FUSE loop ends)."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[tuple[int, bytes] | None]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dvidfs-invalidate", daemon=True)
        self._thread.start()

    def submit(self, parent_inode: int, name: bytes) -> None:
        self._queue.put((parent_inode, name))

    def close(self, timeout: float = 5.0) -> None:
        """End the worker after the names queued so far (idempotent).  Call it
        before `pyfuse3.close()`: a name dropped after the session is gone
        would reach a freed session."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                pyfuse3.invalidate_entry(*item)
            except FileNotFoundError:
                pass   # the kernel no longer has the name: nothing to drop
            except OSError as exc:   # unmounted meanwhile, or the kernel refused: nothing stale is served
                log.debug("invalidate_entry(%d, %r): %s", item[0], item[1], exc)
