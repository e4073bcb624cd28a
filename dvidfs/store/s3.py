"""The S3 object-store engine driver: the only module that imports boto3/botocore.

A store is a bucket and a prefix on any S3 server (SeaweedFS in the tests;
AWS, GCS interoperability, Ceph RGW, MinIO alike).  The design and the
atomicity argument are in docs/s3.md; in short:

    <prefix>MANIFEST                    checkpoint pointer: {seq K, run parts, garbage}, CAS by If-Match
    <prefix>LOCK                        the writer's lease (who, since when)
    <prefix>log/<seq:016x>              one committed batch, created with If-None-Match: *  <- commit point
    <prefix>p/<seq:016x>-<nonce>-<i>    a pack: the batch's values >= inline_max bytes (blocks), in key order
    <prefix>run/<K:016x>-<nonce>-<i>    a checkpoint: the whole state at log position K, in parts
    <prefix>gc/<K:016x>-<nonce>         packs left without a live value up to K (deleted after a grace period)

* **Commit = one conditional create.**  `apply` writes the batch's large
  values into pack objects under batch-scoped names nobody references yet
  (one pack per 64 MiB, in key order), then creates
  `log/<head+1>` (sorted keys, small values inline, deletes, references to
  the large values) with `If-None-Match: *`.  The object appears whole or not
  at all, so every reader sees the batch entirely or not at all; a crash
  before it leaves only unreferenced objects (swept by the next writer); a
  412 means another writer took that position (this engine then refuses to
  write).  Log positions are consecutive, so the log is a total order.
* **State = checkpoint + log tail, held in memory** as the in-memory
  engine's copy-on-write state (`memory._State`): keys and small values in
  RAM, large values by reference.  Ordered scans, cursors and snapshots are
  therefore memory operations (a snapshot is O(1)); only large values cost a
  ranged GET of their pack, fetched by a bounded thread pool ahead of the
  reader, neighbours in one request, and kept in an LRU (every object is
  immutable: no revalidation ever) and, given `local_cache` (a directory),
  in files on this machine for later processes too (store/diskcache.py).  Fetches are single-flight: a value
  already on its way (another reader's GET, or a run some reader prefetches)
  is waited for, not asked for again; a failure reaches every waiter, and the
  next read asks again.  Why packs and not one object per value
  (DVID's naming): a request costs ~3 ms of client CPU, so a process reads
  at most ~300 objects/s however many threads wait, while one ranged GET
  moves 300+ MiB/s (docs/s3.md has the numbers).
* **One writer** per bucket/prefix, by a lease object created with
  `If-None-Match: *` (a second writer gets `StoreBusyError` naming the
  holder); on open the writer also creates an empty "open" log entry, which
  fences a writer that lost its lease out of the log.  Readers
  (`readonly=True`) take no lease and follow the log (`refresh`).
* **Checkpoints** (a background thread of the writer) fold the log into a
  new run and advance MANIFEST by `If-Match`; replaced objects (old runs, old
  log entries, packs with no live value left) are deleted after `grace`
  seconds, and never while a snapshot of this process may read them.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Iterator

import boto3
import lz4.frame
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dvidfs.errors import DvidfsError, NotFoundError, ReadOnlyError, StoreBusyError
from dvidfs.store.cache import LRUCache
from dvidfs.store.diskcache import DiskCache
from dvidfs.store.engine import Batch, Reader
from dvidfs.store.memory import CHUNK_SIZE, _cut
from dvidfs.store.memory import _Cursor as _MemCursor
from dvidfs.store.memory import _State, _as_bytes

log = logging.getLogger("dvidfs.store.s3")

FORMAT = 1
INLINE_MAX = 4096            # values of at least this many bytes go into packs (smaller: inline in the log)
CACHE_BYTES = 256 << 20      # fetched large values kept in memory
LOCAL_CACHE_BYTES = 4 << 30  # ... and on the local disk, when a directory is given (`local_cache`)
WORKERS = 16                 # parallel GETs/PUTs
PREFETCH_BYTES = 32 << 20    # values fetched ahead of one reader
PACK_BYTES = 64 << 20        # a batch's large values go into packs of about this size
RUN_GAP = 256 << 10          # values of one pack at most this far apart are fetched in one request ...
RUN_BYTES = 8 << 20          # ... of at most this many bytes
PART_BYTES = 32 << 20        # a checkpoint is cut into objects of about this size
CHECKPOINT_ENTRIES = 256     # checkpoint after this many log entries ...
CHECKPOINT_MIN_ENTRIES = 16  # ... or after this many once the log outweighs half the checkpoint
GRACE = 300.0                # seconds before a replaced object is deleted (readers in other processes)
LEASE_TTL = 60.0             # a writer lease not renewed for this long (server clock) may be taken over
REFRESH = 1.0                # a read-only engine looks for new commits at most this often (seconds)
# Every request is bounded: a dead server (connection refused) fails in ~1-3 s, a
# stalled one (accepts, never answers) after ATTEMPTS x READ_TIMEOUT + backoff
# (~3 x 10 s): an EIO naming the object, never a hang.  READ_TIMEOUT bounds each
# wait for the next bytes of a reply, not a whole transfer, so big PUTs are not
# cut.  DVIDFS_S3_TIMEOUT / DVIDFS_S3_ATTEMPTS override both (seconds; total
# attempts), read when a client is made (tests/test_s3_failures.py uses 2 s x 2).
CONNECT_TIMEOUT = 5.0        # seconds to open a connection (at most READ_TIMEOUT)
READ_TIMEOUT = 10.0          # seconds without a byte of the reply before an attempt fails
ATTEMPTS = 3                 # total attempts per request (botocore "total_max_attempts")

_MAGIC = b"DVS3"
_HEAD = struct.Struct(">4sI")          # magic, header length; then JSON header, then lz4(entries)
_ENTRY = struct.Struct(">IBI")         # key length, kind, payload length; then key, payload
_BLOBREF = struct.Struct(">QIQI8s")    # seq, pack part, offset, size, nonce: bytes of p/<seq>-<nonce>-<part>
_VALUE, _DELETE, _BLOB = 0, 1, 2
_SEQ_END = "~"                         # sorts after every "<seq:016x>-..." of the same seq


class _Blob:
    """A reference to a value stored in a pack: `size` bytes at `offset` of
    pack object `part` of the batch (`seq`, `nonce`) that wrote it."""

    __slots__ = ("seq", "nonce", "part", "offset", "size")

    def __init__(self, seq: int, nonce: str, part: int, offset: int, size: int) -> None:
        self.seq, self.nonce, self.part, self.offset, self.size = seq, nonce, part, offset, size

    @property
    def pack(self) -> str:
        return f"p/{self.seq:016x}-{self.nonce}-{self.part:04x}"

    @property
    def name(self) -> str:
        """The value's identity (its cache key)."""
        return f"p/{self.seq:016x}-{self.nonce}-{self.part:04x}@{self.offset}"


