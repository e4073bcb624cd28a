"""Label volumes (DVID's labelmap) against an in-memory numpy model.

The model is a dense uint64 array of *supervoxels* plus a dict supervoxel ->
body for merges.  Every expected value (voxels, slices, sizes, bounding boxes,
block lists, body lists, sparsevol bytes) is computed here with numpy / plain
Python from that model; the sparsevol bytes come from a reference encoder in
this file (`ref_runs` / `ref_rles`), never from dvidfs.formats.sparsevol.

Covered: sparsevol (+ bounds, + coarse) for random volumes, the label index
after random overlapping writes / overwrites / deletes, merge (incl. chains,
versions, supervoxel reads, later writes), split (incl. refusal and after a
merge), a 2 Mi-voxel merge that touches no voxel block, the mutation log, bad
input, branch isolation, node-level merges and reopening the store.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import full_scan
from dvidfs.core import Dvid
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.store import keys

_names = itertools.count()

CLS_BLOCK, CLS_INDEX = 186, 187
CLS_MAPPING, CLS_MUTLOG = 242, 243


def new_labels(store, node, bs=16):
    name = f"lab{next(_names)}"
    if bs is None:  # the default (64)
        return store.new_instance(node, name, "labels")
    return store.new_instance(node, name, "labels", block_size=bs)


# ----------------------------------------------------------------------------- reference encoder

def ref_runs(mask: np.ndarray, origin_xyz) -> list[tuple[int, int, int, int]]:
    """Maximal X runs [x, y, z, length] of a (z, y, x) bool mask, sorted by z, y, x,
    with global coordinates = index + origin.  Plain Python over the rows."""
    ox, oy, oz = (int(v) for v in origin_xyz)
    spans = []
    rows_z, rows_y = np.nonzero(mask.any(axis=2))  # row-major: sorted by z, then y
    for z, y in zip(rows_z.tolist(), rows_y.tolist()):
        xs = np.flatnonzero(mask[z, y]).tolist()
        start = prev = xs[0]
        for x in xs[1:]:
            if x != prev + 1:
                spans.append((start + ox, y + oy, z + oz, prev - start + 1))
                start = x
            prev = x
        spans.append((start + ox, y + oy, z + oz, prev - start + 1))
    return spans


def ref_rles(spans) -> bytes:
    """DVID rles: bytes 0,3,0,0; uint32 0; uint32 n; then int32 x, y, z, length per span (LE)."""
    out = bytearray([0, 3, 0, 0])
    out += (0).to_bytes(4, "little") + len(spans).to_bytes(4, "little")
    for span in spans:
        for v in span:
            out += int(v).to_bytes(4, "little", signed=True)
    return bytes(out)


def ref_mask_rles(mask, origin_xyz) -> bytes:
    return ref_rles(ref_runs(mask, origin_xyz))


# ----------------------------------------------------------------------------- model helpers

def apply_map(sv: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = sv.copy()
    for s, b in mapping.items():
        out[sv == np.uint64(s)] = np.uint64(b)
    return out


def coords(mask, origin):
    """Global x, y, z (int64 arrays) of the True voxels of a (z, y, x) mask."""
    z, y, x = np.nonzero(mask)
    return x + origin[0], y + origin[1], z + origin[2]


def ref_blocks(mask, origin, bs) -> set[tuple[int, int, int]]:
    x, y, z = coords(mask, origin)
    return set(zip((x // bs).tolist(), (y // bs).tolist(), (z // bs).tolist()))


def ref_coarse(mask, origin, bs) -> bytes:
    """Expected sparsevol-coarse: the label's blocks as a block-coordinate mask, encoded."""
    blocks = np.array(sorted(ref_blocks(mask, origin, bs)), np.int64).reshape(-1, 3)
    lo = blocks.min(axis=0)
    hi = blocks.max(axis=0)
    bm = np.zeros(tuple((hi - lo + 1)[::-1]), bool)
    bm[blocks[:, 2] - lo[2], blocks[:, 1] - lo[1], blocks[:, 0] - lo[0]] = True
    return ref_mask_rles(bm, tuple(lo))


def ref_bbox(mask, origin):
    x, y, z = coords(mask, origin)
    return (int(x.min()), int(y.min()), int(z.min())), (int(x.max()), int(y.max()), int(z.max()))


def nonzero_ids(arr) -> list[int]:
    u = np.unique(arr)
    return [int(v) for v in u if v != 0]


