"""Grayscale volumes against a numpy model: subvolume round trips at random
(negative, unaligned, block-crossing) offsets, extents, slices, deletes,
input validation and the stored block layout."""
from __future__ import annotations

import errno
import itertools
import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats.blockcopy import CorruptBlockError
from dvidfs.store import keys
from dvidfs.store.engine import Batch
from dvidfs.store.values import GZIP, LZ4, NONE, decode_value, encode_value

# The model covers [MLO, MLO + MN) on every axis; writes stay inside [-40, 40).
MLO, MN = -48, 96
_names = itertools.count()

SIZE = st.integers(min_value=1, max_value=20)
OFF = st.integers(min_value=-40, max_value=20)


@st.composite
def write_op(draw, bs):
    if draw(st.integers(0, 4)) == 0:  # sometimes a block-aligned box of whole blocks
        off = tuple(draw(st.integers(-40 // bs, 20 // bs)) * bs for _ in range(3))
        size = tuple(draw(st.integers(1, 2)) * bs for _ in range(3))
        size = tuple(min(s, 40 - o) for s, o in zip(size, off))
    else:
        off = tuple(draw(OFF) for _ in range(3))
        size = tuple(draw(SIZE) for _ in range(3))
    kind = draw(st.sampled_from(["random", "const", "zeros"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return off, size, kind, seed


@st.composite
def read_box(draw):
    size = tuple(draw(st.integers(1, 30)) for _ in range(3))
    off = tuple(draw(st.integers(MLO, MLO + MN - s)) for s in size)
    return off, size


@st.composite
def scenario(draw):
    bs = draw(st.sampled_from([8, 16]))
    ops = draw(st.lists(write_op(bs), min_size=1, max_size=6))
    reads = draw(st.lists(read_box(), min_size=1, max_size=4))
    return bs, ops, reads


def make_array(size, kind, seed):
    shape = (size[2], size[1], size[0])
    if kind == "zeros":
        return np.zeros(shape, np.uint8)
    rng = np.random.default_rng(seed)
    if kind == "const":
        return np.full(shape, rng.integers(1, 256), np.uint8)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def msl(offset, size):
    """Model slices ([z, y, x]) of a box (offset, size in x, y, z)."""
    return tuple(slice(offset[a] - MLO, offset[a] - MLO + size[a]) for a in (2, 1, 0))


def new_gray(store, node, bs):
    return store.new_instance(node, f"g{next(_names)}", "grayscale", block_size=bs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario())
def test_random_writes_and_reads_match_numpy_model(store, root, sc):
    bs, ops, reads = sc
    vol = new_gray(store, root, bs)
    view = store.db.view(root)
    model = np.zeros((MN, MN, MN), np.uint8)
    assert vol.extents(view) is None
    boxes = []
    for off, size, kind, seed in ops:
        arr = make_array(size, kind, seed)
        vol.write(root, off, arr)
        model[msl(off, size)] = arr
        boxes.append((off, size))
        # read back exactly what was written
        assert np.array_equal(vol.read(view, off, size), arr)
        # extents = min/max over every write so far (inclusive max in JSON)
        e = vol.extents(view)
        assert e.lo == tuple(min(o[a] for o, _ in boxes) for a in range(3))
        assert e.hi == tuple(max(o[a] + s[a] for o, s in boxes) for a in range(3))
    for off, size in reads:
        got = vol.read(view, off, size)
        assert got.shape == (size[2], size[1], size[0]) and got.dtype == np.uint8
        assert np.array_equal(got, model[msl(off, size)])
    assert np.array_equal(vol.read(view, (MLO,) * 3, (MN,) * 3), model)
    # space far from every write reads as 0
    assert not vol.read(view, (1000, -5000, 77), (9, 9, 9)).any()
    # exactly the blocks touched by writes are stored
    touched = set()
    for off, size in boxes:
        ranges = [range(off[a] // bs, (off[a] + size[a] - 1) // bs + 1) for a in range(3)]
        touched.update(itertools.product(*ranges))
    prefix = keys.instance_prefix(vol.inst.id) + bytes((keys.CLASS_GRAY_BLOCK,))
    stored = {keys.parse_izyx(keys.split_data_key(bytes(k))[1][1:])
              for k in store.engine.scan(prefix, keys.prefix_end(prefix), include_value=False)}
    assert stored == touched


def test_block_crossing_write_and_read_with_negative_coordinates(store, root):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(19, 17, 23), dtype=np.uint8)   # z, y, x
    off = (-13, -1, -9)
    vol.write(root, off, arr)
    model = np.zeros((MN, MN, MN), np.uint8)
    model[msl(off, (23, 17, 19))] = arr
    # every single voxel read individually near the corners
    for (x, y, z) in [(-13, -1, -9), (-14, -1, -9), (9, 15, 9), (10, 15, 9), (-8, 0, 0), (-9, -1, -1)]:
        got = vol.read(view, (x, y, z), (1, 1, 1))[0, 0, 0]
        assert got == model[z - MLO, y - MLO, x - MLO]
    # reads offset by one voxel in each direction
    for d in itertools.product((-1, 0, 1), repeat=3):
        o = tuple(a + b for a, b in zip(off, d))
        assert np.array_equal(vol.read(view, o, (23, 17, 19)), model[msl(o, (23, 17, 19))])


def test_overwrite_partial_keeps_rest_of_block(store, root):
    vol = new_gray(store, root, 16)
    view = store.db.view(root)
    full = np.full((16, 16, 16), 200, np.uint8)
    vol.write(root, (-16, -16, -16), full)
    vol.write(root, (-10, -9, -8), np.full((2, 3, 4), 7, np.uint8))
    expect = full.copy()
    expect[8:10, 7:10, 6:10] = 7
    assert np.array_equal(vol.read(view, (-16, -16, -16), (16, 16, 16)), expect)


def test_stored_block_layout(store, root):
    """One block = raw uint8 voxels in [z][y][x] C order, lz4 value (header 0x80),
    under key 0x01|inst|23|IZYX|version|client|0x03 (dvid.md §3, §7)."""
    vol = new_gray(store, root, 8)
    rng = np.random.default_rng(1)
    blk = rng.integers(0, 256, size=(8, 8, 8), dtype=np.uint8)
    vol.write(root, (-8, 16, 8), blk)                 # block (-1, 2, 1)
    k = keys.data_key(vol.inst.id, bytes((23,)) + keys.izyx(-1, 2, 1), root.version_id)
    raw = store.engine.get(k)
    assert raw is not None and raw[0] == 0x80
    assert decode_value(raw) == blk.tobytes(order="C")
    # extents record: inclusive MinPoint/MaxPoint JSON
    ek = keys.data_key(vol.inst.id, bytes((keys.CLASS_EXTENTS,)), root.version_id)
    assert json.loads(store.engine.get(ek)) == {"MinPoint": [-8, 16, 8], "MaxPoint": [-1, 23, 15]}
    info = vol.info(store.db.view(root))
    assert info["Extents"] == {"MinPoint": [-8, 16, 8], "MaxPoint": [-1, 23, 15]}
    assert info["Extended"]["BlockSize"] == [8, 8, 8]


def test_slices_match_model(store, root):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(11, 13, 17), dtype=np.uint8)   # z 11, y 13, x 17
    off = (-5, 3, -7)
    vol.write(root, off, arr)
    with pytest.raises(NotFoundError):
        vol.read_slice(view, "xy", 100)
    with pytest.raises(InvalidInputError):
        vol.read_slice(view, "xw", 0)
    # xy at z: image[y, x]; xz at y: image[z, x]; yz at x: image[z, y]
    for k in range(11):
        assert np.array_equal(vol.read_slice(view, "xy", off[2] + k), arr[k])
    for k in range(13):
        assert np.array_equal(vol.read_slice(view, "xz", off[1] + k), arr[:, k, :])
    for k in range(17):
        assert np.array_equal(vol.read_slice(view, "yz", off[0] + k), arr[:, :, k])

    img = rng.integers(0, 256, size=(11, 17), dtype=np.uint8)       # xz plane: height z, width x
    vol.write_slice(root, "xz", off[1] + 4, img)
    arr[:, 4, :] = img
    img2 = rng.integers(0, 256, size=(11, 13), dtype=np.uint8)      # yz plane: height z, width y
    vol.write_slice(root, "yz", off[0] + 16, img2)
    arr[:, :, 16] = img2
    assert np.array_equal(vol.read(view, off, (17, 13, 11)), arr)
    with pytest.raises(InvalidInputError):
        vol.write_slice(root, "xy", off[2], np.zeros((17, 13), np.uint8))   # transposed
    with pytest.raises(InvalidInputError):
        vol.write_slice(root, "xy", off[2], np.zeros((2, 13, 17), np.uint8))
    assert np.array_equal(vol.read(view, off, (17, 13, 11)), arr)


def test_write_slice_in_empty_volume_starts_at_origin(store, root):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    with pytest.raises(NotFoundError):
        vol.read_slice(view, "xy", 0)
    img = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    vol.write_slice(root, "xy", 3, img)
    e = vol.extents(view)
    assert (e.lo, e.hi) == ((0, 0, 3), (10, 6, 4))
    assert np.array_equal(vol.read_slice(view, "xy", 3), img)
    assert np.array_equal(vol.read(view, (0, 0, 3), (10, 6, 1))[0], img)


def test_invalid_input_refused_and_nothing_written(store, root, scan_all):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    vol.write(root, (0, 0, 0), np.full((2, 2, 2), 4, np.uint8))
    before = scan_all(store.engine)
    bad = [
        np.full((2, 2, 2), -1, np.int64),
        np.full((2, 2, 2), 256, np.int32),
        np.full((2, 2, 2), 1.5, np.float64),
        np.full((2, 2, 2), 300, np.uint16),
        np.zeros((2, 2), np.uint8),
        np.zeros((0, 2, 2), np.uint8),
    ]
    for arr in bad:
        with pytest.raises(InvalidInputError):
            vol.write(root, (0, 0, 0), arr)
    for size in ((0, 1, 1), (1, -1, 1)):
        with pytest.raises(InvalidInputError):
            vol.read(view, (0, 0, 0), size)
        with pytest.raises(InvalidInputError):
            vol.delete(root, (0, 0, 0), size)
    assert scan_all(store.engine) == before
    # in-range unsigned arrays of another dtype are accepted
    vol.write(root, (1, 1, 1), np.full((1, 1, 1), 255, np.uint16))
    assert vol.read(view, (1, 1, 1), (1, 1, 1))[0, 0, 0] == 255


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8])
def test_in_range_signed_integer_arrays_are_accepted(store, root, dtype):
    vol = new_gray(store, root, 8)
    vol.write(root, (1, 1, 1), np.full((1, 1, 2), 100, dtype))
    assert vol.read(store.db.view(root), (1, 1, 1), (2, 1, 1)).tolist() == [[[100, 100]]]


@pytest.mark.parametrize("bs", [0, 12, 2048, -8])
def test_bad_block_size_refused(store, root, bs):
    with pytest.raises(InvalidInputError):
        store.new_instance(root, f"bad{bs}".replace("-", "m"), "grayscale", block_size=bs)
    assert not store.db.instances_at(root)


def test_default_block_size_is_32(store, root):
    vol = store.new_instance(root, "dflt", "grayscale")
    assert vol.grid.size == (32, 32, 32)
    vol.write(root, (31, 31, 31), np.full((2, 2, 2), 5, np.uint8))
    assert vol.read(store.db.view(root), (30, 30, 30), (4, 4, 4)).sum() == 8 * 5


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.tuples(OFF, OFF, OFF), st.tuples(SIZE, SIZE, SIZE),
                          st.integers(0, 2**32 - 1)), min_size=1, max_size=8))
def test_random_writes_and_deletes_match_model(store, root, ops):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    model = np.zeros((MN, MN, MN), np.uint8)
    for is_delete, off, size, seed in ops:
        if is_delete:
            vol.delete(root, off, size)
            model[msl(off, size)] = 0
        else:
            arr = make_array(size, "random", seed)
            vol.write(root, off, arr)
            model[msl(off, size)] = arr
    assert np.array_equal(vol.read(view, (MLO,) * 3, (MN,) * 3), model)


def test_coordinates_outside_int32_do_not_alias(store, root):
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    with pytest.raises(InvalidInputError):
        vol.write(root, (2**34, 0, 0), np.full((1, 1, 1), 9, np.uint8))
    with pytest.raises(InvalidInputError):
        vol.write(root, (2**31 - 1, 0, 0), np.full((1, 1, 2), 9, np.uint8))
    vol.write(root, (2**31 - 1, 0, 0), np.full((1, 1, 1), 9, np.uint8))  # the last int32 voxel is fine
    assert vol.read(view, (2**31 - 1, 0, 0), (1, 1, 1))[0, 0, 0] == 9
    assert vol.read(view, (-2**31, 0, 0), (1, 1, 1))[0, 0, 0] == 0


def test_concurrent_writers_into_one_block_lose_nothing(store, root):
    """Partial-block writes read-modify-write the block; writers in several
    threads must not overwrite each other's voxels."""
    vol = new_gray(store, root, 16)
    view = store.db.view(root)
    n_threads, per_thread = 8, 40
    errors = []

    def work(t):
        try:
            for i in range(per_thread):
                v = t * per_thread + i               # 0..319: a distinct voxel each
                x, y, z = v % 16, (v // 16) % 16, v // 256
                vol.write(root, (x, y, z), np.full((1, 1, 1), t + 1, np.uint8))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    expect = np.zeros(16 ** 3, np.uint8)
    for t in range(n_threads):
        expect[t * per_thread:(t + 1) * per_thread] = t + 1
    assert np.array_equal(vol.read(view, (0, 0, 0), (16, 16, 16)).reshape(-1), expect)


def test_block_cached_while_open_is_not_served_after_commit(store, root):
    """A reader that raced a write in an open node may have cached the block
    under an early generation of that node; once the node is committed and read
    from a child, that entry must not be served (ancestor blocks use their own key)."""
    vol = new_gray(store, root, 8)
    view = store.db.view(root)
    vol.write(root, (0, 0, 0), np.full((8, 8, 8), 1, np.uint8))
    # what a racing reader could have left: the first write's block under generation 0
    tk = vol.block_tkey((0, 0, 0))
    stale = np.full((8, 8, 8), 1, np.uint8)
    stale.flags.writeable = False
    store.block_cache.put(vol._cache_key(tk, root.version_id, view, 0), stale)
    vol.write(root, (0, 0, 0), np.full((8, 8, 8), 2, np.uint8))
    store.commit(root)
    child = store.branch(root)
    assert (vol.read(store.db.view(child), (0, 0, 0), (8, 8, 8)) == 2).all()


def test_blocks_stored_by_other_dvid_encodings_read_back(store, root):
    """DVID also stores values gzip-compressed, uncompressed or with a CRC32
    (dvid.md): reads and slices decode those too, next to our lz4 blocks."""
    vol = new_gray(store, root, 8)
    src = np.random.default_rng(4).integers(0, 256, (16, 16, 24), dtype=np.uint8)
    vol.write(root, (0, 0, 0), src)
    batch = Batch()
    for (cx, cy, cz), enc in {(0, 0, 0): {"compression": GZIP}, (1, 1, 1): {"compression": NONE},
                              (2, 0, 1): {"compression": LZ4, "checksum": True},
                              (1, 0, 0): {"compression": GZIP, "checksum": True}}.items():
        blk = src[cz * 8:cz * 8 + 8, cy * 8:cy * 8 + 8, cx * 8:cx * 8 + 8]
        batch.put(keys.data_key(vol.inst.id, vol.block_tkey((cx, cy, cz)), root.version_id),
                  encode_value(blk.tobytes(), **enc))
    store.engine.apply(batch)
    view = store.db.view(root)
    np.testing.assert_array_equal(vol.read(view, (0, 0, 0), (24, 16, 16)), src)
    for z in (0, 7, 9, 15):
        np.testing.assert_array_equal(vol.read_slice(view, "xy", z), src[z])
    np.testing.assert_array_equal(vol.read_slice(view, "yz", 17), src[:, :, 17])


def test_damaged_block_is_an_io_error(store, root):
    vol = new_gray(store, root, 8)
    vol.write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))
    k = keys.data_key(vol.inst.id, vol.block_tkey((0, 0, 0)), root.version_id)
    batch = Batch()
    batch.put(k, store.engine.get(k)[:-2])  # a truncated lz4 stream
    store.engine.apply(batch)
    with pytest.raises(CorruptBlockError) as exc:
        vol.read_slice(store.db.view(root), "xy", 3)
    assert exc.value.errno == errno.EIO and repr(vol.inst.name) in str(exc.value)


