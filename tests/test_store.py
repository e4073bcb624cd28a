"""Storage layer: key layout (docs/dvid.md §7), value codec, engine locking,
and persistence of everything across close/reopen."""
from __future__ import annotations

import errno
import gzip
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvidfs.core import Dvid
from dvidfs.errors import InvalidInputError, NotFoundError, StoreBusyError
from dvidfs.store import keys
from dvidfs.store.values import GZIP, LZ4, NONE, decode_value, encode_value

I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
XYZS = st.tuples(I32, I32, I32)
SMALL = st.integers(min_value=-5, max_value=5)


# ---------------------------------------------------------------- IZYX
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(XYZS, st.tuples(SMALL, SMALL, SMALL)), min_size=2, max_size=40))
def test_izyx_byte_order_is_numeric_zyx_order(points):
    by_bytes = sorted(points, key=lambda p: keys.izyx(*p))
    by_numbers = sorted(points, key=lambda p: (p[2], p[1], p[0]))
    assert by_bytes == by_numbers


@settings(max_examples=200, deadline=None)
@given(XYZS)
def test_parse_izyx_inverts_izyx(p):
    b = keys.izyx(*p)
    assert len(b) == 12
    assert keys.parse_izyx(b) == p


def test_izyx_documented_bytes():
    # z, y, x as big-endian uint32 of (v - MinInt32), i.e. sign bit flipped (dvid.md §7)
    assert keys.izyx(0, 0, 0) == bytes.fromhex("80000000" * 3)
    assert keys.izyx(-1, 0, 1) == bytes.fromhex("80000001" "80000000" "7fffffff")
    assert keys.izyx(2**31 - 1, -(2**31), 5) == bytes.fromhex("80000005" "00000000" "ffffffff")


def test_data_key_documented_layout():
    tk = keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(1, 2, 3))
    k = keys.data_key(5, tk, 7)
    # 0x01 | InstanceID u32 BE | TKey | VersionID u32 BE | ClientID u32 BE | marker
    assert k == b"\x01" + bytes.fromhex("00000005") + tk + bytes.fromhex("00000007") + \
        bytes.fromhex("00000000") + b"\x03"
    assert tk[0] == 23
    t = keys.data_key(5, tk, 7, tombstone=True)
    assert t[:-1] == k[:-1] and t[-1] == 0x4F
    assert keys.split_data_key(k) == (5, tk, 7, False)
    assert keys.split_data_key(t) == (5, tk, 7, True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.tuples(SMALL, SMALL, SMALL), st.integers(0, 2**32 - 1), st.booleans()),
                min_size=2, max_size=30))
def test_versions_of_a_key_are_adjacent_and_ordered(entries):
    """The version is a key suffix: sorting keys groups each TKey's versions
    together, in (TKey, version) order."""
    ks = [keys.data_key(3, keys.tkey(23, keys.izyx(*p)), v, t) for p, v, t in entries]
    parsed = [keys.split_data_key(k) for k in sorted(ks)]
    expected = sorted((3, keys.tkey(23, keys.izyx(*p)), v, t) for p, v, t in entries)
    # compare (tk, version) order; tombstone marker only breaks ties
    assert [(p[1], p[2]) for p in parsed] == [(e[1], e[2]) for e in expected]
    # each TKey occupies one contiguous run
    seen, last = set(), None
    for _, tk, _, _ in parsed:
        if tk != last:
            assert tk not in seen
            seen.add(tk)
            last = tk


def test_prefix_end():
    assert keys.prefix_end(b"\x01\x02") == b"\x01\x03"
    assert keys.prefix_end(b"\x01\xff") == b"\x02"
    for p in (b"\x00", b"\x01\x00\x00\x00\x05", b"\x03\xff\x10\xff"):
        end = keys.prefix_end(p)
        assert end > p + b"\xff" * 20
        assert not end.startswith(p)


# ---------------------------------------------------------------- values
@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([LZ4, GZIP, NONE]), st.booleans())
def test_value_codec_round_trip(payload, comp, checksum):
    v = encode_value(payload, comp, checksum=checksum)
    assert decode_value(v) == payload
    assert v[0] >> 5 == comp
    assert (v[0] >> 3) & 3 == (1 if checksum else 0)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000))
def test_lz4_layout(payload):
    v = encode_value(payload, LZ4)
    assert v[0] == 0x80
    assert struct.unpack("<I", v[1:5])[0] == len(payload)
    assert lz4.block.decompress(v[5:], uncompressed_size=len(payload)) == payload


