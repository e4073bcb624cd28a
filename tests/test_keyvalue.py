"""The keyvalue data type (data/keyvalue.py) on a real LevelDB store.

Checked against plain Python dicts of what was put, and against the raw keys
in the engine (tombstones, chunks freed): versions and branches, tombstones,
merges (conflicts named by key, equal bytes in different blobs merge),
values of 0 bytes and of 64 MiB (chunked, streamed without holding the
value, ranges across chunk borders), renames that move chunks instead of
copying them, and bad keys refused with nothing changed.
"""
from __future__ import annotations

import os
import tracemalloc

import pytest

from conftest import full_scan, key_versions
from dvidfs.data.keyvalue import CHUNK, INLINE_MAX, MAX_KEY, KeyValue
from dvidfs.errors import ConflictError, ExistsError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.store import keys

MIB = 1 << 20


@pytest.fixture
def kv(store, root) -> KeyValue:
    return store.new_instance(root, "kv", "keyvalue")


def _tk(key: str) -> bytes:
    return bytes((keys.CLASS_KEYVALUE,)) + key.encode("utf-8", "surrogateescape") + b"\0"


def chunk_keys(engine, kv: KeyValue) -> list[bytes]:
    """Raw keys of every stored chunk of large values of the instance."""
    p = keys.instance_prefix(kv.inst.id) + bytes((keys.CLASS_KEYVALUE, 0))
    return list(engine.scan(p, keys.prefix_end(p), include_value=False))


def test_put_get_sizes_and_byte_order(store, root, kv):
    vals = {"b": b"2", "a": b"1", "ab": b"12" * 3000, "A": b"", "z\u00e9": b"\xff\x00" * 7, "a b": b"x"}
    for k, v in vals.items():
        kv.put(root, k, v)
    want = sorted(vals, key=lambda k: k.encode())          # byte order: a prefix first
    assert kv.keys(root) == want == ["A", "a", "a b", "ab", "b", "z\u00e9"]
    assert kv.sizes(root) == [(k, len(vals[k])) for k in want]
    for k, v in vals.items():
        assert kv.get(root, k) == v and kv.size(root, k) == len(v) and kv.exists(root, k)
    assert kv.get(root, "nope") is None and kv.size(root, "nope") is None and not kv.exists(root, "nope")
    # DVID's keyrange: inclusive at both ends, bounds need not be keys
    assert kv.keys(root, "a", "ab") == ["a", "a b", "ab"]
    assert kv.keys(root, "a ", "b") == ["a b", "ab", "b"]
    assert kv.keys(root, "b", "a") == [] and kv.keys(root, "c", "d") == []
    assert dict(kv.items(root, "a", "ab")) == {k: vals[k] for k in ("a", "a b", "ab")}
    assert kv.get_many(root, ["b", "missing", "A"]) == [("b", b"2"), ("missing", None), ("A", b"")]
    # a key that is not UTF-8 (a file name from the mount) round-trips as bytes
    odd = os.fsdecode(b"caf\xe9")
    kv.put(root, odd, b"latin-1")
    assert kv.get(root, odd) == b"latin-1" and odd in kv.keys(root)
    assert kv.info(store.view(root))["Base"]["TypeName"] == "keyvalue"


def test_versions_branches_and_tombstones(store, root, kv):
    kv.put(root, "a", b"root-a")
    kv.put(root, "b", b"root-b")
    store.commit(root)
    left, right = store.branch(root, "left"), store.branch(root, "right")
    kv.put(left, "a", b"left-a")
    assert kv.delete(left, "b") is True
    kv.put(right, "c", b"right-c")
    assert kv.keys(root) == ["a", "b"] and kv.get(root, "a") == b"root-a"
    assert kv.keys(left) == ["a"] and kv.get(left, "a") == b"left-a" and kv.get(left, "b") is None
    assert kv.keys(right) == ["a", "b", "c"] and kv.get(right, "a") == b"root-a"
    # the delete is a tombstone in `left`; the root keeps its value
    assert sorted(key_versions(store.engine, kv.inst.id, _tk("b"))) == \
        [(root.version_id, False), (left.version_id, True)]
    # deleting what is not there writes nothing
    before = full_scan(store.engine)
    assert kv.delete(left, "b") is False and kv.delete(left, "never") is False
    assert full_scan(store.engine) == before
    # a key that lives only in this version is removed outright, no tombstone
    kv.put(right, "tmp", b"x" * (INLINE_MAX + 1))
    assert kv.delete(right, "tmp") is True
    assert key_versions(store.engine, kv.inst.id, _tk("tmp")) == [] and chunk_keys(store.engine, kv) == []
    # put after delete in the same version brings it back
    kv.put(left, "b", b"again")
    assert kv.get(left, "b") == b"again"
    assert sorted(key_versions(store.engine, kv.inst.id, _tk("b"))) == \
        [(root.version_id, False), (left.version_id, False)]
    # descendants see their nearest ancestor's state
    store.commit(left)
    below = store.branch(left)
    assert dict(kv.items(below)) == {"a": b"left-a", "b": b"again"}


