"""Readable merge refusals and DVID's `resolve` (issue 15 item 6), through the
core, the `dvidfs` command, the mount's `.dvid/` files and the HTTP API.

The scenario: a grayscale volume of 16³ blocks; two branches both rewrite xy
slice 7 (12 blocks of block-layer z=0 conflict), and each also changes a block
the other leaves alone.  Every voxel expectation is a numpy model.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import requests
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.errors import ConflictError, NotFoundError
from dvidfs.versions.dag import MergeConflict
from mounting import dvidfs, mounted
from serving import served

SX, SY, SZ = 64, 48, 48     # 4 x 3 x 3 blocks of 16³
BLOCKS_AT_Z7 = (SX // 16) * (SY // 16)


def _scenario(s: Dvid):
    """(a, b, model of a, model of b, base): committed branches a and b of repo "em"."""
    rng = np.random.default_rng(15)
    root = s.node(s.new_repo("em").root)
    gray = s.new_instance(root, "gray", "grayscale", block_size=16)
    base = rng.integers(0, 256, (SZ, SY, SX), dtype=np.uint8)
    gray.write(root, (0, 0, 0), base)
    s.commit(root)
    a, b = s.branch(root, "a"), s.branch(root, "b")
    ma, mb = base.copy(), base.copy()
    for node, m, value, x0 in ((a, ma, 11, 0), (b, mb, 22, 32)):
        plane = np.full((1, SY, SX), value, np.uint8)
        gray.write(node, (0, 0, 7), plane)
        m[7] = value
        own = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)  # in block (x0/16, 0, 2): this side only
        gray.write(node, (x0 + 2, 3, 40), own)
        m[40:43, 3:8, x0 + 2:x0 + 8] = own
        s.commit(node)
    return a, b, ma, mb, base


def _expected(first, second, base):
    """The resolved volume: `first`'s slice 7, each side's own block change."""
    out = base.copy()
    out[7] = first[7]
    for m in (first, second):
        diff = m != base
        diff[7] = False
        out[diff] = m[diff]
    return out


def _read(s: Dvid, node):
    return s.data(node, "gray").read(s.view(node), (0, 0, 0), (SX, SY, SZ))


@pytest.fixture
def core(tmp_path):
    s = Dvid.init(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- the refusal
def test_refused_merge_says_instance_and_slices_and_keeps_full_list(core):
    a, b, *_ = _scenario(core)
    with pytest.raises(MergeConflict) as ei:
        core.merge([a, b])
    msg = str(ei.value)
    assert ei.value.errno == errno.EBUSY
    assert f"{BLOCKS_AT_Z7} key(s)" in msg
    # one phrase in the user's terms, not 12 block coordinates
    assert f"gray: {BLOCKS_AT_Z7} blocks covering voxels x 0..63, y 0..47 of xy slices 0..15" in msg, msg
    # and, read from the blocks, exactly what both sides edited: slice 7, not the blocks around it
    assert "in which voxels changed on more than one side: x 0..63, y 0..47 of xy slice 7" in msg, msg
    assert "and 7 more" not in msg and msg.count("block (") == 0, msg
    lines = ei.value.lines
    assert len(lines) == BLOCKS_AT_Z7 and all(line.startswith("gray: block (") for line in lines)
    assert "gray: block (3,2,0) = voxels x 48..63, y 32..47 of xy slices 0..15" in lines
    assert core.merge_conflicts([a, b]) == lines
    assert len(core.repo_nodes(core.repo("em"))) == 3          # nothing made


def test_refusal_names_keyvalue_keys_and_label_bodies(core):
    root = core.node(core.new_repo("kv").root)
    kv = core.new_instance(root, "notes", "keyvalue")
    seg = core.new_instance(root, "seg", "labels", block_size=8)
    core.commit(root)
    a, b = core.branch(root, "a"), core.branch(root, "b")
    for node, v in ((a, b"left"), (b, b"right")):
        for i in range(7):
            kv.put(node, f"todo-{i}", v + bytes([i]))
        seg.write(node, (0, 0, 0), np.full((8, 8, 64), 500 + len(v), np.uint64))
        core.commit(node)
    with pytest.raises(ConflictError) as ei:
        core.merge([a, b])
    msg = str(ei.value)
    assert "notes: keys 'todo-0', 'todo-1'" in msg and "'todo-6'" in msg, msg
    assert "seg: 8 blocks covering voxels x 0..63, y 0..7 of xy slices 0..7" in msg, msg
    assert "changed on more than one side: x 0..63, y 0..7 of xy slices 0..7" in msg, msg
    # a labels instance cannot be resolved key by key (its index is derived): refused, saying so
    with pytest.raises(ConflictError) as ei:
        core.resolve([a, b])
    assert "cannot resolve seg" in str(ei.value) and "label index" in str(ei.value)
    # resolving only the keyvalue instance leaves seg's conflicts, which refuse the resolve
    with pytest.raises(ConflictError) as ei:
        core.resolve([a, b], data=["notes"])
    assert "seg:" in str(ei.value) and "notes:" not in str(ei.value)


def test_refusal_says_when_the_sides_edited_different_voxels_of_a_block(core):
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "gray", "grayscale", block_size=16)
    gray.write(root, (0, 0, 0), np.zeros((16, 16, 16), np.uint8))
    core.commit(root)
    a, b = core.branch(root, "a"), core.branch(root, "b")
    gray.write(a, (1, 2, 3), np.full((1, 1, 1), 9, np.uint8))
    gray.write(b, (10, 11, 12), np.full((1, 1, 1), 9, np.uint8))
    core.commit(a)
    core.commit(b)
    with pytest.raises(ConflictError) as ei:
        core.merge([a, b])
    msg = str(ei.value)
    assert "gray: block (0,0,0) = voxels x 0..15, y 0..15 of xy slices 0..15" in msg
    assert ("gray: no voxel changed on more than one side (different voxels of the same blocks): "
            "x 1..10, y 2..11 of xy slices 3..12") in msg, msg


# ---------------------------------------------------------------- resolve (core)
@pytest.mark.parametrize("order", ["ab", "ba"])
def test_resolve_takes_first_parents_slice_and_both_sides_own_changes(core, order):
    a, b, ma, mb, base = _scenario(core)
    first, second = (a, b) if order == "ab" else (b, a)
    mfirst, msecond = (ma, mb) if order == "ab" else (mb, ma)
    child = core.resolve([first, second], note="take the first")
    assert child.parents == [first.uuid, second.uuid] and not child.locked
    assert child.note == "take the first" and "priority order" in child.log[0]
    got = _read(core, child)
    assert np.array_equal(got, _expected(mfirst, msecond, base))
    assert got[7].min() == got[7].max() == mfirst[7, 0, 0]
    # the parents read as before; the child is an ordinary open node
    assert np.array_equal(_read(core, a), ma) and np.array_equal(_read(core, b), mb)
    ext = core.data(child, "gray").extents(core.view(child))
    assert (ext.lo, ext.hi) == ((0, 0, 0), (SX, SY, SZ))


def test_resolve_without_conflicts_is_a_merge_and_bad_input_changes_nothing(core):
    a, b, ma, mb, base = _scenario(core)
    n = len(core.repo_nodes(core.repo("em")))
    with pytest.raises(NotFoundError):
        core.resolve([a, b], data=["nosuch"])
    with pytest.raises(ConflictError):
        core.resolve([a, b], data=[])            # gray not chosen: its conflicts refuse
    assert len(core.repo_nodes(core.repo("em"))) == n
    c = core.resolve([a, b], data=["gray"])
    core.commit(c)
    d = core.branch(c, "d")
    core.data(d, "gray").write(d, (0, 0, 0), np.ones((1, 1, 1), np.uint8))
    core.commit(d)
    e = core.resolve([d, c])                      # d descends from c: nothing conflicts
    expect = _expected(ma, mb, base)
    expect[0, 0, 0] = 1
    assert np.array_equal(_read(core, e), expect)


# ---------------------------------------------------------------- the command
def test_cli_merge_refusal_is_one_line_with_the_full_list_command(tmp_path):
    p = tmp_path / "store"
    with Dvid.init(p) as s:
        a, b, ma, mb, base = _scenario(s)
    r = dvidfs("-s", p, "merge", a.uuid[:8], b.uuid[:8], check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("dvidfs: error: merge refused:") and "xy slices 0..15" in line
    assert f"all {BLOCKS_AT_Z7}: dvidfs -s {p} conflicts {a.uuid[:8]} {b.uuid[:8]}" in line, line
    r = dvidfs("-s", p, "conflicts", a.uuid[:8], b.uuid[:8])
    assert len(r.stdout.splitlines()) == BLOCKS_AT_Z7 and f"{BLOCKS_AT_Z7} conflicting" in r.stderr
    r = dvidfs("-s", p, "resolve", b.uuid[:8], a.uuid[:8], "--note", "b wins")
    child = r.stdout.strip()
    with Dvid(p) as s:
        n = s.node(child)
        assert n.note == "b wins" and n.parents == [b.uuid, a.uuid]
        assert np.array_equal(_read(s, n), _expected(mb, ma, base))


# ---------------------------------------------------------------- the mount
def test_mount_conflicts_file_and_resolve_control_file(tmp_path):
    p = tmp_path / "store"
    with Dvid.init(p) as s:
        a, b, ma, mb, base = _scenario(s)
    mnt = tmp_path / "mnt"
    with mounted(p, mnt):
        ctl = mnt / "em" / a.uuid / ".dvid"
        assert (ctl / "conflicts").read_text() == ""
        with pytest.raises(OSError) as ei:
            (ctl / "merge").write_text(b.uuid + "\n")
        assert ei.value.errno == errno.EBUSY
        last = (ctl / "last-error").read_text()
        assert "gray: 12 blocks covering voxels x 0..63, y 0..47 of xy slices 0..15" in last, last
        assert "all 12: .dvid/conflicts" in last
        full = (ctl / "conflicts").read_text().splitlines()
        assert len(full) == BLOCKS_AT_Z7 and "gray: block (0,0,0) = voxels x 0..15, y 0..15 of xy slices 0..15" in full
        # resolve: this node first (not listed), then b
        (ctl / "resolve").write_text(b.uuid[:10] + "\n")
        assert (ctl / "conflicts").read_text() == ""
        kids = [c for c in os.listdir(mnt / "em") if len(c) == 32 and c not in (a.uuid, b.uuid)]
        child = next(c for c in kids if a.uuid in
                     json.loads((mnt / "em" / c / ".dvid" / "info.json").read_text())["Parents"])
        z7 = np.array(Image.open(mnt / "em" / child / "gray" / "xy" / "00007.png"))
        assert np.array_equal(z7, ma[7])
        # listed with this node second: b wins
        (ctl / "resolve").write_text(f"{b.uuid} {a.uuid}\n")
    with Dvid(p) as s:
        made = [n for n in s.repo_nodes(s.repo("em")) if len(n.parents) == 2]
        assert [n.parents for n in made] == [[a.uuid, b.uuid], [b.uuid, a.uuid]]
        assert np.array_equal(_read(s, made[0]), _expected(ma, mb, base))
        assert np.array_equal(_read(s, made[1]), _expected(mb, ma, base))


# ---------------------------------------------------------------- HTTP
def test_http_resolve(core):
    a, b, ma, mb, base = _scenario(core)
    with served(core) as url:
        r = requests.post(f"{url}/api/repo/{a.uuid}/merge", json={"mergeType": "conflict-free",
                                                                   "parents": [a.uuid, b.uuid]})
        assert r.status_code == 400 and "xy slices 0..15" in r.text
        for bad in ({"parents": [a.uuid, b.uuid]}, {"data": ["gray"], "parents": [a.uuid]},
                    {"data": "gray", "parents": [a.uuid, b.uuid]}):
            assert requests.post(f"{url}/api/repo/{a.uuid}/resolve", json=bad).status_code == 400
        r = requests.post(f"{url}/api/repo/{a.uuid[:6]}/resolve",
                          json={"data": ["gray"], "parents": [b.uuid[:8], a.uuid[:8]], "note": "via http"})
        assert r.status_code == 200, r.text
        child = r.json()["child"]
        raw = requests.get(f"{url}/api/node/{child}/gray/raw/0_1_2/{SX}_{SY}_{SZ}/0_0_0")
        assert raw.status_code == 200
        got = np.frombuffer(raw.content, np.uint8).reshape(SZ, SY, SX)
        assert np.array_equal(got, _expected(mb, ma, base))
        assert core.node(child).note == "via http"
