"""Single-flight fetches of the S3 engine (dvidfs/store/s3.py), on the session's SeaweedFS.

* N threads reading the same uncached value at once (point reads of the
  engine, snapshot reads) send one ranged GET between them;
* a point read of a value that another reader's prefetched run is fetching
  waits for that run instead of sending a GET of its own;
* a failed GET reaches every thread waiting for it as the same error, leaves
  nothing in flight, and the next read asks again (and succeeds);
* one `cat` of an uncached slice of a committed node, driven through the
  pyfuse3 handlers as the kernel drives them (lookups, getattr, open, a
  readahead-sized read, then, after a failed read, the kernel's retry of one
  page on the same handle): each pack range is fetched once, and a failure
  costs one GET, not two.

The boto3 client is wrapped (counting, slowed down or failing get_object), so
every GET the engine sends is seen.
"""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pyfuse3
import pytest
import trio

from dvidfs.core import Dvid
from dvidfs.errors import DvidfsError
from dvidfs.fs.operations import DvidOperations
from dvidfs.fs.tree import Tree
from dvidfs.store.engine import Batch
from dvidfs.store.s3 import S3Engine
from seaweed import store_prefix
from test_s3 import s3  # noqa: F401  (fixture)

N = 8          # threads asking at once
SLOW = 0.5     # seconds a GET takes: every thread asks while the first is in flight


@pytest.fixture
def where(s3, request):
    """(bucket, prefix) of a store of this test alone."""
    return s3.shared_bucket(), store_prefix(request.node.nodeid)


