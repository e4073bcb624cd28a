"""The version DAG (docs/dvid.md §1): branches, deep chains, tombstones, merges,
read-only committed nodes, UUID resolution and the DAG rules.

Every voxel expectation comes from a numpy "model" kept alongside the store.
"""
from __future__ import annotations

import errno
import itertools

import numpy as np
import pytest

from dvidfs.errors import (AmbiguousError, ConflictError, ExistsError, InvalidInputError,
                           NotFoundError, ReadOnlyError)
from dvidfs.store import keys, versioned

# Model volumes cover [LO, LO + N) on every axis; block size in tests is 8.
LO, N = -16, 48
BS = 8


def model_zeros():
    return np.zeros((N, N, N), np.uint8)


def mput(model, offset, arr):
    """Write arr ([z,y,x]) at offset (x,y,z) into a model covering [LO, LO+N)^3."""
    x, y, z = (o - LO for o in offset)
    d, h, w = arr.shape
    model[z:z + d, y:y + h, x:x + w] = arr


def mzero(model, offset, size):
    x, y, z = (o - LO for o in offset)
    sx, sy, sz = size
    model[z:z + sz, y:y + sy, x:x + sx] = 0


def read_all(vol, view):
    return vol.read(view, (LO, LO, LO), (N, N, N))


def rand(rng, shape):
    return rng.integers(1, 256, size=shape, dtype=np.uint8)


def box_extents(boxes):
    """(lo, hi) half-open union of (offset, size_xyz) boxes."""
    lo = tuple(min(o[a] for o, _ in boxes) for a in range(3))
    hi = tuple(max(o[a] + s[a] for o, s in boxes) for a in range(3))
    return lo, hi


def ext(vol, view):
    e = vol.extents(view)
    return None if e is None else (e.lo, e.hi)


def shape_of(size):
    return (size[2], size[1], size[0])


# ---------------------------------------------------------------- branches
def test_two_branches_read_their_own_data_parent_unchanged(store, repo, root, gray):
    db = store.db
    rng = np.random.default_rng(1)
    m_root = model_zeros()
    a = rand(rng, (10, 12, 14))
    gray.write(root, (-3, -5, 2), a)
    mput(m_root, (-3, -5, 2), a)
    db.commit(root, note="base")

    b1 = db.branch(root, "b1")
    b2 = db.branch(root, "b2")
    assert b1.branch_name == "b1" and b2.branch_name == "b2" and root.branch_name == "master"
    assert set(root.children) == {b1.uuid, b2.uuid}
    assert b1.parents == [root.uuid] and b2.parents == [root.uuid]

    m1, m2 = m_root.copy(), m_root.copy()
    x1 = rand(rng, (5, 5, 5))
    x2 = rand(rng, (7, 3, 9))
    gray.write(b1, (0, 0, 0), x1)          # overlaps root's data
    mput(m1, (0, 0, 0), x1)
    gray.write(b2, (-16, 20, 10), x2)      # elsewhere, grows extents
    mput(m2, (-16, 20, 10), x2)
    z = np.zeros((3, 3, 3), np.uint8)
    gray.write(b2, (1, 1, 1), z)           # explicit zeros on top of root's data
    mput(m2, (1, 1, 1), z)

    assert np.array_equal(read_all(gray, db.view(root)), m_root)
    assert np.array_equal(read_all(gray, db.view(b1)), m1)
    assert np.array_equal(read_all(gray, db.view(b2)), m2)
    assert not np.array_equal(m1, m2) and not np.array_equal(m1, m_root)

    assert ext(gray, db.view(root)) == box_extents([((-3, -5, 2), (14, 12, 10))])
    assert ext(gray, db.view(b1)) == box_extents([((-3, -5, 2), (14, 12, 10)), ((0, 0, 0), (5, 5, 5))])
    assert ext(gray, db.view(b2)) == box_extents([((-3, -5, 2), (14, 12, 10)),
                                                  ((-16, 20, 10), (9, 3, 7)), ((1, 1, 1), (3, 3, 3))])

    br = db.branches(repo)
    assert {k: v.uuid for k, v in br.items()} == {"master": root.uuid, "b1": b1.uuid, "b2": b2.uuid}
    assert [n.uuid for n in db.history(b2)] == [b2.uuid, root.uuid]