def test_yz_slices_across_versions_follow_the_model(store, root):
    """yz slices (one block per row) read blocks by point lookups while a single
    visible version wrote the instance, by range scans otherwise.  Both agree
    with a numpy model at every node of a chain, including a child that starts
    writing (and deleting) after it was first read, and a branch beside it."""
    vol = new_gray(store, root, 8)
    rng = np.random.default_rng(9)
    model = rng.integers(1, 256, (24, 16, 20), dtype=np.uint8)
    vol.write(root, (0, 0, 0), model)
    store.commit(root)
    child = store.branch(root)
    side = store.branch(root, name="side")
    views = {n.uuid: store.db.view(n) for n in (root, child, side)}
    for x in (0, 7, 8, 19):  # before the child writes: one writer (root) everywhere
        for n in (root, child, side):
            np.testing.assert_array_equal(vol.read_slice(views[n.uuid], "yz", x), model[:, :, x])
    changed = model.copy()
    patch = rng.integers(1, 256, (10, 16, 9), dtype=np.uint8)
    vol.write(child, (5, 0, 3), patch)
    changed[3:13, :, 5:14] = patch
    vol.delete(child, (8, 0, 16), (8, 16, 8))  # whole blocks (tombstones) and ...
    changed[16:24, :, 8:16] = 0
    vol.delete(child, (0, 3, 0), (2, 2, 2))    # ... part of one (rewritten)
    changed[0:2, 3:5, 0:2] = 0
    for x in range(20):
        np.testing.assert_array_equal(vol.read_slice(views[child.uuid], "yz", x), changed[:, :, x])
        np.testing.assert_array_equal(vol.read_slice(views[side.uuid], "yz", x), model[:, :, x])
        np.testing.assert_array_equal(vol.read_slice(views[root.uuid], "yz", x), model[:, :, x])
    store.commit(child)
    grandchild = store.branch(child)
    for x in (0, 9, 15):
        np.testing.assert_array_equal(vol.read_slice(store.db.view(grandchild), "yz", x), changed[:, :, x])
