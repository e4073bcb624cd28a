"""The roi data type (data/roi.py) on a real LevelDB store.

Masks are checked against an independent numpy rasterisation of the spans
(every voxel's block looked up in a set of blocks), point queries against the
mask, versions and branches against the spans put in each, and bad spans and
committed nodes against the raw keys of the engine (nothing changed).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import full_scan
from dvidfs.data.roi import Roi
from dvidfs.errors import ConflictError, InvalidInputError, ReadOnlyError
from dvidfs.store import keys

SPANS = [[0, 0, 0, 2], [0, 1, 1, 1], [1, 0, 3, 4], [1, 0, 0, 1], [-1, -2, -3, -1], [2, 3, 5, 5]]


@pytest.fixture
def roi(store, root) -> Roi:
    return store.new_instance(root, "roi", "roi")


def blocks_of(spans) -> set[tuple[int, int, int]]:
    """(z, y, x) of every block the spans cover."""
    return {(z, y, x) for z, y, x0, x1 in spans for x in range(x0, x1 + 1)}


def rasterize(spans, block, offset, size) -> np.ndarray:
    """Independent reference: each voxel's block looked up in the set of blocks."""
    bx, by, bz = block
    (ox, oy, oz), (nx, ny, nz) = offset, size
    inside = blocks_of(spans)
    z, y, x = np.meshgrid(np.arange(oz, oz + nz), np.arange(oy, oy + ny), np.arange(ox, ox + nx), indexing="ij")
    keys3 = zip((z // bz).ravel().tolist(), (y // by).ravel().tolist(), (x // bx).ravel().tolist())
    return np.fromiter((k in inside for k in keys3), np.uint8, count=z.size).reshape(nz, ny, nx)


def test_spans_sorted_and_overlaps_joined(store, root, roi):
    assert roi.spans(root) == []
    assert roi.block_size == (32, 32, 32)
    roi.put_spans(root, SPANS)
    assert roi.spans(root) == sorted(tuple(s) for s in SPANS)
    # overlapping spans of a row are joined; adjacent ones are kept as posted
    roi.put_spans(root, [[0, 0, 0, 4], [0, 0, 2, 9], [0, 0, 10, 12], [0, 0, 1, 1], [5, 5, 5, 5], [5, 5, 5, 5]])
    assert roi.spans(root) == [(0, 0, 0, 9), (0, 0, 10, 12), (5, 5, 5, 5)]
    info = roi.info(store.view(root))
    assert info["Base"]["TypeName"] == "roi"
    assert info["Extended"] == {"BlockSize": [32, 32, 32], "MinZ": 0, "MaxZ": 5}


def test_mask_equals_rasterisation_and_ptquery_agrees(store, root):
    roi = store.new_instance(root, "odd", "roi", block_size=[4, 3, 5])
    assert roi.block_size == (4, 3, 5)
    rng = random.Random(7)
    spans = [[rng.randint(-3, 3), rng.randint(-3, 3), x0, x0 + rng.randint(0, 4)]
             for x0 in (rng.randint(-6, 6) for _ in range(40))]
    roi.put_spans(root, spans)
    assert blocks_of(roi.spans(root)) == blocks_of(spans)
    for offset, size in (((-20, -10, -16), (50, 23, 37)), ((1, 2, 3), (1, 1, 1)), ((-7, 5, -2), (13, 1, 9)),
                         ((1000, 0, 0), (4, 4, 4))):
        want = rasterize(spans, (4, 3, 5), offset, size)
        got = roi.mask(root, offset, size)
        assert got.dtype == np.uint8 and got.shape == size[::-1]
        np.testing.assert_array_equal(got, want)
    # ptquery: every voxel of the first box, in a shuffled order, agrees with the mask
    offset, size = (-20, -10, -16), (50, 23, 37)
    mask = roi.mask(root, offset, size)
    pts = [[x, y, z] for z in range(-16, 21) for y in range(-10, 13, 2) for x in range(-20, 30, 3)]
    rng.shuffle(pts)
    got = roi.ptquery(root, pts)
    want = [bool(mask[z - offset[2], y - offset[1], x - offset[0]]) for x, y, z in pts]
    assert got == want and any(got) and not all(got)
    assert roi.ptquery(root, [[0.5, 0.2, 0.9]]) == roi.ptquery(root, [[0, 0, 0]])
    assert roi.ptquery(root, []) == []
    for bad in ([[1, 2]], [["a", 1, 2]], {"x": 1}, [[1, 2, float("nan")]]):
        with pytest.raises(InvalidInputError):
            roi.ptquery(root, bad)


def test_versions_and_branches(store, root, roi):
    roi.put_spans(root, [[0, 0, 0, 3], [1, 1, 1, 1]])
    store.commit(root)
    left, right = store.branch(root, "left"), store.branch(root, "right")
    roi.put_spans(left, [[0, 0, 0, 3], [2, 2, 2, 2]])     # keeps one, drops one, adds one
    roi.delete(right)
    assert roi.spans(root) == [(0, 0, 0, 3), (1, 1, 1, 1)]
    assert roi.spans(left) == [(0, 0, 0, 3), (2, 2, 2, 2)]
    assert roi.spans(right) == []
    assert roi.ptquery(left, [[40, 40, 40], [70, 70, 70]]) == [False, True]
    assert roi.ptquery(root, [[40, 40, 40], [70, 70, 70]]) == [True, False]
    assert not roi.delete(right)                          # nothing left: nothing written
    # a span removed and put back in the same node
    roi.put_spans(right, [[1, 1, 1, 1]])
    assert roi.spans(right) == [(1, 1, 1, 1)]
    store.commit(left)
    below = store.branch(left)
    roi.put_spans(below, [[2, 2, 2, 2]])
    assert roi.spans(below) == [(2, 2, 2, 2)] and roi.spans(left) == [(0, 0, 0, 3), (2, 2, 2, 2)]


def test_merge_of_branches_that_changed_different_spans(store, root, roi):
    roi.put_spans(root, [[0, 0, 0, 3]])
    store.commit(root)
    a, b = store.branch(root, "a"), store.branch(root, "b")
    roi.put_spans(a, [[0, 0, 0, 3], [1, 0, 0, 0]])
    roi.put_spans(b, [[0, 0, 0, 3], [2, 0, 0, 0]])
    store.commit(a)
    store.commit(b)
    m = store.merge([a, b])
    assert roi.spans(m) == [(0, 0, 0, 3), (1, 0, 0, 0), (2, 0, 0, 0)]
    # one side removes a span the other side puts anew: a conflict naming the span
    store.commit(m)
    c, d = store.branch(m, "c"), store.branch(m, "d")
    roi.put_spans(c, [[0, 0, 0, 3]])                     # drops [1, 0, 0, 0] and [2, 0, 0, 0]
    roi.put_spans(d, [[0, 0, 0, 3], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]])
    roi.delete(d)
    roi.put_spans(d, [[1, 0, 0, 0]])                     # drops and puts back [1, 0, 0, 0]
    store.commit(c)
    store.commit(d)
    with pytest.raises(ConflictError, match=r"roi: span \[1, 0, 0, 0\]"):
        store.merge([c, d])


@pytest.mark.parametrize("bad", [
    [[0, 0, 5, 4]],                        # x1 < x0
    [[0, 0, 0]],                           # 3 values
    [[0, 0, 0, 1.5]],                      # not an integer
    [[0, 0, True, 1]],                     # a bool is not an integer
    [[0, 0, 0, 1 << 31]],                  # outside int32
    [[-(1 << 31) - 1, 0, 0, 0]],
    [[0, 0, 0, 1], "span"],
    "0 0 0 1",
    {"z": 0},
])
def test_bad_spans_refused_with_nothing_changed(store, root, roi, bad):
    roi.put_spans(root, [[0, 0, 0, 1]])
    before = full_scan(store.engine)
    with pytest.raises(InvalidInputError):
        roi.put_spans(root, [[1, 1, 1, 1], *bad] if isinstance(bad, list) else bad)
    assert full_scan(store.engine) == before
    assert roi.spans(root) == [(0, 0, 0, 1)]


def test_committed_node_refuses_writes(store, root, roi):
    roi.put_spans(root, [[0, 0, 0, 1]])
    store.commit(root)
    before = full_scan(store.engine)
    with pytest.raises(ReadOnlyError):
        roi.put_spans(root, [[1, 1, 1, 1]])
    with pytest.raises(ReadOnlyError):
        roi.delete(root)
    assert full_scan(store.engine) == before
    assert roi.ptquery(root, [[0, 0, 0]]) == [True]       # reads still work


def test_storage_is_dvid_layout_and_changes_are_published(store, root, roi):
    seen = []
    store.subscribe(lambda ch: seen.append(ch))
    roi.put_spans(root, [[3, -2, 5, 9]])
    tk = bytes((keys.CLASS_ROI,)) + keys.izyx(5, -2, 3) + (5).to_bytes(4, "big")
    p = keys.instance_prefix(roi.inst.id) + bytes((keys.CLASS_ROI,))
    stored = [k for k, _ in full_scan(store.engine) if k.startswith(p)]
    assert len(stored) == 1 and keys.split_data_key(stored[0])[1] == tk
    assert any(ch.instance == "roi" for ch in seen)
    with pytest.raises(InvalidInputError):
        store.new_instance(root, "r2", "roi", block_size=[0, 1, 1])


# ---------------------------------------------------------------- the mount's entries (fs/roi.py) through Tree
def test_mount_spans_json_and_mask_slices(store, root, repo):
    import io
    import json

    from PIL import Image

    from dvidfs.fs.nodes import ROOT
    from dvidfs.fs.tree import Tree

    roi = store.new_instance(root, "r", "roi", block_size=[4, 3, 2])
    spans = [[0, 0, 0, 2], [0, 1, 1, 1], [1, -1, -1, 0], [-1, 2, 3, 3]]
    roi.put_spans(root, spans)
    tree = Tree(store)

    def walk(*names):
        e = tree.lookup(tree.lookup(ROOT, repo.alias), root.uuid)
        for n in names:
            e = tree.lookup(e, n)
        return e

    inst = walk("r")
    assert [n for n, _, _ in tree.list(inst)] == ["info.json", "mask", "spans.json"]
    sf = walk("r", "spans.json")
    assert json.loads(tree.read(sf)) == sorted(spans)
    assert tree.attr(sf).size == len(tree.read(sf)) and tree.attr(sf).writable
    # the mask: one slice per voxel z across the ROI's voxel box, exact sizes, 255 inside
    ext = roi.extents(root)
    assert ext.lo == (-4, -3, -2) and ext.hi == (16, 9, 4)
    for plane, fixed in (("xy", 2), ("xz", 1), ("yz", 0)):
        listing = tree.list(walk("r", "mask", plane))
        assert [n for n, _, _ in listing] == [f"{c:05d}.png" for c in range(ext.lo[fixed], ext.hi[fixed])]
        for name, e, attr in list(listing)[::3]:
            data = tree.read(e)
            assert attr.size == len(data) == tree.attr(walk("r", "mask", plane, name)).size
            got = np.asarray(Image.open(io.BytesIO(data)))
            lo, size = list(ext.lo), list(ext.size)
            lo[fixed], size[fixed] = e.coord, 1
            vol = rasterize(spans, (4, 3, 2), lo, size) * 255
            np.testing.assert_array_equal(got, np.squeeze(vol, axis=2 - fixed))
    with pytest.raises(Exception):
        walk("r", "mask", "xy", "00004.png")                  # outside the ROI's box
    # writing spans.json replaces the ROI; bad JSON or spans change nothing
    assert "stored 1 span" in tree.upload(sf, b"[[7, 7, 7, 8]]")
    assert roi.spans(root) == [(7, 7, 7, 8)]
    assert json.loads(tree.read(sf)) == [[7, 7, 7, 8]]
    before = full_scan(store.engine)
    for bad in (b"[[1, 2, 3]]", b"not json", b"[[0, 0, 5, 4]]"):
        with pytest.raises(InvalidInputError):
            tree.upload(sf, bad)
    assert full_scan(store.engine) == before
    tree.upload(sf, b"[]")
    assert roi.spans(root) == [] and tree.list(walk("r", "mask", "xy")) == []
    store.commit(root)
    with pytest.raises(ReadOnlyError):
        tree.upload(sf, b"[[1, 1, 1, 1]]")
    assert not tree.attr(sf).writable


def test_partition_covers_every_block_once(store, root):
    roi = store.new_instance(root, "p", "roi", block_size=[4, 2, 3])
    rng = random.Random(3)
    spans = [[rng.randint(-5, 12), rng.randint(-7, 9), x0, x0 + rng.randint(0, 9)]
             for x0 in (rng.randint(-20, 20) for _ in range(60))] + [[40, 0, 0, 0]]   # a z gap of many layers
    roi.put_spans(root, spans)
    blocks = blocks_of(spans)
    for n in (1, 3, 8):
        p = roi.partition(root, n)
        subs = p["Subvolumes"]
        assert p["NumSubvolumes"] == len(subs) and p["NumActiveBlocks"] == len(blocks)
        covered = []
        for s in subs:
            (x0, y0, z0), (x1, y1, z1) = s["MinChunk"], s["MaxChunk"]
            assert (x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1) == (n, n, n) and s["TotalBlocks"] == n ** 3
            assert s["MinPoint"] == [x0 * 4, y0 * 2, z0 * 3]
            assert s["MaxPoint"] == [(x1 + 1) * 4 - 1, (y1 + 1) * 2 - 1, (z1 + 1) * 3 - 1]
            inside = [b for b in blocks if z0 <= b[0] <= z1 and y0 <= b[1] <= y1 and x0 <= b[2] <= x1]
            assert s["ActiveBlocks"] == len(inside) > 0
            covered += inside
        assert sorted(covered) == sorted(blocks)            # every block in exactly one subvolume
        assert p["NumTotalBlocks"] >= len(subs) * n ** 3
    zs = [z for z, _, _ in blocks]
    assert roi.partition(root, 8)["ROI"] == {
        "MinChunk": [min(b[2] for b in blocks), min(b[1] for b in blocks), min(zs)],
        "MaxChunk": [max(b[2] for b in blocks), max(b[1] for b in blocks), max(zs)]}
    # DVID's layout, worked by hand: 10 blocks along x with batchsize 4: remainder 2, one cell
    # starts 1 block before the ROI
    roi.put_spans(root, [[0, 0, 0, 9]])
    p = roi.partition(root, 4)
    assert [s["MinChunk"][0] for s in p["Subvolumes"]] == [-1, 3, 7]
    assert [s["ActiveBlocks"] for s in p["Subvolumes"]] == [3, 4, 3]
    assert p["NumTotalBlocks"] == 3 * 64 and p["NumActiveBlocks"] == 10
    assert roi.partition(root, 4)["Subvolumes"][0]["MinChunk"] == [-1, 0, 0]
    with pytest.raises(InvalidInputError):
        roi.partition(root, 0)
    roi.delete(root)
    assert roi.partition(root, 4)["NumSubvolumes"] == 0