def test_committed_nodes_refuse_writes_and_change_nothing(store, root, kv):
    kv.put(root, "a", b"1")
    store.commit(root)
    before = full_scan(store.engine)
    for write in (lambda: kv.put(root, "a", b"2"), lambda: kv.put(root, "big", b"x" * (3 * CHUNK)),
                  lambda: kv.delete(root, "a"), lambda: kv.rename(root, "a", "b"),
                  lambda: kv.put_many(root, [("x", b"1")])):
        with pytest.raises(ReadOnlyError):
            write()
    assert full_scan(store.engine) == before


@pytest.mark.parametrize("bad", ["", "a/b", "/", "a\0b", "k" * (MAX_KEY + 1), "\ud800", 7, None])
def test_bad_keys_are_refused_and_nothing_changes(store, root, kv, bad):
    kv.put(root, "good", b"1")
    before = full_scan(store.engine)
    with pytest.raises(InvalidInputError):
        kv.put(root, bad, b"value")
    with pytest.raises(InvalidInputError):   # one bad key: none of the batch is written
        kv.put_many(root, [("fine", b"1"), ("big", b"x" * (2 * CHUNK)), (bad, b"2")])
    with pytest.raises(InvalidInputError):
        kv.rename(root, "good", bad)
    assert full_scan(store.engine) == before
    assert kv.keys(root) == ["good"]
    kv.put(root, "k" * MAX_KEY, b"longest")        # the limit itself is fine
    assert kv.get(root, "k" * MAX_KEY) == b"longest"


def test_values_that_are_not_bytes_are_refused(store, root, kv):
    with pytest.raises(InvalidInputError):
        kv.put(root, "a", "text is not bytes")
    assert kv.keys(root) == []


def test_zero_byte_and_64_mib_values(store, root, kv):
    big = os.urandom(64 * MIB)
    kv.put(root, "empty", b"")
    kv.put(root, "mesh", big)
    assert kv.get(root, "empty") == b"" and kv.size(root, "empty") == 0 and kv.exists(root, "empty")
    assert kv.size(root, "mesh") == len(big)
    assert kv.get(root, "mesh") == big
    assert len(chunk_keys(store.engine, kv)) == 64          # 1 MiB pieces, not one LevelDB value
    # ranges read across chunk borders, clamped at the end
    for off, n in ((0, 10), (CHUNK - 5, 10), (3 * CHUNK - 1, 2 * CHUNK + 2), (len(big) - 3, 100),
                   (len(big), 5), (17, 0)):
        assert kv.read_range(root, "mesh", off, n) == big[off:off + n]
    assert kv.read_range(root, "nope", 0, 1) is None
    # streaming the value in 128 KiB reads never holds it whole
    v = kv.open_value(root, "mesh")
    tracemalloc.start()
    try:
        got = 0
        for off in range(0, len(big), 128 << 10):
            piece = v.read(off, 128 << 10)
            assert piece == big[off:off + len(piece)]
            got += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        v.close()
    assert got == len(big) and peak < 4 * MIB, peak
    # overwriting and deleting in the same version free the chunks
    kv.put(root, "mesh", big[:5 * MIB])
    assert len(chunk_keys(store.engine, kv)) == 5 and kv.get(root, "mesh") == big[:5 * MIB]
    kv.put(root, "mesh", b"small now")
    assert chunk_keys(store.engine, kv) == [] and kv.get(root, "mesh") == b"small now"


