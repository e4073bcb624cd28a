"""Shared fixtures for the store / versions / grayscale tests.

`store`   a fresh Dvid (the core) in tmp_path, closed at teardown; on an S3
          engine (SeaweedFS) when DVIDFS_TEST_ENGINE=s3 (`reopen(path)` opens
          it again on the same engine).
`repo`    a repo "test" in that store; `root` is its (open) root node.
`gray`    a grayscale instance "gray" with 8³ blocks created in the root.

Helpers (plain functions, importable as `from conftest import ...`):
`full_scan(engine)`     every (key, value) pair in the engine, in order.
`key_versions(...)`     the stored version entries of one data key (raw scan).
"""
from __future__ import annotations

import contextlib
import os

import pytest

from dvidfs.core import Dvid
from dvidfs.store import keys
from seaweed import seaweedfs  # noqa: F401  (a session fixture: one SeaweedFS for every S3 test)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store"


# DVIDFS_TEST_ENGINE=s3: the `store` fixture is an S3 store on the session's
# SeaweedFS (scripts/test runs the store/versions/data modules once more so)
ENGINE = os.environ.get("DVIDFS_TEST_ENGINE", "leveldb")


@pytest.fixture
def store(store_path, request):
    if ENGINE == "s3":
        from seaweed import s3_engine
        s = Dvid(engine=s3_engine(request.getfixturevalue("seaweedfs"), store_path, create=True))
    else:
        s = Dvid.init(store_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def reopen(request):
    """Open the store at a path again, on the engine the `store` fixture uses."""
    def open_store(path) -> Dvid:
        if ENGINE == "s3":
            from seaweed import s3_engine
            return Dvid(engine=s3_engine(request.getfixturevalue("seaweedfs"), path, create=False))
        return Dvid(path)
    return open_store


@pytest.fixture
def repo(store):
    return store.new_repo("test", description="fixture repo")


@pytest.fixture
def root(store, repo):
    return store.db.node(repo.root)


@pytest.fixture
def gray(store, root):
    return store.new_instance(root, "gray", "grayscale", block_size=8)


def full_scan(engine) -> list[tuple[bytes, bytes]]:
    """Every key/value pair in the store, in key order (bytes copies)."""
    return [(bytes(k), bytes(v)) for k, v in engine.scan(b"", b"\xff" * 64)]


def key_versions(engine, instance_id: int, tk: bytes) -> list[tuple[int, bool]]:
    """(version, is_tombstone) of every stored entry of exactly this TKey,
    found by an independent raw scan of the instance's key space."""
    prefix = keys.instance_prefix(instance_id)
    out = []
    for k in engine.scan(prefix, keys.prefix_end(prefix), include_value=False):
        inst, ktk, version, tomb = keys.split_data_key(bytes(k))
        if inst == instance_id and ktk == tk:
            out.append((version, tomb))
    return out


class CountingReader:
    """Wraps a Reader and counts how many keys its range scans hand out."""

    def __init__(self, inner):
        self.inner = inner
        self.scanned = 0
        self.gets = 0

    def get(self, key):
        self.gets += 1
        return self.inner.get(key)

    def scan(self, start, stop, include_value=True):
        for item in self.inner.scan(start, stop, include_value=include_value):
            self.scanned += 1
            yield item

    def scan_lazy(self, start, stop):
        for item in self.inner.scan_lazy(start, stop):
            self.scanned += 1
            yield item

    @contextlib.contextmanager
    def cursor(self):
        """Counts keys a hot loop moves past (each in-range key is left by next())."""
        outer = self

        class Counting:
            def __init__(self, it):
                self.it = it
                self.seek, self.valid, self.key, self.value = it.seek, it.valid, it.key, it.value

            def next(self):
                outer.scanned += 1
                self.it.next()

        with self.inner.cursor() as it:
            yield Counting(it)


@pytest.fixture
def scan_all():
    return full_scan


@pytest.fixture
def versions_of():
    return key_versions


@pytest.fixture
def counting_reader():
    return CountingReader