class _View:
    """One published state: the keys as of log position `seq`."""

    __slots__ = ("state", "seq")

    def __init__(self, state: _State, seq: int) -> None:
        self.state, self.seq = state, seq


class _Missing(Exception):
    """An object that should exist does not (garbage-collected under an old view)."""


# ---------------------------------------------------------------------------- encoding
def _encode(header: dict, items: Iterable[tuple[bytes, object]]) -> bytes:
    """A table: header and sorted (key, bytes | None (delete) | _Blob) items."""
    out = bytearray()
    pack, ref = _ENTRY.pack, _BLOBREF.pack
    for k, v in items:
        if v is None:
            out += pack(len(k), _DELETE, 0)
            out += k
        elif type(v) is bytes:
            out += pack(len(k), _VALUE, len(v))
            out += k
            out += v
        else:
            out += pack(len(k), _BLOB, _BLOBREF.size)
            out += k
            out += ref(v.seq, v.part, v.offset, v.size, v.nonce.encode())
    h = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(_MAGIC, len(h)) + h + lz4.frame.compress(bytes(out))


def _decode(data: bytes, what: str) -> tuple[dict, list[tuple[bytes, object]]]:
    if len(data) < _HEAD.size or data[:4] != _MAGIC:
        raise DvidfsError(f"{what} is not a dvidfs S3 table (foreign or damaged object)")
    _, hlen = _HEAD.unpack_from(data)
    header = json.loads(data[_HEAD.size:_HEAD.size + hlen])
    if header.get("format") != FORMAT:
        raise DvidfsError(f"{what} has format {header.get('format')}; this dvidfs reads format {FORMAT}")
    body = lz4.frame.decompress(data[_HEAD.size + hlen:])
    items: list = []
    unpack, ref, esize = _ENTRY.unpack_from, _BLOBREF.unpack_from, _ENTRY.size
    pos, n = 0, len(body)
    nonces: dict = {}
    while pos < n:
        klen, kind, plen = unpack(body, pos)
        pos += esize
        k = body[pos:pos + klen]
        pos += klen
        if kind == _VALUE:
            items.append((k, body[pos:pos + plen]))
        elif kind == _DELETE:
            items.append((k, None))
        else:
            seq, part, offset, size, nonce = ref(body, pos)
            nonce = nonces.setdefault(nonce, nonce.decode())   # share one str per batch
            items.append((k, _Blob(seq, nonce, part, offset, size)))
        pos += plen
    if pos != n:
        raise DvidfsError(f"{what} is truncated")
    return header, items


def _seq_name(seq: int) -> str:
    return f"{seq:016x}"