class _GetClient:
    """A boto3 client whose get_object of packs is counted (by (key, range)),
    takes `delay` seconds, and fails (an unreachable server, after the delay)
    while `failing` is set."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner, self.delay, self.failing = inner, delay, False
        self.gets: list[tuple[str, str]] = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_object(self, **kw):
        from botocore.exceptions import EndpointConnectionError
        if "/p/" not in kw["Key"]:                      # logs, checkpoints, MANIFEST
            return self.inner.get_object(**kw)
        with self.lock:
            self.gets.append((kw["Key"].rsplit("/", 1)[1], kw.get("Range")))
        self.started.set()
        time.sleep(self.delay)
        if self.failing:
            raise EndpointConnectionError(endpoint_url="http://unreachable")
        return self.inner.get_object(**kw)

    def reset(self) -> None:
        self.gets.clear()
        self.started.clear()


def _val(i: int) -> bytes:
    return bytes([i % 256]) * 5000                      # > INLINE_MAX: in a pack


def _store(s3, bucket, prefix, n: int = 10) -> None:
    """One batch of n large values (one pack): k0000 … k{n-1}."""
    w = S3Engine(bucket, prefix, client=s3.engine_client(), create=True)
    try:
        b = Batch()
        for i in range(n):
            b.put(b"k%04d" % i, _val(i))
        w.apply(b, sync=True)
    finally:
        w.close()


def _reader(s3, bucket, prefix, client) -> S3Engine:
    return S3Engine(bucket, prefix, client=client, readonly=True, refresh_interval=3600)


def _at_once(fn, n: int = N) -> list:
    """fn(i) in n threads started together: their results (or exceptions)."""
    out: list = [None] * n
    go = threading.Barrier(n)

    def run(i):
        go.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:                    # noqa: BLE001  (compared by the test)
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_threads_reading_one_uncached_value_share_one_get(s3, where):
    bucket, prefix = where
    _store(s3, bucket, prefix)
    client = _GetClient(s3.engine_client(), delay=SLOW)
    r = _reader(s3, bucket, prefix, client)
    try:
        # point reads of the engine
        assert _at_once(lambda i: r.get(b"k0003")) == [_val(3)] * N
        assert len(client.gets) == 1, client.gets
        # reads of snapshots (each its own fetcher), and a mix with point reads
        client.reset()

        def snap_or_point(i):
            if i % 2:
                return r.get(b"k0005")
            with r.snapshot() as snap:
                return snap.get(b"k0005")

        assert _at_once(snap_or_point) == [_val(5)] * N
        assert len(client.gets) == 1, client.gets
        assert r._inflight == {}
        client.reset()                                  # cached now: no GET at all
        assert _at_once(lambda i: r.get(b"k0005")) == [_val(5)] * N and client.gets == []
    finally:
        r.close()


def test_a_point_read_waits_for_the_prefetched_run_fetching_its_value(s3, where):
    bucket, prefix = where
    _store(s3, bucket, prefix)
    client = _GetClient(s3.engine_client(), delay=SLOW)
    r = _reader(s3, bucket, prefix, client)
    try:
        keys = [b"k%04d" % i for i in range(10)]
        got: dict = {}

        def planned():                                  # one run: the 10 neighbours in one GET
            with r.snapshot() as snap:
                snap.prefetch(keys)
                got["planned"] = [snap.get(k) for k in keys]

        t = threading.Thread(target=planned)
        t.start()
        assert client.started.wait(10)                  # the run's GET is in flight
        assert r.get(b"k0007") == _val(7)               # waits for it: no GET of its own
        t.join(30)
        assert got["planned"] == [_val(i) for i in range(10)]
        assert len(client.gets) == 1, client.gets
        assert r._inflight == {}
    finally:
        r.close()


def test_a_failed_get_reaches_every_waiter_and_the_next_read_asks_again(s3, where):
    bucket, prefix = where
    _store(s3, bucket, prefix)
    client = _GetClient(s3.engine_client(), delay=SLOW)
    r = _reader(s3, bucket, prefix, client)
    try:
        client.failing = True

        def read(i):
            if i % 2:
                return r.get(b"k0002")
            with r.snapshot() as snap:
                return snap.get(b"k0002")

        errors = _at_once(read)
        assert all(isinstance(e, DvidfsError) and "read failed" in str(e) for e in errors), errors
        assert len({id(e) for e in errors}) == 1        # the same error, from the one GET
        assert len(client.gets) == 1, client.gets
        assert r._inflight == {}                        # nothing left waiting on the failure
        client.failing = False                          # the server answers again
        client.reset()
        assert _at_once(lambda i: r.get(b"k0002")) == [_val(2)] * N
        assert len(client.gets) == 1, client.gets       # asked again, once
    finally:
        r.close()


# ---------------------------------------------------------------- one `cat` of a slice
async def _ino(ops: DvidOperations, *path) -> int:
    ino = pyfuse3.ROOT_INODE
    for name in path:
        ino = (await ops.lookup(ino, os.fsencode(name))).st_ino
    return ino


def test_one_cat_of_an_uncached_slice_fetches_each_pack_range_once(s3, where):
    """What the kernel sends for `cat mnt/em/<uuid>/gray/xy/00070.png` of a
    committed node (seen with a real mount): lookups, getattr, open, a read of
    the readahead window; when that read fails (EIO), one more read of the
    first page on the same handle before cat gets EIO.  A good read fetches
    each pack range once; a failed one costs one GET, not one per request; a
    new open (the next cat) asks again."""
    bucket, prefix = where
    side, bs = 96, 32
    vol = np.random.default_rng(3).integers(0, 256, (4 * bs, side, side), dtype=np.uint8)
    with Dvid(engine=S3Engine(bucket, prefix, client=s3.engine_client(), create=True)) as s:
        root = s.node(s.new_repo("em").root)
        g = s.new_instance(root, "gray", "grayscale", block_size=bs)
        for z in range(0, vol.shape[0], bs):
            g.write(root, (0, 0, z), vol[z:z + bs])
        s.commit(root)
        uuid = root.uuid
    client = _GetClient(s3.engine_client())
    core = Dvid(engine=_reader(s3, bucket, prefix, client))
    ops = DvidOperations(Tree(core))

    async def cat(name: str) -> bytes:
        ino = await _ino(ops, "em", uuid, "gray", "xy", name)
        size = (await ops.getattr(ino)).st_size
        fi = await ops.open(ino, os.O_RDONLY, None)
        try:
            try:
                data = await ops.read(fi.fh, 0, 12288)
            except pyfuse3.FUSEError:
                await ops.read(fi.fh, 0, 4096)          # the kernel's retry of the first page
                raise
            while len(data) < size:
                data += await ops.read(fi.fh, len(data), 4096)
            return data
        finally:
            await ops.release(fi.fh)

    async def main():
        data = await cat("00005.png")                   # a good read: each pack range once
        assert len(data) > 0 and len(client.gets) == len(set(client.gets)) == 1, client.gets
        client.reset()
        client.failing = True                           # the server is unreachable
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await cat("00070.png")
        assert ei.value.errno == errno.EIO
        assert len(client.gets) == 1, client.gets       # not one GET per read request
        client.failing = False
        client.reset()
        data = await cat("00070.png")                   # the next cat asks again
        assert len(client.gets) == 1, client.gets
        return data

    try:
        from PIL import Image
        import io
        data = trio.run(main)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), vol[70])
    finally:
        ops.close()
        core.close()
