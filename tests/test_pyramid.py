"""Stored pyramids (data/pyramid.py) against numpy references written here.

The references never call dvidfs.data.downres: `ref_halve_mean` averages each
2x2x2 group ((sum + 4) // 8, groups straddling the edge of the written box
count the missing voxels as 0) and `ref_halve_mode` counts each group's
non-zero labels with collections.Counter (most frequent, ties to the smaller
id, all background stays 0).  Each level is compared with the reference
halving of the level below it as dvidfs stores it, and with the reference
chain from the model; writes to an open node, deletes, label merges, splits,
branches and node merges are checked against the model after each step.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from dvidfs.core import Dvid
from dvidfs.errors import InvalidInputError, ReadOnlyError
from dvidfs.store import keys

_names = itertools.count()


# ----------------------------------------------------------------------------- references

def _groups(a: np.ndarray, lo) -> tuple[np.ndarray, tuple]:
    """`a` ([z, y, x], first voxel at x,y,z `lo`) padded with zeros to whole
    2x2x2 groups of the grid anchored at 0: (padded array, lo of the result)."""
    lo2 = tuple(v // 2 for v in lo)
    before = [l - 2 * l2 for l, l2 in zip(lo, lo2)]                  # x, y, z
    hi = [l + n for l, n in zip(lo, a.shape[::-1])]
    hi2 = [-(-h // 2) for h in hi]
    after = [2 * h2 - h for h, h2 in zip(hi, hi2)]
    p = np.pad(a, [(before[2], after[2]), (before[1], after[1]), (before[0], after[0])])
    return p, lo2


def ref_halve_mean(a: np.ndarray, lo):
    p, lo2 = _groups(a, lo)
    total = np.zeros(tuple(n // 2 for n in p.shape), np.int64)
    for dz, dy, dx in itertools.product((0, 1), repeat=3):
        total += p[dz::2, dy::2, dx::2]
    return ((total + 4) // 8).astype(np.uint8), lo2


def ref_halve_mode(a: np.ndarray, lo):
    p, lo2 = _groups(a, lo)
    out = np.zeros(tuple(n // 2 for n in p.shape), np.uint64)
    for z, y, x in itertools.product(*(range(n) for n in out.shape)):
        votes = Counter(int(v) for v in p[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel() if v)
        if votes:
            best = max(votes.values())
            out[z, y, x] = min(v for v, c in votes.items() if c == best)
    return out, lo2


class Model:
    """A dense copy of what was written (zeros elsewhere) over a fixed box."""

    def __init__(self, lo, size, dtype):
        self.lo = tuple(lo)
        self.arr = np.zeros(tuple(size[::-1]), dtype)
        self.ext = None   # (lo, hi) of everything written, as the instance's extents

    def write(self, offset, a):
        sl = tuple(slice(o - l, o - l + n) for o, l, n in zip(offset[::-1], self.lo[::-1], a.shape))
        self.arr[sl] = a
        hi = tuple(o + n for o, n in zip(offset, a.shape[::-1]))
        if self.ext is None:
            self.ext = (tuple(offset), hi)
        else:
            self.ext = (tuple(map(min, self.ext[0], offset)), tuple(map(max, self.ext[1], hi)))

    def extents_array(self):
        lo, hi = self.ext
        sl = tuple(slice(l - m, h - m) for l, h, m in zip(lo[::-1], hi[::-1], self.lo[::-1]))
        return self.arr[sl].copy(), lo

    def levels(self, n, halve):
        """[(array, lo)] of levels 0..n over the extents, by the reference chain."""
        a, lo = self.extents_array()
        out = [(a, lo)]
        for _ in range(n):
            a, lo = halve(a, lo)
            out.append((a, lo))
        return out


def read_level(vol, node, a_lo, shape, scale, **kw):
    return vol.read(node, a_lo, tuple(shape[::-1]), scale=scale, **kw)


def blobs(rng, shape, n_ids, first=1):
    """Label-like volume: a few ids in random boxes, later boxes on top, some background."""
    out = np.zeros(shape, np.uint64)
    for i in range(n_ids):
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [min(s, l + int(rng.integers(2, max(3, s // 2)))) for l, s in zip(lo, shape)]
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = first + i
    # salt: single voxels of other ids, so ties and minorities happen
    pts = rng.integers(0, out.size, out.size // 20)
    out.reshape(-1)[pts] = rng.integers(first, first + n_ids, len(pts)).astype(np.uint64)
    return out


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def store(tmp_path):
    s = Dvid.init(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def root(store):
    r = store.new_repo(f"pyr{next(_names)}")
    return store.node(r.root)


def level_keys_at(store, vol, version: int) -> set[tuple[int, tuple]]:
    """(level, block) of every pyramid block key stored at exactly `version` (raw scan)."""
    prefix = keys.instance_prefix(vol.inst.id)
    out = set()
    for k in store.engine.scan(prefix, keys.prefix_end(prefix), include_value=False):
        _, tk, v, _ = keys.split_data_key(bytes(k))
        if v != version or len(tk) != 14 or tk[0] not in (keys.CLASS_GRAY_LEVEL, keys.CLASS_LABEL_BLOCK):
            continue
        if tk[1]:
            out.add((tk[1], keys.parse_izyx(tk[2:])))
    return out


KINDS = {"grayscale": ref_halve_mean, "labels": ref_halve_mode}


def check_levels(vol, node, model, n, halve, **kw):
    """Every level 1..n equals the reference halving of the level below as
    stored, and the reference chain from the model."""
    want = model.levels(n, halve)
    prev = None
    for s, (a, lo) in enumerate(want):
        got = read_level(vol, node, lo, a.shape, s, **kw)
        assert np.array_equal(got, a), f"level {s} differs from the reference chain"
        if prev is not None:
            ra, rlo = halve(*prev)
            assert rlo == lo and np.array_equal(ra, got), f"level {s} is not the halving of level {s - 1}"
        prev = (got, lo)
    return want


def fill(kind, rng, shape):
    if kind == "grayscale":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return blobs(rng, shape, 6)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", ["grayscale", "labels"])
def test_levels_equal_numpy_odd_sizes_negative_offsets(store, root, kind):
    rng = np.random.default_rng(1)
    vol = store.new_instance(root, f"v{next(_names)}", kind, block_size=8)
    model = Model((-40, -40, -40), (96, 96, 96), vol.dtype)
    for off, shape in (((-13, -7, -21), (19, 23, 29)), ((3, 5, 1), (21, 17, 11))):   # z, y, x shapes
        a = fill(kind, rng, shape)
        vol.write(root, off, a)
        model.write(off, a)
    assert vol.pyramid_levels(root) == 0
    n = vol.build_pyramid(root)
    assert vol.pyramid_levels(root) == n
    lo, hi = model.ext

    def size_at(k):
        return [-((-h) >> k) - (l >> k) for l, h in zip(lo, hi)]
    assert max(size_at(n)) <= 8 < max(size_at(n - 1)), "default: until the volume is one block's size"
    check_levels(vol, root, model, n, KINDS[kind])
    # the stored levels are what is read (not the on-demand path): level blocks exist
    assert level_keys_at(store, vol, root.version_id)
    # one level above the stored ones is computed from the top stored level
    a, l = model.levels(n + 1, KINDS[kind])[-1]
    assert np.array_equal(read_level(vol, root, l, a.shape, n + 1), a)
    assert vol.info(store.view(root))["Extended"]["MaxDownresLevel"] == n


@pytest.mark.parametrize("kind", ["grayscale", "labels"])
def test_writes_keep_levels_current_and_touch_only_their_region(store, root, kind):
    rng = np.random.default_rng(2)
    vol = store.new_instance(root, f"v{next(_names)}", kind, block_size=8)
    model = Model((0, 0, 0), (64, 64, 64), vol.dtype)
    a = fill(kind, rng, (64, 64, 64))
    vol.write(root, (0, 0, 0), a)
    model.write((0, 0, 0), a)
    assert vol.build_pyramid(root, levels=3) == 3
    store.commit(root)
    child = store.branch(root)
    before = [read_level(vol, child, lo, arr.shape, s) for s, (arr, lo) in enumerate(model.levels(3, KINDS[kind]))]
    # an unaligned write in the child
    off, shape = (37, 5, 18), (7, 9, 11)
    b = fill(kind, rng, shape)
    vol.write(child, off, b)
    parent_model = Model((0, 0, 0), (64, 64, 64), vol.dtype)
    parent_model.arr[:] = model.arr
    parent_model.ext = model.ext
    model.write(off, b)
    want = check_levels(vol, child, model, 3, KINDS[kind])
    # outside the written region every level is as before
    for s, ((arr, lo), old) in enumerate(zip(want, before)):
        region = [(o >> s, -((-(o + n)) >> s)) for o, n in zip(off, shape[::-1])]
        mask = np.ones(arr.shape, bool)
        mask[tuple(slice(r0 - l, r1 - l) for (r0, r1), l in zip(region[::-1], lo[::-1]))] = False
        assert np.array_equal(arr[mask], old[mask]), f"level {s} changed outside the written region"
    # only the level blocks over the region were stored in the child
    written = level_keys_at(store, vol, child.version_id)
    assert written, "the write stored no level block"
    for s, c in written:
        lo = tuple(v * 8 << s for v in c)
        assert all(l < o + n and o < l + (8 << s) for l, o, n in zip(lo, off, shape[::-1])), (s, c)
    # the parent (committed) still shows its own levels
    check_levels(vol, root, parent_model, 3, KINDS[kind])
    # a delete: the levels follow, blocks of only background disappear
    vol.delete(child, (0, 0, 0), (64, 64, 32))
    model.write((0, 0, 0), np.zeros((32, 64, 64), vol.dtype))
    check_levels(vol, child, model, 3, KINDS[kind])
    assert not any(s == 1 and c[2] < 2 for s, c in level_keys_at(store, vol, child.version_id)
                   if vol.level(s).block(store.engine, store.view(child), c) is not None)


def test_label_merge_and_split_show_at_every_level(store, root):
    rng = np.random.default_rng(3)
    vol = store.new_instance(root, "seg", "labels", block_size=8)
    model = Model((0, 0, 0), (48, 40, 32), vol.dtype)
    a = blobs(rng, (32, 40, 48), 8)
    vol.write(root, (0, 0, 0), a)
    model.write((0, 0, 0), a)
    vol.build_pyramid(root, levels=3)
    ids = sorted(int(i) for i in np.unique(a) if i)
    target, others = ids[0], ids[1:4]
    keys_before = level_keys_at(store, vol, root.version_id)
    vol.merge(root, target, others)
    assert level_keys_at(store, vol, root.version_id) == keys_before   # no level rewritten
    mapped = Model((0, 0, 0), (48, 40, 32), vol.dtype)
    mapped.write((0, 0, 0), np.where(np.isin(a, others), target, a).astype(np.uint64))
    want = mapped.levels(3, ref_halve_mode)
    sv_want = model.levels(3, ref_halve_mode)
    for s, ((m, lo), (svs, _)) in enumerate(zip(want, sv_want)):
        got = read_level(vol, root, lo, m.shape, s)
        # mode of supervoxels, then the mapping (not the mode of bodies)
        assert np.array_equal(got, np.where(np.isin(svs, others), target, svs)), s
        if s:
            assert not np.isin(got, others).any()
        assert np.array_equal(read_level(vol, root, lo, m.shape, s, supervoxels=True), svs)
    # a split rewrites blocks: its levels follow in the same batch
    from dvidfs.formats import sparsevol as sv
    mask = np.zeros(a.shape, bool)
    mask[4:12, 8:20, 8:30] = True
    body = vol.mapping(store.view(root)).apply(model.arr)
    mask &= body == target
    runs = sv.runs_from_mask(mask, (0, 0, 0))
    rec = vol.split(root, target, sv.encode_rles(runs))
    model.arr[mask] = rec["NewLabel"]
    sv_want = model.levels(3, ref_halve_mode)
    check_levels(vol, root, model, 3, ref_halve_mode, supervoxels=True)


@pytest.mark.parametrize("kind", ["grayscale", "labels"])
def test_node_merge_of_two_branches(store, root, kind):
    rng = np.random.default_rng(4)
    vol = store.new_instance(root, f"v{next(_names)}", kind, block_size=8)
    model = Model((0, 0, 0), (64, 64, 64), vol.dtype)
    a = fill(kind, rng, (64, 64, 64))
    vol.write(root, (0, 0, 0), a)
    model.write((0, 0, 0), a)
    vol.build_pyramid(root, levels=4)   # level 4 of 8³ blocks: a voxel spans 2³ level-0 blocks
    store.commit(root)
    left, right = store.branch(root, "left"), store.branch(root, "right")
    # disjoint level-0 blocks that share blocks of every level, and voxels of level 4
    bl, br = fill(kind, rng, (8, 8, 8)), fill(kind, rng, (8, 8, 8))
    vol.write(left, (0, 0, 0), bl)
    vol.write(right, (8, 0, 0), br)
    model.write((0, 0, 0), bl)
    model.write((8, 0, 0), br)
    store.commit(left)
    store.commit(right)
    merged = store.merge([left, right])
    assert vol.pyramid_levels(merged) == 4
    check_levels(vol, merged, model, 4, KINDS[kind])
    # the merge stored merged level blocks (the sides' differ), which are right as read above
    assert level_keys_at(store, vol, merged.version_id)


def test_merge_with_a_side_without_upkeep_drops_the_levels(store, root):
    rng = np.random.default_rng(5)
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    vol.write(root, (0, 0, 0), rng.integers(0, 256, (16, 16, 16)).astype(np.uint8))
    store.commit(root)
    left, right = store.branch(root, "left"), store.branch(root, "right")
    vol.build_pyramid(left, levels=1)
    vol.write(right, (0, 0, 0), np.full((8, 8, 8), 7, np.uint8))   # right keeps no levels
    store.commit(left)
    store.commit(right)
    merged = store.merge([left, right])
    assert vol.pyramid_levels(merged) == 0      # left's levels do not know right's write
    got = vol.read(merged, (0, 0, 0), (4, 4, 4), scale=1)            # computed from level 0
    assert (got == 7).all()


def test_levels_are_read_only_and_built_only_in_open_nodes(store, root):
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    with pytest.raises(Exception):
        vol.build_pyramid(root)          # empty
    vol.write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))
    with pytest.raises(ReadOnlyError):
        vol.level(1).write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))
    with pytest.raises(InvalidInputError):
        vol.build_pyramid(root, levels=0)
    store.commit(root)
    with pytest.raises(ReadOnlyError):
        vol.build_pyramid(root)


def test_cli_downres(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "s"
    with Dvid.init(path) as s:
        r = s.new_repo("r")
        root = s.node(r.root)
        vol = s.new_instance(root, "g", "grayscale", block_size=8)
        vol.write(root, (0, 0, 0), np.arange(40 * 40 * 40, dtype=np.int64).reshape(40, 40, 40) % 251)
    out = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", str(path), "downres", "r", "g"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "levels 1..3" in out.stdout
    with Dvid(path) as s:
        root = s.node("r")
        assert s.data(root, "g").pyramid_levels(root) == 3