def test_deep_chain_of_100_versions(store, repo, root, gray, versions_of, counting_reader):
    db = store.db
    depth = 100
    width = 50                               # voxel (i % 50, 0, 0): blocks 0..6 along x
    models = [np.zeros(width, np.uint8)]
    nodes = [root]
    n = root
    for i in range(depth + 1):
        val = (i * 37) % 255 + 1
        gray.write(n, (i % width, 0, 0), np.full((1, 1, 1), val, np.uint8))
        m = models[-1].copy()
        m[i % width] = val
        models[-1] = m
        if i == depth:
            break
        db.commit(n)
        n = db.branch(n)
        nodes.append(n)
        models.append(m.copy())
    assert len(nodes) == depth + 1
    assert [x.branch for x in nodes] == [""] * (depth + 1)
    for d, (node, m) in enumerate(zip(nodes, models)):
        got = gray.read(db.view(node), (0, 0, 0), (width, 1, 1))[0, 0]
        assert np.array_equal(got, m), f"depth {d}"
    # `~N` walks back up the chain
    assert db.node(f"{root.uuid[:12]}:master~37").uuid == nodes[depth - 37].uuid
    assert db.node(f"{nodes[depth].uuid}~{depth}").uuid == root.uuid

    # A read at depth 100 of one block scans exactly that block's stored
    # versions, not one entry per version of the DAG.
    leaf_view = db.view(nodes[depth])
    for bx in range(0, (width - 1) // BS + 1):
        tk = gray.block_tkey((bx, 0, 0))
        stored = versions_of(store.engine, gray.inst.id, tk)
        writers = {nodes[i].version_id for i in range(depth + 1) if (i % width) // BS == bx}
        assert {v for v, _ in stored} == writers
        assert len(stored) < depth / 4
        cr = counting_reader(store.engine)
        val = versioned.get(cr, gray.inst.id, tk, leaf_view)
        assert cr.scanned == len(stored)
        blk = gray.decode_block(val)
        lo, hi = bx * BS, min((bx + 1) * BS, width)
        assert np.array_equal(blk[0, 0, :hi - lo], models[depth][lo:hi])
        # row scan (what BlockVolume.read uses) also touches only this block's entries
        cr = counting_reader(store.engine)
        got = list(versioned.scan(cr, gray.inst.id, tk, tk, leaf_view))
        assert [g[0] for g in got] == [tk] and cr.scanned == len(stored)


# ---------------------------------------------------------------- deletes
def test_delete_tombstone_semantics(store, repo, root, gray, versions_of):
    db = store.db
    rng = np.random.default_rng(2)
    m_root = model_zeros()
    a = rand(rng, (16, 16, 24))             # blocks x 0..2, y 0..1, z 0..1 fully
    gray.write(root, (0, 0, 0), a)
    mput(m_root, (0, 0, 0), a)
    db.commit(root)

    c1 = db.branch(root)
    m1 = m_root.copy()
    # whole block (1,0,0) -> tombstone
    gray.delete(c1, (8, 0, 0), (8, 8, 8))
    mzero(m1, (8, 0, 0), (8, 8, 8))
    tk = gray.block_tkey((1, 0, 0))
    v1 = c1.version_id
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1, tombstone=True)) == b""
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1)) is None
    assert (root.version_id, False) in versions_of(store.engine, gray.inst.id, tk)  # ancestor copy stays
    # partial delete (crosses blocks (0,1,*) and (1,1,*)) -> zeroed, no tombstone
    gray.delete(c1, (5, 9, 3), (6, 4, 10))
    mzero(m1, (5, 9, 3), (6, 4, 10))
    for b in ((0, 1, 0), (1, 1, 0), (0, 1, 1), (1, 1, 1)):
        t = gray.block_tkey(b)
        assert store.engine.get(keys.data_key(gray.inst.id, t, v1, tombstone=True)) is None
        assert store.engine.get(keys.data_key(gray.inst.id, t, v1)) is not None
    assert np.array_equal(read_all(gray, db.view(c1)), m1)
    assert np.array_equal(read_all(gray, db.view(root)), m_root)

    # write again at the same version after the delete: tombstone removed,
    # and the deleted block's old content does not come back
    gray.write(c1, (10, 2, 3), np.full((1, 1, 1), 77, np.uint8))
    m1[3 - LO, 2 - LO, 10 - LO] = 77
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1, tombstone=True)) is None
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1)) is not None
    assert np.array_equal(read_all(gray, db.view(c1)), m1)
    # and delete once more: back to a tombstone, data key gone
    gray.delete(c1, (8, 0, 0), (8, 8, 8))
    mzero(m1, (8, 0, 0), (8, 8, 8))
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1, tombstone=True)) == b""
    assert store.engine.get(keys.data_key(gray.inst.id, tk, v1)) is None
    assert np.array_equal(read_all(gray, db.view(c1)), m1)

    db.commit(c1)
    c2 = db.branch(c1)
    assert np.array_equal(read_all(gray, db.view(c2)), m1)      # descendants see the delete
    assert np.array_equal(read_all(gray, db.view(root)), m_root)  # the parent does not
    # a sibling branch of c1 still sees the root's data
    side = db.branch(root, "side")
    assert np.array_equal(read_all(gray, db.view(side)), m_root)
    # rewriting a whole block below a tombstone
    full = rand(rng, (8, 8, 8))
    gray.write(c2, (8, 0, 0), full)
    m2 = m1.copy()
    mput(m2, (8, 0, 0), full)
    assert np.array_equal(read_all(gray, db.view(c2)), m2)
    assert np.array_equal(read_all(gray, db.view(c1)), m1)
    # deletes do not shrink extents (DVID keeps them)
    assert ext(gray, db.view(c2)) == ((0, 0, 0), (24, 16, 16))


