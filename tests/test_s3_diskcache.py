"""The local disk cache of an S3 store's values (dvidfs/store/diskcache.py).

* the cache alone: whole values come back, a torn or foreign file is never
  served (and is removed), trimming keeps the least recently used out;
* on SeaweedFS, through `Dvid("s3://…&localcache=DIR")`: a second process (a
  fresh engine) reads a whole volume with no GET of a pack and the same
  voxels as numpy; a truncated cache file costs one GET and gives the right
  bytes; a cache directory that cannot be written is skipped, never an error.
"""
from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest

from dvidfs.core import Dvid
from dvidfs.store.diskcache import DiskCache
from dvidfs.store.open import parse_s3_url
from dvidfs.store.s3 import S3Engine
from seaweed import CountingClient
from test_s3 import bucket, pfx, s3, url  # noqa: F401  (fixtures)


# ------------------------------------------------------------------ the cache alone
def test_values_come_back_whole_or_not_at_all(tmp_path):
    c = DiskCache(tmp_path / "c", 1 << 20)
    assert c.get("p/1@0", 5) is None
    c.put("p/1@0", b"hello")
    c.put("p/1@5", b"world!")
    assert c.get("p/1@0", 5) == b"hello" and c.get("p/1@5", 6) == b"world!"
    assert c.get("p/1@0", 4) is None                 # not the size the engine expects: not served ...
    assert c.get("p/1@0", 5) is None                 # ... and gone
    assert c.hits == 2 and c.misses == 3
    left = [f for _, _, fs in os.walk(tmp_path / "c") for f in fs]
    assert len(left) == 1 and not any(f.endswith(".tmp") for f in left)


def test_trimming_removes_the_least_recently_used(tmp_path):
    c = DiskCache(tmp_path / "c", 1 << 30)                   # no trim while filling
    names = [f"p/x@{i}" for i in range(20)]
    for i, n in enumerate(names):
        c.put(n, bytes([i]) * 1000)
        os.utime(c._path(n), (1_000_000 + i, 1_000_000 + i))   # older first
    c.max_bytes = 10_000
    assert c.get(names[0], 1000) == bytes([0]) * 1000        # a hit: now the most recent
    kept = c.trim()
    assert kept <= 8_000
    present = [n for n in names if os.path.exists(c._path(n))]
    assert names[0] in present and present == [names[0]] + names[20 - len(present) + 1:]


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, caplog):
    c = DiskCache(tmp_path / "c", 1 << 20)
    (tmp_path / "file").write_bytes(b"")
    c.root = str(tmp_path / "file")                          # its directories cannot be made
    c.put("p/1@0", b"x")                                     # logged, not raised
    c.put("p/1@1", b"y")
    assert c.get("p/1@0", 1) is None
    assert len([r for r in caplog.records if "cannot keep values" in r.getMessage()]) == 1


# ------------------------------------------------------------------ on SeaweedFS
def _volume() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (64, 64, 64), dtype=np.uint8)


def test_a_later_process_reads_from_the_local_cache(s3, bucket, pfx, tmp_path):
    cache = tmp_path / "cache"
    where = url(s3, bucket, pfx)
    vol = _volume()
    with Dvid.init(where) as w:
        root = w.node(w.new_repo("em").root)
        w.new_instance(root, "gray", "grayscale", block_size=16).write(root, (0, 0, 0), vol)
        w.commit(root)
        uuid = root.uuid

    def reader() -> tuple[Dvid, CountingClient]:
        kw = parse_s3_url(where + f"&localcache={cache}&readonly=1")
        client = CountingClient(s3.engine_client())
        e = S3Engine(kw.pop("bucket"), kw.pop("prefix"), client=client, **kw)
        return Dvid(engine=e), client

    def read_all(d: Dvid) -> np.ndarray:
        n = d.node(uuid)
        return d.data(n, "gray").read(d.view(n), (0, 0, 0), (64, 64, 64))

    first, c1 = reader()
    with first:
        np.testing.assert_array_equal(read_all(first), vol)
    assert c1.packs > 0
    files = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
    assert len(files) == 64                                   # one per block (4³ blocks of 16³)

    second, c2 = reader()
    with second:
        np.testing.assert_array_equal(read_all(second), vol)
    assert c2.packs == 0                                      # all from the local disk

    with open(files[0], "r+b") as f:                          # a torn copy (a crash, a full disk)
        f.truncate(10)
    third, c3 = reader()
    with third:
        np.testing.assert_array_equal(read_all(third), vol)
    assert c3.packs == 1


def test_local_cache_from_the_url_or_the_environment(s3, bucket, pfx, tmp_path, monkeypatch):
    kw = parse_s3_url("s3://b/p?localcache=/var/cache/x&localcachesize=1G")
    assert kw["local_cache"] == "/var/cache/x" and kw["local_cache_bytes"] == 1 << 30
    assert "local_cache" not in parse_s3_url("s3://b/p")
    where = url(s3, bucket, pfx)
    with Dvid.init(where) as w:
        root = w.node(w.new_repo("em").root)
        w.new_instance(root, "gray", "grayscale", block_size=16).write(root, (0, 0, 0), _volume()[:16])
    monkeypatch.setenv("DVIDFS_S3_LOCAL_CACHE", str(tmp_path / "env"))
    for extra, kept in (("", True), ("&localcache=", False)):   # an empty parameter turns it off
        shutil.rmtree(tmp_path / "env", ignore_errors=True)
        with Dvid(where + "&readonly=1" + extra) as r:
            n = r.node("em")
            r.data(n, "gray").read(r.view(n), (0, 0, 0), (64, 64, 16))
        assert (len([p for p in (tmp_path / "env").rglob("*") if p.is_file()]) == 16) is kept
