"""The filesystem adapter called directly: no kernel, no mount (S3QL's t3_fs_api).

Two layers, both on a real core (`Dvid` on the in-memory engine, or on LevelDB
where the engine matters):

* `Tree` (synchronous): listings, exact sizes, slice pixels, body files,
  control commands and bad input, walked with `tree.lookup(ROOT, ...)`.
* `DvidOperations` (under trio): the pyfuse3 handlers awaited directly, with
  inode numbers and file handles, plus the change subscription.

Every expected value comes from the numpy arrays the store was written from,
decoded with independent decoders (Pillow, tifffile, a small DVID sparsevol
parser here, a plain-Python splitmix64 for label colours), never from
`dvidfs.formats`.  "Changes nothing" is checked with a full engine scan.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
from dataclasses import dataclass

import numpy as np
import pyfuse3
import pytest
import tifffile
import trio
import trio.testing
from PIL import Image

from dvidfs.core import Change, Dvid
from dvidfs.errors import DvidfsError, NotFoundError, ReadOnlyError
from dvidfs.fs.nodes import ROOT
from dvidfs.fs.operations import DvidOperations
from dvidfs.fs.tree import Tree
from dvidfs.store.memory import MemoryEngine
from reference import ref_rles

BS = 8                      # block size of every instance here
GOFF = (-5, 3, -4)          # x, y, z of the gray volume's first voxel: negative, not block-aligned
GSHAPE = (11, 13, 17)       # z, y, x: crosses 8-voxel block borders on every axis
LOFF = (-3, 2, 5)           # labels
LSHAPE = (12, 10, 14)
BIG = 2**40 + 3             # a label id above 2**32
PLANE_AXIS = {"xy": 2, "xz": 1, "yz": 0}   # the fixed axis (x=0, y=1, z=2)
LABEL_INSTANCE_FILES = ["info.json", "labels", "merge", "mutations.jsonl", "precomputed",
                        "xy", "xy-fiji", "xy-rgb", "xz", "xz-fiji", "xz-rgb", "yz", "yz-fiji", "yz-rgb"]
BODY_FILES = ["bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels"]


# ----------------------------------------------------------------------------- source data
def gray_volume(seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(GSHAPE)
    return (((x * 3 + y * 5 + z * 7) % 200) + rng.integers(0, 50, GSHAPE)).astype(np.uint8)


def label_volume() -> np.ndarray:
    z, y, x = np.indices(LSHAPE)
    lab = np.where(x < 6, 7, 9).astype(np.uint64)
    lab[(z > 6) & (y < 4)] = BIG
    lab[:, :, 12:] = 0
    return lab


def numpy_slice(vol: np.ndarray, off, plane: str, coord: int) -> np.ndarray:
    ox, oy, oz = off
    if plane == "xy":
        return vol[coord - oz]
    if plane == "xz":
        return vol[:, coord - oy, :]
    return vol[:, :, coord - ox]


def coord_range(off, shape, plane) -> range:
    axis = PLANE_AXIS[plane]
    n = shape[2 - axis]
    return range(off[axis], off[axis] + n)


def sample_coords(off, shape, plane) -> list[int]:
    r = coord_range(off, shape, plane)
    return sorted({r[0], r[1], r[len(r) // 2], r[-1]})


# ----------------------------------------------------------------------------- independent codecs
def png_bytes(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    return b.getvalue()


def decode_png(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == mode
        return np.asarray(im)


def decode_tiff(data: bytes) -> np.ndarray:
    return tifffile.imread(io.BytesIO(data))


def ref_color(label: int) -> tuple[int, int, int]:
    """The documented label colour (splitmix64 finaliser of the id, its three
    low bytes mapped to 64..255; 0 is black), in plain Python integers."""
    if label == 0:
        return (0, 0, 0)
    m = (1 << 64) - 1
    z = (label + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return tuple(64 + ((((z >> (8 * i)) & 0xFF) * 3) >> 2) for i in range(3))


def ref_rgb(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape + (3,), np.uint8)
    for v in np.unique(labels).tolist():
        out[labels == v] = ref_color(int(v))
    return out


def parse_rles(data: bytes) -> list[tuple[int, int, int, int]]:
    """DVID sparsevol "rles": 12-byte header (descriptor 0, 3 dims, run axis 0,
    reserved, uint32 voxel count 0, uint32 span count), then int32 x, y, z, length."""
    assert len(data) >= 12
    assert tuple(data[:4]) == (0, 3, 0, 0)
    voxels, n = struct.unpack("<II", data[4:12])
    assert voxels == 0
    assert len(data) == 12 + 16 * n
    return [struct.unpack_from("<iiii", data, 12 + 16 * i) for i in range(n)]


def rles_mask(spans, off, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, z, n in spans:
        assert n > 0
        zi, yi, xi = z - off[2], y - off[1], x - off[0]
        assert 0 <= zi < shape[0] and 0 <= yi < shape[1] and 0 <= xi and xi + n <= shape[2]
        assert not mask[zi, yi, xi:xi + n].any(), "overlapping spans"
        mask[zi, yi, xi:xi + n] = True
    return mask


def voxel_coords(mask, off):
    z, y, x = np.nonzero(mask)
    return x + off[0], y + off[1], z + off[2]


def block_set(mask, off) -> set[tuple[int, int, int]]:
    x, y, z = voxel_coords(mask, off)
    return set(zip((x // BS).tolist(), (y // BS).tolist(), (z // BS).tolist()))


# ----------------------------------------------------------------------------- stores
def engine_scan(core: Dvid) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in core.engine.scan(b"", b"\xff" * 64)]


@dataclass
class World:
    core: Dvid
    tree: Tree
    repo: object
    node: object
    vol: np.ndarray
    off: tuple
    data: str

    def walk(self, *names, node=None):
        e = self.tree.lookup(ROOT, self.repo.alias)
        e = self.tree.lookup(e, (node or self.node).uuid)
        for n in names:
            e = self.tree.lookup(e, n)
        return e

    def ctl(self, name, node=None):
        return self.walk(".dvid", name, node=node)


def make_gray(core: Dvid, repo_name="em", seed=1) -> World:
    repo = core.new_repo(repo_name)
    node = core.node(repo.root)
    vol = gray_volume(seed)
    core.new_instance(node, "gray", "grayscale", block_size=BS).write(node, GOFF, vol)
    return World(core, Tree(core), repo, node, vol, GOFF, "gray")


def make_labels(core: Dvid) -> World:
    repo = core.new_repo("seg")
    node = core.node(repo.root)
    lab = label_volume()
    core.new_instance(node, "bodies", "labels", block_size=BS).write(node, LOFF, lab)
    return World(core, Tree(core), repo, node, lab, LOFF, "bodies")


@pytest.fixture(params=["memory", "leveldb"])
def any_core(request, tmp_path):
    core = Dvid(engine=MemoryEngine()) if request.param == "memory" else Dvid.init(tmp_path / "store")
    try:
        yield core
    finally:
        core.close()


@pytest.fixture
def core():
    c = Dvid(engine=MemoryEngine())
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def gw(core) -> World:
    return make_gray(core)


@pytest.fixture
def lw(core) -> World:
    return make_labels(core)


def names(tree, e) -> list[str]:
    return [n for n, _, _ in tree.list(e)]


# ============================================================================= Tree level
def test_listings_in_coordinate_order(any_core):
    w = make_gray(any_core)
    t = w.tree
    assert names(t, ROOT) == ["em"]
    repo = t.lookup(ROOT, "em")
    assert names(t, repo) == sorted([w.node.uuid, "master"])
    node = t.lookup(repo, w.node.uuid)
    assert names(t, node) == [".dvid", "gray"]
    assert names(t, t.lookup(node, ".dvid")) == sorted(
        ["commit", "branch", "merge", "resolve", "conflicts", "tag", "newdata", "downres", "note", "log",
         "info.json", "last-error"])
    inst = t.lookup(node, "gray")
    assert names(t, inst) == ["info.json", "precomputed", "xy", "xz", "yz"]
    info = json.loads(t.read(t.lookup(inst, "info.json")))
    assert info["Extents"]["MinPoint"] == list(GOFF)
    assert info["Extents"]["MaxPoint"] == [GOFF[0] + GSHAPE[2] - 1, GOFF[1] + GSHAPE[1] - 1,
                                           GOFF[2] + GSHAPE[0] - 1]
    for plane in PLANE_AXIS:
        pd = t.lookup(inst, plane)
        listing = t.list(pd)
        want = list(coord_range(GOFF, GSHAPE, plane))
        assert [n for n, _, _ in listing] == [f"{c:05d}.png" for c in want]
        # every listed entry is the one a lookup of its name gives
        for n, e, _ in listing:
            assert t.lookup(pd, n) == e
        for c in (want[0] - 1, want[-1] + 1):
            with pytest.raises(NotFoundError):
                t.lookup(pd, f"{c:05d}.png")
    xy = [n for n, _, _ in t.list(t.lookup(inst, "xy"))]
    # negative coordinates: "-0004.png" ... first, in coordinate (not name) order
    assert xy[:5] == ["-0004.png", "-0003.png", "-0002.png", "-0001.png", "00000.png"]
    assert xy != sorted(xy)
    for bad in ("abc.png", "00001.jpg", "1.png.tmp"):
        with pytest.raises(NotFoundError):
            t.lookup(t.lookup(inst, "xy"), bad)


def test_gray_slice_sizes_and_pixels(any_core):
    w = make_gray(any_core)
    t = w.tree
    for plane in PLANE_AXIS:
        pd = w.walk("gray", plane)
        listed = {n: a for n, _, a in t.list(pd)}
        for c in sample_coords(GOFF, GSHAPE, plane):
            e = t.lookup(pd, f"{c:05d}.png")
            a = t.attr(e)
            data = t.read(e)
            assert a.kind == "file" and a.writable and not a.immutable
            assert a.size == len(data) == listed[f"{c:05d}.png"].size
            np.testing.assert_array_equal(decode_png(data, "L"), numpy_slice(w.vol, GOFF, plane, c))


def test_label_tiff_and_rgb_slices(lw):
    t, lab = lw.tree, lw.vol
    assert names(t, lw.walk("bodies")) == LABEL_INSTANCE_FILES
    for plane in PLANE_AXIS:
        tif_dir, rgb_dir = lw.walk("bodies", plane), lw.walk("bodies", plane + "-rgb")
        cs = list(coord_range(LOFF, LSHAPE, plane))
        assert names(t, tif_dir) == [f"{c:05d}.tif" for c in cs]
        assert names(t, rgb_dir) == [f"{c:05d}.png" for c in cs]
        for c in sample_coords(LOFF, LSHAPE, plane):
            want = numpy_slice(lab, LOFF, plane, c)
            e = t.lookup(tif_dir, f"{c:05d}.tif")
            data = t.read(e)
            assert t.attr(e).size == len(data) and t.attr(e).writable
            got = decode_tiff(data)
            assert got.dtype == np.uint64
            np.testing.assert_array_equal(got, want)
            e = t.lookup(rgb_dir, f"{c:05d}.png")
            data = t.read(e)
            assert t.attr(e).size == len(data)
            assert not t.attr(e).writable          # colour views are read-only
            np.testing.assert_array_equal(decode_png(data, "RGB"), ref_rgb(want))


def test_body_files(lw):
    t, lab = lw.tree, lw.vol
    ids = [int(v) for v in np.unique(lab) if v]
    labels_dir = lw.walk("bodies", "labels")
    assert names(t, labels_dir) == [str(i) for i in ids]
    for body in ids:
        mask = lab == body
        bdir = t.lookup(labels_dir, str(body))
        assert names(t, bdir) == BODY_FILES
        files = {n: t.lookup(bdir, n) for n in BODY_FILES}
        for n, e in files.items():
            if n != "split":
                assert t.attr(e).size == len(t.read(e)), n
        assert int(t.read(files["size"])) == int(mask.sum())
        sv = t.read(files["sparsevol"])
        np.testing.assert_array_equal(rles_mask(parse_rles(sv), LOFF, LSHAPE), mask)
        assert sv == ref_rles(mask, LOFF)
        coarse = parse_rles(t.read(files["sparsevol-coarse"]))
        got_blocks = {(x + i, y, z) for x, y, z, n in coarse for i in range(n)}
        assert got_blocks == block_set(mask, LOFF)
        blocks = json.loads(t.read(files["blocks.json"]))
        assert len(blocks) == len(got_blocks) and {tuple(b) for b in blocks} == block_set(mask, LOFF)
        x, y, z = voxel_coords(mask, LOFF)
        assert json.loads(t.read(files["bbox.json"])) == {
            "MinPoint": [int(x.min()), int(y.min()), int(z.min())],
            "MaxPoint": [int(x.max()), int(y.max()), int(z.max())]}
        assert t.read(files["supervoxels"]).split() == [str(body).encode()]
    for bad in ("12345", "0", "x7"):
        with pytest.raises(NotFoundError):
            t.lookup(labels_dir, bad)


def test_label_merge_and_split_through_files(lw):
    t, lab, core = lw.tree, lw.vol, lw.core
    tif = lw.walk("bodies", "xy")
    zs = list(coord_range(LOFF, LSHAPE, "xy"))
    before = {z: t.read(t.lookup(tif, f"{z:05d}.tif")) for z in zs}   # fills the render cache
    t.control(lw.walk("bodies", "merge"), "7 9\n")
    merged = np.where(lab == 9, 7, lab)
    for z in zs:
        np.testing.assert_array_equal(decode_tiff(t.read(t.lookup(tif, f"{z:05d}.tif"))),
                                      merged[z - LOFF[2]])
    assert any(before[z] != t.read(t.lookup(tif, f"{z:05d}.tif")) for z in zs)
    labels_dir = lw.walk("bodies", "labels")
    assert names(t, labels_dir) == [str(int(v)) for v in np.unique(merged) if v]
    with pytest.raises(NotFoundError):
        t.lookup(labels_dir, "9")
    b7 = t.lookup(labels_dir, "7")
    assert int(t.read(t.lookup(b7, "size"))) == int((merged == 7).sum())
    assert t.read(t.lookup(b7, "sparsevol")) == ref_rles(merged == 7, LOFF)
    assert sorted(int(s) for s in t.read(t.lookup(b7, "supervoxels")).split()) == [7, 9]
    rec = json.loads(t.read(lw.walk("bodies", "mutations.jsonl")).splitlines()[-1])
    assert rec["Action"] == "merge" and rec["Target"] == 7 and rec["Labels"] == [9]

    # split: a box cut out of body 7 becomes a new body
    cut = np.zeros(LSHAPE, bool)
    cut[2:6, 1:8, 3:10] = True
    cut &= merged == 7
    split = t.lookup(b7, "split")
    assert t.attr(split).writable and t.attr(split).size == 0
    t.upload(split, ref_rles(cut, LOFF))
    rec = json.loads(t.read(lw.walk("bodies", "mutations.jsonl")).splitlines()[-1])
    assert rec["Action"] == "split" and rec["Target"] == 7 and rec["Voxels"] == int(cut.sum())
    new = rec["NewLabel"]
    assert new not in {int(v) for v in np.unique(lab)}
    after = merged.copy()
    after[cut] = new
    for z in zs:
        np.testing.assert_array_equal(decode_tiff(t.read(t.lookup(tif, f"{z:05d}.tif"))),
                                      after[z - LOFF[2]])
    assert int(t.read(t.lookup(t.lookup(labels_dir, str(new)), "size"))) == int(cut.sum())
    assert int(t.read(t.lookup(b7, "size"))) == int((after == 7).sum())

    # bad label edits: errno, and the store does not change
    scan = engine_scan(core)
    merge = lw.walk("bodies", "merge")
    for text, code in (("7 7", errno.EINVAL), ("seven 9", errno.EINVAL), ("7", errno.EINVAL),
                       ("7 12345", errno.ENOENT)):
        with pytest.raises(DvidfsError) as ei:
            t.control(merge, text)
        assert ei.value.errno == code, text
    outside = np.zeros(LSHAPE, bool)
    outside[0, 0, 4:8] = True        # body 7 (x < 6) and former body 9 (x >= 6), now 7
    outside[0, 0, 11:13] = True      # x = 12 is background: not in body 7
    for payload in (b"", b"\x00\x03\x00\x00" + b"\x00" * 4 + struct.pack("<I", 5) + b"\x01" * 7,
                    ref_rles(outside, LOFF)):
        with pytest.raises(DvidfsError) as ei:
            t.upload(split, payload)
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(DvidfsError) as ei:
        t.upload(lw.walk("bodies", "labels", "7", "size"), b"1\n")
    assert ei.value.errno == errno.EINVAL
    assert engine_scan(core) == scan


def test_entries_equal_and_hashable_by_path(gw, core):
    w, t = gw, gw.tree
    a, b = w.walk("gray", "xy", "-0004.png"), w.walk("gray", "xy", "-0004.png")
    assert a == b and hash(a) == hash(b) and a is not b
    assert w.walk("gray", "xy", "-4.png") == a                  # unpadded name: the same slice
    assert w.walk("gray", "xy", "-0003.png") != a
    assert w.walk("gray", "xz", f"{GOFF[1]:05d}.png") != w.walk("gray", "xy", f"{GOFF[1]:05d}.png")
    # a listed entry is equal to a looked-up one
    listed = dict((n, e) for n, e, _ in t.list(w.walk("gray", "xy")))
    assert listed["-0004.png"] == a
    assert len({a, b, listed["-0004.png"]}) == 1
    # different kinds with the same path fields are different entries
    node_dir, ctl_dir = w.walk(), w.walk(".dvid")
    assert (node_dir.repo, node_dir.uuid, node_dir.data, node_dir.name) == \
        (ctl_dir.repo, ctl_dir.uuid, ctl_dir.data, ctl_dir.name)
    assert node_dir != ctl_dir and len({node_dir, ctl_dir}) == 2
    lab = make_labels(core)
    inst, labels_dir = lab.walk("bodies"), lab.walk("bodies", "labels")
    assert (inst.data, inst.plane, inst.coord, inst.name) == (labels_dir.data, labels_dir.plane,
                                                              labels_dir.coord, labels_dir.name)
    assert inst != labels_dir
    assert lab.walk("bodies", "labels", "7") != lab.walk("bodies", "labels", "9")
    # the same names in another node are other entries
    t.control(w.ctl("commit"), "c")
    t.control(w.ctl("branch"), "next")
    child = core.node_by_uuid(t.readlink(t.lookup(t.lookup(ROOT, "em"), "next")))
    assert w.walk("gray", "xy", "-0004.png", node=child) != a
    # mapping keyed by entries (as the inode table is)
    table = {a: 1}
    assert table[w.walk("gray", "xy", "-0004.png")] == 1


def test_render_cache_keyed_by_write_generation(gw):
    w, t, core = gw, gw.tree, gw.core
    z = GOFF[2] + 2
    e = w.walk("gray", "xy", f"{z:05d}.png")
    first = t.read(e)
    hits = t.cache.hits
    assert t.read(e) is first and t.cache.hits == hits + 1           # served from the cache
    np.testing.assert_array_equal(decode_png(first, "L"), w.vol[2])
    xz = w.walk("gray", "xz", f"{GOFF[1]:05d}.png")
    xz_first = t.read(xz)
    new = (255 - w.vol[2:3]).astype(np.uint8)
    core.data(w.node, "gray").write(w.node, (GOFF[0], GOFF[1], z), new)   # the CORE API
    again = t.read(e)
    np.testing.assert_array_equal(decode_png(again, "L"), new[0])
    want_xz = w.vol[:, 0, :].copy()
    want_xz[2] = new[0, 0]
    np.testing.assert_array_equal(decode_png(t.read(xz), "L"), want_xz)
    assert t.read(xz) != xz_first
    # a write beyond the extents grows listings and sizes (extents cached per generation)
    size_before = t.attr(xz).size
    top = GOFF[2] + GSHAPE[0] + 2
    core.data(w.node, "gray").write(w.node, (GOFF[0], GOFF[1], top), np.full((1, *GSHAPE[1:]), 9, np.uint8))
    assert names(t, w.walk("gray", "xy"))[-1] == f"{top:05d}.png"
    assert len(names(t, w.walk("gray", "xy"))) == GSHAPE[0] + 3
    xz2 = t.read(xz)
    assert t.attr(xz).size == len(xz2) > size_before
    assert decode_png(xz2, "L").shape == (GSHAPE[0] + 3, GSHAPE[2])
    assert decode_png(t.read(w.walk("gray", "xy", f"{top - 1:05d}.png")), "L").max() == 0


def test_commit_locks_the_node(gw):
    w, t, core = gw, gw.tree, gw.core
    z = GOFF[2] + 1
    slice_e = w.walk("gray", "xy", f"{z:05d}.png")
    assert t.attr(slice_e).writable and t.attr(w.walk()).writable
    out = t.control(w.ctl("commit"), "first import\n")
    assert w.node.uuid in out
    assert w.node.locked
    info = json.loads(t.read(w.ctl("info.json")))
    assert info["Locked"] is True and info["Note"] == "first import"
    assert not t.attr(w.walk()).writable
    assert not t.attr(w.walk("gray")).writable
    a = t.attr(slice_e)
    assert not a.writable and a.immutable
    assert all(not at.writable and at.immutable for _, _, at in t.list(w.walk("gray", "xy")))
    # a slice upload (even a well-formed one) is refused and changes nothing
    scan = engine_scan(core)
    good = png_bytes(np.zeros(GSHAPE[1:], np.uint8))
    with pytest.raises(ReadOnlyError) as ei:
        t.upload(slice_e, good)
    assert ei.value.errno == errno.EROFS
    with pytest.raises(ReadOnlyError):
        t.control(w.ctl("commit"), "again")
    with pytest.raises(DvidfsError) as ei:
        t.mkdir(w.walk(), "newgray")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(DvidfsError) as ei:
        t.control(w.ctl("newdata"), "grayscale other")
    assert ei.value.errno == errno.EROFS
    assert engine_scan(core) == scan
    np.testing.assert_array_equal(decode_png(t.read(slice_e), "L"), w.vol[1])


def test_branch_and_merge_nodes(gw):
    w, t, core = gw, gw.tree, gw.core
    repo_dir = t.lookup(ROOT, "em")
    t.control(w.ctl("commit"), "base")
    kids = {}
    for name in ("alice", "bob"):
        out = t.control(w.ctl("branch"), name)
        listing = names(t, repo_dir)
        new = [n for n in listing if len(n) == 32 and n != w.node.uuid and n not in kids.values()]
        assert len(new) == 1 and new[0] in out
        kids[name] = new[0]
        assert name in listing
        link = t.lookup(repo_dir, name)
        assert t.readlink(link) == kids[name]
        assert t.attr(link).kind == "link" and t.attr(link).size == len(kids[name])
        assert json.loads(t.read(w.ctl("info.json", node=core.node_by_uuid(kids[name]))))["Locked"] is False
    assert t.readlink(t.lookup(repo_dir, "master")) == w.node.uuid
    assert sorted(json.loads(t.read(w.ctl("info.json")))["Children"]) == sorted(kids.values())
    # alice edits the first xy slice, bob the last one (different z blocks)
    z_a, z_b = GOFF[2], GOFF[2] + GSHAPE[0] - 1
    assert z_a // BS != z_b // BS
    img_a = np.full(GSHAPE[1:], 1, np.uint8)
    img_b = np.full(GSHAPE[1:], 2, np.uint8)
    na, nb = core.node_by_uuid(kids["alice"]), core.node_by_uuid(kids["bob"])
    t.upload(w.walk("gray", "xy", f"{z_a:05d}.png", node=na), png_bytes(img_a))
    t.upload(w.walk("gray", "xy", f"{z_b:05d}.png", node=nb), png_bytes(img_b))
    np.testing.assert_array_equal(decode_png(t.read(w.walk("gray", "xy", f"{z_a:05d}.png")), "L"), w.vol[0])
    np.testing.assert_array_equal(
        decode_png(t.read(w.walk("gray", "xy", f"{z_a:05d}.png", node=nb)), "L"), w.vol[0])
    # merging needs committed parents
    scan = engine_scan(core)
    with pytest.raises(DvidfsError) as ei:
        t.control(w.ctl("merge", node=na), kids["bob"])
    assert ei.value.errno == errno.EINVAL
    assert engine_scan(core) == scan
    for n in (na, nb):
        t.control(w.ctl("commit", node=n), "done")
    out = t.control(w.ctl("merge", node=na), kids["bob"][:8] + "\n")
    merged = json.loads(t.read(w.ctl("info.json", node=na)))["Children"]
    assert len(merged) == 1 and merged[0] in out
    assert merged[0] in names(t, repo_dir)
    assert t.readlink(t.lookup(repo_dir, "alice")) == merged[0]
    mn = core.node_by_uuid(merged[0])
    assert sorted(json.loads(t.read(w.ctl("info.json", node=mn)))["Parents"]) == sorted([na.uuid, nb.uuid])
    want = w.vol.copy()
    want[0], want[-1] = img_a, img_b
    for z in (z_a, z_a + 1, z_b):
        np.testing.assert_array_equal(
            decode_png(t.read(w.walk("gray", "xy", f"{z:05d}.png", node=mn)), "L"), want[z - GOFF[2]])


def test_newdata_note_and_log(gw):
    w, t = gw, gw.tree
    t.control(w.ctl("newdata"), "labels seg 16\n")
    t.control(w.ctl("newdata"), "grayscale em2")
    assert names(t, w.walk()) == [".dvid", "em2", "gray", "seg"]
    assert names(t, w.walk("seg")) == LABEL_INSTANCE_FILES
    assert json.loads(t.read(w.walk("seg", "info.json")))["Extended"]["BlockSize"] == [16] * 3
    assert json.loads(t.read(w.walk("seg", "info.json")))["Base"]["TypeName"] == "labels"
    assert json.loads(t.read(w.ctl("info.json")))["DataInstances"] == {
        "em2": "grayscale", "gray": "grayscale", "seg": "labels"}
    assert names(t, w.walk("em2", "xy")) == []
    # an empty instance takes its first slice (which sets the extents)
    img = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9)
    t.upload(w.walk("em2", "xy").slice_entry(0), png_bytes(img))
    assert names(t, w.walk("em2", "xy")) == ["00000.png"]
    np.testing.assert_array_equal(decode_png(t.read(w.walk("em2", "xy", "00000.png")), "L"), img)
    # note
    note = w.ctl("note")
    t.control(note, "reviewed by carol\n")
    assert t.read(note) == b"reviewed by carol\n"
    assert t.attr(note).size == len(t.read(note))
    assert json.loads(t.read(w.ctl("info.json")))["Note"] == "reviewed by carol"
    # log: each line appended
    log = w.ctl("log")
    before = t.read(log).decode().splitlines()
    t.control(log, "line one\nline two\n")
    t.control(log, "line three")
    assert t.read(log).decode().splitlines() == before + ["line one", "line two", "line three"]
    assert t.attr(log).size == len(t.read(log))
    assert json.loads(t.read(w.ctl("info.json")))["Log"][-3:] == ["line one", "line two", "line three"]


def _bad_cases():
    """(id, action(world) -> raises, errno): bad input of every kind."""
    h, wd = GSHAPE[1], GSHAPE[2]
    good = png_bytes(np.random.default_rng(5).integers(0, 256, (h, wd), dtype=np.uint8))

    def up(data, plane="xy"):
        return lambda w: w.tree.upload(w.walk("gray", plane, f"{GOFF[2] + 1:05d}.png"), data)

    def ctl(name, text):
        return lambda w: w.tree.control(w.ctl(name), text)

    def look(*ns):
        return lambda w: w.walk(*ns)

    rgb = np.zeros((h, wd, 3), np.uint8)
    return [
        ("truncated-png-header", up(good[:40]), errno.EINVAL),
        ("truncated-png-pixels", up(good[:len(good) // 2]), errno.EINVAL),
        ("corrupt-png-pixels", up(good[:60] + bytes(b ^ 0x5A for b in good[60:-20]) + good[-20:]),
         errno.EINVAL),
        ("not-an-image", up(b"hello world, not a picture"), errno.EINVAL),
        ("empty-upload", up(b""), errno.EINVAL),
        ("wrong-size-png", up(png_bytes(np.zeros((h + 1, wd - 2), np.uint8))), errno.EINVAL),
        ("rgb-png", up(png_bytes(rgb)), errno.EINVAL),
        ("16bit-too-big", up(png_bytes(np.full((h, wd), 300, np.uint16))), errno.EINVAL),
        ("newdata-unknown-type", ctl("newdata", "voxels v"), errno.EINVAL),
        ("newdata-no-name", ctl("newdata", "grayscale"), errno.EINVAL),
        ("newdata-bad-blocksize", ctl("newdata", "grayscale x y"), errno.EINVAL),
        ("newdata-taken", ctl("newdata", "grayscale gray"), errno.EEXIST),
        ("downres-nothing", ctl("downres", ""), errno.EINVAL),
        ("downres-bad-levels", ctl("downres", "gray many"), errno.EINVAL),
        ("downres-zero-levels", ctl("downres", "gray 0"), errno.EINVAL),
        ("downres-unknown-instance", ctl("downres", "nope"), errno.ENOENT),
        ("branch-open-node", ctl("branch", "feature"), errno.EINVAL),
        ("merge-nothing", ctl("merge", ""), errno.EINVAL),
        ("merge-self", lambda w: w.tree.control(w.ctl("merge"), w.node.uuid), errno.EINVAL),
        ("merge-unknown-node", ctl("merge", "0123456789abcdef"), errno.ENOENT),
        ("info-json-read-only", ctl("info.json", "x"), errno.EINVAL),
        ("last-error-read-only", ctl("last-error", "x"), errno.EINVAL),
        ("unknown-instance", look("nope"), errno.ENOENT),
        ("unknown-plane", look("gray", "ab"), errno.ENOENT),
        ("unknown-control-file", look(".dvid", "rollback"), errno.ENOENT),
        ("unknown-repo", lambda w: w.tree.lookup(ROOT, "nope"), errno.ENOENT),
        ("unknown-node", lambda w: w.tree.lookup(w.tree.lookup(ROOT, "em"), "fedcba98"), errno.ENOENT),
        ("mkdir-in-instance", lambda w: w.tree.mkdir(w.walk("gray"), "sub"), errno.EINVAL),
        ("mkdir-repo-taken", lambda w: w.tree.mkdir(ROOT, "em"), errno.EEXIST),
        ("readlink-not-a-link", lambda w: w.tree.readlink(w.walk("gray")), errno.EINVAL),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("action, code", [(a, c) for _, a, c in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_raises_errno_and_changes_nothing(gw, action, code):
    w = gw
    probe = [w.walk("gray", "xy", f"{GOFF[2] + 1:05d}.png"), w.ctl("info.json")]
    before = [w.tree.read(e) for e in probe]
    scan = engine_scan(w.core)
    with pytest.raises(DvidfsError) as ei:
        action(w)
    assert ei.value.errno == code, str(ei.value)
    assert str(ei.value) and "\n" not in str(ei.value)
    assert engine_scan(w.core) == scan
    assert [w.tree.read(e) for e in probe] == before


def test_wrong_size_message_names_both_sizes(gw):
    h, wd = GSHAPE[1], GSHAPE[2]
    with pytest.raises(DvidfsError) as ei:
        gw.tree.upload(gw.walk("gray", "xy", f"{GOFF[2]:05d}.png"),
                       png_bytes(np.zeros((h + 1, wd - 2), np.uint8)))
    msg = str(ei.value)
    assert f"{wd - 2}x{h + 1}" in msg and f"{wd}x{h}" in msg


def test_colour_slices_refuse_uploads(lw):
    img = np.zeros(LSHAPE[1:], np.uint64)
    scan = engine_scan(lw.core)
    with pytest.raises(DvidfsError) as ei:
        lw.tree.upload(lw.walk("bodies", "xy-rgb", f"{LOFF[2]:05d}.png"), png_bytes(img.astype(np.uint8)))
    assert ei.value.errno == errno.EINVAL
    assert engine_scan(lw.core) == scan
    # the uint64 TIFF plane takes it
    img[:, :3] = 2**50 + 11
    buf = io.BytesIO()
    tifffile.imwrite(buf, img)
    e = lw.walk("bodies", "xy", f"{LOFF[2]:05d}.tif")
    lw.tree.upload(e, buf.getvalue())
    np.testing.assert_array_equal(decode_tiff(lw.tree.read(e)), img)
    size = lw.walk("bodies", "labels", str(2**50 + 11), "size")
    assert int(lw.tree.read(size)) == int((img == 2**50 + 11).sum())


# ============================================================================= DvidOperations level
async def ino_at(ops: DvidOperations, *path) -> int:
    ino = pyfuse3.ROOT_INODE
    for n in path:
        ino = (await ops.lookup(ino, os.fsencode(n))).st_ino
    return ino


async def read_all(ops: DvidOperations, ino: int, chunk: int = 1000) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, None)
    out = bytearray()
    while True:
        b = await ops.read(fi.fh, len(out), chunk)
        if not b:
            break
        out += b
    await ops.release(fi.fh)
    assert fi.fh not in ops.handles
    return bytes(out)


async def write_file(ops, fh, data: bytes, chunk: int = 700) -> None:
    for off in range(0, len(data), chunk):
        assert await ops.write(fh, off, data[off:off + chunk]) == len(data[off:off + chunk])


def fuse_errno(excinfo) -> int:
    return excinfo.value.errno


async def test_ops_lookup_getattr_open_read(gw):
    w = gw
    ops = DvidOperations(w.tree)
    try:
        repo_ino = await ino_at(ops, "em")
        node_ino = await ino_at(ops, "em", w.node.uuid)
        assert await ino_at(ops, "em", w.node.uuid) == node_ino          # stable inode numbers
        assert await ops.readlink(await ino_at(ops, "em", "master"), None) == w.node.uuid.encode()
        a = await ops.getattr(node_ino)
        assert stat.S_ISDIR(a.st_mode) and a.st_mode & 0o777 == 0o755
        assert stat.S_ISDIR((await ops.getattr(repo_ino)).st_mode)
        ctl_ino = await ino_at(ops, "em", w.node.uuid, ".dvid")
        assert ctl_ino != node_ino                                        # NodeDir vs ControlDir
        for plane in PLANE_AXIS:
            for c in sample_coords(GOFF, GSHAPE, plane)[:2]:
                ino = await ino_at(ops, "em", w.node.uuid, "gray", plane, f"{c:05d}.png")
                a = await ops.getattr(ino)
                assert stat.S_ISREG(a.st_mode) and a.st_mode & 0o777 == 0o644 and a.st_ino == ino
                data = await read_all(ops, ino)
                assert a.st_size == len(data)
                np.testing.assert_array_equal(decode_png(data, "L"), numpy_slice(w.vol, GOFF, plane, c))
        # an open-node slice is read with direct_io: a whole rendering per handle
        ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy", f"{GOFF[2]:05d}.png")
        fi = await ops.open(ino, os.O_RDONLY, None)
        assert fi.direct_io
        await ops.release(fi.fh)
        info = json.loads(await read_all(ops, await ino_at(ops, "em", w.node.uuid, ".dvid", "info.json")))
        assert info["UUID"] == w.node.uuid and info["Locked"] is False
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.lookup(node_ino, b"nope")
        assert fuse_errno(ei) == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.getattr(10**6)
        assert fuse_errno(ei) == errno.ENOENT
    finally:
        ops.close()


async def test_ops_opendir_lists_in_coordinate_order(gw):
    w = gw
    ops = DvidOperations(w.tree)
    try:
        plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        fh = await ops.opendir(plane_ino, None)
        items = [(n.decode(), a.st_ino, a) for n, a, _ in ops.dir_entries(fh)]
        want = [f"{c:05d}.png" for c in coord_range(GOFF, GSHAPE, "xy")]
        assert [n for n, _, _ in items] == want
        first_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy", want[0])
        assert items[0][1] == first_ino                     # listing and lookup agree on inodes
        assert len({ino for _, ino, _ in items}) == len(items)
        assert [n.decode() for n, _, _ in ops.dir_entries(fh, 3)] == want[3:]  # readdir offsets resume
        data = await read_all(ops, items[-1][1])
        assert items[-1][2].st_size == len(data)
        np.testing.assert_array_equal(decode_png(data, "L"), w.vol[-1])
        await ops.releasedir(fh)
        assert fh not in ops.dir_handles
        node_fh = await ops.opendir(await ino_at(ops, "em", w.node.uuid), None)
        assert [n for n, _, _ in ops.dir_entries(node_fh)] == [b".dvid", b"gray"]
        await ops.releasedir(node_fh)
    finally:
        ops.close()


async def test_ops_create_write_flush_new_slice(gw):
    w, core = gw, gw.core
    ops = DvidOperations(w.tree)
    try:
        plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        z = 3
        assert z in coord_range(GOFF, GSHAPE, "xy")
        img = ((np.indices(GSHAPE[1:]).sum(axis=0) * 11) % 256).astype(np.uint8)
        fi, attrs = await ops.create(plane_ino, b"00003.png", 0o644, os.O_WRONLY, None)
        assert attrs.st_size == 0
        assert (await ops.getattr(attrs.st_ino)).st_size == 0           # pending: empty until flushed
        await write_file(ops, fi.fh, png_bytes(img))
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        np.testing.assert_array_equal(core.read_slice(w.node, core.data(w.node, "gray"), "xy", z), img)
        other = core.read_slice(w.node, core.data(w.node, "gray"), "xy", z - 1)
        np.testing.assert_array_equal(other, w.vol[z - 1 - GOFF[2]])
        ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy", "00003.png")
        assert ino == attrs.st_ino
        data = await read_all(ops, ino)
        assert (await ops.getattr(ino)).st_size == len(data)
        np.testing.assert_array_equal(decode_png(data, "L"), img)
        # an existing slice opened for writing without O_TRUNC starts with its content
        z2 = GOFF[2]
        ino2 = await ino_at(ops, "em", w.node.uuid, "gray", "xy", f"{z2:05d}.png")
        fi = await ops.open(ino2, os.O_WRONLY, None)
        assert ops.handles[fi.fh].data == await read_all(ops, ino2)
        await ops.release(fi.fh)
        fi = await ops.open(ino2, os.O_WRONLY | os.O_TRUNC, None)
        await write_file(ops, fi.fh, png_bytes(255 - img))
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        np.testing.assert_array_equal(decode_png(await read_all(ops, ino2), "L"), 255 - img)
    finally:
        ops.close()


async def test_ops_corrupt_upload_sets_last_error(gw):
    w, core = gw, gw.core
    ops = DvidOperations(w.tree)
    try:
        plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        le_ino = await ino_at(ops, "em", w.node.uuid, ".dvid", "last-error")
        assert await read_all(ops, le_ino) == b""
        scan = engine_scan(core)
        good = png_bytes(np.random.default_rng(5).integers(0, 256, GSHAPE[1:], dtype=np.uint8))
        fi, _ = await ops.create(plane_ino, b"00002.png", 0o644, os.O_WRONLY, None)
        await ops.write(fi.fh, 0, good[:len(good) // 2])        # cut in the middle of the pixel data
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.flush(fi.fh)
        assert fuse_errno(ei) == errno.EINVAL
        await ops.release(fi.fh)
        msg = (await read_all(ops, le_ino)).decode()
        assert "gray/xy/2" in msg and "PNG" in msg and "EINVAL" in msg
        a = await ops.lookup(await ino_at(ops, "em", w.node.uuid, ".dvid"), b"last-error")
        assert a.st_size == len(msg.encode()) and a.attr_timeout == 0
        # a wrong-size image: the message names the sizes
        h, wd = GSHAPE[1], GSHAPE[2]
        fi, _ = await ops.create(plane_ino, b"00002.png", 0o644, os.O_WRONLY, None)
        await ops.write(fi.fh, 0, png_bytes(np.zeros((5, 5), np.uint8)))
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.flush(fi.fh)
        assert fuse_errno(ei) == errno.EINVAL
        await ops.release(fi.fh)
        msg = (await read_all(ops, le_ino)).decode()
        assert "5x5" in msg and f"{wd}x{h}" in msg
        assert engine_scan(core) == scan
        # a bad control command: the writer gets the errno, last-error the reason
        fi = await ops.open(await ino_at(ops, "em", w.node.uuid, ".dvid", "newdata"), os.O_WRONLY, None)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.write(fi.fh, 0, b"voxels v\n")
        assert fuse_errno(ei) == errno.EINVAL
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.write(fi.fh, 0, b"\xff\xfe\n")
        assert fuse_errno(ei) == errno.EINVAL
        await ops.release(fi.fh)
        assert "UTF-8" in (await read_all(ops, le_ino)).decode()
        assert engine_scan(core) == scan
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.open(le_ino, os.O_WRONLY, None)
        assert fuse_errno(ei) == errno.EACCES
    finally:
        ops.close()


async def test_ops_commit_then_slice_writes_are_erofs(gw):
    w, core = gw, gw.core
    ops = DvidOperations(w.tree)
    try:
        plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        slice_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy", f"{GOFF[2]:05d}.png")
        commit_ino = await ino_at(ops, "em", w.node.uuid, ".dvid", "commit")
        fi = await ops.open(commit_ino, os.O_WRONLY | os.O_TRUNC, None)
        assert await ops.write(fi.fh, 0, b"done\n") == 5
        await ops.release(fi.fh)
        assert w.node.locked
        info = json.loads(await read_all(ops, await ino_at(ops, "em", w.node.uuid, ".dvid", "info.json")))
        assert info["Locked"] is True and info["Note"] == "done"
        scan = engine_scan(core)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.open(slice_ino, os.O_WRONLY, None)
        assert fuse_errno(ei) == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.create(plane_ino, b"00009.png", 0o644, os.O_WRONLY, None)
        assert fuse_errno(ei) == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.unlink(plane_ino, f"{GOFF[2]:05d}.png".encode(), None)
        assert fuse_errno(ei) == errno.EROFS
        le = (await read_all(ops, await ino_at(ops, "em", w.node.uuid, ".dvid", "last-error"))).decode()
        assert "committed" in le
        # committing again: the writer's errno, the reason in last-error
        fi = await ops.open(commit_ino, os.O_WRONLY, None)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.write(fi.fh, 0, b"again\n")
        assert fuse_errno(ei) == errno.EROFS
        await ops.release(fi.fh)
        le = (await read_all(ops, await ino_at(ops, "em", w.node.uuid, ".dvid", "last-error"))).decode()
        assert "already committed" in le
        assert engine_scan(core) == scan
        a = await ops.getattr(slice_ino)
        assert a.st_mode & 0o777 == 0o444
        # committed slices: rendered at the first read, cacheable by the kernel
        fi = await ops.open(slice_ino, os.O_RDONLY, None)
        assert fi.keep_cache and not fi.direct_io
        data = await ops.read(fi.fh, 0, 1 << 20)
        await ops.release(fi.fh)
        assert len(data) == a.st_size
        np.testing.assert_array_equal(decode_png(data, "L"), w.vol[0])
        # branch from the committed node through its control file
        fi = await ops.open(await ino_at(ops, "em", w.node.uuid, ".dvid", "branch"), os.O_WRONLY, None)
        await ops.write(fi.fh, 0, b"feature\n")
        await ops.release(fi.fh)
        target = (await ops.readlink(await ino_at(ops, "em", "feature"), None)).decode()
        child_info = json.loads(await read_all(ops, await ino_at(ops, "em", target, ".dvid", "info.json")))
        assert child_info["Parents"] == [w.node.uuid] and child_info["Locked"] is False
    finally:
        ops.close()


async def test_ops_rsync_temp_file_rename(gw):
    w, core = gw, gw.core
    ops = DvidOperations(w.tree)
    try:
        plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        z = 5
        img = np.full(GSHAPE[1:], 123, np.uint8)
        img[3] = 7
        data = png_bytes(img)
        fi, attrs = await ops.create(plane_ino, b".00005.png.XyZ", 0o600, os.O_WRONLY, None)
        await write_file(ops, fi.fh, data, chunk=333)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        # the temp file is not stored: the store still has the old slice
        np.testing.assert_array_equal(core.read_slice(w.node, core.data(w.node, "gray"), "xy", z),
                                      w.vol[z - GOFF[2]])
        a = await ops.lookup(plane_ino, b".00005.png.XyZ")
        assert a.st_ino == attrs.st_ino and a.st_size == len(data) and a.attr_timeout == 0
        assert await read_all(ops, a.st_ino) == data
        fh = await ops.opendir(plane_ino, None)
        listed = [n.decode() for n, _, _ in ops.dir_entries(fh)]
        await ops.releasedir(fh)
        assert listed[-1] == ".00005.png.XyZ" and len(listed) == GSHAPE[0] + 1
        await ops.rename(plane_ino, b".00005.png.XyZ", plane_ino, b"00005.png", 0, None)
        np.testing.assert_array_equal(core.read_slice(w.node, core.data(w.node, "gray"), "xy", z), img)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.lookup(plane_ino, b".00005.png.XyZ")
        assert fuse_errno(ei) == errno.ENOENT
        fh = await ops.opendir(plane_ino, None)
        want = [f"{c:05d}.png" for c in coord_range(GOFF, GSHAPE, "xy")]
        assert [n.decode() for n, _, _ in ops.dir_entries(fh)] == want
        await ops.releasedir(fh)
        stored = await read_all(ops, await ino_at(ops, "em", w.node.uuid, "gray", "xy", "00005.png"))
        np.testing.assert_array_equal(decode_png(stored, "L"), img)
        # a temp file holding garbage: rename fails with EINVAL, the temp file stays, nothing stored
        scan = engine_scan(core)
        fi, _ = await ops.create(plane_ino, b".00006.png.AbC", 0o600, os.O_WRONLY, None)
        await ops.write(fi.fh, 0, b"garbage")
        await ops.release(fi.fh)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.rename(plane_ino, b".00006.png.AbC", plane_ino, b"00006.png", 0, None)
        assert fuse_errno(ei) == errno.EINVAL
        assert (await ops.lookup(plane_ino, b".00006.png.AbC")).st_size == len(b"garbage")
        await ops.unlink(plane_ino, b".00006.png.AbC", None)
        with pytest.raises(pyfuse3.FUSEError):
            await ops.lookup(plane_ino, b".00006.png.AbC")
        assert engine_scan(core) == scan
        # temp files exist only in slice directories
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.create(await ino_at(ops, "em", w.node.uuid, "gray"), b"x.tmp", 0o600, os.O_WRONLY, None)
        assert fuse_errno(ei) == errno.EPERM
    finally:
        ops.close()


async def test_ops_mkdir_repo_and_instance(core):
    ops = DvidOperations(Tree(core))
    try:
        a = await ops.mkdir(pyfuse3.ROOT_INODE, b"newrepo", 0o755, None)
        assert stat.S_ISDIR(a.st_mode)
        assert [r.alias for r in core.repos()] == ["newrepo"]
        root_uuid = (await ops.readlink(await ino_at(ops, "newrepo", "master"), None)).decode()
        node_ino = await ino_at(ops, "newrepo", root_uuid)
        node = core.node_by_uuid(root_uuid)
        with pytest.raises(pyfuse3.FUSEError) as ei:  # mkdir cannot know the type: refused
            await ops.mkdir(node_ino, b"em", 0o755, None)
        assert fuse_errno(ei) == errno.EINVAL and "em" not in core.instances(node)
        ctl = await ino_at(ops, "newrepo", root_uuid, ".dvid", "newdata")
        fi = await ops.open(ctl, os.O_WRONLY, None)
        await write_file(ops, fi.fh, b"grayscale em\n")
        await ops.release(fi.fh)
        assert core.instances(node)["em"].typename == "grayscale"
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.mkdir(pyfuse3.ROOT_INODE, b"newrepo", 0o755, None)
        assert fuse_errno(ei) == errno.EEXIST
        plane_ino = await ino_at(ops, "newrepo", root_uuid, "em", "xy")
        img = np.arange(24 * 10, dtype=np.uint8).reshape(10, 24)
        fi, _ = await ops.create(plane_ino, b"0.png", 0o644, os.O_WRONLY, None)
        await write_file(ops, fi.fh, png_bytes(img))
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        stored = await read_all(ops, await ino_at(ops, "newrepo", root_uuid, "em", "xy", "00000.png"))
        np.testing.assert_array_equal(decode_png(stored, "L"), img)
    finally:
        ops.close()


async def follow_changes(ops: DvidOperations, nursery) -> None:
    """Start following the core's changes as the mount does once it serves."""
    ops.attach()
    await trio.testing.wait_all_tasks_blocked()
    assert ops._token is not None


