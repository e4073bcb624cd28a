"""Reading label bodies: bounding boxes from block masks, one run computation
shared by a body's files, blocks decoded once per walk.

Every expected value comes from the numpy label volume the store was written
from (and the merge/split applied to it here): bounding boxes from
`np.argwhere`, sparsevol bytes from tests/reference.py's encoder, never from
dvidfs.formats.sparsevol.  The volume sits at a negative, non-block-aligned
offset with 8³ blocks, so bodies cross block borders on every axis; some
bodies have pieces in blocks far apart (empty blocks between them)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dvidfs.core import Dvid
from dvidfs.data.labels import Labels
from dvidfs.errors import NotFoundError
from dvidfs.formats import sparsevol as sv
from dvidfs.fs.nodes import ROOT
from dvidfs.fs.tree import Tree
from dvidfs.store.memory import MemoryEngine
from reference import ref_rles

BS = 8
OFFSET = (-13, 5, -7)          # x, y, z
SHAPE = (21, 26, 37)           # z, y, x: 3-5 blocks on each axis, partial at both ends


def label_volume(seed=3) -> np.ndarray:
    """Random boxes painted over each other (many sizes: inside one block, across
    2-5 blocks, thin slabs), a checkerboard slab, and two bodies of two pieces
    each in opposite corners."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint64)
    for i in range(60):
        lo = [int(rng.integers(0, s)) for s in SHAPE]
        ext = [int(rng.integers(1, max(2, s // (1 + i % 4)))) for s in SHAPE]
        lab[tuple(slice(a, a + e) for a, e in zip(lo, ext))] = 100 + i
    z, y, x = np.indices(SHAPE)
    board = (x + y + z) % 2 == 0
    lab[3:6, 10:13][board[3:6, 10:13]] = 7
    lab[0, 0, 0] = lab[-1, -1, -1] = 2**40 + 1                # one voxel in each far corner
    lab[0:2, -2:, 0:3] = lab[-2:, 0:2, -3:] = 9
    return lab


def np_bbox(lab: np.ndarray, body: int):
    zyx = np.argwhere(lab == body)
    lo, hi = zyx.min(axis=0)[::-1] + OFFSET, zyx.max(axis=0)[::-1] + OFFSET
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def bodies_of(lab):
    return [int(b) for b in np.unique(lab) if b]


def new_store(core):
    repo = core.new_repo("seg")
    node = core.node(repo.root)
    vol = core.new_instance(node, "bodies", "labels", block_size=BS)
    lab = label_volume()
    vol.write(node, OFFSET, lab)
    return node, vol, lab


def check_bboxes(vol, view, lab):
    ids = bodies_of(lab)
    assert len(ids) > 40
    for b in ids:
        want = np_bbox(lab, b)
        assert vol.bbox(view, b) == want, b
        assert sv.runs_bbox(vol.sparsevol_runs(view, b)) == want, b
    return ids


# ----------------------------------------------------------------------------- bbox from masks
def test_bbox_from_masks_equals_runs_and_numpy_through_edits():
    with Dvid(engine=MemoryEngine()) as core:
        node, vol, lab = new_store(core)
        view = core.view(node)
        ids = check_bboxes(vol, view, lab)
        # bodies really cross block borders, and some span empty blocks
        spans = [np.ptp(np.argwhere(lab == b) + np.array(OFFSET[::-1]), axis=0) for b in ids]
        assert sum(s.max() >= BS for s in spans) > 10
        # merge bodies far apart (the box grows over empty blocks) and a chain
        big = sorted(ids, key=lambda b: -(lab == b).sum())
        vol.merge(node, 9, [2**40 + 1, big[0]])
        vol.merge(node, big[1], [big[2]])
        lab = np.where(np.isin(lab, [2**40 + 1, big[0]]), 9, lab)
        lab = np.where(lab == big[2], big[1], lab)
        assert np_bbox(lab, 9) == (OFFSET, tuple(o + s - 1 for o, s in zip(OFFSET, SHAPE[::-1])))
        check_bboxes(vol, view, lab)
        # split a piece out of a merged body: both boxes shrink to what is left
        cut = (lab == 9) & (np.indices(SHAPE)[0] < 10)
        new = vol.split(node, 9, ref_rles(cut, OFFSET))["NewLabel"]
        lab = np.where(cut, new, lab)
        check_bboxes(vol, view, lab)
        # overwrite voxels (the write path keeps the index; reads see the new blocks)
        patch = np.full((4, 5, 9), 55, np.uint64)
        at = (OFFSET[0] + 6, OFFSET[1] + 7, OFFSET[2] + 3)
        vol.write(node, at, patch)
        lab[3:7, 7:12, 6:15] = 55
        check_bboxes(vol, view, lab)
        with pytest.raises(NotFoundError):
            vol.bbox(view, 424242)


def test_mask_bbox_matches_numpy():
    rng = np.random.default_rng(0)
    for i in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 12, 3))
        m = rng.random(shape) < [0.0, 0.002, 0.05, 0.5][i % 4]
        off = tuple(int(v) for v in rng.integers(-50, 50, 3))
        got = sv.mask_bbox(m.astype(np.uint8) if i % 5 == 0 else m, off)
        if not m.any():
            assert got is None
            continue
        zyx = np.argwhere(m)
        want = (tuple(int(v) for v in zyx.min(0)[::-1] + off), tuple(int(v) for v in zyx.max(0)[::-1] + off))
        assert got == want
        assert got == sv.runs_bbox(sv.runs_from_mask(m, off))
    assert sv.union_bbox([None, ((0, 5, 1), (2, 6, 1)), ((-1, 7, 0), (0, 7, 3))]) == ((-1, 5, 0), (2, 7, 3))
    assert sv.union_bbox([None]) is None


# ----------------------------------------------------------------------------- through the fs layer
def labels_dir(tree, node):
    e = ROOT
    for n in ("seg", node.uuid, "bodies", "labels"):
        e = tree.lookup(e, n)
    return e


def body_file(tree, labels, body, name):
    return tree.lookup(tree.lookup(labels, str(body)), name)


def expected_bbox_json(lab, b):
    lo, hi = np_bbox(lab, b)
    return {"MinPoint": list(lo), "MaxPoint": list(hi)}


def check_body_files(tree, labels, lab, stat_first):
    for b in bodies_of(lab):
        sp = body_file(tree, labels, b, "sparsevol")
        size = tree.attr(sp).size if stat_first else None        # counted (RunCounter) before any read
        assert json.loads(tree.read(body_file(tree, labels, b, "bbox.json"))) == expected_bbox_json(lab, b)
        data = tree.read(sp)
        assert data == ref_rles(lab == b, OFFSET), b
        assert tree.attr(sp).size == len(data)                   # from the runs read
        if size is not None:
            assert size == len(data)


@pytest.mark.parametrize("stat_first", [False, True], ids=["read", "stat-then-read"])
def test_body_files_match_numpy_and_never_go_stale(stat_first):
    with Dvid(engine=MemoryEngine()) as core:
        node, vol, lab = new_store(core)
        tree = Tree(core)
        labels = labels_dir(tree, node)
        check_body_files(tree, labels, lab, stat_first)
        # a merge (mapping only, no block rewritten) and a write change the
        # generation: nothing read before may be served again
        vol.merge(node, 7, [9])
        lab = np.where(lab == 9, 7, lab)
        check_body_files(tree, labels, lab, stat_first)
        vol.write(node, OFFSET, np.full((2, 3, 4), 7, np.uint64))
        lab[:2, :3, :4] = 7
        check_body_files(tree, labels, lab, stat_first)
        with pytest.raises(NotFoundError):
            body_file(tree, labels, 9, "bbox.json")


def test_a_body_runs_are_computed_once_for_its_files(monkeypatch):
    """bbox.json, sparsevol and the sparsevol's stat of a body share one
    `sparsevol_runs`; a write makes it compute again (a new generation)."""
    calls = []
    real = Labels.sparsevol_runs

    def spy(self, view, body, *a, **k):
        calls.append(body)
        return real(self, view, body, *a, **k)
    monkeypatch.setattr(Labels, "sparsevol_runs", spy)
    with Dvid(engine=MemoryEngine()) as core:
        node, vol, lab = new_store(core)
        tree = Tree(core)
        labels = labels_dir(tree, node)
        ids = bodies_of(lab)
        for b in ids:
            for name in ("bbox.json", "sparsevol"):
                tree.read(body_file(tree, labels, b, name), keep=False)   # as the mount reads a committed node
            tree.attr(body_file(tree, labels, b, "sparsevol"))
        assert calls == ids
        vol.merge(node, 7, [9])
        calls.clear()
        tree.read(body_file(tree, labels, 7, "sparsevol"), keep=False)
        tree.read(body_file(tree, labels, 7, "bbox.json"), keep=False)
        assert calls == [7]


def test_a_walk_decodes_each_block_once(tmp_path, monkeypatch):
    """Body reads go through the decoded-block cache (Labels.cached_block): the
    old path (`BlockVolume.block`) decoded every block of a body on every read
    of each of its files, ~3 ms per 64³ block."""
    with Dvid.init(tmp_path / "store") as core:
        node, vol, lab = new_store(core)
        core.commit(node, "x")
        uuid = node.uuid
    zyx = np.argwhere(lab != 0) + np.array(OFFSET[::-1])
    n_blocks = len(np.unique(zyx // BS, axis=0))
    decodes = []
    real = Labels.decode_block
    monkeypatch.setattr(Labels, "decode_block", lambda self, v: decodes.append(1) or real(self, v))
    with Dvid(tmp_path / "store") as core:                    # reopened: nothing decoded yet
        node = core.node(uuid)
        vol = core.data(node, "bodies")
        view = core.view(node)
        tree = Tree(core)
        labels = labels_dir(tree, node)
        for b in bodies_of(lab):
            vol.bbox(view, b)
            vol.sparsevol(view, b)
            for name in ("bbox.json", "sparsevol"):
                tree.read(body_file(tree, labels, b, name), keep=False)
        assert 0 < len(decodes) <= n_blocks, (len(decodes), n_blocks)