# ---------------------------------------------------------------------------- processes (lease)
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str | None:
    """The start time of a process (to tell a reused PID from the lease holder)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return "nobucket"
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return "missing"
        if code in ("PreconditionFailed", "412") or status == 412:
            return "precondition"
        return code or str(status)
    return type(exc).__name__


# ---------------------------------------------------------------------------- reads
class _Fetcher:
    """Fetches large values for one reader (one thread): the value asked for,
    and up to `prefetch_bytes` of values of a *plan* (the ranges or keys the
    reader said it will read, in that order) ahead of it, in the engine's
    thread pool.  Planned values that lie close together in one pack (as a
    slab import writes a layer of blocks) come in one ranged GET."""

    __slots__ = ("e", "ahead", "ahead_bytes", "plan_iter", "pending")

    def __init__(self, engine: "S3Engine") -> None:
        self.e = engine
        self.ahead: OrderedDict[str, tuple[Future, int]] = OrderedDict()  # name -> (run future, size)
        self.ahead_bytes = 0
        self.plan_iter: Iterator | None = None
        self.pending: _Blob | None = None

    def plan_ranges(self, state: _State, ranges) -> None:
        self._plan(_blobs_in_ranges(state, ranges))

    def plan_keys(self, state: _State, keys_: Iterable[bytes]) -> None:
        self._plan(v for k in keys_ for v in (state.get(k),) if isinstance(v, _Blob))

    def _plan(self, blobs: Iterator) -> None:
        self.ahead.clear()
        self.ahead_bytes = 0
        self.plan_iter, self.pending = blobs, None

    def value(self, key: bytes, blob: _Blob) -> bytes:
        name = blob.name
        try:
            if name not in self.ahead and self.plan_iter is not None:
                self._top_up()       # the first value asked for: start the plan (it is in its first run)
            if name in self.ahead:
                while True:          # planned values before this one were skipped by the reader
                    n, (fut, size) = self.ahead.popitem(last=False)
                    self.ahead_bytes -= size
                    if n == name:
                        break
                self._top_up()
                return fut.result()[name]
            data = self.e._fetch(blob)
        except _Missing:
            raise self.e._gone(key) from None
        self._top_up()
        return data

    def _top_up(self) -> None:
        e = self.e
        while self.plan_iter is not None and self.ahead_bytes < e.prefetch_bytes:
            run = self._next_run()
            if not run:
                self.plan_iter = None
                return
            futs = e._prefetch(run)      # values on their way already (other readers): their futures
            for b in run:
                fut = futs.get(b.name)
                if fut is not None:      # else cached meanwhile: `value` finds it there
                    self.ahead[b.name] = (fut, b.size)
                    self.ahead_bytes += b.size

    def _next_run(self) -> list[_Blob]:
        """The next planned values to fetch: neighbours in one pack, not cached
        and not on their way already."""
        e, it = self.e, self.plan_iter
        run: list[_Blob] = []
        while True:
            b = self.pending if self.pending is not None else next(it, None)
            self.pending = None
            if b is None:
                return run
            if b.name in self.ahead or e._cache.get(b.name) is not None:
                continue
            if not run:
                run.append(b)
                continue
            first, last = run[0], run[-1]
            if (b.seq == first.seq and b.part == first.part and b.nonce == first.nonce
                    and 0 <= b.offset - (last.offset + last.size) <= RUN_GAP
                    and b.offset + b.size - first.offset <= RUN_BYTES):
                run.append(b)
            else:
                self.pending = b
                return run


def _blobs_in_ranges(state: _State, ranges) -> Iterator[_Blob]:
    c = _MemCursor(state)
    for lo, hi in ranges:
        c.seek(lo)
        while c.valid():
            if c.key() >= hi:
                break
            v = c.value()
            if type(v) is not bytes:
                yield v
            c.next()


class _Cursor(_MemCursor):
    """The in-memory cursor over one view; `value()` fetches large values.
    `plan(ranges)` says which ranges will be read (in order) so their values
    are fetched ahead, in parallel."""

    __slots__ = ("_fetcher",)

    def __init__(self, state: _State, fetcher: _Fetcher) -> None:
        super().__init__(state)
        self._fetcher = fetcher

    def value(self) -> bytes:
        v = _MemCursor.value(self)
        if type(v) is bytes:
            return v
        return self._fetcher.value(self.key(), v)

    def plan(self, ranges) -> None:
        self._fetcher.plan_ranges(self._state, ranges)


class _ViewReader(Reader):
    """Reads over a view (`_current()`): gets, planned scans, cursors."""

    def __init__(self, engine: "S3Engine") -> None:
        super().__init__(None)
        self._e = engine

    def _current(self) -> _View:
        raise NotImplementedError

    def get(self, key: bytes) -> bytes | None:
        v = self._current().state.get(key)
        if v is None or type(v) is bytes:
            return v
        return self._e._fetch_or_explain(key, v)

    @contextmanager
    def cursor(self) -> Iterator[_Cursor]:
        view = self._current()
        pin = self._e._pin(view.seq)
        try:
            yield _Cursor(view.state, _Fetcher(self._e))
        finally:
            self._e._unpin(pin)


class _Snapshot(_ViewReader):
    """A snapshot: one published view, pinned (its objects are not deleted
    while it is open).  `prefetch(keys)` announces point reads."""

    def __init__(self, engine: "S3Engine", view: _View) -> None:
        super().__init__(engine)
        self._view = view
        self._fetcher = _Fetcher(engine)

    def _current(self) -> _View:
        return self._view

    def get(self, key: bytes) -> bytes | None:
        v = self._view.state.get(key)
        if v is None or type(v) is bytes:
            return v
        return self._fetcher.value(key, v)

    def prefetch(self, keys_: Iterable[bytes]) -> None:
        """The keys the next `get`s will ask for, in order: fetched ahead."""
        self._fetcher.plan_keys(self._view.state, keys_)


# ---------------------------------------------------------------------------- the engine
class S3Engine(_ViewReader):
    """An ordered key/value store in `bucket` under `prefix` (see the module
    docstring and docs/s3.md).

    `create`: create the bucket and an empty store if missing (else a missing
    store is `NotFoundError`).  `readonly`: take no lease, refuse `apply`, and
    follow the writer's commits (`refresh()`, done by reads at most every
    `refresh_interval` seconds).  `client`: a boto3 S3 client to use instead of
    one built from `endpoint`, `region` and `credentials` (access key, secret) or
    else the usual AWS variables and profile.  The other numbers tune sizes
    and periods (the module constants document them).  `hook`, for crash
    tests: called with the name of each step of `apply` ("packs-half",
    "packs-written", "committed") and of a checkpoint ("checkpoint-written",
    "checkpoint-published")."""

    atomic_batches = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 region: str | None = None, credentials: tuple[str, str] | None = None,
                 create: bool = False, readonly: bool = False, client=None,
                 inline_max: int = INLINE_MAX, cache_bytes: int = CACHE_BYTES,
                 workers: int = WORKERS, prefetch_bytes: int = PREFETCH_BYTES,
                 pack_bytes: int = PACK_BYTES, part_bytes: int = PART_BYTES,
                 checkpoint_entries: int = CHECKPOINT_ENTRIES, grace: float = GRACE,
                 lease_ttl: float = LEASE_TTL, refresh_interval: float = REFRESH,
                 local_cache: str | os.PathLike | None = None, local_cache_bytes: int = LOCAL_CACHE_BYTES,
                 hook: Callable[[str], None] | None = None) -> None:
        super().__init__(self)
        if not bucket:
            raise ValueError("S3Engine needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.readonly = readonly
        self.inline_max, self.prefetch_bytes = inline_max, prefetch_bytes
        self.pack_bytes, self.part_bytes = pack_bytes, part_bytes
        self.checkpoint_entries, self.grace = checkpoint_entries, grace
        self.lease_ttl, self.refresh_interval = lease_ttl, refresh_interval
        self._hook = hook or (lambda point: None)
        self._s3 = client or make_client(endpoint, region, workers, credentials)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dvidfs-s3")
        self._cache = LRUCache(cache_bytes)
        # fetched values kept on this machine's disk too (immutable: valid forever), if asked for
        self._disk = DiskCache(local_cache, local_cache_bytes) if local_cache else None
        # single flight: value name -> the future of the ranged GET fetching it (result:
        # {name: bytes} of its run), from when it is asked for until it is cached or failed
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self._write_lock = threading.Lock()        # one apply (and one checkpoint switch) at a time
        self._refresh_lock = threading.Lock()
        self._manifest_lock = threading.RLock()     # checkpoints and collections advance MANIFEST in turn
        self._pins: Counter = Counter()             # seq -> open views of this process
        self._pin_lock = threading.Lock()
        self._closed = False
        self._failure: DvidfsError | None = None    # set when this writer must stop writing
        self._garbage: list[tuple[int, str]] = []   # (seq that emptied it, pack), not yet in a gc object
        self._live: Counter = Counter()             # writer: pack -> values of the current state in it
        self._log_bytes = 0                         # bytes of log entries after the checkpoint
        self._ckpt: Future | None = None
        self._ckpt_pool: ThreadPoolExecutor | None = None
        self._lease: dict | None = None
        self._lease_etag: str | None = None
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._cur = _View(_State([], CHUNK_SIZE), 0)
        self._manifest: dict = {}
        self._manifest_etag: str | None = None
        self._refreshed = time.monotonic()
        # keys the followed log changed since `take_changes` last looked (None:
        # unknown, a checkpoint was loaded instead); readers only
        self._changes: set[bytes] | None = set()
        self._cur_loaded = False
        try:
            self._open(create)
        except BaseException:
            self._shutdown(release=True)
            raise

    # ------------------------------------------------------------ opening
    def _open(self, create: bool) -> None:
        if create and not self.readonly:
            self._ensure_bucket()
        found = self._get_manifest()
        if found is None:
            if not create or self.readonly:
                raise NotFoundError(f"no dvidfs store at {self.url} (run `dvidfs init {self.url}` first)")
        if not self.readonly:
            self._acquire_lease()
            if found is None:
                body = json.dumps({"format": FORMAT, "seq": 0, "runs": [], "garbage": []}).encode()
                try:
                    self._call("create", "MANIFEST", self._s3.put_object, Bucket=self.bucket,
                               Key=self.prefix + "MANIFEST", Body=body, IfNoneMatch="*")
                except _Precondition:
                    pass                                  # created meanwhile: load it
        self._load()
        if not self.readonly:
            self._claim_manifest()
            head = self._cur.seq
            self._fence()
            self._sweep(head)
            self._ckpt_pool = ThreadPoolExecutor(1, thread_name_prefix="dvidfs-s3-checkpoint")
            self._lease_thread = threading.Thread(target=self._renew_lease, daemon=True,
                                                  name="dvidfs-s3-lease")
            self._lease_thread.start()
            self._ckpt_pool.submit(self._collect_quietly)   # what earlier sessions left to delete

    def _ensure_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("missing", "nobucket"):
                raise self._error("check bucket", "", exc) from None
        except BotoCoreError as exc:
            raise self._error("check bucket", "", exc) from None
        try:
            self._s3.create_bucket(Bucket=self.bucket)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("create bucket", "", exc) from None

    def _get_manifest(self) -> tuple[dict, str] | None:
        try:
            r = self._call("read", "MANIFEST", self._s3.get_object, Bucket=self.bucket,
                           Key=self.prefix + "MANIFEST")
        except _Gone:
            return None
        m = json.loads(self._read_body(r, "MANIFEST"))
        if m.get("format") != FORMAT:
            raise DvidfsError(f"{self.url}MANIFEST has format {m.get('format')}; "
                              f"this dvidfs reads format {FORMAT}")
        return m, r["ETag"]

    def _load(self) -> None:
        """The published state: the checkpoint MANIFEST names, then the log after it."""
        for attempt in range(20):
            found = self._get_manifest()
            if found is None:
                raise NotFoundError(f"no dvidfs store at {self.url} (its MANIFEST is gone)")
            manifest, etag = found
            try:
                parts = list(self._pool.map(self._get_table, manifest["runs"]))
            except _Missing:
                continue                                  # a newer checkpoint replaced it: start over
            items = [it for _, _, its in parts for it in its]
            view = _View(_State(_cut(items, CHUNK_SIZE), CHUNK_SIZE), manifest["seq"])
            self._live = Counter(v.pack for _, v in items if type(v) is not bytes) if not self.readonly else Counter()
            self._manifest, self._manifest_etag = manifest, etag
            self._log_bytes = 0
            self._garbage = []
            self._cur = view
            self._changes = None                  # a whole state loaded: what changed is not known
            if self._follow_log():
                self._refreshed = time.monotonic()
                if not self._cur_loaded:          # the open: nothing changed since
                    self._changes, self._cur_loaded = set(), True
                return
        raise DvidfsError(f"{self.url}: cannot load a consistent state (checkpoints keep replacing it)")

    def _follow_log(self) -> bool:
        """Apply the log entries after the current view.  False if they are no
        longer there (a checkpoint replaced them): reload."""
        view = self._cur
        names = self._list(self.prefix + "log/", self.prefix + "log/" + _seq_name(view.seq))
        seqs = [int(n.rsplit("/", 1)[1], 16) for n in names]
        want = view.seq + 1
        run = []
        for s in seqs:
            if s != want:
                break
            run.append(s)
            want += 1
        if not run and (seqs or time.monotonic() - self._refreshed > self.grace / 2):
            # The next entry is not there: not written yet, not listed yet, or folded
            # into a checkpoint and deleted (only possible grace seconds after that
            # checkpoint: a reader that looked more recently would have seen it).
            found = self._get_manifest()
            if found is not None and found[0]["seq"] > view.seq:
                return False
            return True
        tables: list = []
        try:
            for i in range(0, len(run), 256):
                tables += self._pool.map(self._get_table, [self._log_name(s) for s in run[i:i + 256]])
        except _Missing:
            return False
        state, seq = view.state, view.seq
        changed = self._changes
        for s, (size, _, items) in zip(run, tables):
            state = self._applied(state, dict(items), s)
            if changed is not None and self.readonly:
                changed.update(k for k, _ in items)
            seq = s
            self._log_bytes += size
        self._cur = _View(state, seq)
        return True

    def _get_table(self, name: str) -> tuple[int, dict, list]:
        """(size, header, items) of a log entry or checkpoint part."""
        r = self._call("read", name, self._s3.get_object, Bucket=self.bucket, Key=self.prefix + name,
                       missing_ok=False)
        data = self._read_body(r, name)
        return (len(data),) + _decode(data, self.url + name)

    def refresh(self) -> bool:
        """Catch up with commits made by the writer (read-only engines; a writer
        is always current).  True if the view changed."""
        if not self.readonly:
            return False
        with self._refresh_lock:
            before = self._cur.seq
            if not self._follow_log():
                self._load()
            self._refreshed = time.monotonic()
            return self._cur.seq != before

    def take_changes(self) -> set[bytes] | None:
        """The keys the writer's commits changed since the last call (a read-only
        engine follows them in `refresh`, or in reads): `None` when that is not
        known (the log had been folded into a checkpoint the reader loaded
        whole), so everything may have changed.  The core follows this to keep
        its version DAG and caches current (core.Dvid.follow)."""
        with self._refresh_lock:
            changes, self._changes = self._changes, set()
            return changes

    def _current(self) -> _View:
        if self._closed:
            raise RuntimeError("engine is closed")
        if self.readonly and time.monotonic() - self._refreshed > self.refresh_interval:
            try:
                self.refresh()
            except DvidfsError as exc:       # serve the last state; the next read tries again
                log.warning("%s: cannot look for new commits: %s", self.url, exc)
                self._refreshed = time.monotonic()
        return self._cur

    # ------------------------------------------------------------ the lease and fencing
    def _lease_body(self) -> dict:
        pid = os.getpid()
        host = socket.gethostname()
        return {"owner": f"pid {pid} on {host}", "host": host, "boot": _boot_id(), "pid": pid,
                "start": _proc_start(pid), "token": secrets.token_hex(8),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "ttl": self.lease_ttl}

    def _acquire_lease(self) -> None:
        mine = self._lease_body()
        body = json.dumps(mine).encode()
        key = self.prefix + "LOCK"
        for _ in range(5):
            try:
                r = self._call("create", "LOCK", self._s3.put_object, Bucket=self.bucket, Key=key,
                               Body=body, IfNoneMatch="*")
                self._lease, self._lease_etag = mine, r["ETag"]
                return
            except _Precondition:
                pass
            try:
                r = self._call("read", "LOCK", self._s3.get_object, Bucket=self.bucket, Key=key)
            except _Gone:
                continue                              # released meanwhile: try again
            raw = r["Body"].read()
            try:
                holder = json.loads(raw)
            except ValueError:
                holder = {}
            why = self._stale(holder, r)
            if why is None:
                raise StoreBusyError(
                    f"store {self.url} is in use by another writer ({holder.get('owner', 'unknown')}, "
                    f"since {holder.get('since', '?')}): dvidfs admits one writer per bucket and prefix "
                    f"(its lease is {self.url}LOCK)")
            try:
                r2 = self._call("take over", "LOCK", self._s3.put_object, Bucket=self.bucket, Key=key,
                                Body=body, IfMatch=r["ETag"])
            except (_Precondition, _Gone):
                continue
            log.warning("%s: took over the lease of %s (%s)", self.url, holder.get("owner"), why)
            self._lease, self._lease_etag = mine, r2["ETag"]
            return
        raise StoreBusyError(f"store {self.url}: cannot take its writer lease (others keep changing it)")

    def _stale(self, holder: dict, resp) -> str | None:
        """Why the lease `holder` may be taken over, or None if it is live."""
        if holder.get("host") == socket.gethostname() and holder.get("boot") == _boot_id():
            pid = holder.get("pid")
            if isinstance(pid, int) and _proc_start(pid) is not None and _proc_start(pid) == holder.get("start"):
                return None
            return "its process is gone"
        try:
            now = parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
            age = (now - resp["LastModified"]).total_seconds()
        except (KeyError, TypeError, ValueError):
            return None
        ttl = holder.get("ttl", self.lease_ttl)
        if age > float(ttl):
            return f"not renewed for {age:.0f} s"
        return None

    def _renew_lease(self) -> None:
        key = self.prefix + "LOCK"
        while not self._lease_stop.wait(self.lease_ttl / 3):
            try:
                r = self._call("renew", "LOCK", self._s3.put_object, Bucket=self.bucket, Key=key,
                               Body=json.dumps(self._lease).encode(), IfMatch=self._lease_etag)
                self._lease_etag = r["ETag"]
            except (_Precondition, _Gone):
                self._fail(StoreBusyError(f"store {self.url}: this writer lost its lease "
                                          f"(another writer took it over); reopen the store"))
                return
            except DvidfsError as exc:
                log.warning("%s: cannot renew the writer lease: %s", self.url, exc)

    def _release_lease(self) -> None:
        if self._lease is None:
            return
        key = self.prefix + "LOCK"
        try:
            r = self._s3.get_object(Bucket=self.bucket, Key=key)
            holder = json.loads(r["Body"].read())
            if holder.get("token") == self._lease["token"]:
                self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError, ValueError) as exc:
            log.warning("%s: cannot release the writer lease: %s", self.url, exc)
        self._lease = None

    def _fence(self) -> None:
        """Create an empty "open" entry at the next log position: a writer that
        lost its lease (paused, partitioned) can no longer commit at any
        position this writer will see, and the sweep below cannot race it."""
        for _ in range(10):
            seq = self._cur.seq + 1
            nonce = secrets.token_hex(4)
            body = _encode({"format": FORMAT, "seq": seq, "nonce": nonce, "open": self._lease["owner"],
                            "time": time.time()}, [])
            if self._commit(seq, nonce, body):
                self._cur = _View(self._cur.state, seq)
                self._log_bytes += len(body)
                return
            if not self._follow_log():          # someone committed there: catch up, try again
                self._load()
        raise StoreBusyError(f"store {self.url}: another writer keeps committing; cannot open for writing")

    def _claim_manifest(self) -> None:
        """Rewrite MANIFEST (If-Match) naming this writer, so that a checkpoint
        of a writer that lost its lease can no longer be published (it would
        name parts the sweep below deletes)."""
        for _ in range(10):
            manifest = dict(self._manifest, writer=self._writer_id())
            try:
                self._manifest_etag = self._publish(manifest)
            except StoreBusyError:
                self._failure = None
                self._load()
                continue
            self._manifest = manifest
            return
        raise StoreBusyError(f"store {self.url}: its MANIFEST keeps changing; cannot open for writing")

    def _writer_id(self) -> str:
        return f"{self._lease['owner']} {self._lease['token']}"

    def _publish(self, manifest: dict) -> str:
        """Replace MANIFEST by `manifest` if it is still the one this writer
        published last (If-Match); its new ETag.  A refusal is re-read: our
        own PUT (a retry after a lost reply, or an earlier attempt that landed
        late) is adopted; anyone else's stops this writer (StoreBusyError).  A
        failure with an unknown outcome is resolved the same way, by reading."""
        body = json.dumps(manifest).encode()
        for _ in range(3):
            try:
                r = self._call("publish", "MANIFEST", self._s3.put_object, Bucket=self.bucket,
                               Key=self.prefix + "MANIFEST", Body=body, IfMatch=self._manifest_etag)
                return r["ETag"]
            except (_Precondition, _Gone):
                pass
            except DvidfsError:
                found = self._get_manifest()
                if found is not None and found[0] == manifest:
                    return found[1]
                raise
            found = self._get_manifest()
            if found is not None and found[0] == manifest:
                return found[1]
            if found is None or found[0].get("writer") != manifest.get("writer"):
                self._fail(StoreBusyError(f"store {self.url}: its MANIFEST was changed by another writer; "
                                          f"this writer stops: reopen the store"))
                raise self._failure
            self._manifest_etag = found[1]            # an earlier attempt of ours landed late
        raise DvidfsError(f"{self.url}MANIFEST: cannot publish a checkpoint (it keeps changing)")

    def _sweep(self, head: int) -> None:
        """Delete what crashed writers left: packs of batches that never
        committed (their seq is past `head`, the last commit before this
        writer's "open" entry: nothing references them), and checkpoint parts
        and garbage lists of checkpoints that were never published (no
        MANIFEST names them; the garbage is found again by replaying the log)."""
        orphans = self._list(self.prefix + "p/", self.prefix + "p/" + _seq_name(head) + _SEQ_END)
        named = set(self._manifest.get("runs", []))
        for g in self._manifest.get("garbage", []):
            named.update(g.get("runs", []))
            named.add(g.get("gc"))
        for kind in ("run/", "gc/"):
            orphans += [full for full in self._list(self.prefix + kind, "")
                        if full[len(self.prefix):] not in named]
        if orphans:
            log.info("%s: removing %d objects left by an interrupted writer", self.url, len(orphans))
            self._delete(orphans)

    # ------------------------------------------------------------ writes
    def apply(self, batch: Batch, sync: bool = False) -> None:
        """Apply every write of `batch` atomically (see the module docstring).
        `sync` is accepted for the protocol: a PUT is durable when the object
        store acknowledges it."""
        changes: dict[bytes, bytes | None] = {}
        for key, value in batch.ops:
            changes[_as_bytes(key, "key")] = None if value is None else _as_bytes(value, "value")
        if self.readonly:
            raise ReadOnlyError(f"store {self.url} is open read-only")
        if not changes:
            self._check_writable()
            return
        with self._write_lock:
            self._check_writable()
            seq = self._cur.seq + 1
            nonce = secrets.token_hex(4)
            items = sorted(changes.items())
            refs: dict[bytes, _Blob] = {}
            packs: list[list[bytes]] = []               # the values of each pack, in key order
            size = 0
            for k, v in items:
                if v is not None and len(v) >= self.inline_max:
                    if not packs or size + len(v) > self.pack_bytes and size:
                        packs.append([])
                        size = 0
                    refs[k] = _Blob(seq, nonce, len(packs) - 1, size, len(v))
                    packs[-1].append(v)
                    size += len(v)
            names = [_Blob(seq, nonce, i, 0, 0).pack for i in range(len(packs))]
            if packs:
                try:
                    futs = []
                    for name, values in zip(names, packs):
                        futs.append(self._pool.submit(self._put, name, b"".join(values)))
                        if len(futs) == len(packs) // 2:
                            self._hook("packs-half")
                    for f in futs:
                        f.result()
                except BaseException:
                    self._delete([self.prefix + n for n in names], quiet=True)  # the next writer sweeps the rest
                    raise
                del packs
            self._hook("packs-written")
            table = [(k, refs.get(k, v)) for k, v in items]
            body = _encode({"format": FORMAT, "seq": seq, "nonce": nonce, "time": time.time()}, table)
            try:
                committed = self._commit(seq, nonce, body)
            except BaseException:
                if self._failure is None:             # certainly not committed: the packs are ours to drop
                    self._delete([self.prefix + n for n in names], quiet=True)
                raise                                 # (outcome unknown: they stay, the next writer sweeps)
            if not committed:
                self._delete([self.prefix + n for n in names], quiet=True)
                self._fail(StoreBusyError(
                    f"store {self.url}: another writer committed log entry {seq}: this writer lost the "
                    f"store (its lease was taken over?); nothing of this batch was written; reopen"))
                raise self._failure
            self._hook("committed")
            for k, b in refs.items():                 # we just wrote them: reads need no GET
                self._cache.put(b.name, changes[k])
            self._cur = _View(self._applied(self._cur.state, dict(table), seq, collect=True), seq)
            self._log_bytes += len(body)
            self._maybe_checkpoint()

    def _commit(self, seq: int, nonce: str, body: bytes) -> bool:
        """Create log entry `seq` (the commit point).  True when it is ours,
        False when another writer holds that position.  A failure raises:
        with this writer still usable when the batch is certainly not
        committed, stopped (`_failure` set) when that cannot be known."""
        name = self._log_name(seq)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if _error_code(exc) != "precondition":
                return self._resolve(seq, nonce, exc)
        except BotoCoreError as exc:
            return self._resolve(seq, nonce, exc)
        # 412: somebody's entry is there.  Ours, if a retry followed a lost reply.
        return self._owner(name) == nonce

    def _resolve(self, seq: int, nonce: str, exc: BaseException) -> bool:
        """The PUT of log entry `seq` failed without saying whether it was
        applied (a timeout, a lost reply, a 5xx), and it may even land later.
        Take the position with an empty "abandoned" entry (If-None-Match): if
        that works, the batch can never land, so it certainly failed (the
        position stays used, empty); if it is refused, the entry there tells
        (ours: committed after all).  Only when neither can be done is the
        outcome unknown: this writer stops, and the next open decides the
        same way (its "open" entry takes the position)."""
        name = self._log_name(seq)
        err = self._error("commit", name, exc)
        burn = secrets.token_hex(4)
        body = _encode({"format": FORMAT, "seq": seq, "nonce": burn, "abandoned": nonce, "time": time.time()}, [])
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body, IfNoneMatch="*")
            owner = burn
        except (ClientError, BotoCoreError):
            try:
                owner = self._owner(name)
            except DvidfsError:
                owner = None
        if owner == burn:
            self._cur = _View(self._cur.state, seq)
            self._log_bytes += len(body)
            raise DvidfsError(f"{err}; nothing of the batch was written")
        if owner is not None:
            return owner == nonce
        self._fail(DvidfsError(f"{err}; whether the batch was written cannot be known now, so this writer "
                               f"stops: reopen the store (the batch is then either wholly there or not at all)"))
        raise self._failure

    def _owner(self, name: str) -> str | None:
        """The nonce of log entry `name`, or None if it does not exist."""
        try:
            r = self._call("read", name, self._s3.get_object, Bucket=self.bucket, Key=self.prefix + name,
                           Range=f"bytes=0-{_HEAD.size + 4095}")
        except _Gone:
            return None
        data = r["Body"].read()
        _, hlen = _HEAD.unpack_from(data)
        return json.loads(data[_HEAD.size:_HEAD.size + hlen]).get("nonce")

    def _put(self, name: str, body: bytes) -> None:
        self._call("write", name, self._s3.put_object, Bucket=self.bucket, Key=self.prefix + name, Body=body)

    def _applied(self, state: _State, changes: dict, seq: int, collect: bool | None = None) -> _State:
        """`state` with one log entry applied.  A writer counts the live values
        of each pack: a pack whose last value is replaced or deleted becomes
        garbage (deleted once nothing can read it)."""
        if not changes:
            return state
        if collect if collect is not None else not self.readonly:
            get, live = state.get, self._live
            for k, new in changes.items():
                old = get(k)
                if isinstance(old, _Blob):
                    p = old.pack
                    live[p] -= 1
                    if live[p] <= 0:
                        del live[p]
                        self._garbage.append((seq, p))
                if isinstance(new, _Blob):
                    live[new.pack] += 1
        return state.applied(changes)

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")
        if self._failure is not None:
            raise self._failure

    def _fail(self, exc: DvidfsError) -> None:
        if self._failure is None:
            self._failure = exc

    # ------------------------------------------------------------ checkpoints and garbage
    def _maybe_checkpoint(self) -> None:
        entries = self._cur.seq - self._manifest.get("seq", 0)
        run_bytes = self._manifest.get("bytes", 0)
        due = entries >= self.checkpoint_entries or (
            entries >= CHECKPOINT_MIN_ENTRIES and self._log_bytes >= max(1 << 20, run_bytes // 2))
        if due and (self._ckpt is None or self._ckpt.done()) and self._ckpt_pool is not None:
            self._ckpt = self._ckpt_pool.submit(self._checkpoint_quietly)

    def _checkpoint_quietly(self) -> None:
        try:
            self.checkpoint()
        except DvidfsError as exc:
            log.warning("%s: checkpoint failed (the log keeps everything): %s", self.url, exc)

    def _collect_quietly(self) -> None:
        try:
            self._collect()
        except DvidfsError as exc:
            log.warning("%s: garbage collection failed (tried again later): %s", self.url, exc)

    def checkpoint(self) -> None:
        """Fold the log into a new checkpoint (normally done in the background)
        and delete what expired checkpoints replaced."""
        with self._manifest_lock:
            self._checkpoint()

    def _checkpoint(self) -> None:
        with self._write_lock:
            self._check_writable()
            view = self._cur
            garbage, self._garbage = self._garbage, []
            log_bytes = self._log_bytes
        old = self._manifest
        if view.seq == old.get("seq"):
            self._collect()
            return
        nonce = secrets.token_hex(4)
        parts, part, size, total = [], [], 0, 0
        for ks, vs in view.state.chunks:
            for k, v in zip(ks, vs):
                part.append((k, v))
                size += len(k) + (len(v) if type(v) is bytes else _BLOBREF.size)
                if size >= self.part_bytes:
                    parts.append(part)
                    total += size
                    part, size = [], 0
        if part:
            parts.append(part)
            total += size
        names = [f"run/{_seq_name(view.seq)}-{nonce}-{i:04d}" for i in range(len(parts))]
        header = {"format": FORMAT, "seq": view.seq, "nonce": nonce}
        record = {"t": time.time(), "runs": old.get("runs", []), "log": [old.get("seq", 0) + 1, view.seq],
                  "until": view.seq}
        written = list(names)
        try:
            list(self._pool.map(lambda ip: self._call("write", names[ip[0]], self._s3.put_object,
                                                      Bucket=self.bucket, Key=self.prefix + names[ip[0]],
                                                      Body=_encode(header, ip[1])), enumerate(parts)))
            if garbage:
                gc_name = f"gc/{_seq_name(view.seq)}-{nonce}"
                written.append(gc_name)
                self._call("write", gc_name, self._s3.put_object, Bucket=self.bucket,
                           Key=self.prefix + gc_name, Body=json.dumps([n for _, n in garbage]).encode())
                record["gc"] = gc_name
            self._hook("checkpoint-written")
        except BaseException:
            # nothing names what was written: delete it (or the next writer's sweep will)
            self._delete([self.prefix + n for n in written], quiet=True)
            with self._write_lock:
                self._garbage[:0] = garbage
            raise
        manifest = {"format": FORMAT, "seq": view.seq, "runs": names, "bytes": total,
                    "garbage": old.get("garbage", []) + [record], "writer": self._writer_id()}
        try:
            etag = self._publish(manifest)
        except BaseException:
            # Maybe published after all (a request that lands late): the parts stay (if
            # never named, the next writer's sweep deletes them); the garbage stays ours
            # (listed twice at worst: deleting twice is harmless).
            with self._write_lock:
                self._garbage[:0] = garbage
            raise
        self._hook("checkpoint-published")
        with self._write_lock:
            self._manifest, self._manifest_etag = manifest, etag
            self._log_bytes -= log_bytes
        self._collect()

    def _collect(self) -> None:
        """Delete the objects of garbage records older than the grace period
        that no open view of this process still needs, then drop the records
        from MANIFEST (a crash in between only means deleting them again)."""
        with self._manifest_lock:
            self._collect_locked()

    def _collect_locked(self) -> None:
        records = self._manifest.get("garbage", [])
        now = time.time()
        with self._pin_lock:
            oldest = min(self._pins) if self._pins else None
        done = []
        for rec in records:
            if now - rec["t"] < self.grace or (oldest is not None and oldest < rec["until"]):
                continue
            names = [self.prefix + n for n in rec.get("runs", [])]
            lo, hi = rec["log"]
            names += [self.prefix + self._log_name(s) for s in range(lo, hi + 1)]
            if "gc" in rec:
                try:
                    r = self._call("read", rec["gc"], self._s3.get_object, Bucket=self.bucket,
                                   Key=self.prefix + rec["gc"])
                    names += [self.prefix + n for n in json.loads(r["Body"].read())]
                except _Gone:
                    pass
            self._delete(names)
            if "gc" in rec:
                self._delete([self.prefix + rec["gc"]])
            done.append(rec)
        if not done or self._failure is not None:
            return
        manifest = dict(self._manifest, garbage=[g for g in self._manifest["garbage"] if g not in done],
                        writer=self._writer_id())
        try:
            self._manifest_etag = self._publish(manifest)
        except StoreBusyError:
            return
        self._manifest = manifest

    def _pin(self, seq: int) -> int:
        with self._pin_lock:
            self._pins[seq] += 1
        return seq

    def _unpin(self, seq: int) -> None:
        with self._pin_lock:
            self._pins[seq] -= 1
            if self._pins[seq] <= 0:
                del self._pins[seq]

    # ------------------------------------------------------------ reads
    def _log_name(self, seq: int) -> str:
        return "log/" + _seq_name(seq)

    def _read_body(self, resp, name: str) -> bytes:
        try:
            return resp["Body"].read()
        except Exception as exc:                     # the connection broke half-way through the body
            raise self._error("read", name, exc) from None

    def _fetch(self, blob: _Blob) -> bytes:
        """One value: from the cache, else from the GET already fetching it
        (another reader's, a prefetched run), else a ranged GET of its pack
        in this thread."""
        name = blob.name
        while True:
            data = self._cache.get(name)
            if data is not None:
                return data
            futs, mine, fut = self._claim([blob])
            if mine:
                self._fetch_into(mine, fut)
            if name in futs:
                return futs[name].result()[name]
            # cached between the two looks (and maybe evicted since): look again

    def _prefetch(self, run: list[_Blob]) -> dict[str, Future]:
        """Start fetching `run` (neighbours in one pack) in the pool: the
        futures of its values, shared with whoever else waits for them (values
        cached meanwhile are left out)."""
        futs, mine, fut = self._claim(run)
        if mine:
            try:
                work = self._pool.submit(self._fetch_into, mine, fut)
            except RuntimeError as exc:                     # the pool is shut down (closing)
                self._settle(mine, fut, None, exc)
                raise
            # cancelled by close (cancel_futures): its waiters must not wait forever
            work.add_done_callback(lambda w: w.cancelled() and self._settle(mine, fut, None, CancelledError()))
        return futs

    def _claim(self, run: list[_Blob]) -> tuple[dict[str, Future], list[_Blob], Future | None]:
        """Single flight: ({name: future} for each value of `run` not cached,
        the values nobody fetches yet, the future they are now registered
        under).  The caller must fetch those (`_fetch_into`) and so settle it."""
        futs: dict[str, Future] = {}
        mine: list[_Blob] = []
        with self._inflight_lock:
            for b in run:
                f = self._inflight.get(b.name)
                if f is not None:
                    futs[b.name] = f
                elif self._cache.get(b.name) is None:   # a GET that just ended cached it
                    mine.append(b)                      # before leaving the map
            fut = None
            if mine:
                fut = Future()
                fut.set_running_or_notify_cancel()
                for b in mine:
                    self._inflight[b.name] = fut
                    futs[b.name] = fut
        return futs, mine, fut

    def _fetch_into(self, run: list[_Blob], fut: Future) -> None:
        """Fetch the claimed `run` and settle its future (result or error, for
        every waiter alike); never raises."""
        try:
            out = self._fetch_run(run)
        except BaseException as exc:
            self._settle(run, fut, None, exc)
        else:
            self._settle(run, fut, out, None)

    def _settle(self, run: list[_Blob], fut: Future, out: dict | None, exc: BaseException | None) -> None:
        """The GET of `run` is over: off the in-flight map (so a read after a
        failure asks again), then its waiters get the values or the error."""
        with self._inflight_lock:
            for b in run:
                if self._inflight.get(b.name) is fut:
                    del self._inflight[b.name]
        if fut.done():
            return
        if exc is None:
            fut.set_result(out)
        else:
            fut.set_exception(exc)

    def _fetch_run(self, run: list[_Blob]) -> dict[str, bytes]:
        """Values lying close together in one pack, with one ranged GET; each
        goes into the cache.  (Callers go through `_claim`: single flight.)"""
        disk = self._disk
        if disk is not None:
            kept = {b.name: disk.get(b.name, b.size) for b in run}
            if None not in kept.values():          # all on this machine's disk: no request
                for name, v in kept.items():
                    self._cache.put(name, v)
                return kept
        first, last = run[0], run[-1]
        lo, hi = first.offset, last.offset + last.size
        pack = first.pack
        r = self._call("read", pack, self._s3.get_object, Bucket=self.bucket, Key=self.prefix + pack,
                       Range=f"bytes={lo}-{hi - 1}", missing_ok=False)
        data = self._read_body(r, pack)
        if len(data) != hi - lo:
            raise DvidfsError(f"{self.url}{pack}: {len(data)} bytes at {lo} where {hi - lo} were committed")
        out = {}
        mv = memoryview(data)
        for b in run:
            v = data if len(run) == 1 else bytes(mv[b.offset - lo:b.offset - lo + b.size])
            out[b.name] = v
            self._cache.put(b.name, v)
            if disk is not None and kept[b.name] is None:
                disk.put(b.name, v)
        return out

    def _fetch_or_explain(self, key: bytes, blob: _Blob) -> bytes:
        """A point read of the latest view: if the object was collected under
        us (the key was overwritten meanwhile), read the newer view."""
        for _ in range(3):
            try:
                return self._fetch(blob)
            except _Missing:
                if self.readonly:
                    self.refresh()
                v = self._cur.state.get(key)
                if v is None or type(v) is bytes:
                    return v
                blob = v
        raise self._gone(key)

    def _gone(self, key: bytes) -> DvidfsError:
        return DvidfsError(f"{self.url}: the value of key {key.hex()} in this view was removed by the "
                           f"writer's garbage collection (the view is older than its grace period, "
                           f"{self.grace:.0f} s): read again")

    @contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """A consistent read view, O(1): the published state of this moment."""
        view = self._current()
        pin = self._pin(view.seq)
        try:
            yield _Snapshot(self, view)
        finally:
            self._unpin(pin)

    # ------------------------------------------------------------ S3 calls
    def _call(self, what: str, name: str, fn, missing_ok: bool = True, **kw):
        """One S3 request; 404 -> _Gone (or _Missing), 412 -> _Precondition,
        anything else -> DvidfsError (EIO) naming the object."""
        try:
            return fn(**kw)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "missing":
                raise (_Gone() if missing_ok else _Missing()) from None
            if code == "precondition":
                raise _Precondition() from None
            if code == "nobucket":
                raise NotFoundError(f"{self.url}: there is no bucket {self.bucket!r} "
                                    f"(`dvidfs init {self.url}` creates it)") from None
            raise self._error(what, name, exc) from None
        except NoCredentialsError:
            raise DvidfsError(f"{self.url}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except BotoCoreError as exc:
            raise self._error(what, name, exc) from None

    def _error(self, what: str, name: str, exc: BaseException) -> DvidfsError:
        # logged as well: a front end that answers EIO (a FUSE read) may not pass the
        # message on, and the mount log is where to find why (timeouts: make_client)
        err = DvidfsError(f"{self.url}{name}: {what} failed: {exc}")
        log.warning("%s", err)
        return err

    def _list(self, prefix: str, start_after: str) -> list[str]:
        """Object names under `prefix` after `start_after` (exclusive), in order."""
        out, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = start_after
            r = self._call("list", prefix[len(self.prefix):], self._s3.list_objects_v2, **kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def _delete(self, names: list[str], quiet: bool = False) -> None:
        for i in range(0, len(names), 1000):
            chunk = names[i:i + 1000]
            try:
                self._s3.delete_objects(Bucket=self.bucket,
                                        Delete={"Objects": [{"Key": n} for n in chunk], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                if not quiet:
                    log.warning("%s: cannot delete %d objects (deleted later): %s", self.url, len(chunk), exc)
                return

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Finish a running checkpoint, release the lease (idempotent)."""
        if self._closed:
            return
        self._shutdown(release=True)

    def _shutdown(self, release: bool) -> None:
        if self._ckpt_pool is not None:
            self._ckpt_pool.shutdown(wait=True)
        self._closed = True
        self._lease_stop.set()
        if self._lease_thread is not None:
            self._lease_thread.join(10)
        if release:
            self._release_lease()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cur = _View(_State([], CHUNK_SIZE), self._cur.seq)


class _Gone(Exception):
    """404 on an object whose absence is an answer (a lease, a MANIFEST)."""


class _Precondition(Exception):
    """412: a conditional PUT lost."""


def make_client(endpoint: str | None = None, region: str | None = None, workers: int = WORKERS,
                credentials: tuple[str, str] | None = None):
    """A boto3 S3 client as the engine uses it: path-style addressing when an
    endpoint is given, bounded timeouts and retries, a connection per worker."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    read_timeout, attempts = _bounds()
    cfg = BotoConfig(
        s3={"addressing_style": "path" if endpoint else "auto"},
        # a dead or stalled server is an error within a bound, not a hang (READ_TIMEOUT above).
        # "total_max_attempts": botocore's "max_attempts" counts retries (3 meant 4 tries, 2 min)
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=min(CONNECT_TIMEOUT, read_timeout), read_timeout=read_timeout,
        max_pool_connections=workers + 8,
    )
    key, secret = credentials or (None, None)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=cfg,
                                          aws_access_key_id=key, aws_secret_access_key=secret)


def _bounds() -> tuple[float, int]:
    """(read timeout, total attempts): the defaults, or DVIDFS_S3_TIMEOUT / DVIDFS_S3_ATTEMPTS."""
    def env(name, kind, default, low):
        raw = os.environ.get(name)
        if not raw:
            return default
        try:
            v = kind(raw)
        except ValueError:
            raise DvidfsError(f"{name}={raw!r} is not a number") from None
        if not v >= low:
            raise DvidfsError(f"{name}={raw!r}: must be at least {low}")
        return v
    return env("DVIDFS_S3_TIMEOUT", float, READ_TIMEOUT, 0.1), env("DVIDFS_S3_ATTEMPTS", int, ATTEMPTS, 1)