def test_gzip_and_none_layout():
    payload = bytes(range(256)) * 10
    g = encode_value(payload, GZIP)
    assert g[0] == 0x40 and gzip.decompress(g[1:]) == payload
    n = encode_value(payload, NONE)
    assert n == b"\x00" + payload


def test_checksum_layout_and_corruption_detected():
    payload = b"hello dvid" * 30
    v = encode_value(payload, LZ4, checksum=True)
    assert v[0] == 0x80 | 0x08
    body = v[5:]
    assert struct.unpack("<I", v[1:5])[0] == zlib.crc32(body)
    assert lz4.block.decompress(body) == payload
    bad = bytearray(v)
    bad[-1] ^= 0x01
    with pytest.raises(InvalidInputError):
        decode_value(bytes(bad))


def test_unknown_compression_refused():
    with pytest.raises(InvalidInputError):
        decode_value(bytes((7 << 5,)) + b"xyz")


# ---------------------------------------------------------------- engine locking
def test_open_missing_store_is_not_found(tmp_path):
    with pytest.raises(NotFoundError) as ei:
        Dvid(tmp_path / "nope")
    assert ei.value.errno == errno.ENOENT
    assert not (tmp_path / "nope" / "leveldb").exists()


def test_second_open_in_same_process_is_busy(store, store_path, repo):
    with pytest.raises(StoreBusyError) as ei:
        Dvid(store_path)
    assert ei.value.errno == errno.EBUSY
    # the first handle still works
    assert store.db.node(repo.root).uuid == repo.root


def test_busy_message_blames_no_mount_that_is_not_there(store, store_path):
    """A marker whose mount point is not mounted (stale, or a CLI holds the store)
    gives the generic message; test_mount.py checks the message of a real mount."""
    store.mark_mounted("/mnt/somewhere")
    try:
        with pytest.raises(StoreBusyError) as ei:
            Dvid(store_path)
        assert "/mnt/somewhere" not in str(ei.value) and "in use by another process" in str(ei.value)
    finally:
        store.clear_mounted()
    assert not os.path.exists(os.path.join(store_path, "mounted-at.json"))


_CHILD = textwrap.dedent("""
    import sys
    from dvidfs.core import Dvid
    from dvidfs.errors import StoreBusyError
    try:
        s = Dvid(sys.argv[1])
    except StoreBusyError as e:
        print("BUSY", e.errno)
        sys.exit(3)
    print("OPEN", sorted(r.alias for r in s.db.repos.values()))
    s.close()
""")


def _open_in_child(path):
    return subprocess.run([sys.executable, "-c", _CHILD, os.fspath(path)],
                          capture_output=True, text=True, timeout=60)


def test_second_open_in_other_process_is_busy_then_free(store_path):
    s = Dvid.init(store_path)
    s.new_repo("held")
    try:
        r = _open_in_child(store_path)
        assert r.returncode == 3, r.stderr
        assert r.stdout.split() == ["BUSY", str(errno.EBUSY)]
    finally:
        s.close()
    r = _open_in_child(store_path)
    assert r.returncode == 0, r.stderr
    assert "held" in r.stdout


def test_close_then_reopen_in_same_process(store_path):
    s = Dvid.init(store_path)
    s.close()
    s.close()  # idempotent
    s2 = Dvid(store_path)
    s2.close()


