"""pyfuse3 request handlers: inodes, handles, errors, kernel-cache policy.

Concurrency contract (S3QL's): every handler runs on the trio thread, and code
between two `await`s runs atomically there.  The inode table, the handle table,
scratch files and last-error messages are only touched on the trio thread, so
they need no locks.  Everything that touches the store (LevelDB reads, block
decoding, PNG encoding, writes) runs in worker threads via `self._run`, so two
readers proceed in parallel and `ls` stays responsive while a slice renders.
Dentry invalidations go through pyfuse3's own asynchronous queue, never
from inside a handler (pyfuse3#2: that deadlocks).

Cache policy: the mount process is the store's only writer (LevelDB admits
one process), so, like S3QL, every entry and attribute gets a long timeout and
every change queues invalidations of exactly what it can affect.  Changes come
from the core's publisher (`Dvid.subscribe`), whichever front end made them
(the mount, or the HTTP server or a script in the same process): a write to an
instance in a node drops every inode under that (node, instance); a node-level
change drops the node's inodes and the repo's branch links and control files.
A change made in one of our handlers' worker threads, or in any other
thread of the process, is invalidated before the change's call returns to
its caller (`_on_change` runs the invalidation on the trio thread and waits
for it), so the writer's next `stat`, wherever it comes from, sees the
change.  Changes made on the trio thread itself are queued and drained by the
handler before it replies.  Data of committed nodes is immutable
(`keep_cache`); data of open nodes is read with `direct_io`, so a reader always
gets the bytes rendered at its open.  Only rsync/editor temp files and
`last-error` use zero timeouts.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from functools import partial, wraps

import pyfuse3
import trio

from dvidfs.core import Change
from dvidfs.errors import DvidfsError, InvalidInputError, NotFoundError, ReadOnlyError, TooLargeError
from dvidfs.fs.entry import NOW, ON_CLOSE, Attr, Entry
from dvidfs.fs.inodes import InodeTable
from dvidfs.fs.invalidation import EntryInvalidator
from dvidfs.fs.nodes import CTRL_DIR, ROOT, ControlDir, NodeDir
from dvidfs.fs.tree import Tree
from dvidfs.fs.volumes import PlaneDir, is_temp_name, parse_slice_name
from dvidfs.store.cache import LRUCache
from dvidfs.timestamps import iso

log = logging.getLogger("dvidfs.fs")

IMMUTABLE_TIMEOUT = 3600.0
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2   # renameat2 flags
MAX_COMMAND = 1 << 20   # a command file's text (a note, log lines)
BLKSIZE = 128 * 1024
# A render that failed answers the reads of its handle for this long: after a
# failed readahead read the kernel reads the first page again at once (same
# handle), which must not cost a second render (a second S3 timeout); a
# program that retries read() later, or the next open, renders again.
FAILED_RENDER_HOLD = 1.0


class PermissionRefused(DvidfsError):
    """Refused by the mount's guards (recursive removal of volumes and instances)."""

    errno = errno.EPERM


@dataclass
class Scratch:
    """An in-memory temporary file in a slice directory (rsync/editor temp files)."""

    ino: int
    limit: int                      # it must fit a slice of its plane once renamed
    data: bytearray = field(default_factory=bytearray)
    mtime: float = field(default_factory=time.time)
    mode: int = 0o644


class ScratchEntry(Entry):
    """Names the inode of a temporary file (Scratch) in a slice directory.
    Its attributes come from the Scratch while it exists; once it is renamed
    onto a slice or unlinked, the inode is gone (an open fd keeps its data)."""

    def attr(self, tree: Tree) -> Attr:
        raise NotFoundError("the temporary file was renamed or removed")


SCRATCH = ScratchEntry()


@dataclass
class Handle:
    entry: Entry
    ino: int
    data: bytes | bytearray | None = b""  # None: rendered on the first read (see open)
    writing: bool = False
    dirty: bool = False
    loading: trio.Lock | None = None
    scratch: Scratch | None = None  # a temp file's data: kept by the handle, as POSIX keeps an unlinked file's
    limit: int = 0                  # uploads: the most bytes the target can take (EFBIG beyond)
    pending: bytearray = field(default_factory=bytearray)  # command files: text not yet acted on
    stream: object | None = None    # a streamed file (keys): read in pieces, closed at release
    failed: tuple[float, BaseException] | None = None  # (when, why) its render last failed (read)


@dataclass
class DirHandle:
    """An open directory: its listing (a sequence, possibly made lazily) and, in
    a slice directory, the temporary files after it."""

    ino: int
    listing: Sequence
    temps: list[tuple[str, int]]


class DvidOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree):
        super().__init__()
        self.tree = tree
        self.inodes = InodeTable(ROOT, pyfuse3.ROOT_INODE)
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, list] = {}
        self._next_fh = 1
        self.scratch: dict[tuple[Entry, str], Scratch] = {}  # (plane entry, name)
        self.scratch_ino: dict[int, tuple[Entry, str]] = {}
        self.last_error: dict[str, str] = {}  # node uuid -> message
        self.pending_slices: set[Entry] = set()  # created, not yet flushed
        self.uid, self.gid = os.getuid(), os.getgid()
        # changes published by the core (any thread), invalidated on the trio thread
        self._token: trio.lowlevel.TrioToken | None = None
        self._changes: list[Change] = []
        self._drain_lock = trio.Lock()
        self._unsubscribe = tree.core.subscribe(self._on_change)
        self.names = EntryInvalidator()   # dentries dropped by a worker thread (fs/invalidation.py)
        # Renders take turns in one worker thread.  A grayscale slice still holds
        # the GIL for most of its time (the LevelDB cursor calls and value copies,
        # 1,024 per 1024² slice; only the decode + copy runs without it), so two
        # render threads only add GIL hand-offs: 0.86x the throughput of one
        # (docs/performance.md).  Metadata requests never wait for renders.
        self.render_limiter = trio.CapacityLimiter(tree.core.config.render_threads)

    def close(self) -> None:
        self._unsubscribe()
        self.names.close()
        for h in self.handles.values():  # before the store closes: streams may hold snapshots
            if h.stream is not None:
                h.stream.close()
                h.stream = None

    # ------------------------------------------------------------ plumbing
    async def _run(self, fn, *args, limiter=None):
        """Run a store-touching call in a worker thread (errors become errnos in
        `_never_escape`, around every handler)."""
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=limiter)

    def _inline(self, fn, *args):
        """Run a cheap metadata call (a few LevelDB point reads, no decoding) on
        the trio thread: a thread hop costs more than the call (measured: ~5 ms
        per `stat` under load with hops, 0.02 ms of work)."""
        return fn(*args)

    def _entry(self, ino: int) -> Entry:
        e = self.inodes.entry(ino)
        if e is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return e

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _fail(self, uuid: str, what: str, exc: BaseException) -> pyfuse3.FUSEError:
        """Record a failed write as last-error of its node; return the errno to raise."""
        code = exc.errno if isinstance(exc, DvidfsError) else errno.EIO
        msg = f"{iso()} {what}: {exc} ({errno.errorcode.get(code, code)})"
        # names that are not UTF-8 arrive surrogate-escaped: keep the message printable
        msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
        if uuid:
            self.last_error[uuid] = msg
        log.warning(msg)
        return pyfuse3.FUSEError(code)

    def _attrs(self, ino: int, a: Attr, volatile: bool = False) -> pyfuse3.EntryAttributes:
        ea = pyfuse3.EntryAttributes()
        if a.kind == "dir":
            ea.st_mode = stat.S_IFDIR | (0o755 if a.writable else 0o555)
            ea.st_nlink = 1  # "unknown": no find(1) leaf optimisation
        elif a.kind == "link":
            ea.st_mode = stat.S_IFLNK | 0o777
            ea.st_nlink = 1
        else:
            ea.st_mode = stat.S_IFREG | (0o644 if a.writable else 0o444)
            ea.st_nlink = 1
        ea.st_size = a.size
        ea.st_blksize = BLKSIZE
        ea.st_blocks = (a.size + 511) // 512
        ea.st_ino = ino
        ea.st_uid, ea.st_gid = self.uid, self.gid
        ns = int(a.mtime * 1e9)
        ea.st_atime_ns = ea.st_mtime_ns = ea.st_ctime_ns = ns
        ea.attr_timeout = ea.entry_timeout = 0.0 if volatile else IMMUTABLE_TIMEOUT
        ea.generation = 0
        return ea

    def _scratch_attrs(self, s: Scratch) -> pyfuse3.EntryAttributes:
        return self._attrs(s.ino, Attr("file", len(s.data), True, s.mtime, False), volatile=True)

    def _held(self, ino: int) -> Handle | None:
        """An open writing handle of `ino`, if any (created slices, temp files)."""
        return next((h for h in self.handles.values() if h.ino == ino and h.writing), None)

    def _pending_attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        """A slice created but not stored yet: what its writer has buffered, with
        zero timeouts, so the name is not cached beyond its life (if its upload
        fails, it never existed)."""
        h = self._held(ino)
        size = len(h.data) if h is not None and isinstance(h.data, bytearray) else 0
        return self._attrs(ino, Attr("file", size, True, time.time(), False), volatile=True)

    async def _getattr_entry(self, e: Entry, ino: int) -> pyfuse3.EntryAttributes:
        if e in self.pending_slices:
            return self._pending_attrs(ino)
        # body files' sizes need a sparsevol computed (then cached): worker thread
        a = await self._run(self.tree.attr, e) if e.slow_attr else self._inline(self.tree.attr, e)
        if e.is_last_error:
            a.size = len(self._last_error_bytes(e.uuid))
            return self._attrs(ino, a, volatile=True)
        return self._attrs(ino, a)

    def _last_error_bytes(self, uuid: str) -> bytes:
        m = self.last_error.get(uuid)
        return (m + "\n").encode() if m else b""

    # ------------------------------------------------------------ invalidation
    async def _invalidate(self, candidates, pred) -> None:
        """Drop what the kernel caches of every known inode whose entry matches
        `pred`, before the handler that changed them replies, so the writer's
        next `stat` already sees the change.  Inodes are invalidated from a
        worker thread (no inode lock is held by our requests and there is no
        writeback cache, so this cannot deadlock); names (dentries), whose
        invalidation takes the parent directory's lock (pyfuse3#2), go through
        a worker thread (fs/invalidation.py), only for entries that can disappear."""
        inos, names = [], []
        for ino in set(candidates):
            entry = self.inodes.entry(ino)
            if entry is not None and pred(entry):
                inos.append(ino)
                if entry.can_vanish and ino in self.inodes.parent_of:
                    names.append(self.inodes.parent_of[ino])
        if inos:
            await trio.to_thread.run_sync(_invalidate_inodes, inos)
        for parent, name in names:
            self.names.submit(parent, name)

    def attach(self) -> None:
        """Start following the core's changes; call on the trio thread that serves."""
        self._token = trio.lowlevel.current_trio_token()

    def _on_change(self, change: Change) -> None:
        """Core subscriber, called in the thread that made the change (after its
        batch is applied, holding no store lock).  From any thread but the trio
        thread, run the invalidation there and wait for it, so the change's
        caller returns only once the kernel has forgotten what it affects."""
        token = self._token
        if token is None:
            return  # not serving yet: the kernel holds nothing of ours
        try:
            on_trio_thread = trio.lowlevel.current_trio_token() is token
        except RuntimeError:
            on_trio_thread = False
        if on_trio_thread:
            self._changes.append(change)  # the handler drains before it replies
            return
        try:
            trio.from_thread.run(self._queue_and_drain, change, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            pass  # unmounting: nothing left to invalidate

    async def _queue_and_drain(self, change: Change) -> None:
        self._changes.append(change)
        await self._drain()

    async def _drain(self) -> None:
        """Invalidate what every queued change can affect.  The lock makes a
        drain wait for one already under way (which may hold its change)."""
        async with self._drain_lock:
            changes, self._changes = self._changes, []
            for c in dict.fromkeys(changes):
                await self._invalidate_change(c)

    async def _invalidate_change(self, c: Change) -> None:
        """Exactly what a change can affect, found through the inode table's
        indexes (never a scan of every inode)."""
        inodes = self.inodes
        if c.deleted:
            await self._forget_deleted(c)
            return
        if c.node is None:  # a new repo: the top directory
            await self._invalidate(inodes.of_instance("", ""), lambda x: x is ROOT)
            return
        if c.instance is not None:  # data of one instance in one node
            await self._invalidate(inodes.of_instance(c.node, c.instance), lambda x: True)
            return
        # node-level: the node's directory and control files, and the repo's links,
        # node directories and control files; a commit: everything under the node
        try:
            alias = self.tree.core.repo(c.repo).alias
        except DvidfsError:
            return
        own = inodes.of_node(c.node) if c.committed else inodes.of_instance(c.node, "")
        candidates = [*own, *inodes.of_instance("", ""), *inodes.node_level]
        await self._invalidate(candidates, lambda x: x.uuid == c.node or x.repo == alias)

    async def _forget_deleted(self, c: Change) -> None:
        """A deleted instance (every node of its repo) or repo: its inodes are
        invalidated and dropped from the table, with their names, so the kernel
        asks again and gets ENOENT, and a new instance of the same name gets new
        inodes (never an entry holding the deleted instance's object); the node
        directories, repo directory and root are invalidated (their listings)."""
        inodes = self.inodes
        if c.instance is not None:
            gone = [ino for u in c.nodes for ino in inodes.of_instance(u, c.instance)]
            stays = [ino for u in c.nodes for ino in inodes.of_instance(u, "")]
        else:
            gone = [ino for u in c.nodes for ino in inodes.of_node(u)]
            gone += [ino for ino in inodes.of_instance("", "")
                     if (e := inodes.entry(ino)) is not None and e is not ROOT and e.repo == c.alias]
            stays = [inodes.root_ino]
        names = [inodes.parent_of[ino] for ino in gone if ino in inodes.parent_of]
        await trio.to_thread.run_sync(_invalidate_inodes, [*gone, *stays])
        for parent, name in names:
            self.names.submit(parent, name)
        for ino in gone:
            inodes.forget(ino, 1 << 62, lambda _: False)
        # renderings are cached by path and write generation, and a new instance
        # of the same name counts its generations from 0 again: start afresh
        self.tree.cache = LRUCache(self.tree.cache.budget)

    def _remember(self, parent_inode: int, name: bytes, e: Entry) -> int:
        return self.inodes.remember(parent_inode, name, e)

    def _pinned(self, ino: int) -> bool:
        """Inodes that must outlive the kernel's references: open files, temp files."""
        return ino in self.scratch_ino or any(h.ino == ino for h in self.handles.values())

    # ------------------------------------------------------------ lookups
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._entry(parent_inode)
        sname = os.fsdecode(name)
        if parent.accepts_temp_files:
            s = self.scratch.get((parent, sname))
            if s is not None:
                self.inodes.ref(s.ino)
                return self._scratch_attrs(s)
        e = self._inline(self.tree.lookup, parent, sname)
        ino = self._remember(parent_inode, name, e)
        attrs = await self._getattr_entry(e, ino)
        self.inodes.ref(ino)
        return attrs

    async def getattr(self, inode, ctx=None):
        if inode in self.scratch_ino:
            return self._scratch_attrs(self.scratch[self.scratch_ino[inode]])
        held = self._held(inode)
        if held is not None and held.scratch is not None:  # a temp file unlinked or replaced while open
            return self._scratch_attrs(held.scratch)
        return await self._getattr_entry(self._entry(inode), inode)

    async def readlink(self, inode, ctx):
        e = self._entry(inode)
        target = self._inline(self.tree.readlink, e)
        return os.fsencode(target)

    async def opendir(self, inode, ctx):
        e = self._entry(inode)
        listing = await self._run(self.tree.list, e)
        temps = []
        if e.accepts_temp_files:  # temp files (rsync, editors) after the slices
            temps = sorted((n, s.ino) for (p, n), s in self.scratch.items() if p == e)
        fh = self._fh()
        self.dir_handles[fh] = DirHandle(inode, listing, temps)
        return fh

    async def readdir(self, fh, start_id, token):
        for name, ea, next_id in self.dir_entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, ea, next_id):
                return
            self.inodes.ref(ea.st_ino)  # readdirplus: the kernel now holds the entry

    def dir_entries(self, fh: int, start_id: int = 0):
        """(name, attributes, next offset) of an open directory from `start_id` on.
        Entries are made (and get inodes) as they are read: a listing costs what
        is read of it, whatever the size of the directory."""
        d = self.dir_handles[fh]
        n = len(d.listing)
        for i in range(start_id, n + len(d.temps)):
            if i < n:
                name, child, a = d.listing[i]
                bname = os.fsencode(name)
                ino = self._remember(d.ino, bname, child)
                if child.is_last_error:  # its content lives here, not in the tree: never cached
                    a = Attr(a.kind, len(self._last_error_bytes(child.uuid)), a.writable, a.mtime, False)
                    yield bname, self._attrs(ino, a, volatile=True), i + 1
                else:
                    yield bname, self._attrs(ino, a, volatile=child.volatile_in_listing), i + 1
            else:
                name, ino = d.temps[i - n]
                sc = self.scratch.get(self.scratch_ino.get(ino, (None, None)))
                if sc is not None:
                    yield os.fsencode(name), self._scratch_attrs(sc), i + 1

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        st = os.statvfs(self.tree.core.local_dir or "/")
        s.f_bsize, s.f_frsize = BLKSIZE, st.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        s.f_files, s.f_ffree, s.f_favail = len(self.inodes) + 1000, 1 << 30, 1 << 30
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------ files
    async def open(self, inode, flags, ctx):
        if inode in self.scratch_ino:
            s = self.scratch[self.scratch_ino[inode]]
            if flags & os.O_TRUNC:
                s.data.clear()
            fh = self._fh()
            self.handles[fh] = Handle(SCRATCH, inode, writing=True, scratch=s)
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        e = self._entry(inode)
        want_write = (flags & os.O_ACCMODE) != os.O_RDONLY
        fh = self._fh()
        locked = e.locked
        if e.write_mode == NOW:
            if want_write and e.read_only:
                raise pyfuse3.FUSEError(errno.EACCES)
            data = self._last_error_bytes(e.uuid) if e.is_last_error else \
                await self._run(self.tree.read, e)
            self.handles[fh] = Handle(e, inode, data, writing=want_write)
            # control files change under the reader: always come to us
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if want_write:
            if e.write_mode != ON_CLOSE:
                raise pyfuse3.FUSEError(errno.EROFS if locked else errno.EACCES)
            if locked:
                raise self._fail(e.uuid, f"write {e.data}/{e.plane or e.coord}",
                                 ReadOnlyError(f"node {e.uuid} is committed (read-only)"))
            limit = await self._run(self.tree.upload_limit, e)
            initial = b"" if flags & os.O_TRUNC or not e.starts_with_content else await self._content(e)
            self.handles[fh] = Handle(e, inode, bytearray(initial), writing=True, limit=limit,
                                      dirty=bool(flags & os.O_TRUNC) and e.stores_bytes)
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if e.streamed and e not in self.pending_slices:
            # Keys: read in pieces (a 64 MiB value is never held whole); a committed
            # node's bytes go to the page cache, an open node's come from the
            # snapshot the stream took at open.
            stream = await self._run(self.tree.open_stream, e)
            self.handles[fh] = Handle(e, inode, None, stream=stream)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True) if locked else \
                pyfuse3.FileInfo(fh=fh, direct_io=True)
        if locked and e.rendered:
            # A committed node never changes, so the kernel's page cache (keep_cache)
            # is the cache: a re-open whose pages are cached sends no read and costs
            # no render.  The first read renders; the bytes are not kept in the
            # render cache either, which spared ~0.45 ms of page faults per cold
            # 1024² slice (fresh memory for a cache that had not filled yet).
            self.handles[fh] = Handle(e, inode, None, loading=trio.Lock())
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        data = await self._content(e)
        self.handles[fh] = Handle(e, inode, data)
        if locked:
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        # Open node: a concurrent writer's O_TRUNC shrinks the kernel's idea of the
        # size; direct_io makes reads return this handle's whole, consistent bytes.
        return pyfuse3.FileInfo(fh=fh, direct_io=True)

    async def _content(self, e: Entry) -> bytes:
        if e in self.pending_slices:
            return b""
        return await self._run(self.tree.read, e, limiter=self.render_limiter)

    async def read(self, fh, off, size):
        h = self.handles[fh]
        if h.scratch is not None:
            return bytes(h.scratch.data[off:off + size])
        if h.stream is not None:
            if h.stream.in_memory:
                return h.stream.read(off, size)
            return await self._run(h.stream.read, off, size)
        if h.data is None:
            async with h.loading:  # concurrent reads of one handle render once
                if h.data is None:
                    if h.failed is not None and time.monotonic() - h.failed[0] < FAILED_RENDER_HOLD:
                        raise h.failed[1]  # the kernel's retry of a failed read: the same answer
                    try:
                        h.data = await self._run(self.tree.read, h.entry, False, limiter=self.render_limiter)
                    except Exception as exc:
                        h.failed = (time.monotonic(), exc)
                        raise
        return bytes(h.data[off:off + size])

    async def write(self, fh, off, buf):
        h = self.handles[fh]
        if h.scratch is not None:
            s = h.scratch
            self._check_size(h.entry, s.limit, off + len(buf), s.ino)
            _put(s.data, off, buf)
            s.mtime = time.time()
            return len(buf)
        if h.entry.write_mode == NOW:
            # A command acts once it is complete: at each newline (so `echo x > commit`
            # gets the errno from its write), or at close for what is left and for
            # multi-line texts (note, log).
            h.pending += buf
            if len(h.pending) > MAX_COMMAND:
                h.pending.clear()
                raise self._fail(h.entry.uuid, f"{CTRL_DIR}/{h.entry.name}",
                                 TooLargeError(f"a command is at most {MAX_COMMAND} bytes"))
            if not h.entry.multiline:
                while b"\n" in h.pending:
                    line, _, rest = bytes(h.pending).partition(b"\n")
                    h.pending = bytearray(rest)
                    await self._command(h.entry, line)
            return len(buf)
        if not h.writing:
            raise pyfuse3.FUSEError(errno.EBADF)
        self._check_size(h.entry, h.limit, off + len(buf), h.ino)
        _put(h.data, off, buf)
        h.dirty = True
        return len(buf)

    def _check_size(self, e: Entry, limit: int, size: int, ino: int) -> None:
        """Refuse (EFBIG) before buffering more than the target can hold."""
        if size > limit:
            raise self._fail(e.uuid, f"write {e.describe() or ino}",
                             TooLargeError(f"{size} bytes is more than this file can take ({limit})"))

    async def _command(self, e: Entry, raw: bytes) -> None:
        """Run one complete command written to a command file."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(e.uuid, f"{CTRL_DIR}/{e.name}",
                             InvalidInputError("control files take UTF-8 text")) from None
        try:
            result = await trio.to_thread.run_sync(self.tree.control, e, text)
        except DvidfsError as exc:
            raise self._fail(e.uuid, f"{e.data or CTRL_DIR}/{e.name} {text.strip()!r}", exc) from exc
        log.info("%s/%s: %s", e.uuid, e.name, result)
        await self._drain()

    async def flush(self, fh):
        """Run what is left of a command; validate and store a written slice.
        Errors reach the writer's close()."""
        h = self.handles.get(fh)
        if h is not None and h.entry.write_mode == NOW and h.pending:
            raw, h.pending = bytes(h.pending), bytearray()
            await self._command(h.entry, raw)
            return
        if h is None or h.entry.write_mode != ON_CLOSE or not h.dirty:
            return
        e = h.entry
        h.dirty = False
        try:
            result = await trio.to_thread.run_sync(self.tree.upload, e, bytes(h.data))
        except DvidfsError as exc:
            # a created slice stays pending (its writer may still fix it) until release
            raise self._fail(e.uuid, f"write {e.describe()}", exc) from exc
        self.pending_slices.discard(e)
        log.info("%s/%s: %s", e.uuid, e.data, result)
        await self._drain()

    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is not None and h.stream is not None:
            h.stream.close()
        if h is not None and h.entry in self.pending_slices and self._held(h.ino) is None:
            # created and never stored: the name must not outlive its last handle
            self.pending_slices.discard(h.entry)
            if h.ino in self.inodes.parent_of:
                self.names.submit(*self.inodes.parent_of[h.ino])

    async def fsync(self, fh, datasync):
        await self.flush(fh)

    async def setattr(self, inode, attr, fields, fh, ctx):
        """Size changes apply to open write handles and scratch files; mode and
        times are accepted and ignored (rsync -a sets them) except on scratch files."""
        if inode in self.scratch_ino:
            s = self.scratch[self.scratch_ino[inode]]
            if fields.update_size:
                self._check_size(SCRATCH, s.limit, attr.st_size, inode)
                del s.data[attr.st_size:]
                s.data.extend(b"\0" * (attr.st_size - len(s.data)))
            if fields.update_mtime:
                s.mtime = attr.st_mtime_ns / 1e9
            return self._scratch_attrs(s)
        e = self._entry(inode)
        if e.locked and not e.settable_when_locked:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:
            held = False
            for h in self.handles.values():
                if h.ino == inode and h.writing and isinstance(h.data, bytearray):
                    self._check_size(e, h.limit, attr.st_size, inode)
                    del h.data[attr.st_size:]
                    h.data.extend(b"\0" * (attr.st_size - len(h.data)))
                    h.dirty = True
                    held = True
            if not held and e.stores_bytes and e not in self.pending_slices:  # `truncate -s N key`
                try:
                    await self._run(self.tree.truncate, e, attr.st_size)
                except DvidfsError as exc:
                    raise self._fail(e.uuid, f"truncate {e.describe()}", exc) from exc
                await self._drain()
        return await self.getattr(inode, ctx)

    # ------------------------------------------------------------ namespace changes
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._entry(parent_inode)
        sname = os.fsdecode(name)
        if parent.accepts_files:  # keys: any valid name is a file, stored at close (even empty)
            try:
                e = self._inline(self.tree.new_file, parent, sname)
            except DvidfsError as exc:
                raise self._fail(parent.uuid, f"create {parent.describe()}/{sname}", exc) from exc
            limit = await self._run(self.tree.upload_limit, e)
            fh = self._fh()
            ino = self._remember(parent_inode, name, e)
            self.pending_slices.add(e)
            self.handles[fh] = Handle(e, ino, bytearray(), writing=True, dirty=e.stores_bytes, limit=limit)
            self.inodes.ref(ino)
            return pyfuse3.FileInfo(fh=fh, direct_io=True), self._pending_attrs(ino)
        if not parent.accepts_temp_files:
            if isinstance(parent, ControlDir):
                raise pyfuse3.FUSEError(errno.EPERM)
            raise pyfuse3.FUSEError(errno.EROFS if parent.locked else errno.EPERM)
        if parent.locked:
            raise self._fail(parent.uuid, f"create {sname}", ReadOnlyError(f"node {parent.uuid} is committed"))
        coord = parse_slice_name(sname, aliases=True)
        if coord is None and not is_temp_name(sname):
            # kept nowhere but in memory, it would be lost at unmount: refuse now
            raise self._fail(parent.uuid, f"create {parent.data}/{parent.plane}/{sname}", InvalidInputError(
                f"{sname!r} is not a slice name: name slices by coordinate (00012.png, or ImageJ's "
                f"<name>0012.png); hidden names are temporary files until renamed"))
        limit = await self._run(self.tree.upload_limit, parent)
        fh = self._fh()
        if coord is not None:
            e = parent.slice_entry(coord)
            ino = self._remember(parent_inode, name, e)
            self.pending_slices.add(e)
            self.handles[fh] = Handle(e, ino, bytearray(), writing=True, limit=limit)
            self.inodes.ref(ino)
            return pyfuse3.FileInfo(fh=fh, direct_io=True), self._pending_attrs(ino)
        s = Scratch(ino=self.inodes.ino(ScratchEntry(uuid=parent.uuid, data=parent.data, plane=parent.plane,
                                                     name=f"{len(self.scratch_ino)}:{fh}:{sname}")),
                    limit=limit, mode=mode & 0o777)
        self.inodes.ref(s.ino)
        self.scratch[(parent, sname)] = s
        self.scratch_ino[s.ino] = (parent, sname)
        self.handles[fh] = Handle(SCRATCH, s.ino, writing=True, scratch=s)
        return pyfuse3.FileInfo(fh=fh, direct_io=True), self._scratch_attrs(s)

    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        pold, pnew = self._entry(parent_old), self._entry(parent_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        if pold.accepts_files:
            await self._rename_file(pold, pnew, parent_new, old, new, name_new, flags)
            return
        s = self.scratch.get((pold, old)) if pold.accepts_temp_files else None
        if s is None or pnew != pold:
            raise pyfuse3.FUSEError(errno.EROFS if pold.locked else errno.EPERM)
        coord = parse_slice_name(new, aliases=True)
        if coord is None and not is_temp_name(new):
            raise self._fail(pold.uuid, f"rename {old} -> {new}",
                             InvalidInputError(f"{new!r} is not a slice name"))
        if coord is None:  # temp -> temp: just a new name
            self.scratch.pop((pold, old))
            replaced = self.scratch.get((pnew, new))
            if replaced is not None:  # its open fds keep its data (Handle.scratch); the name is s's
                self.scratch_ino.pop(replaced.ino, None)
            self.scratch[(pnew, new)] = s
            self.scratch_ino[s.ino] = (pnew, new)
            return
        e = pold.slice_entry(coord)
        try:
            await trio.to_thread.run_sync(self.tree.upload, e, bytes(s.data))
        except DvidfsError as exc:
            raise self._fail(pold.uuid, f"rename {old} -> {new}", exc) from exc
        self.scratch.pop((pold, old), None)
        self.scratch_ino.pop(s.ino, None)
        await self._drain()

    async def _rename_file(self, pold: Entry, pnew: Entry, parent_new: int, old: str, new: str,
                           name_new: bytes, flags: int) -> None:
        """`mv` of a key: one atomic change; the inode moves with the name."""
        if pnew != pold:
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv then copies and removes
        if flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            e = await self._run(self.tree.rename_file, pold, old, new, not flags & RENAME_NOREPLACE)
        except DvidfsError as exc:
            raise self._fail(pold.uuid, f"rename {pold.describe()}/{old} -> {new}", exc) from exc
        self.inodes.move(pold.child(type(e), name=old), e, parent_new, name_new)
        await self._drain()

    async def unlink(self, parent_inode, name, ctx):
        parent = self._entry(parent_inode)
        sname = os.fsdecode(name)
        if parent.accepts_files:
            try:
                await self._run(self.tree.remove_file, parent, sname)
            except DvidfsError as exc:
                raise self._fail(parent.uuid, f"rm {parent.describe()}/{sname}", exc) from exc
            await self._drain()
            return
        s = self.scratch.pop((parent, sname), None) if parent.accepts_temp_files else None
        if s is not None:
            self.scratch_ino.pop(s.ino, None)
            return
        if isinstance(parent, PlaneDir):
            await self._remove_slice(parent_inode, parent, sname)
            return
        raise pyfuse3.FUSEError(errno.EROFS if parent.locked else errno.EPERM)

    async def _remove_slice(self, parent_inode: int, parent: PlaneDir, sname: str) -> None:
        """`rm <plane>/<slice>`: the slice becomes background in this node.  Refused
        while the plane directory is open: `rm -r` and `find -delete` hold it open
        (they unlink relative to its descriptor) and would zero the whole volume,
        while `rm xy/00012.png`, or a glob, names the slice without opening it."""
        what = f"rm {parent.describe()}/{parent.plane}/{sname}"
        if not parent.locked and any(d.ino == parent_inode for d in self.dir_handles.values()):
            raise self._fail(parent.uuid, what, PermissionRefused(
                f"{parent.data}/{parent.plane} is open (rm -r or find -delete walks it): slices are "
                f"removed one by one by name (rm {parent.plane}/00012.png); a whole instance is deleted "
                f"with `dvidfs data delete REPO {parent.data} --imsure` (every node of the repo)"))
        try:
            await self._run(self.tree.remove_file, parent, sname)
        except DvidfsError as exc:
            raise self._fail(parent.uuid, what, exc) from exc
        await self._drain()

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._entry(parent_inode)
        if parent.locked:
            raise pyfuse3.FUSEError(errno.EROFS)
        sname = os.fsdecode(name)
        if isinstance(parent, NodeDir):
            try:
                is_instance = sname in self.tree.core.instances(parent.node)
            except DvidfsError:
                is_instance = False
            if is_instance:
                raise self._fail(parent.uuid, f"rmdir {sname}", PermissionRefused(
                    f"data instances are not removed with rmdir or rm -r (a stray rm -rf must not wipe "
                    f"data); deleting {sname!r} deletes it in every node of repo {parent.repo!r}: "
                    f"`dvidfs data delete {parent.repo} {sname} --imsure`, or "
                    f"DELETE /api/repo/<uuid>/{sname}?imsure=true"))
        elif parent.uuid and parent.data:
            raise self._fail(parent.uuid, f"rmdir {parent.describe()}/{sname}", PermissionRefused(
                f"the directories of data instance {parent.data!r} cannot be removed; rm a slice by name "
                f"to clear it, or delete the instance with `dvidfs data delete {parent.repo} {parent.data} "
                f"--imsure`"))
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._entry(parent_inode)
        sname = os.fsdecode(name)
        try:
            e = await trio.to_thread.run_sync(self.tree.mkdir, parent, sname)
        except DvidfsError as exc:
            raise self._fail(parent.uuid, f"mkdir {sname}", exc) from exc
        ino = self._remember(parent_inode, name, e)
        await self._drain()
        attrs = await self._getattr_entry(e, ino)
        self.inodes.ref(ino)
        return attrs

    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.inodes.forget(ino, n, self._pinned)


def _never_escape(handler):
    """Whatever goes wrong in a handler is an errno for that one request: an
    exception escaping pyfuse3's main loop would end the mount for everyone
    (an id of 2**64, a Unicode digit, a full disk).  Our own errors carry their
    errno; OSErrors theirs; anything else is a bug, logged and answered EIO."""
    @wraps(handler)
    async def guarded(self, *args, **kwargs):
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DvidfsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from exc
        except OSError as exc:
            log.warning("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from exc
        except Exception as exc:
            log.exception("%s failed; answered EIO (a bug: please report it)", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc
    return guarded


for _name in ("lookup", "getattr", "readlink", "opendir", "readdir", "releasedir", "statfs", "open",
              "read", "write", "flush", "release", "fsync", "setattr", "create", "rename", "unlink",
              "rmdir", "mkdir", "forget"):
    setattr(DvidOperations, _name, _never_escape(getattr(DvidOperations, _name)))


def _invalidate_inodes(inos: list[int]) -> None:
    for ino in inos:
        try:
            pyfuse3.invalidate_inode(ino, False)
        except OSError:
            pass  # the kernel never looked this inode up: nothing cached


def _put(buf: bytearray, off: int, data) -> None:
    end = off + len(data)
    if len(buf) < off:
        buf.extend(b"\0" * (off - len(buf)))
    buf[off:end] = data