def test_delete_of_unwritten_space_writes_nothing(store, root, gray, scan_all):
    gray.write(root, (0, 0, 0), np.ones((2, 2, 2), np.uint8))
    before = scan_all(store.engine)
    gray.delete(root, (100, 100, 100), (30, 30, 30))
    assert scan_all(store.engine) == before


# ---------------------------------------------------------------- merges
def _two_sides(store, root, gray, rng):
    db = store.db
    base = rand(rng, (8, 8, 8))
    gray.write(root, (0, 0, 0), base)
    m = model_zeros()
    mput(m, (0, 0, 0), base)
    db.commit(root)
    return db.branch(root, "left"), db.branch(root, "right"), m


def test_merge_without_conflict_joins_both_sides(store, repo, root, gray):
    db = store.db
    rng = np.random.default_rng(3)
    a, b, m = _two_sides(store, root, gray, rng)
    ma, mb = m.copy(), m.copy()
    xa = rand(rng, (3, 4, 5))
    gray.write(a, (-12, -10, -9), xa)            # blocks x -2..-1, y -2..-1, z -2..-1: extents grow down
    mput(ma, (-12, -10, -9), xa)
    xb = rand(rng, (6, 2, 2))
    gray.write(b, (25, 26, 17), xb)              # blocks (3,3,2..2): extents grow up
    mput(mb, (25, 26, 17), xb)
    db.commit(a)
    db.commit(b)
    merged = store.merge([a, b], note="join")
    assert merged.parents == [a.uuid, b.uuid] and not merged.locked
    assert merged.uuid in a.children and merged.uuid in b.children
    assert merged.branch == a.branch
    expect = m.copy()
    mput(expect, (-12, -10, -9), xa)
    mput(expect, (25, 26, 17), xb)
    assert np.array_equal(read_all(gray, db.view(merged)), expect)
    assert np.array_equal(read_all(gray, db.view(a)), ma)
    assert np.array_equal(read_all(gray, db.view(b)), mb)
    assert ext(gray, db.view(merged)) == box_extents(
        [((0, 0, 0), (8, 8, 8)), ((-12, -10, -9), (5, 4, 3)), ((25, 26, 17), (2, 2, 6))])
    # the merge node is an ordinary open node
    y = rand(rng, (2, 2, 2))
    gray.write(merged, (3, 3, 3), y)
    mput(expect, (3, 3, 3), y)
    assert np.array_equal(read_all(gray, db.view(merged)), expect)
    assert {n.uuid for n in db.history(merged)} == {merged.uuid, a.uuid, b.uuid, root.uuid}


def test_merge_where_only_one_side_grows_extents(store, root, gray):
    db = store.db
    rng = np.random.default_rng(4)
    a, b, m = _two_sides(store, root, gray, rng)
    xa = rand(rng, (2, 2, 2))
    gray.write(a, (1, 1, 1), xa)            # inside base extents, block (0,0,0)
    xb = rand(rng, (1, 1, 4))
    gray.write(b, (20, 0, 0), xb)           # new block, extents grow on b only
    db.commit(a)
    db.commit(b)
    merged = store.merge([b, a])
    mput(m, (1, 1, 1), xa)
    mput(m, (20, 0, 0), xb)
    assert np.array_equal(read_all(gray, db.view(merged)), m)
    assert ext(gray, db.view(merged)) == ((0, 0, 0), (24, 8, 8))