# ---------------------------------------------------------------- persistence
def test_reopen_keeps_repos_nodes_branches_logs_instances_voxels(store_path):
    rng = np.random.default_rng(7)
    s = Dvid.init(store_path)
    db = s.db
    repo = db.new_repo("alpha", description="first repo")
    other = db.new_repo("beta")
    root = db.node(repo.root)
    vol = s.new_instance(root, "img", "grayscale", block_size=8)
    a = rng.integers(1, 256, size=(9, 11, 13), dtype=np.uint8)
    vol.write(root, (-5, 3, -2), a)
    db.commit(root, note="root data", log=["wrote a"])
    db.append_log(root, ["later line"])
    feat = db.branch(root, "feature", note="feat")
    b = rng.integers(1, 256, size=(4, 4, 4), dtype=np.uint8)
    vol.write(feat, (20, 20, 20), b)
    s.new_instance(feat, "img2", "grayscale", block_size=16)
    db.commit(feat, note="feat done")
    nxt = db.branch(root)  # newversion on master, left open
    db.set_note(nxt, "open leaf")

    snapshot_nodes = {u: n.to_json() for u, n in db.nodes.items()}
    snapshot_repos = {u: r.to_json() for u, r in db.repos.items()}
    branches_before = {r: {k: n.uuid for k, n in db.branches(db.repos[r]).items()} for r in db.repos}
    max_version = max(n.version_id for n in db.nodes.values())
    s.close()

    s = Dvid(store_path)
    try:
        db = s.db
        assert {u: n.to_json() for u, n in db.nodes.items()} == snapshot_nodes
        assert {u: r.to_json() for u, r in db.repos.items()} == snapshot_repos
        assert {r: {k: n.uuid for k, n in db.branches(db.repos[r]).items()}
                for r in db.repos} == branches_before
        assert db.repo("alpha").description == "first repo"
        assert db.repo("beta").root == other.root
        root2 = db.node(repo.root)
        assert root2.locked and root2.log == ["wrote a", "later line"] and root2.note == "root data"
        assert db.node(nxt.uuid).note == "open leaf" and not db.node(nxt.uuid).locked
        assert db.node(f"{repo.root[:10]}:feature").uuid == feat.uuid
        assert db.node(f"{repo.root[:10]}:master").uuid == nxt.uuid
        assert sorted(db.instances_at(db.node(feat.uuid))) == ["img", "img2"]
        assert sorted(db.instances_at(db.node(nxt.uuid))) == ["img"]
        assert db.instances_at(db.node(feat.uuid))["img2"].config["BlockSize"] == [16, 16, 16]

        model_root = np.zeros((40, 40, 40), np.uint8)  # covers [-10, 30) on each axis
        model_root[-2 + 10:-2 + 10 + 9, 3 + 10:3 + 10 + 11, -5 + 10:-5 + 10 + 13] = a
        model_feat = model_root.copy()
        model_feat[30:34, 30:34, 30:34] = b
        v2 = s.data(db.node(feat.uuid), "img")
        assert np.array_equal(v2.read(db.view(repo.root), (-10, -10, -10), (40, 40, 40)), model_root)
        assert np.array_equal(v2.read(db.view(nxt.uuid), (-10, -10, -10), (40, 40, 40)), model_root)
        assert np.array_equal(v2.read(db.view(feat.uuid), (-10, -10, -10), (40, 40, 40)), model_feat)
        e = v2.extents(db.view(feat.uuid))
        assert e.lo == (-5, 3, -2) and e.hi == (24, 24, 24)

        # counters continue: new nodes and instances get fresh ids
        n3 = db.node(nxt.uuid)
        inst = s.new_instance(n3, "img3", "grayscale")
        assert inst.inst.id not in {i.id for r in db.repos.values() for i in r.instances.values()
                                    if i.name != "img3"}
        db.commit(n3)
        n4 = db.branch(n3)
        assert n4.version_id == max_version + 1
        # the reopened store is writable
        s.data(n4, "img").write(n4, (0, 0, 0), np.full((1, 1, 1), 9, np.uint8))
        assert s.data(n4, "img").read(db.view(n4), (0, 0, 0), (1, 1, 1))[0, 0, 0] == 9
    finally:
        s.close()


def test_put_skips_tombstone_removal_only_when_none_exist(store, root, gray):
    """Bulk writes leave out the tombstone delete when the version never
    deleted anything; after a delete they must remove it again."""
    import numpy as np
    from dvidfs.store import keys as K

    view = store.db.view(root)
    gray.write(root, (0, 0, 0), np.full((8, 8, 8), 3, np.uint8))
    gray.delete(root, (0, 0, 0), (8, 8, 8))
    assert gray.read(view, (0, 0, 0), (8, 8, 8)).max() == 0
    tk = gray.block_tkey((0, 0, 0))
    assert store.engine.get(K.data_key(gray.inst.id, tk, root.version_id, tombstone=True)) == b""
    gray.write(root, (0, 0, 0), np.full((8, 8, 8), 5, np.uint8))   # must clear the tombstone
    assert store.engine.get(K.data_key(gray.inst.id, tk, root.version_id, tombstone=True)) is None
    assert (gray.read(view, (0, 0, 0), (8, 8, 8)) == 5).all()


@settings(max_examples=100, deadline=None)
@given(I32, st.lists(I32, min_size=1, max_size=4), st.lists(I32, min_size=1, max_size=4),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_block_keys_equal_data_keys(x, ys, zs, inst, version):
    """The packed column of keys (yz point reads) is byte for byte what
    data_key builds from tkey + izyx, negative coordinates included, z-major."""
    for tk_head in (bytes((keys.CLASS_GRAY_BLOCK,)), bytes((keys.CLASS_LABEL_BLOCK, 0))):
        got = keys.block_keys(keys.instance_prefix(inst) + tk_head, keys.data_suffix(version), x, ys, zs)
        want = [keys.data_key(inst, tk_head + keys.izyx(x, y, z), version) for z in zs for y in ys]
        assert got == want