async def settled(ops: DvidOperations) -> None:
    """Let every woken task run, then wait for a drain under way to finish."""
    await trio.testing.wait_all_tasks_blocked()
    async with ops._drain_lock:
        pass


async def test_ops_change_subscription_invalidates(gw, monkeypatch):
    w, core = gw, gw.core
    core.new_instance(w.node, "other", "grayscale", block_size=BS).write(w.node, (0, 0, 0),
                                                                         np.ones((2, 3, 4), np.uint8))
    ops = DvidOperations(w.tree)
    invalidated: list[int] = []
    real_invalidate = pyfuse3.invalidate_inode

    def spy(ino, attr_only=False):
        invalidated.append(ino)
        return real_invalidate(ino, attr_only)   # no mount: raises OSError, which operations ignores

    monkeypatch.setattr(pyfuse3, "invalidate_inode", spy)
    handled: list[Change] = []
    real_change = ops._invalidate_change

    async def record(c):
        handled.append(c)
        await real_change(c)

    monkeypatch.setattr(ops, "_invalidate_change", record)
    z = GOFF[2] + 1
    new = np.full((1, *GSHAPE[1:]), 200, np.uint8)

    def write_gray():
        core.data(w.node, "gray").write(w.node, (GOFF[0], GOFF[1], z), new)

    try:
        slice_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy", f"{z:05d}.png")
        gray_plane = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
        other_ino = await ino_at(ops, "em", w.node.uuid, "other", "xy", "00000.png")
        note_ino = await ino_at(ops, "em", w.node.uuid, ".dvid", "note")
        # not serving yet: changes are not queued
        await trio.to_thread.run_sync(write_gray)
        await trio.testing.wait_all_tasks_blocked()
        assert ops._changes == [] and handled == [] and invalidated == []
        async with trio.open_nursery() as nursery:
            await follow_changes(ops, nursery)
            await trio.to_thread.run_sync(write_gray)            # a change from a worker thread
            await settled(ops)
            assert ops._changes == []
            assert handled == [Change(w.repo.root, w.node.uuid, "gray")]
            assert slice_ino in invalidated and gray_plane in invalidated
            assert other_ino not in invalidated and note_ino not in invalidated
            # a node-level change (a note set by another front end) drops the control files
            invalidated.clear()
            await trio.to_thread.run_sync(core.set_note, w.node, "from a script")
            await settled(ops)
            assert ops._changes == []
            assert handled[-1] == Change(w.repo.root, w.node.uuid)
            assert note_ino in invalidated
            # the handler that makes a change has drained it when it replies
            plane_ino = await ino_at(ops, "em", w.node.uuid, "gray", "xy")
            fi, _ = await ops.create(plane_ino, f"{z:05d}.png".encode(), 0o644, os.O_WRONLY, None)
            await write_file(ops, fi.fh, png_bytes(np.zeros(GSHAPE[1:], np.uint8)))
            n = len(handled)
            await ops.flush(fi.fh)
            assert ops._changes == [] and handled[n:] == [Change(w.repo.root, w.node.uuid, "gray")]
            await ops.release(fi.fh)
            nursery.cancel_scope.cancel()
        assert (await read_all(ops, note_ino)) == b"from a script\n"
    finally:
        ops.close()
    # unsubscribed: later changes reach nobody
    n = len(handled)
    write_gray()
    await settled(ops)
    assert ops._changes == [] and len(handled) == n