def test_merge_conflict_refused_names_block_and_changes_nothing(store, repo, root, gray, scan_all):
    db = store.db
    rng = np.random.default_rng(5)
    a, b, _ = _two_sides(store, root, gray, rng)
    # same block (-1,-2,-3) changed differently on both sides (different voxels even)
    gray.write(a, (-8, -16, -24), np.full((1, 1, 1), 5, np.uint8))
    gray.write(b, (-2, -10, -20), np.full((1, 1, 1), 6, np.uint8))
    # plus a block changed on one side only (not a conflict)
    gray.write(b, (16, 16, 16), np.full((2, 2, 2), 9, np.uint8))
    db.commit(a)
    db.commit(b)
    before = scan_all(store.engine)
    nodes_before = {u: n.to_json() for u, n in db.nodes.items()}
    with pytest.raises(ConflictError) as ei:
        store.merge([a, b])
    assert ei.value.errno == errno.EBUSY
    msg = str(ei.value)
    assert "block (-1,-2,-3)" in msg
    # in the user's terms: the voxels, i.e. which xy slices were edited on both sides (8³ blocks)
    assert "voxels x -8..-1, y -16..-9 of xy slices -24..-17" in msg
    assert "(2,2,2)" not in msg
    assert scan_all(store.engine) == before
    assert {u: n.to_json() for u, n in db.nodes.items()} == nodes_before
    # the message names the instance
    with pytest.raises(ConflictError) as ei:
        store.merge([a, b])
    assert "gray" in str(ei.value) and "block (-1,-2,-3)" in str(ei.value)
    assert scan_all(store.engine) == before


def test_merge_delete_vs_write_is_a_conflict(store, root, gray, scan_all):
    db = store.db
    a, b, _ = _two_sides(store, root, gray, np.random.default_rng(6))
    gray.delete(a, (0, 0, 0), (8, 8, 8))
    gray.write(b, (0, 0, 0), np.full((1, 1, 1), 1, np.uint8))
    db.commit(a)
    db.commit(b)
    before = scan_all(store.engine)
    with pytest.raises(ConflictError) as ei:
        store.merge([a, b])
    assert "block (0,0,0)" in str(ei.value)
    assert scan_all(store.engine) == before


def test_same_value_changes_on_both_sides_are_not_a_conflict(store, root, gray):
    db = store.db
    rng = np.random.default_rng(7)
    a, b, m = _two_sides(store, root, gray, rng)
    x = rand(rng, (3, 9, 4))
    gray.write(a, (2, 2, 2), x)
    gray.write(b, (2, 2, 2), x)
    # both sides create the same new block (1,1,1) with the same (zero) content
    gray.write(a, (8, 8, 8), np.zeros((1, 1, 1), np.uint8))
    gray.write(b, (8, 8, 8), np.zeros((1, 1, 1), np.uint8))
    db.commit(a)
    db.commit(b)
    merged = store.merge([a, b])
    mput(m, (2, 2, 2), x)
    assert np.array_equal(read_all(gray, db.view(merged)), m)
    assert ext(gray, db.view(merged)) == ((0, 0, 0), (9, 11, 9))


def test_both_sides_delete_same_block_not_a_conflict(store, root, gray):
    db = store.db
    a, b, m = _two_sides(store, root, gray, np.random.default_rng(8))
    gray.delete(a, (0, 0, 0), (8, 8, 8))
    gray.delete(b, (0, 0, 0), (8, 8, 8))
    db.commit(a)
    db.commit(b)
    merged = store.merge([a, b])
    assert not read_all(gray, db.view(merged)).any()
    assert read_all(gray, db.view(root)).any()


def test_merge_of_open_node_refused(store, root, gray, scan_all):
    db = store.db
    a, b, _ = _two_sides(store, root, gray, np.random.default_rng(9))
    db.commit(a)
    before = scan_all(store.engine)
    with pytest.raises(InvalidInputError):
        store.merge([a, b])
    with pytest.raises(InvalidInputError):
        store.merge([a, a])
    with pytest.raises(InvalidInputError):
        store.merge([a])
    assert scan_all(store.engine) == before
    assert a.children == [] and b.children == []


def test_merge_refuses_parents_from_two_repos(store, root):
    db = store.db
    other = db.node(db.new_repo("other").root)
    db.commit(root)
    db.commit(other)
    with pytest.raises(InvalidInputError):
        store.merge([root, other])