def test_large_values_across_versions_renames_and_snapshots(store, root, kv):
    a, b = os.urandom(3 * MIB + 7), os.urandom(2 * MIB)
    kv.put(root, "a", a)
    kv.rename(root, "a", "moved")                      # same version: the head moves, chunks stay
    assert len(chunk_keys(store.engine, kv)) == 4 and kv.get(root, "moved") == a
    assert kv.keys(root) == ["moved"]
    with pytest.raises(NotFoundError):
        kv.rename(root, "a", "x")
    kv.put(root, "other", b"o")
    with pytest.raises(ExistsError):
        kv.rename(root, "other", "moved", replace=False)
    kv.rename(root, "other", "moved")                  # replacing frees the replaced blob
    assert chunk_keys(store.engine, kv) == [] and kv.get(root, "moved") == b"o"
    kv.put(root, "a", a)
    store.commit(root)
    child = store.branch(root)
    kv.rename(child, "a", "b")                         # the root's blob is shared, never freed
    kv.put(child, "b", b)
    assert kv.get(root, "a") == a and kv.get(child, "b") == b and kv.get(child, "a") is None
    assert len(chunk_keys(store.engine, kv)) == 4 + 2
    # a reader of an open version reads the value it opened, whatever is written meanwhile
    v = kv.open_value(child, "b")
    kv.put(child, "b", os.urandom(2 * MIB))
    kv.delete(child, "b")
    try:
        assert v.read(0, v.size) == b
    finally:
        v.close()
    assert kv.get(child, "b") is None and len(chunk_keys(store.engine, kv)) == 4


def test_a_failed_large_write_leaves_nothing(store, root, kv, monkeypatch):
    kv.put(root, "keep", b"1")
    before = full_scan(store.engine)
    real, calls = store.engine.apply, []

    def failing(batch, sync=False):
        calls.append(len(batch))
        if len(calls) == 3:   # two batches of chunks went in; the head's batch fails
            raise OSError("disk trouble")
        return real(batch, sync)

    monkeypatch.setattr(store.engine, "apply", failing)
    with pytest.raises(OSError):
        kv.put(root, "big", b"y" * (12 * MIB))
    monkeypatch.setattr(store.engine, "apply", real)
    assert full_scan(store.engine) == before


def test_merges_conflict_by_key_and_equal_bytes_merge(store, root, kv):
    big = os.urandom(2 * MIB + 1)
    kv.put(root, "shared", b"base")
    kv.put(root, "gone", b"base")
    store.commit(root)
    left, right = store.branch(root, "left"), store.branch(root, "right")
    kv.put(left, "only-left", b"L")
    kv.put(right, "only-right", b"R")
    kv.put(left, "same", big)                 # the same bytes on both sides, in different blobs
    kv.put(right, "same", big)
    kv.put(left, "small-same", b"s")
    kv.put(right, "small-same", b"s")
    kv.delete(left, "gone")
    kv.delete(right, "gone")
    store.commit(left)
    store.commit(right)
    merged = store.merge([left, right])
    assert dict(kv.items(merged)) == {"only-left": b"L", "only-right": b"R", "same": big,
                                      "small-same": b"s", "shared": b"base"}
    # differing values conflict, named by key; nothing is created
    l2, r2 = store.branch(left, "l2"), store.branch(right, "r2")
    kv.put(l2, "shared", b"left says")
    kv.put(r2, "shared", b"right says")
    kv.put(l2, "mesh", big)
    kv.put(r2, "mesh", big[:-1] + bytes([big[-1] ^ 1]))   # same size, one byte differs
    kv.delete(l2, "only-left")
    kv.put(r2, "only-left", b"changed")   # deleted on one side, written on the other
    store.commit(l2)
    store.commit(r2)
    nodes = len(store.repo_nodes(store.repo_of(root)))
    with pytest.raises(ConflictError) as err:
        store.merge([l2, r2])
    msg = str(err.value)
    assert "kv: key 'shared'" in msg and "kv: key 'mesh'" in msg and "3 key(s)" in msg, msg
    assert "kv: key 'only-left'" in msg
    assert len(store.repo_nodes(store.repo_of(root))) == nodes