def blobs(rng, shape, labels, cell=5):
    """Piecewise-constant labels (cells of `cell`³ voxels): long runs across block borders."""
    small = tuple(s // cell + 1 for s in shape)
    lab = rng.choice(np.array(labels, np.uint64), size=small)
    for ax in range(3):
        lab = np.repeat(lab, cell, axis=ax)
    return np.ascontiguousarray(lab[: shape[0], : shape[1], : shape[2]])


def sl(origin, off, size):
    """Model slices [z, y, x] of the box (offset, size in x, y, z) in a model at origin."""
    return tuple(slice(off[a] - origin[a], off[a] - origin[a] + size[a]) for a in (2, 1, 0))


def check_bodies_view(vol, view, sv_model, mapping, origin, bs, slices=(0, 7, -1)):
    """Every read at `view` agrees with the model (supervoxels + mapping)."""
    body_model = apply_map(sv_model, mapping)
    size_xyz = sv_model.shape[::-1]
    assert np.array_equal(vol.read(view, origin, size_xyz), body_model)
    assert np.array_equal(vol.read(view, origin, size_xyz, supervoxels=True), sv_model)
    for i in slices:
        i = i % sv_model.shape[0]
        assert np.array_equal(vol.read_slice(view, "xy", origin[2] + i), body_model[i])
        assert np.array_equal(vol.read_slice(view, "xz", origin[1] + i), body_model[:, i, :])
        assert np.array_equal(vol.read_slice(view, "yz", origin[0] + i), body_model[:, :, i])
        assert np.array_equal(vol.read_slice(view, "xy", origin[2] + i, supervoxels=True), sv_model[i])
    ids = nonzero_ids(body_model)
    assert vol.bodies(view).tolist() == ids
    for b in ids:
        m = body_model == b
        assert vol.size(view, b) == int(m.sum())
        assert vol.sparsevol(view, b) == ref_mask_rles(m, origin)
        assert vol.sparsevol_coarse(view, b) == ref_coarse(m, origin, bs)
        assert vol.bbox(view, b) == ref_bbox(m, origin)
        assert sorted(int(s) for s in vol.supervoxels(view, b)) == nonzero_ids(sv_model[m])
        assert set(map(tuple, vol.block_coords(view, b))) == ref_blocks(m, origin, bs)
    return body_model


def data_keys_by_class(engine, inst_id, version=None):
    """Counter of (class byte) over the instance's data keys (optionally one version)."""
    out: dict[int, int] = {}
    for k, _ in full_scan(engine):
        if not k.startswith(keys.DATA):
            continue
        inst, tk, v, _tomb = keys.split_data_key(k)
        if inst == inst_id and (version is None or v == version):
            out[tk[0]] = out.get(tk[0], 0) + 1
    return out


# ============================================================================= sparsevol vs reference

MLO, MN = -32, 64  # model covers [-32, 32) on every axis (blocks -2..1 with 16³ blocks)
ORIGIN = (MLO, MLO, MLO)
CANDIDATES = [1, 2, 3, 5, 8, 255, 256, 65537, 2**40 + 3]


@st.composite
def write_op(draw, bs, allow_delete=True):
    kinds = ["blobs", "noise", "const", "zeros"] + (["delete"] if allow_delete else [])
    kind = draw(st.sampled_from(kinds))
    if draw(st.integers(0, 3)) == 0:   # block-aligned whole blocks (tombstones on delete)
        off = tuple(draw(st.integers(MLO // bs, (MLO + MN) // bs - 1)) * bs for _ in range(3))
        size = tuple(min(draw(st.integers(1, 2)) * bs, MLO + MN - o) for o in off)
    else:
        size = tuple(draw(st.integers(1, 26)) for _ in range(3))
        off = tuple(draw(st.integers(MLO, MLO + MN - s)) for s in size)
    labels = draw(st.lists(st.sampled_from(CANDIDATES), min_size=1, max_size=4, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, off, size, labels, seed


def make_arr(kind, size, labels, seed):
    shape = (size[2], size[1], size[0])
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros(shape, np.uint64)
    if kind == "const":
        return np.full(shape, labels[0], np.uint64)
    if kind == "noise":
        return rng.choice(np.array([0] + labels, np.uint64), size=shape)
    return blobs(rng, shape, [0] + labels, cell=int(rng.integers(2, 7)))


def apply_op(vol, node, model, op):
    """Do one op on the volume and the model; returns the labels it wrote."""
    kind, off, size, labels, seed = op
    if kind == "delete":
        vol.delete(node, off, size)
        model[sl(ORIGIN, off, size)] = 0
        return []
    arr = make_arr(kind, size, labels, seed)
    vol.write(node, off, arr)
    model[sl(ORIGIN, off, size)] = arr
    return nonzero_ids(arr)


BOUND = st.one_of(st.none(), st.integers(MLO - 3, MLO + MN + 3))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sparsevol_bytes_match_reference_encoder(store, root, data):
    bs = 16
    vol = new_labels(store, root, bs)
    view = store.db.view(root)
    model = np.zeros((MN, MN, MN), np.uint64)
    # a first write over most of the model so there is plenty to encode
    base = ("blobs", (MLO + 2, MLO + 1, MLO + 3), (MN - 5, MN - 2, MN - 4),
            data.draw(st.lists(st.sampled_from(CANDIDATES), min_size=2, max_size=4, unique=True)),
            data.draw(st.integers(0, 2**32 - 1)))
    ops = [base] + data.draw(st.lists(write_op(bs), max_size=4))
    for op in ops:
        apply_op(vol, root, model, op)
    ids = nonzero_ids(model)
    assert vol.bodies(view).tolist() == ids
    for lab in ids:
        m = model == lab
        assert vol.sparsevol(view, lab) == ref_mask_rles(m, ORIGIN)
        assert vol.sparsevol_coarse(view, lab) == ref_coarse(m, ORIGIN, bs)
    # bounds (inclusive, any of them may be missing) vs numpy masking
    zz, yy, xx = np.meshgrid(*(np.arange(MN) + MLO,) * 3, indexing="ij")
    for _ in range(3):
        lab = data.draw(st.sampled_from(ids)) if ids else None
        if lab is None:
            break
        lo = [data.draw(BOUND) for _ in range(3)]
        hi = [data.draw(BOUND) for _ in range(3)]
        m = model == lab
        for a, grid in zip(range(3), (xx, yy, zz)):
            if lo[a] is not None:
                m &= grid >= lo[a]
            if hi[a] is not None:
                m &= grid <= hi[a]
        try:
            got = vol.sparsevol(view, lab, min_xyz=tuple(lo), max_xyz=tuple(hi))
        except NotFoundError:
            assert not m.any(), "NotFoundError although voxels are inside the bounds"
            continue
        assert got == ref_mask_rles(m, ORIGIN)


def test_reference_encoder_sanity():
    """The reference encoder itself, on a hand-checked example."""
    mask = np.zeros((2, 2, 5), bool)
    mask[0, 0, 1:3] = True
    mask[0, 0, 4] = True
    mask[1, 1, :] = True
    spans = ref_runs(mask, (-2, 10, -7))
    assert spans == [(-1, 10, -7, 2), (2, 10, -7, 1), (-2, 11, -6, 5)]
    b = ref_rles(spans)
    assert b[:12] == bytes([0, 3, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0])
    assert b[12:16] == (-1).to_bytes(4, "little", signed=True) and len(b) == 12 + 3 * 16


def test_sparsevol_default_blocks_negative_offsets(store, root):
    """64³ blocks (the default), a volume straddling 0 on every axis."""
    vol = new_labels(store, root, None)
    assert vol.grid.size == (64, 64, 64)
    view = store.db.view(root)
    origin, shape = (-70, -66, -65), (130, 131, 135)   # z, y, x shape
    rng = np.random.default_rng(7)
    model = blobs(rng, shape, [0, 4, 9, 2**33 + 1], cell=9)
    vol.write(root, origin, model)
    for lab in (4, 9, 2**33 + 1):
        m = model == lab
        assert vol.sparsevol(view, lab) == ref_mask_rles(m, origin)
        assert vol.sparsevol_coarse(view, lab) == ref_coarse(m, origin, 64)
        assert vol.size(view, lab) == int(m.sum())
        assert vol.bbox(view, lab) == ref_bbox(m, origin)
        assert set(map(tuple, vol.block_coords(view, lab))) == ref_blocks(m, origin, 64)
    # bounds that cut across the block border at 0
    zz, yy, xx = np.meshgrid(*(np.arange(n) + o for n, o in zip(shape, origin[::-1])), indexing="ij")
    m = (model == 9) & (xx >= -3) & (xx <= 5) & (zz <= 0) & (yy >= -64)
    assert vol.sparsevol(view, 9, min_xyz=(-3, -64, None), max_xyz=(5, None, 0)) == ref_mask_rles(m, origin)
    assert vol.max_label(view) == 2**33 + 1


def test_labels_above_2_to_63(store, root):
    """uint64 ids with the top bit set survive index, sparsevol, merge and split."""
    vol = new_labels(store, root)
    view = store.db.view(root)
    big, bigger = 2**63 + 5, 2**64 - 2
    model = np.zeros((20, 20, 20), np.uint64)
    model[:, :, :9] = big
    model[:, :, 12:] = bigger
    origin = (-8, -8, -8)
    vol.write(root, origin, model)
    assert vol.bodies(view).tolist() == [big, bigger]
    assert vol.max_label(view) == bigger
    assert vol.size(view, big) == 20 * 20 * 9
    assert vol.sparsevol(view, big) == ref_mask_rles(model == big, origin)
    vol.merge(root, bigger, [big])
    check_bodies_view(vol, view, model, {big: bigger}, origin, 16)


# ============================================================================= index after random writes

def check_index(vol, view, model, ever, max_ever, bs=16):
    ids = nonzero_ids(model)
    assert vol.bodies(view).tolist() == ids
    assert vol.max_label(view) == max_ever
    for lab in ids:
        m = model == lab
        assert vol.size(view, lab) == int(m.sum())
        assert vol.bbox(view, lab) == ref_bbox(m, ORIGIN)
        bc = [tuple(c) for c in vol.block_coords(view, lab)]
        assert len(bc) == len(set(bc)) and set(bc) == ref_blocks(m, ORIGIN, bs)
        idx = vol.index(view, lab)
        assert int(idx.counts.sum()) == int(m.sum()) and (idx.counts > 0).all()
    for lab in ever - set(ids):    # written once, now fully overwritten / deleted
        with pytest.raises(NotFoundError):
            vol.size(view, lab)
        with pytest.raises(NotFoundError):
            vol.sparsevol(view, lab)
        idx = vol.index(view, lab)
        assert idx is None or len(idx) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops1=st.lists(write_op(16), min_size=1, max_size=5), ops2=st.lists(write_op(16), max_size=4))
def test_index_matches_numpy_after_random_writes_and_deletes(store, ops1, ops2):
    """ops1 in a root, then ops2 in a child: the index is checked after every op,
    and the root's index must not change while the child is edited."""
    db = store.db
    top = db.node(db.new_repo(f"r{next(_names)}").root)
    vol = new_labels(store, top, 16)
    model = np.zeros((MN, MN, MN), np.uint64)
    ever: set[int] = set()
    max_ever = 0
    for op in ops1:
        written = apply_op(vol, top, model, op)
        ever.update(written)
        max_ever = max([max_ever] + written)
        check_index(vol, db.view(top), model, ever, max_ever)
    db.commit(top)
    child = db.branch(top)
    root_model, root_ever, root_max = model.copy(), set(ever), max_ever
    for op in ops2:
        written = apply_op(vol, child, model, op)
        ever.update(written)
        max_ever = max([max_ever] + written)
        check_index(vol, db.view(child), model, ever, max_ever)
    assert np.array_equal(vol.read(db.view(child), ORIGIN, (MN,) * 3), model)
    check_index(vol, db.view(top), root_model, root_ever, root_max)
    assert np.array_equal(vol.read(db.view(top), ORIGIN, (MN,) * 3), root_model)


def test_index_overwrite_and_delete_deterministic(store, root):
    """Overwrite a label with another and with 0, then delete whole and partial blocks."""
    bs = 16
    vol = new_labels(store, root, bs)
    view = store.db.view(root)
    model = np.zeros((MN, MN, MN), np.uint64)

    def put(off, arr):
        vol.write(root, off, arr)
        model[sl(ORIGIN, off, arr.shape[::-1])] = arr

    def check():
        ids = nonzero_ids(model)
        assert vol.bodies(view).tolist() == ids
        for lab in ids:
            m = model == lab
            assert vol.size(view, lab) == int(m.sum())
            assert vol.bbox(view, lab) == ref_bbox(m, ORIGIN)
            assert set(map(tuple, vol.block_coords(view, lab))) == ref_blocks(m, ORIGIN, bs)

    put((-30, -30, -30), np.full((40, 40, 40), 3, np.uint64))
    check()
    put((-5, -5, -5), np.full((10, 10, 10), 4, np.uint64))          # 4 inside 3
    check()
    put((-20, -20, -20), np.zeros((8, 50, 50), np.uint64))          # carve 3 with 0
    check()
    vol.delete(root, (-32, -32, -16), (32, 32, 16))                  # 4 whole blocks: tombstones
    model[sl(ORIGIN, (-32, -32, -16), (32, 32, 16))] = 0
    check()
    vol.delete(root, (-3, -9, -11), (7, 20, 30))                     # partial blocks
    model[sl(ORIGIN, (-3, -9, -11), (7, 20, 30))] = 0
    check()
    put((-32, -32, -16), np.full((4, 4, 4), 3, np.uint64))           # rewrite a deleted block
    check()
    assert vol.max_label(view) == 4
    # delete everything: no bodies left, max label stays
    vol.delete(root, ORIGIN, (MN,) * 3)
    model[:] = 0
    assert vol.bodies(view).tolist() == []
    for lab in (3, 4):
        with pytest.raises(NotFoundError):
            vol.size(view, lab)
    assert vol.max_label(view) == 4


# ============================================================================= merge

MO = (-24, -24, -24)   # merge tests: model covers [-24, 24)³


def base_volume(store, root, bs=16, seed=3, labels=(0, 1, 2, 3, 4, 5)):
    vol = new_labels(store, root, bs)
    rng = np.random.default_rng(seed)
    sv = blobs(rng, (48, 48, 48), list(labels), cell=6)
    for lab in labels:
        if lab and not (sv == lab).any():  # make sure every label exists
            sv[0, 0, lab] = lab
    vol.write(root, MO, sv)
    return vol, sv


def test_merge_reads_and_versions(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    A, B = 1, 2
    db.commit(root)
    child = db.branch(root)                 # master
    sib = db.branch(root, "sibling")
    rec = vol.merge(child, A, [B])
    assert rec["Action"] == "merge" and rec["Target"] == A and rec["Labels"] == [B]
    check_bodies_view(vol, db.view(child), sv, {B: A}, MO, 16)
    # parent (merge done in a child) and the sibling branch still show B
    check_bodies_view(vol, db.view(root), sv, {}, MO, 16)
    check_bodies_view(vol, db.view(sib), sv, {}, MO, 16)
    # a later write of supervoxel B in the merged node counts toward A
    sv_child = sv.copy()
    patch = np.full((5, 6, 7), B, np.uint64)
    off = (-3, 10, -9)                      # crosses the block border at x = 0
    vol.write(child, off, patch)
    sv_child[sl(MO, off, (7, 6, 5))] = patch
    body = check_bodies_view(vol, db.view(child), sv_child, {B: A}, MO, 16)
    assert vol.size(db.view(child), A) == int((body == A).sum())
    assert B in vol.supervoxels(db.view(child), A).tolist()
    assert vol.index(db.view(child), B) is None or len(vol.index(db.view(child), B)) == 0
    with pytest.raises(NotFoundError):
        vol.size(db.view(child), B)
    # overwriting merged voxels (supervoxel B) with 0 and with another label
    vol.write(child, (-20, -20, -20), np.zeros((6, 30, 30), np.uint64))
    sv_child[sl(MO, (-20, -20, -20), (30, 30, 6))] = 0
    vol.write(child, (-2, -24, 5), np.full((7, 40, 9), 4, np.uint64))
    sv_child[sl(MO, (-2, -24, 5), (9, 40, 7))] = 4
    body = check_bodies_view(vol, db.view(child), sv_child, {B: A}, MO, 16)
    assert vol.size(db.view(child), A) == int(np.isin(sv_child, [A, B]).sum())
    # the same write in the sibling counts toward B there
    sv_sib = sv.copy()
    vol.write(sib, off, patch)
    sv_sib[sl(MO, off, (7, 6, 5))] = patch
    check_bodies_view(vol, db.view(sib), sv_sib, {}, MO, 16)
    # descendants (same branch and a new branch) inherit the merge
    db.commit(child)
    grand = db.branch(child)
    other = db.branch(child, "from-child")
    for n in (grand, other):
        check_bodies_view(vol, db.view(n), sv_child, {B: A}, MO, 16)
    check_bodies_view(vol, db.view(root), sv, {}, MO, 16)


def test_merge_several_bodies_at_once(store, root):
    vol, sv = base_volume(store, root)
    view = store.db.view(root)
    vol.merge(root, 4, [1, 5])
    check_bodies_view(vol, view, sv, {1: 4, 5: 4}, MO, 16)


def test_merge_chain_same_node_and_across_nodes(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    A, B, C = 1, 2, 3
    db.commit(root)
    n1 = db.branch(root, "same-node")
    vol.merge(n1, A, [B])
    vol.merge(n1, C, [A])
    body = check_bodies_view(vol, db.view(n1), sv, {A: C, B: C}, MO, 16)
    assert vol.size(db.view(n1), C) == int(np.isin(sv, [A, B, C]).sum())
    assert not np.isin(body, [A, B]).any()
    # merged-away labels are unknown now
    for lab in (A, B):
        with pytest.raises(NotFoundError):
            vol.merge(n1, 4, [lab])
    # the same chain over two versions
    n2 = db.branch(root, "two-nodes")
    vol.merge(n2, A, [B])
    db.commit(n2)
    n3 = db.branch(n2)
    vol.merge(n3, C, [A])
    check_bodies_view(vol, db.view(n3), sv, {A: C, B: C}, MO, 16)
    check_bodies_view(vol, db.view(n2), sv, {B: A}, MO, 16)
    # split after the chain: cut a box out of C (voxels of supervoxels A, B and C)
    view = db.view(n3)
    cut = np.zeros_like(sv, bool)
    cut[10:30, 5:40, 12:34] = True
    cut &= np.isin(sv, [A, B, C])
    rec = vol.split(n3, C, ref_mask_rles(cut, MO))
    new = rec["NewLabel"]
    assert new == 6
    sv_after = sv.copy()
    sv_after[cut] = new
    check_bodies_view(vol, view, sv_after, {A: C, B: C}, MO, 16)


def test_big_merge_writes_no_voxel_block(store, root, monkeypatch):
    """Two bodies of 2^20 voxels each (64³ blocks), merged in a child node:
    only mapping / index / mutation-log keys are written."""
    db = store.db
    vol = new_labels(store, root, None)
    origin = (-61, -64, -64)              # the halves meet at x = 3, inside a block
    sv = np.empty((128, 128, 128), np.uint64)
    sv[:, :, :64] = 1000
    sv[:, :, 64:] = 2000
    vol.write(root, origin, sv)
    db.commit(root)
    child = db.branch(root)
    view = db.view(child)
    assert vol.size(view, 1000) == vol.size(view, 2000) == 2**20
    assert data_keys_by_class(store.engine, vol.inst.id, root.version_id)[CLS_BLOCK] == 12
    written = []                          # every key any batch puts or deletes
    real_apply = store.engine.apply

    def spy(batch, *a, **kw):
        written.extend(k for k, _ in batch.ops)
        return real_apply(batch, *a, **kw)

    monkeypatch.setattr(store.engine, "apply", spy)
    before = full_scan(store.engine)
    vol.merge(child, 1000, [2000])
    after = full_scan(store.engine)
    monkeypatch.undo()
    # no block key at the child's version, the root's 12 blocks byte-identical
    assert data_keys_by_class(store.engine, vol.inst.id, child.version_id).get(CLS_BLOCK, 0) == 0
    assert data_keys_by_class(store.engine, vol.inst.id, root.version_id)[CLS_BLOCK] == 12
    blocks = lambda scan: [kv for kv in scan if kv[0].startswith(keys.DATA)
                           and keys.split_data_key(kv[0])[1][0] == CLS_BLOCK]
    assert blocks(before) == blocks(after)
    # what was written: data keys of classes 187/242/243 (and their change-index
    # entries) at the child's version, plus the mutation-id counter
    data_classes = set()
    for k in written:
        if k.startswith(keys.DATA):
            inst, tk, v, _t = keys.split_data_key(k)
            assert inst == vol.inst.id and v == child.version_id
            data_classes.add(tk[0])
        elif k.startswith(keys.CHANGES):
            assert keys.split_change_key(k)[2][0] in (CLS_INDEX, CLS_MAPPING, CLS_MUTLOG)
        elif k.startswith(keys.TOMBSTONED):   # the merged body's index was deleted here
            assert k == keys.tombstoned_key(vol.inst.id, child.version_id)
        else:
            assert k.startswith(keys.META)
    assert data_classes == {CLS_INDEX, CLS_MAPPING, CLS_MUTLOG}
    b, a = dict(before), dict(after)
    assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} <= set(written)
    assert vol.size(view, 1000) == 2**21
    assert vol.bodies(view).tolist() == [1000]
    assert vol.bodies(db.view(root)).tolist() == [1000, 2000]
    got = vol.read(view, (-61, -64, 0), (128, 128, 2))
    assert (got == 1000).all()
    assert np.array_equal(vol.read(view, (-61, -64, 0), (128, 128, 2), supervoxels=True), sv[64:66])
    assert np.array_equal(vol.read_slice(view, "yz", 3), np.full((128, 128), 1000, np.uint64))


# ============================================================================= split

def test_split_assigns_new_label(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    view = db.view(root)
    A = 3
    cut = np.zeros_like(sv, bool)
    cut[4:30, 20:47, 9:40] = True        # crosses block borders at -16, 0, 16
    cut &= sv == A
    assert 0 < cut.sum() < (sv == A).sum()
    max_before = int(sv.max())
    rec = vol.split(root, A, ref_mask_rles(cut, MO))
    new = max_before + 1
    assert rec["NewLabel"] == new and rec["Action"] == "split" and rec["Target"] == A
    sv2 = sv.copy()
    sv2[cut] = new
    check_bodies_view(vol, view, sv2, {}, MO, 16)
    assert vol.size(view, new) == int(cut.sum())
    assert vol.size(view, A) == int((sv == A).sum() - cut.sum())
    assert vol.max_label(view) == new
    # a second split gets the next id
    cut2 = (sv2 == 5)
    cut2[:, :, 24:] = False
    rec2 = vol.split(root, 5, ref_mask_rles(cut2, MO))
    assert rec2["NewLabel"] == new + 1


def test_split_default_block_size(store, root):
    vol = new_labels(store, root, None)
    view = store.db.view(root)
    origin = (-40, -33, -70)
    rng = np.random.default_rng(11)
    sv = blobs(rng, (90, 70, 80), [0, 7, 8], cell=7)
    vol.write(root, origin, sv)
    cut = (sv == 7)
    cut[:, :, 45:] = False                 # x < 5: crosses the block border at x = 0
    rec = vol.split(root, 7, ref_mask_rles(cut, origin))
    assert rec["NewLabel"] == 9
    sv2 = sv.copy()
    sv2[cut] = 9
    check_bodies_view(vol, view, sv2, {}, origin, 64, slices=(0, 40))


def test_split_refused_when_not_all_in_body(store, root):
    vol, sv = base_volume(store, root)
    A = 2
    cut = sv == A
    cut[20:25, 20:25, 20:25] = True       # some of these voxels are not A
    assert (sv[cut] != A).any()
    before = full_scan(store.engine)
    with pytest.raises(InvalidInputError):
        vol.split(root, A, ref_mask_rles(cut, MO))
    assert full_scan(store.engine) == before
    # voxels of A plus a voxel in never-written space
    extra = ref_runs(sv == A, MO) + [(100, 100, 100, 1)]
    with pytest.raises(InvalidInputError):
        vol.split(root, A, ref_rles(extra))
    assert full_scan(store.engine) == before
    check_bodies_view(vol, store.db.view(root), sv, {}, MO, 16)


def test_split_after_merge_cuts_merged_supervoxels(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    A, B = 4, 1
    db.commit(root)
    child = db.branch(root)
    vol.merge(child, A, [B])
    view = db.view(child)
    cut = np.zeros_like(sv, bool)
    cut[:, :30, :] = True
    cut &= sv == B                        # only voxels that came from B's supervoxel
    cut[0:3] |= sv[0:3] == A              # plus a few of A's own
    rec = vol.split(child, A, ref_mask_rles(cut, MO))
    new = int(sv.max()) + 1
    assert rec["NewLabel"] == new
    sv2 = sv.copy()
    sv2[cut] = new
    check_bodies_view(vol, view, sv2, {B: A}, MO, 16)
    assert vol.size(view, A) == int(np.isin(sv, [A, B]).sum() - cut.sum())
    assert vol.size(view, new) == int(cut.sum())
    # the root is untouched
    check_bodies_view(vol, db.view(root), sv, {}, MO, 16)


# ============================================================================= mutation log

def test_mutation_log_order_and_visibility(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    r0 = vol.merge(root, 5, [4])              # made in the root: seen everywhere below
    db.commit(root)
    child = db.branch(root)
    sib = db.branch(root, "sib")
    r1 = vol.merge(child, 1, [2])
    cut = np.zeros_like(sv, bool)
    cut[:10] = True
    cut &= np.isin(sv, [1, 2])
    r2 = vol.split(child, 1, ref_mask_rles(cut, MO))
    r3 = vol.merge(child, 3, [1])
    rs = vol.split(sib, 3, ref_mask_rles(sv == 3, MO))   # sibling's own record
    for r in (r0, r1, r2, r3, rs):
        assert {"Action", "Target", "UUID", "MutationID"} <= set(r)
    assert r1["UUID"] == r2["UUID"] == r3["UUID"] == child.uuid and r0["UUID"] == root.uuid
    assert (r1["Action"], r1["Target"], r1["Labels"]) == ("merge", 1, [2])
    assert (r2["Action"], r2["Target"], r2["NewLabel"]) == ("split", 1, 6)
    assert r2.get("Voxels", int(cut.sum())) == int(cut.sum())
    assert (r3["Action"], r3["Target"], r3["Labels"]) == ("merge", 3, [1])
    # split ids come from the repo-wide max label, so the sibling never reuses 6
    assert (rs["Action"], rs["Target"], rs["NewLabel"]) == ("split", 3, 7)
    ids = [r["MutationID"] for r in (r0, r1, r2, r3, rs)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert vol.mutations(db.view(child)) == [r0, r1, r2, r3]
    assert vol.mutations(db.view(sib)) == [r0, rs]
    assert vol.mutations(db.view(root)) == [r0]
    db.commit(child)
    assert vol.mutations(db.view(db.branch(child))) == [r0, r1, r2, r3]


# ============================================================================= bad input

def _rles_bad_cases(good: bytes) -> dict[str, bytes]:
    n = int.from_bytes(good[8:12], "little")
    neg = bytearray(good)
    neg[24:28] = (-3).to_bytes(4, "little", signed=True)         # negative length
    zero = bytearray(good)
    zero[24:28] = (0).to_bytes(4, "little")
    return {
        "empty": b"",
        "short-header": good[:7],
        "header-only-claims-spans": good[:12],
        "truncated-span": good[:-5],
        "trailing-bytes": good + b"\x00\x01",
        "count-too-big": good[:8] + (n + 1).to_bytes(4, "little") + good[12:],
        "descriptor-1": b"\x01" + good[1:],
        "dims-2": good[:1] + b"\x02" + good[2:],
        "run-axis-y": good[:2] + b"\x01" + good[3:],
        "negative-length": bytes(neg),
        "zero-length": bytes(zero),
        "no-spans": ref_rles([]),
    }


@pytest.mark.parametrize("case", list(_rles_bad_cases(ref_rles([(0, 0, 0, 2), (1, 1, 1, 3)]))))
def test_split_rejects_malformed_sparsevol(store, root, case):
    vol, sv = base_volume(store, root)
    good = ref_mask_rles(sv == 2, MO)
    bad = _rles_bad_cases(good)[case]
    before = full_scan(store.engine)
    with pytest.raises(InvalidInputError):
        vol.split(root, 2, bad)
    assert full_scan(store.engine) == before


def test_unknown_labels_and_self_merge(store, root):
    vol, sv = base_volume(store, root)
    view = store.db.view(root)
    good = ref_mask_rles(sv == 2, MO)
    before = full_scan(store.engine)
    for call in (lambda: vol.merge(root, 77, [1]),
                 lambda: vol.merge(root, 1, [77]),
                 lambda: vol.merge(root, 1, [2, 77]),
                 lambda: vol.split(root, 77, good),
                 lambda: vol.size(view, 77),
                 lambda: vol.sparsevol(view, 77),
                 lambda: vol.sparsevol_coarse(view, 77)):
        with pytest.raises(NotFoundError):
            call()
        assert full_scan(store.engine) == before
    for call in (lambda: vol.merge(root, 1, [1]),
                 lambda: vol.merge(root, 1, [2, 1]),
                 lambda: vol.merge(root, 1, [2, 2]),
                 lambda: vol.merge(root, 0, [1]),
                 lambda: vol.merge(root, 1, [0]),
                 lambda: vol.merge(root, 1, [])):
        with pytest.raises(InvalidInputError):
            call()
        assert full_scan(store.engine) == before
    check_bodies_view(vol, view, sv, {}, MO, 16)
    # a merged-away body is unknown as well
    vol.merge(root, 1, [2])
    before = full_scan(store.engine)
    for call in (lambda: vol.merge(root, 3, [2]),
                 lambda: vol.merge(root, 2, [3]),
                 lambda: vol.split(root, 2, good),
                 lambda: vol.size(view, 2),
                 lambda: vol.sparsevol(view, 2)):
        with pytest.raises(NotFoundError):
            call()
        assert full_scan(store.engine) == before


def test_committed_node_is_read_only(store, root):
    vol, sv = base_volume(store, root)
    store.commit(root)
    good = ref_mask_rles(sv == 2, MO)
    before = full_scan(store.engine)
    for call in (lambda: vol.merge(root, 1, [2]),
                 lambda: vol.split(root, 2, good),
                 lambda: vol.write(root, (0, 0, 0), np.ones((2, 2, 2), np.uint64)),
                 lambda: vol.delete(root, (0, 0, 0), (4, 4, 4))):
        with pytest.raises(ReadOnlyError):
            call()
        assert full_scan(store.engine) == before
    check_bodies_view(vol, store.db.view(root), sv, {}, MO, 16)


# ============================================================================= branches and node merges

def test_branch_isolation_of_merges_and_splits(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    vol.merge(a, 3, [5])
    cut = np.zeros_like(sv, bool)
    cut[:, :, :20] = True
    cut &= sv == 5
    rec = vol.split(b, 5, ref_mask_rles(cut, MO))
    new = rec["NewLabel"]
    sv_b = sv.copy()
    sv_b[cut] = new
    check_bodies_view(vol, db.view(a), sv, {5: 3}, MO, 16)
    check_bodies_view(vol, db.view(b), sv_b, {}, MO, 16)
    check_bodies_view(vol, db.view(root), sv, {}, MO, 16)
    assert vol.max_label(db.view(a)) == 5 and vol.max_label(db.view(b)) == new
    with pytest.raises(NotFoundError):
        vol.size(db.view(a), new)


def test_node_merge_joins_label_data(store, root):
    db = store.db
    vol, sv = base_volume(store, root)           # labels 1..5 in [-24, 24)³
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    # different blocks, different new labels on each side
    pa = np.full((10, 12, 14), 10, np.uint64)
    pa[:, :, :3] = 0
    pb = np.full((8, 16, 16), 11, np.uint64)
    pb[2, 2, 2] = 0
    vol.write(a, (30, 30, 30), pa)               # blocks (1..2, 1..2, 1..2)
    vol.write(b, (-64, -48, -40), pb)            # blocks (-4, -3, -3)
    vol.merge(a, 1, [2])                         # a label merge on one side only
    db.commit(a)
    db.commit(b)
    m = store.merge([a, b], note="join")
    view = db.view(m)
    origin = (-64, -48, -40)
    full = np.zeros((80, 90, 108), np.uint64)    # covers both patches and the base
    full[sl(origin, MO, (48, 48, 48))] = sv
    full[sl(origin, (30, 30, 30), (14, 12, 10))] = pa
    full[sl(origin, (-64, -48, -40), (16, 16, 8))] = pb
    check_bodies_view(vol, view, full, {2: 1}, origin, 16, slices=(0, 30, 75))
    assert vol.max_label(view) == 11             # max of 10 (a) and 11 (b)
    assert vol.max_label(db.view(a)) == 10 and vol.max_label(db.view(b)) == 11
    # and the merged node is writable: a split there gets 12
    rec = vol.split(m, 10, ref_mask_rles(full == 10, origin))
    assert rec["NewLabel"] == 12


# ============================================================================= reopen

def test_reopen_keeps_mapping_index_and_log(store, store_path, root, reopen):
    db = store.db
    vol, sv = base_volume(store, root)
    name = vol.inst.name
    r1 = vol.merge(root, 1, [2])
    cut = np.zeros_like(sv, bool)
    cut[30:] = True
    cut &= np.isin(sv, [1, 2])
    r2 = vol.split(root, 1, ref_mask_rles(cut, MO))
    db.commit(root)
    child = db.branch(root)
    r3 = vol.merge(child, 3, [4])
    sv2 = sv.copy()
    sv2[cut] = r2["NewLabel"]
    root_uuid, child_uuid = root.uuid, child.uuid
    store.close()
    s2 = reopen(store_path)
    try:
        rnode, cnode = s2.node(root_uuid), s2.node(child_uuid)
        v2 = s2.data(cnode, name)
        check_bodies_view(v2, s2.db.view(rnode), sv2, {2: 1}, MO, 16)
        check_bodies_view(v2, s2.db.view(cnode), sv2, {2: 1, 4: 3}, MO, 16)
        assert v2.mutations(s2.db.view(cnode)) == [r1, r2, r3]
        assert v2.mutations(s2.db.view(rnode)) == [r1, r2]
        assert v2.max_label(s2.db.view(cnode)) == r2["NewLabel"] == 6
        # a write after reopening still maps supervoxel 2 to body 1 (mapping survived)
        v2.write(cnode, (-24, -24, -24), np.full((2, 2, 2), 2, np.uint64))
        sv3 = sv2.copy()
        sv3[:2, :2, :2] = 2
        check_bodies_view(v2, s2.db.view(cnode), sv3, {2: 1, 4: 3}, MO, 16)
        # mutation ids keep growing after reopening
        r4 = v2.merge(cnode, 5, [3])
        assert r4["MutationID"] > r3["MutationID"]
    finally:
        s2.close()


def test_node_merge_same_label_in_different_blocks(store, root):
    db = store.db
    vol, sv = base_volume(store, root)
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    vol.write(a, (-24, -24, -24), np.full((4, 4, 4), 3, np.uint64))   # block (-2, -2, -2)
    vol.write(b, (10, 10, 10), np.full((4, 4, 4), 3, np.uint64))      # block (0, 0, 0)
    db.commit(a)
    db.commit(b)
    m = store.merge([a, b])
    full = sv.copy()
    full[:4, :4, :4] = 3
    full[34:38, 34:38, 34:38] = 3
    check_bodies_view(vol, db.view(m), full, {}, MO, 16)


def test_merge_chain_remaps_supervoxels_absent_from_the_index(store, root):
    vol = new_labels(store, root)
    view = store.db.view(root)
    sv = np.zeros((16, 16, 48), np.uint64)
    sv[:, :, :16], sv[:, :, 16:32], sv[:, :, 32:] = 1, 2, 3
    vol.write(root, (0, 0, 0), sv)
    vol.merge(root, 1, [2])                                       # B=2 -> A=1
    vol.write(root, (16, 0, 0), np.zeros((16, 16, 16), np.uint64))  # no voxel of B left
    vol.merge(root, 3, [1])                                       # A -> C=3
    vol.write(root, (16, 0, 0), np.full((16, 16, 16), 2, np.uint64))  # supervoxel B again
    assert vol.bodies(view).tolist() == [3]
    assert (vol.read(view, (0, 0, 0), (48, 16, 16)) == 3).all()
    assert vol.size(view, 3) == 48 * 16 * 16


def test_node_merge_same_label_same_block_on_both_sides_is_a_conflict(store, root):
    """Both branches add voxels of one body to the same block (different voxels):
    the block itself conflicts, and the merge is refused with nothing written."""
    db = store.db
    vol, sv = base_volume(store, root)
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    vol.write(a, (10, 10, 10), np.full((1, 1, 1), 3, np.uint64))
    vol.write(b, (12, 12, 12), np.full((1, 1, 1), 3, np.uint64))
    db.commit(a)
    db.commit(b)
    before = full_scan(store.engine)
    with pytest.raises(ConflictError, match="block"):
        store.merge([a, b])
    assert full_scan(store.engine) == before


def test_splits_in_sibling_branches_get_different_ids_and_merge(store, root):
    """New ids come from the repo-wide counter, so two branches' splits never
    collide, and a node merge keeps both new bodies apart."""
    db = store.db
    vol = new_labels(store, root)
    sv = np.zeros((16, 16, 48), np.uint64)
    sv[:, :, :16], sv[:, :, 32:] = 1, 2          # bodies in different 16³ blocks
    vol.write(root, (0, 0, 0), sv)
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    x, y = 1, 2
    ra = vol.split(a, x, ref_mask_rles(sv == x, (0, 0, 0)))
    rb = vol.split(b, y, ref_mask_rles(sv == y, (0, 0, 0)))
    assert ra["NewLabel"] != rb["NewLabel"]
    db.commit(a)
    db.commit(b)
    m = store.merge([a, b])
    view = db.view(m)
    assert vol.size(view, ra["NewLabel"]) == int((sv == x).sum())
    assert vol.size(view, rb["NewLabel"]) == int((sv == y).sum())
    assert vol.max_label(view) == max(ra["NewLabel"], rb["NewLabel"])