def test_three_way_merge_change_inherited_by_two_parents_is_not_a_conflict(store, root, gray):
    """Only one side (x, shared by parents p and q) changed the block; r did not
    touch it.  A read at the merge node would find one surviving value (x's),
    so the merge must not be refused."""
    db = store.db
    rng = np.random.default_rng(10)
    base = rand(rng, (8, 8, 8))
    gray.write(root, (0, 0, 0), base)
    db.commit(root)
    x = db.branch(root, "x")
    newer = rand(rng, (8, 8, 8))
    gray.write(x, (0, 0, 0), newer)
    db.commit(x)
    p = db.branch(x, "p")
    q = db.branch(x, "q")
    r = db.branch(root, "r")
    for n in (p, q, r):
        db.commit(n)
    merged = store.merge([p, q, r])
    expect = model_zeros()
    mput(expect, (0, 0, 0), newer)
    assert np.array_equal(read_all(gray, db.view(merged)), expect)


# ---------------------------------------------------------------- read-only
def test_committed_node_refuses_every_write(store, repo, root, gray, scan_all):
    db = store.db
    gray.write(root, (0, 0, 0), np.full((4, 4, 4), 3, np.uint8))
    db.commit(root)
    before = scan_all(store.engine)
    attempts = [
        lambda: gray.write(root, (0, 0, 0), np.full((2, 2, 2), 9, np.uint8)),
        lambda: gray.write(root, (100, 100, 100), np.full((8, 8, 8), 9, np.uint8)),
        lambda: gray.delete(root, (0, 0, 0), (8, 8, 8)),
        lambda: gray.write_slice(root, "xy", 1, np.full((4, 4), 9, np.uint8)),
        lambda: store.new_instance(root, "late", "grayscale"),
        lambda: db.commit(root),
    ]
    for attempt in attempts:
        with pytest.raises(ReadOnlyError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS
    assert scan_all(store.engine) == before
    assert "late" not in repo.instances
    expect = np.zeros((8, 8, 8), np.uint8)
    expect[:4, :4, :4] = 3
    assert np.array_equal(gray.read(db.view(root), (0, 0, 0), (8, 8, 8)), expect)
    # the log may still be appended to a committed node
    db.append_log(root, ["note after commit", ""])
    assert root.log == ["note after commit"]


def test_instance_visible_only_below_where_it_was_made(store, repo, root, gray):
    db = store.db
    db.commit(root)
    a = db.branch(root, "a")
    b = db.branch(root, "b")
    store.new_instance(a, "only_a", "grayscale")
    assert sorted(db.instances_at(a)) == ["gray", "only_a"]
    assert sorted(db.instances_at(b)) == ["gray"]
    assert sorted(db.instances_at(root)) == ["gray"]
    with pytest.raises(NotFoundError):
        store.data(b, "only_a")
    with pytest.raises(ExistsError):
        store.new_instance(b, "only_a", "grayscale")   # names are unique per repo
    with pytest.raises(InvalidInputError):
        store.new_instance(b, "x", "nosuchtype")
    vol = store.data(a, "only_a")
    with pytest.raises(NotFoundError):
        vol.write(b, (0, 0, 0), np.ones((1, 1, 1), np.uint8))


# ---------------------------------------------------------------- UUID resolution
U_ROOT = "0123" + "0" * 28
U_B1 = "abc1" + "1" * 28
U_B2 = "abc2" + "2" * 28


def test_uuid_resolution(store):
    db = store.db
    repo = db.new_repo("res", root=U_ROOT)
    root = db.node(U_ROOT)
    assert repo.root == U_ROOT and root.uuid == U_ROOT
    db.commit(root)
    b1 = db.branch(root, "b1", uuid=U_B1)
    b2 = db.branch(root, "b2", uuid=U_B2)
    assert (b1.uuid, b2.uuid) == (U_B1, U_B2)

    assert db.node("abc1").uuid == U_B1
    assert db.node("ABC2").uuid == U_B2
    assert db.node(U_B1).uuid == U_B1
    assert db.node("0").uuid == U_ROOT
    with pytest.raises(AmbiguousError) as ei:
        db.node("abc")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(AmbiguousError):
        db.node("a")
    with pytest.raises(NotFoundError) as ei:
        db.node("fff")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(NotFoundError):
        db.node("abc1" + "0" * 28)
    for bad in ("", "abc1:", "abc1~x", "abc1~"):
        with pytest.raises(InvalidInputError):
            db.node(bad)
    with pytest.raises(NotFoundError):
        db.node("xyz")                              # neither a repo name nor hex

    # prefix:branch -> the branch's leaf; ~N -> ancestors
    assert db.node("0123:b1").uuid == U_B1
    assert db.node("abc2:b1").uuid == U_B1          # the prefix only picks the repo
    db.commit(b1)
    b1_next = db.branch(b1)
    assert b1_next.branch_name == "b1"
    assert db.node("0123:b1").uuid == b1_next.uuid
    assert db.node("0123:b1~1").uuid == U_B1
    assert db.node("0123:b1~2").uuid == U_ROOT
    assert db.node(f"{b1_next.uuid[:6]}~1").uuid == U_B1
    with pytest.raises(NotFoundError):
        db.node("0123:b1~3")
    with pytest.raises(NotFoundError):
        db.node("0123:nosuch")
    # :branch with a single repo
    assert db.node(":master").uuid == U_ROOT
    assert db.node(":b2").uuid == U_B2
    assert db.node(":b1~1").uuid == U_B1
    assert db.repo("res") is repo and db.repo("abc1") is repo
    # dvidfs extension: a repo name stands for its master tip / `name:branch`
    assert db.node("res").uuid == U_ROOT
    assert db.node("res:b1").uuid == b1_next.uuid
    assert db.node("res:b1~1").uuid == U_B1

    # a second repo: `:branch` needs a prefix, prefixes may span repos
    other = db.new_repo("other", root="abc3" + "3" * 28)
    with pytest.raises(AmbiguousError):
        db.node(":master")
    assert db.node("abc3:master").uuid == other.root
    assert db.node("abc1:master").uuid == U_ROOT
    with pytest.raises(AmbiguousError):
        db.node("abc")
    assert db.node("abc", repo=other).uuid == other.root
    assert db.node(":master", repo=repo).uuid == U_ROOT


# ---------------------------------------------------------------- DAG rules
def test_dag_rules(store, repo, root, scan_all):
    db = store.db
    assert root.branch == "" and root.branch_name == "master"
    assert root.info()["Branch"] == "master"
    assert list(db.branches(repo)) == ["master"]

    before = scan_all(store.engine)
    with pytest.raises(InvalidInputError):
        db.branch(root, "early")                    # children only from committed nodes
    with pytest.raises(InvalidInputError):
        db.branch(root)
    assert scan_all(store.engine) == before and root.children == []

    db.commit(root, note="c", log=["l1"])
    assert root.locked and root.info()["Locked"] is True and root.info()["Log"] == ["l1"]
    v2 = db.branch(root)                            # newversion on master
    assert v2.branch == "" and v2.info()["Branch"] == "master"
    before = scan_all(store.engine)
    with pytest.raises(ExistsError) as ei:
        db.branch(root)                             # second newversion on the same branch
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(ExistsError):
        db.branch(root, "master")                   # same thing, spelled out
    feat = db.branch(root, "feat")
    before = scan_all(store.engine)
    with pytest.raises(ExistsError):
        db.branch(root, "feat")                     # branch names are unique
    db.commit(v2)
    with pytest.raises(ExistsError):
        db.branch(v2, "feat")                       # ... in the whole DAG
    with pytest.raises(InvalidInputError):
        db.branch(v2, "bad name!")
    with pytest.raises(InvalidInputError):
        db.branch(v2, "f" * 32)                     # looks like a UUID
    with pytest.raises(ExistsError):
        db.branch(v2, "other", uuid=feat.uuid)      # UUIDs are unique
    with pytest.raises(InvalidInputError):
        db.branch(v2, "other", uuid="not-a-uuid")
    db.commit(feat)
    with pytest.raises(InvalidInputError):
        db.branch(feat, "master")                   # "master" is the default's name
    assert v2.children == [] and feat.children == []
    after = scan_all(store.engine)
    # only v2's and feat's commits (their node records) changed in between
    changed = {k for k, v in set(after) ^ set(before)}
    assert changed == {keys.meta_key("node:" + v2.uuid), keys.meta_key("node:" + feat.uuid)}

    f2 = db.branch(feat)                            # newversion on a named branch
    assert f2.branch_name == "feat"
    assert {k: n.uuid for k, n in db.branches(repo).items()} == {
        "master": v2.uuid, "feat": f2.uuid}

    with pytest.raises(ExistsError):
        db.new_repo("test")                         # repo names are unique
    with pytest.raises(InvalidInputError):
        db.new_repo("")
    with pytest.raises(ExistsError):
        db.new_repo("fresh", root=root.uuid)
    assert len(db.repos) == 1
    db.new_repo("fresh")
    assert sorted(r.alias for r in db.repos.values()) == ["fresh", "test"]


# ---------------------------------------------------------------- random DAGs vs a model
# Region: 3 blocks of 8³ along x.  The model keeps, per node, the voxel array and,
# per block, which node last wrote it (and whether that was a delete).  Merge
# outcomes are predicted from those writer records with the DVID rule (nearest
# writers on all parent paths; several different survivors = conflict), computed
# by propagating state down the DAG rather than by scanning keys.
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

RX, RY, RZ = 24, 8, 8


class _Model:
    def __init__(self):
        self.arr = {}       # uuid -> [z, y, x] array
        self.writers = {}   # uuid -> {bx: (writer uuid, is_tombstone)}
        self.ext = {}       # uuid -> (lo, hi) or None
        self.anc = {}       # uuid -> set of ancestor uuids (self included)

    def add(self, uuid, parents, arr, writers, ext):
        self.anc[uuid] = {uuid}.union(*(self.anc[p] for p in parents))
        self.arr[uuid], self.writers[uuid], self.ext[uuid] = arr, writers, ext


def _union(a, b):
    if a is None or b is None:
        return a or b
    return (tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_dag_matches_model(store, scan_all, data):
    db = store.db
    r = db.new_repo(f"rand{len(db.repos)}")
    root = db.node(r.root)
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    m = _Model()
    m.add(root.uuid, [], np.zeros((RZ, RY, RX), np.uint8), {}, None)
    names = itertools.count()

    def write(n):
        size = tuple(data.draw(st.integers(1, 8)) for _ in range(3))
        off = tuple(data.draw(st.integers(0, lim - s)) for lim, s in zip((RX, RY, RZ), size))
        val = data.draw(st.integers(0, 3), label="value")   # few values: equal writes happen
        a = np.full((size[2], size[1], size[0]), val, np.uint8)
        vol.write(n, off, a)
        m.arr[n.uuid][off[2]:off[2] + size[2], off[1]:off[1] + size[1], off[0]:off[0] + size[0]] = a
        for bx in range(off[0] // 8, (off[0] + size[0] - 1) // 8 + 1):
            m.writers[n.uuid][bx] = (n.uuid, False)
        m.ext[n.uuid] = _union(m.ext[n.uuid], (off, tuple(o + s for o, s in zip(off, size))))

    def delete(n):
        bx = data.draw(st.integers(0, 2), label="block")
        vol.delete(n, (bx * 8, 0, 0), (8, 8, 8))
        w = m.writers[n.uuid].get(bx)
        if w is not None and not w[1]:
            m.writers[n.uuid][bx] = (n.uuid, True)
        m.arr[n.uuid][:, :, bx * 8:bx * 8 + 8] = 0

    def branch(p, named):
        if named:
            c = db.branch(p, f"b{next(names)}")
        else:
            if any(db.nodes[x].branch == p.branch for x in p.children):
                with pytest.raises(ExistsError):
                    db.branch(p)
                return None
            c = db.branch(p)
        m.add(c.uuid, [p.uuid], m.arr[p.uuid].copy(), dict(m.writers[p.uuid]), m.ext[p.uuid])
        return c

    def merge(ps):
        arr, writers, conflict = np.zeros((RZ, RY, RX), np.uint8), {}, []
        for bx in range(3):
            sl = np.s_[:, :, bx * 8:bx * 8 + 8]
            cands = {}
            for p in ps:
                w = m.writers[p.uuid].get(bx)
                if w is not None:
                    content = None if w[1] else m.arr[p.uuid][sl].tobytes()
                    cands[w[0]] = (w, content, p.uuid)
            alive = [c for u, c in cands.items() if not any(u != o and u in m.anc[o] for o in cands)]
            if len({c[1] for c in alive}) > 1:
                conflict.append(bx)
            elif alive:
                writers[bx] = alive[0][0]
                arr[sl] = m.arr[alive[0][2]][sl]
        event(f"{len(ps)}-way merge " + ("refused (conflict)" if conflict else "accepted"))
        if conflict:
            before = scan_all(store.engine)
            with pytest.raises(ConflictError) as ei:
                store.merge(ps)
            for bx in conflict:
                assert f"block ({bx},0,0)" in str(ei.value)
            assert scan_all(store.engine) == before
            return
        c = store.merge(ps)
        ext_u = None
        for p in ps:
            ext_u = _union(ext_u, m.ext[p.uuid])
        m.add(c.uuid, [p.uuid for p in ps], arr, writers, ext_u)

    for _ in range(data.draw(st.integers(5, 30), label="n_ops")):
        open_ = [n for n in db.repo_nodes(r) if not n.locked]
        locked = [n for n in db.repo_nodes(r) if n.locked]
        kinds = (["write", "write", "delete", "commit"] if open_ else []) + \
                (["branch", "fork"] if locked else []) + (["merge"] * 2 if len(locked) >= 2 else [])
        kind = data.draw(st.sampled_from(kinds), label="op")
        if kind in ("write", "delete", "commit"):
            n = data.draw(st.sampled_from(open_), label="node")
            {"write": write, "delete": delete, "commit": db.commit}[kind](n)
        elif kind == "branch":
            branch(data.draw(st.sampled_from(locked), label="parent"), data.draw(st.booleans()))
        elif kind == "fork":
            # two named branches off one node, each written (maybe the same way), committed
            p = data.draw(st.sampled_from(locked), label="fork parent")
            kids = [branch(p, True) for _ in range(2)]
            for k in kids:
                for _ in range(data.draw(st.integers(0, 2))):
                    (write if data.draw(st.integers(0, 3)) else delete)(k)
                db.commit(k)
            if data.draw(st.booleans(), label="merge fork now"):
                merge(kids)
        else:
            merge(data.draw(st.lists(st.sampled_from(locked), min_size=2, max_size=3,
                                     unique_by=lambda n: n.uuid), label="parents"))
    for n in db.repo_nodes(r):
        view = db.view(n)
        assert np.array_equal(vol.read(view, (0, 0, 0), (RX, RY, RZ)), m.arr[n.uuid]), n.uuid
        e = vol.extents(view)
        assert (None if e is None else (e.lo, e.hi)) == m.ext[n.uuid]
        assert set(db.ancestors(n.version_id)) == {db.nodes[u].version_id for u in m.anc[n.uuid]}


# ---------------------------------------------------------------- resolve
def test_three_way_resolve_takes_the_first_parent_that_changed_each_key(store, root, gray, scan_all):
    """Parents in priority order a, b, c: a block changed by b and c only takes b's
    value (a left it alone: a's unchanged value is no side's change); a block
    changed by all three takes a's; a delete can win too."""
    db = store.db
    rng = np.random.default_rng(21)
    base = rand(rng, (8, 8, 24))                    # blocks (0..2, 0, 0)
    gray.write(root, (0, 0, 0), base)
    db.commit(root)
    a, b, c = (db.branch(root, n) for n in "abc")
    ones = np.ones((1, 1, 1), np.uint8)
    gray.write(a, (0, 0, 0), ones * 10)             # block 0: a, b, c
    gray.write(b, (1, 0, 0), ones * 20)
    gray.write(c, (2, 0, 0), ones * 30)
    gray.write(b, (8, 0, 0), ones * 21)             # block 1: b, c
    gray.write(c, (9, 0, 0), ones * 31)
    gray.delete(b, (16, 0, 0), (8, 8, 8))           # block 2: deleted on b, written on c
    gray.write(c, (16, 0, 0), ones * 32)
    for n in (a, b, c):
        db.commit(n)
    before = scan_all(store.engine)
    with pytest.raises(ConflictError):
        store.merge([a, b, c])
    assert scan_all(store.engine) == before
    merged = store.resolve([a, b, c])
    expect = base.copy()
    expect[0, 0, 0] = 10                             # a's block 0 whole: b's and c's voxels dropped
    expect[0, 0, 8] = 21                             # b's block 1: c's voxel dropped
    expect[:, :, 16:24] = 0                          # b's delete of block 2
    got = gray.read(db.view(merged), (0, 0, 0), (24, 8, 8))
    assert np.array_equal(got, expect)
    assert merged.parents == [a.uuid, b.uuid, c.uuid]
    merged2 = store.resolve([c, b, a])
    expect2 = base.copy()
    expect2[0, 0, 2], expect2[0, 0, 9], expect2[0, 0, 16] = 30, 31, 32
    assert np.array_equal(gray.read(db.view(merged2), (0, 0, 0), (24, 8, 8)), expect2)
