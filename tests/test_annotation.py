"""The annotation data type (data/annotation.py) on a real LevelDB store.

Elements are checked against the plain lists put in; bad input against the
raw keys of the engine (nothing changed); label queries against an
independent recomputation: every stored element whose voxel, read from the
label volume as a numpy array, is the body.  The hypothesis test runs random
sequences of element writes, moves and deletes, body merges, cleaves, splits,
voxel writes and new versions, and checks that after each step.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import full_scan
from dvidfs.core import Dvid
from dvidfs.data.annotation import Annotation, synced_labels
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.formats import sparsevol as sv

SIZE = 16  # label volume edge (voxels); label blocks are 8³


def el(x, y, z, kind="PreSyn", tags=(), rels=(), prop=None) -> dict:
    return {"Pos": [x, y, z], "Kind": kind, "Tags": list(tags), "Prop": dict(prop or {}),
            "Rels": [{"Rel": r, "To": list(t)} for r, t in rels]}


@pytest.fixture
def ann(store, root) -> Annotation:
    return store.new_instance(root, "syn", "annotation")


def positions(elems) -> list[tuple[int, int, int]]:
    return sorted(tuple(e["Pos"]) for e in elems)


def test_put_read_replace_and_canonical_form(store, root, ann):
    assert ann.all_elements(root) == [] and ann.block_size == 64
    ann.put_elements(root, [{"pos": [1, 2, 3], "kind": "PostSyn", "Extra": 1},      # Go matches names
                            el(100, -5, 70, "Note", ["b", "a"], prop={"z": "1", "a": "2"}),
                            el(-1, -1, -1, "Gap")])
    got = {tuple(e["Pos"]): e for e in ann.all_elements(root)}
    assert got[(1, 2, 3)] == el(1, 2, 3, "PostSyn")
    assert list(got[(100, -5, 70)]["Prop"]) == ["a", "z"] and got[(100, -5, 70)]["Tags"] == ["b", "a"]
    assert ann.element(root, [-1, -1, -1])["Kind"] == "Gap"
    assert ann.element(root, [0, 0, 0]) is None
    # a missing Kind is DVID's "Unknown"; the same position replaces; the last of a repeat wins
    assert ann.put_elements(root, [{"Pos": [1, 2, 3]}, el(5, 5, 5), el(5, 5, 5, "Note")]) == 2
    assert ann.element(root, [1, 2, 3])["Kind"] == "Unknown" and ann.element(root, [5, 5, 5])["Kind"] == "Note"
    assert ann.put_elements(root, [el(5, 5, 5, "Note")]) == 0       # unchanged: nothing written
    assert ann.count(root) == 4
    blocks = ann.blocks(root)
    assert set(blocks) == {"0,0,0", "1,-1,1", "-1,-1,-1"}
    assert positions(ann.elements_in(root, (0, 0, 0), (6, 6, 6))) == [(1, 2, 3), (5, 5, 5)]
    assert positions(ann.elements_in(root, (2, 0, 0), (4, 6, 6))) == [(5, 5, 5)]
    assert set(ann.blocks(root, (60, -10, 60), (10, 10, 10))) == {"1,-1,1"}   # blocks met, not points
    info = ann.info(store.view(root))
    assert info["Base"]["TypeName"] == "annotation" and info["Extended"]["BlockSize"] == [64, 64, 64]


@pytest.mark.parametrize("bad", [
    "not a list", [{"Kind": "PreSyn"}], [el(1, 2, 3, "Gland")], [{"Pos": [1, 2]}], [{"Pos": [1, 2, 3.5]}],
    [{"Pos": [1, 2, True]}], [{"Pos": [1, 2, 2**31]}], [{"Pos": [1, 2, 3], "Tags": "a"}],
    [{"Pos": [1, 2, 3], "Tags": [1]}], [{"Pos": [1, 2, 3], "Tags": ["a\0b"]}],
    [{"Pos": [1, 2, 3], "Prop": {"a": 1}}], [{"Pos": [1, 2, 3], "Rels": [{"Rel": "Friend", "To": [1, 1, 1]}]}],
    [{"Pos": [1, 2, 3], "Rels": [{"Rel": "PreSynTo"}]}], [el(0, 0, 0), 7]])
def test_bad_input_stores_nothing(store, root, ann, bad):
    ann.put_elements(root, [el(9, 9, 9, tags=["t"])])
    before = full_scan(store.engine)
    with pytest.raises(InvalidInputError):
        ann.put_elements(root, bad)
    assert full_scan(store.engine) == before


def test_tags_moves_deletes_and_relationships(store, root, ann):
    ann.put_elements(root, [el(1, 1, 1, "PreSyn", ["syn", "x"], [("PreSynTo", (200, 1, 1)), ("PreSynTo", (2, 2, 2))]),
                            el(200, 1, 1, "PostSyn", ["syn"], [("PostSynTo", (1, 1, 1))]),
                            el(2, 2, 2, "PostSyn", [], [("PostSynTo", (1, 1, 1))])])
    assert ann.tags(root) == ["syn", "x"]
    assert positions(ann.tag_elements(root, "syn")) == [(1, 1, 1), (200, 1, 1)]
    assert "Rels" not in ann.tag_elements(root, "x")[0] and ann.tag_elements(root, "x", rels=True)[0]["Rels"]
    # retagging drops the old tag keys
    ann.put_elements(root, [el(1, 1, 1, "PreSyn", ["y"], [("PreSynTo", (200, 1, 1)), ("PreSynTo", (2, 2, 2))])])
    assert ann.tags(root) == ["syn", "y"] and ann.tag_elements(root, "x") == []
    # a move to another block: partners' relationships follow, tags move
    ann.move_element(root, [200, 1, 1], [300, 5, 5])
    assert ann.element(root, [200, 1, 1]) is None
    assert ann.element(root, [1, 1, 1])["Rels"][0] == {"Rel": "PreSynTo", "To": [300, 5, 5]}
    assert positions(ann.tag_elements(root, "syn")) == [(300, 5, 5)]
    # a move inside one block
    ann.move_element(root, [2, 2, 2], [3, 3, 3])
    assert ann.element(root, [1, 1, 1])["Rels"][1]["To"] == [3, 3, 3]
    # delete: relationships pointing at it are dropped in partners' blocks
    ann.delete_element(root, [1, 1, 1])
    assert ann.element(root, [300, 5, 5])["Rels"] == [] and ann.element(root, [3, 3, 3])["Rels"] == []
    assert ann.tags(root) == ["syn"]
    for fn, args in ((ann.delete_element, ([1, 1, 1],)), (ann.move_element, ([1, 1, 1], [4, 4, 4]))):
        with pytest.raises(NotFoundError):
            fn(root, *args)
    ann.delete_element(root, [300, 5, 5])
    ann.delete_element(root, [3, 3, 3])
    assert ann.all_elements(root) == [] and ann.tags(root) == []
    # nothing this version alone held is left behind as a tombstone
    assert not [k for k, _ in full_scan(store.engine) if k[:1] == b"\x01" and k[-1] == 0x4F]


def test_versions_committed_nodes_and_merge_conflicts(store, root, ann):
    ann.put_elements(root, [el(1, 1, 1, tags=["a"]), el(100, 1, 1)])
    store.commit(root)
    with pytest.raises(ReadOnlyError):
        ann.put_elements(root, [el(2, 2, 2)])
    a, b = store.branch(root, "a"), store.branch(root, "b")
    ann.delete_element(a, [1, 1, 1])                      # a tombstone: the root keeps it
    ann.put_elements(b, [el(200, 1, 1, tags=["a"])])     # another block
    assert positions(ann.all_elements(root)) == [(1, 1, 1), (100, 1, 1)]
    assert positions(ann.all_elements(a)) == [(100, 1, 1)]
    store.commit(a)
    store.commit(b)
    m = store.merge([a, b])
    assert positions(ann.all_elements(m)) == [(100, 1, 1), (200, 1, 1)]
    assert positions(ann.tag_elements(m, "a")) == [(200, 1, 1)]
    # the same block changed differently on two sides: a conflict in the user's terms
    store.commit(m)
    c, d = store.branch(m, "c"), store.branch(m, "d")
    ann.put_elements(c, [el(101, 2, 2)])
    ann.put_elements(d, [el(102, 2, 2)])
    store.commit(c)
    store.commit(d)
    with pytest.raises(ConflictError, match=r"syn: annotation block \(1,0,0\): the elements at voxels x 64..127"):
        store.merge([c, d])


# ---------------------------------------------------------------- labels
def labelled_store(path, ann_block: int = 8, seed: int = 0):
    """A store with labels 'seg' (8³ blocks, a 16³ volume of a few bodies,
    several supervoxels each) and annotation 'syn' synced with it."""
    core = Dvid.init(path)
    root = core.node(core.new_repo("r").root)
    seg = core.new_instance(root, "seg", "labels", block_size=8)
    rng = np.random.default_rng(seed)
    vol = np.repeat(np.repeat(np.repeat(rng.integers(1, 9, (4, 4, 4), dtype=np.uint64), 4, 0), 4, 1), 4, 2)
    seg.write(root, (0, 0, 0), vol)
    ann = core.new_instance(root, "syn", "annotation", block_size=ann_block)
    ann.set_sync(root, "seg")
    return core, root, seg, ann


def expected(core, node, seg, ann, body: int) -> list[tuple[int, int, int]]:
    """Independent: every stored element whose voxel in the label volume is `body`."""
    vol = seg.read(core.view(node), (0, 0, 0), (SIZE, SIZE, SIZE))
    out = []
    for e in ann.all_elements(node):
        x, y, z = e["Pos"]
        inside = 0 <= x < SIZE and 0 <= y < SIZE and 0 <= z < SIZE
        if inside and int(vol[z, y, x]) == body:
            out.append((x, y, z))
    return sorted(out)


def test_sync_and_label_queries_follow_merges(tmp_path):
    core, root, seg, ann = labelled_store(tmp_path / "s", ann_block=4)
    core.new_instance(root, "seg2", "labels", block_size=8)
    with pytest.raises(InvalidInputError, match="synced with 'seg' already"):
        ann.set_sync(root, "seg2")
    assert ann.set_sync(root, "seg") == "seg"                    # the same again: nothing to do
    with pytest.raises(InvalidInputError, match="not labels"):
        ann.set_sync(root, "syn", replace=True)
    assert ann.sync_name(root) == "seg" and ann.info(core.view(root))["Extended"]["Syncs"] == ["seg"]
    pts = [(x, y, z) for x in (1, 6, 13) for y in (2, 9) for z in (0, 15)] + [(40, 1, 1), (-3, 0, 0)]
    ann.put_elements(root, [el(*p, "PreSyn" if i % 2 else "PostSyn") for i, p in enumerate(pts)])
    labels = synced_labels(core, root, ann)
    bodies = [int(b) for b in seg.bodies(core.view(root))]
    for b in bodies:
        assert positions(ann.label_elements(root, labels, b)) == expected(core, root, seg, ann, b)
    total = sum(len(ann.label_elements(root, labels, b)) for b in bodies)
    assert total == len(pts) - 2                                 # the two outside the volume are in body 0
    a, b = bodies[0], bodies[1]
    seg.merge(root, a, [b])
    assert positions(ann.label_elements(root, labels, a)) == expected(core, root, seg, ann, a)
    assert ann.label_elements(root, labels, b) == []
    counts = ann.label_counts(root, labels)
    assert sum(sum(c.values()) for c in counts.values()) == len(pts) - 2
    core.close()


def _check_all(core, node, seg, ann, model):
    view = core.view(node)
    assert {tuple(e["Pos"]): e["Kind"] for e in ann.all_elements(node)} == model
    labels = synced_labels(core, node, ann)
    for b in [int(x) for x in seg.bodies(view)] + [10**6]:
        assert positions(ann.label_elements(node, labels, b)) == expected(core, node, seg, ann, b), b


coord = st.integers(-2, SIZE + 1)
point = st.tuples(coord, coord, coord)
op = st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(point, st.sampled_from(["PreSyn", "PostSyn", "Note"])),
                                       min_size=1, max_size=6)),
    st.tuples(st.just("move"), st.integers(0, 50), point),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("merge"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("cleave"), st.integers(0, 50)),
    st.tuples(st.just("split"), st.integers(0, 50), st.integers(1, 40)),
    st.tuples(st.just("voxels"), point, st.integers(1, 9)),
    st.tuples(st.just("version"),),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ann_block=st.sampled_from([4, 8, 16]), seed=st.integers(0, 1000), ops=st.lists(op, max_size=12))
def test_label_query_equals_recomputation_under_random_edits(ann_block, seed, ops):
    with tempfile.TemporaryDirectory() as tmp:
        core, node, seg, ann = labelled_store(f"{tmp}/s", ann_block, seed)
        model: dict[tuple[int, int, int], str] = {}
        try:
            for o in ops:
                view = core.view(node)
                bodies = [int(b) for b in seg.bodies(view)]
                kind = o[0]
                if kind == "put":
                    ann.put_elements(node, [el(*p, k) for p, k in o[1]])
                    model.update({p: k for p, k in o[1]})
                elif kind == "move" and model:
                    src = sorted(model)[o[1] % len(model)]
                    ann.move_element(node, src, o[2])
                    k = model.pop(src)
                    model[o[2]] = k
                elif kind == "delete" and model:
                    p = sorted(model)[o[1] % len(model)]
                    ann.delete_element(node, p)
                    del model[p]
                elif kind == "merge" and len(bodies) > 1:
                    a = bodies[o[1] % len(bodies)]
                    rest = [b for b in bodies if b != a]
                    seg.merge(node, a, [rest[o[2] % len(rest)]])
                elif kind == "cleave" and bodies:
                    b = bodies[o[1] % len(bodies)]
                    svs = [int(s) for s in seg.supervoxels(view, b)]
                    if len(svs) > 1:
                        seg.cleave(node, b, svs[: len(svs) // 2])
                elif kind == "split" and bodies:
                    b = bodies[o[1] % len(bodies)]
                    runs = seg.sparsevol_runs(view, b)
                    cut = runs[: max(1, min(len(runs) - 1, o[2] % len(runs)))].copy()
                    if int(runs[:, 3].sum()) > int(cut[:, 3].sum()):
                        seg.split(node, b, sv.encode_rles(cut))
                elif kind == "voxels":
                    x, y, z = (min(max(c, 0), SIZE - 3) for c in o[1])
                    seg.write(node, (x, y, z), np.full((3, 3, 3), 100 + o[2], np.uint64))
                elif kind == "version":
                    core.commit(node)
                    node = core.branch(node)
                _check_all(core, node, seg, ann, model)
        finally:
            core.close()


def test_label_query_time(tmp_path):
    """Measured for docs/http.md: a body spanning many blocks with many elements."""
    core = Dvid.init(tmp_path / "s")
    root = core.node(core.new_repo("r").root)
    seg = core.new_instance(root, "seg", "labels", block_size=64)
    n = 256
    vol = np.ones((n, n, n), np.uint64)                # body 1: 4³ = 64 blocks
    vol[:, :, n // 2:] = 2
    seg.write(root, (0, 0, 0), vol)
    ann = core.new_instance(root, "syn", "annotation")
    ann.set_sync(root, "seg")
    rng = np.random.default_rng(1)
    pts = np.unique(rng.integers(0, n, (20000, 3)), axis=0)  # one element per position
    ann.put_elements(root, [el(int(x), int(y), int(z), "PreSyn" if i % 3 else "PostSyn")
                            for i, (x, y, z) in enumerate(pts)])
    labels = synced_labels(core, root, ann)
    ann.label_elements(root, labels, 1)                   # warm the block cache, as a server would be
    t = time.perf_counter()
    got = ann.label_elements(root, labels, 1)
    dt = time.perf_counter() - t
    assert len(got) == int((pts[:, 0] < n // 2).sum())
    print(f"\nlabel query: body of {len(seg.block_coords(core.view(root), 1))} blocks, "
          f"{len(got)} of {len(pts)} elements: {dt * 1000:.0f} ms")
    core.close()


def test_cli_data_new_accepts_annotation_and_labelsz(tmp_path):
    from mounting import dvidfs
    with Dvid.init(tmp_path / "s") as core:
        root = core.new_repo("r").root
    dvidfs("-s", tmp_path / "s", "data", "new", root, "syn", "--type", "annotation", "--block-size", "32")
    dvidfs("-s", tmp_path / "s", "data", "new", root, "syn_labelsz", "--type", "labelsz")
    assert "take no settings" in dvidfs("-s", tmp_path / "s", "data", "new", root, "x", "--type", "labelsz",
                                        "--block-size", "8", check=False).stderr
    with Dvid(tmp_path / "s") as core:
        node = core.node(root)
        assert core.data(node, "syn").block_size == 32
        assert core.data(node, "syn_labelsz").typename == "labelsz"