# ----------------------------------------------------------------------------- found by these tests (fixed)
async def test_ops_getattr_of_renamed_temp_file_inode(gw):
    """fstat of a still-open rsync temp file after its rename: an errno, never
    an exception that would end the mount's main loop."""
    ops = DvidOperations(gw.tree)
    try:
        plane_ino = await ino_at(ops, "em", gw.node.uuid, "gray", "xy")
        fi, attrs = await ops.create(plane_ino, b".00005.png.XyZ", 0o600, os.O_WRONLY, None)
        await ops.write(fi.fh, 0, png_bytes(np.zeros(GSHAPE[1:], np.uint8)))
        await ops.rename(plane_ino, b".00005.png.XyZ", plane_ino, b"00005.png", 0, None)
        try:
            a = await ops.getattr(attrs.st_ino)       # fstat(fd) of the still-open temp file
            assert stat.S_ISREG(a.st_mode)
        except pyfuse3.FUSEError:
            pass                                      # an errno is fine too; any other exception is not
        except Exception as exc:                      # noqa: BLE001 - this is the failure
            pytest.fail(f"getattr raised {type(exc).__name__}, not a FUSEError")
        await ops.release(fi.fh)
    finally:
        ops.close()


async def test_ops_write_to_unlinked_temp_file(gw):
    """A temp file unlinked while open keeps working through its handle."""
    ops = DvidOperations(gw.tree)
    try:
        plane_ino = await ino_at(ops, "em", gw.node.uuid, "gray", "xy")
        fi, _ = await ops.create(plane_ino, b".tmp.XyZ", 0o600, os.O_RDWR, None)
        await ops.write(fi.fh, 0, b"abc")
        await ops.unlink(plane_ino, b".tmp.XyZ", None)
        for call in (lambda: ops.write(fi.fh, 3, b"def"), lambda: ops.read(fi.fh, 0, 10)):
            try:
                await call()                          # POSIX: the open file still works
            except pyfuse3.FUSEError:
                pass                                  # an errno would do; KeyError would not
            except Exception as exc:                  # noqa: BLE001 - this is the failure
                pytest.fail(f"a handler raised {type(exc).__name__}({exc}), not a FUSEError")
        await ops.release(fi.fh)
    finally:
        ops.close()


async def test_ops_failed_create_beyond_extents_leaves_no_file(gw):
    """A created slice beyond the extents whose upload fails leaves no file behind."""
    ops = DvidOperations(gw.tree)
    try:
        plane_ino = await ino_at(ops, "em", gw.node.uuid, "gray", "xy")
        name = f"{GOFF[2] + GSHAPE[0] + 10:05d}.png".encode()
        scan = engine_scan(gw.core)
        fi, attrs = await ops.create(plane_ino, name, 0o644, os.O_WRONLY, None)
        await ops.write(fi.fh, 0, png_bytes(np.zeros((3, 3), np.uint8)))   # wrong size: refused
        with pytest.raises(pyfuse3.FUSEError):
            await ops.flush(fi.fh)
        await ops.release(fi.fh)
        assert engine_scan(gw.core) == scan
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.lookup(plane_ino, name)
        assert fuse_errno(ei) == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.open(attrs.st_ino, os.O_RDONLY, None)
        assert fuse_errno(ei) == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.getattr(attrs.st_ino)
        assert fuse_errno(ei) == errno.ENOENT
    finally:
        ops.close()
