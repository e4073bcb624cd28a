"""push / pull of committed versions between stores, and diff (dvidfs/push.py)."""
from __future__ import annotations

import numpy as np
import pytest

from dvidfs.core import Dvid
from dvidfs.errors import ConflictError, InvalidInputError
from dvidfs.push import diff, pull, push
from dvidfs.samplestore import build_sample_store

SIZE = (64, 64, 64)
BIG = bytes(range(256)) * 5000          # > 1 MiB: a chunked keyvalue value


@pytest.fixture
def src(tmp_path):
    with Dvid.init(tmp_path / "src") as s:
        build_sample_store(s, SIZE, block_size=16)
        yield s


@pytest.fixture
def dst(tmp_path):
    with Dvid.init(tmp_path / "dst") as d:
        yield d


def _edit(s: Dvid, parent, name: str | None = None, fill: int = 7, z: int = 0):
    """A committed child of `parent` that changed one gray block, labels and keyvalue keys."""
    child = s.branch(parent, name)
    s.data(child, "grayscale").write(child, (0, 0, z), np.full((16, 16, 16), fill, np.uint8))
    seg = s.data(child, "segmentation")
    bodies = sorted(int(b) for b in seg.bodies(s.view(child)))
    seg.merge(child, bodies[0], [bodies[1]])
    if "kv" not in s.instances(child):
        s.new_instance(child, "kv", "keyvalue")
    kv = s.data(child, "kv")
    kv.put(child, f"small-{fill}", b"hello %d" % fill)
    kv.put(child, f"big-{fill}", BIG + bytes([fill]))
    for k in kv.keys(s.view(child)):
        if k.startswith("small-") and k != f"small-{fill}":
            kv.delete(child, k)                       # a tombstone over the parent's key
        elif k.startswith("big-") and k != f"big-{fill}":
            kv.rename(child, k, f"moved-{k}")         # a head naming the parent's blob
    s.commit(child, f"edit {fill}")
    return child


def _equal_at(s: Dvid, d: Dvid, uuid: str) -> None:
    a, b = s.node_by_uuid(uuid), d.node_by_uuid(uuid)
    assert a.parents == b.parents and b.locked
    assert sorted(s.instances(a)) == sorted(d.instances(b))
    va, vb = s.view(a), d.view(b)
    for name, inst in s.instances(a).items():
        x, y = s.data(a, name), d.data(b, name)
        if inst.typename in ("grayscale", "labels"):
            assert np.array_equal(x.read(va, (0, 0, 0), SIZE), y.read(vb, (0, 0, 0), SIZE)), (uuid, name)
        if inst.typename == "labels":
            bodies = x.bodies(va)
            assert np.array_equal(bodies, y.bodies(vb))
            assert x.sizes(va, bodies) == y.sizes(vb, bodies)
            assert x.mutations(va) == y.mutations(vb)
        if inst.typename == "keyvalue":
            assert x.keys(va) == y.keys(vb)
            for k in x.keys(va):
                assert x.get(va, k) == y.get(vb, k)


def test_push_then_push_again_sends_only_new_nodes(src, dst):
    root = src.node(src.repos()[0].root)
    rep = push(src, dst)
    assert rep.sent == [root.uuid] and rep.keys > 0
    _equal_at(src, dst, root.uuid)
    assert dst.repos()[0].alias == "sample" and dst.repos()[0].root == root.uuid

    child = _edit(src, root)
    again = push(src, dst)
    assert again.sent == [child.uuid] and again.present == [root.uuid]
    # exactly the keys the child wrote: its change-index entries' data keys (+ the big value's chunks)
    n_changes = sum(1 for _ in src.engine.scan(b"\x03" + child.version_id.to_bytes(4, "big"),
                                               b"\x03" + (child.version_id + 1).to_bytes(4, "big"),
                                               include_value=False))
    assert n_changes < rep.keys / 5
    assert again.keys == n_changes + 2     # + two 1 MiB chunks of the big value
    _equal_at(src, dst, root.uuid)
    _equal_at(src, dst, child.uuid)
    assert push(src, dst).sent == []       # nothing left to send
    # every data, change-index and tombstone key of src's versions is in dst, nothing more
    raw = lambda e: sum(1 for _ in e.scan(b"\x01", b"\x05", include_value=False))
    assert raw(dst.engine) == raw(src.engine)

    # the destination keeps working on the pushed history, and survives a reopen
    path = dst.path
    dst.close()
    with Dvid(path) as d2:
        _equal_at(src, d2, child.uuid)
        grand = d2.branch(d2.node_by_uuid(child.uuid), "onward")
        d2.data(grand, "kv").put(grand, "x", b"y")
        assert d2.data(grand, "kv").get(d2.view(grand), "big-7") == BIG + bytes([7])


def test_push_into_store_whose_ids_differ(src, tmp_path):
    with Dvid.init(tmp_path / "other") as d:
        r = d.new_repo("unrelated")
        n = d.node(r.root)
        d.new_instance(n, "g", "grayscale")
        d.new_instance(n, "k", "keyvalue")
        d.commit(n)
        d.branch(n)
        root = src.node(src.repos()[0].root)
        child = _edit(src, root)
        grand = _edit(src, child, "side", fill=9, z=16)
        push(src, d, nodes=[grand])
        assert d.node_by_uuid(root.uuid).version_id != root.version_id
        for u in (root.uuid, child.uuid, grand.uuid):
            _equal_at(src, d, u)
        kv = d.data(d.node_by_uuid(grand.uuid), "kv")
        gv = d.view(d.node_by_uuid(grand.uuid))
        assert kv.get(gv, "small-7") is None and kv.get(gv, "moved-big-7") == BIG + bytes([7])
        # a merge node travels too (its merged values are in its own change index)
        other = _edit(src, child, "third", fill=11, z=32)
        m = src.merge([grand, other])
        src.commit(m)
        assert push(src, d).sent == [other.uuid, m.uuid]
        _equal_at(src, d, m.uuid)
        assert d.node_by_uuid(m.uuid).parents == [grand.uuid, other.uuid]


def test_pull_a_branch_and_parents_come_along(src, dst):
    root = src.node(src.repos()[0].root)
    child = _edit(src, root, "feature")
    src.branch(child)                         # an open tip: not sent
    rep = pull(src, dst, branch="feature")
    assert rep.sent == [root.uuid, child.uuid]
    _equal_at(src, dst, child.uuid)
    with pytest.raises(InvalidInputError, match="open"):
        push(src, dst, nodes=[src.node("sample:feature")])


def test_diverged_history_is_refused(src, dst):
    root = src.node(src.repos()[0].root)
    push(src, dst)
    # same UUID, different parent in each store
    a = src.branch(root, "x", uuid="ab" * 16)
    src.commit(a)
    other = dst.branch(dst.node_by_uuid(root.uuid), "x")
    dst.commit(other)
    b = dst.branch(other, uuid="ab" * 16)
    dst.commit(b)
    with pytest.raises(ConflictError, match="ab" * 16):
        push(src, dst)
    # a node open in the destination
    c = src.branch(root, "y", uuid="cd" * 16)
    src.commit(c)
    dst.branch(dst.node_by_uuid(root.uuid), "y", uuid="cd" * 16)
    with pytest.raises(ConflictError, match="cd" * 16):
        push(src, dst, nodes=[c])
    # a different repo under the same name
    with Dvid.init(dst.path + "-2") as d2:
        d2.new_repo("sample")
        with pytest.raises(ConflictError, match="different repo named 'sample'"):
            push(src, d2)


def test_tag_the_destination_gives_another_node_is_refused_before_anything_is_written(src, dst):
    root = src.node(src.repos()[0].root)
    push(src, dst)
    child = _edit(src, root)
    tag = src.tag(child, "v1")
    theirs = dst.tag(dst.node_by_uuid(root.uuid), "v1")       # the same name, another node
    n_keys = lambda e: sum(1 for _ in e.scan(b"\x00", b"\xff", include_value=False))
    before, version = n_keys(dst.engine), dst.db.last_id("version")
    with pytest.raises(ConflictError) as err:
        push(src, dst)
    msg = str(err.value)
    assert "'v1'" in msg and tag.uuid in msg and theirs.uuid in msg, msg
    # refused before anything was written: not even the untagged child went
    assert child.uuid not in dst.db.nodes and n_keys(dst.engine) == before
    assert dst.db.last_id("version") == version
    assert dst.tags()["v1"].uuid == theirs.uuid
    # the rest of the history still travels when the tag node is left out
    assert push(src, dst, nodes=[child]).sent == [child.uuid]
    _equal_at(src, dst, child.uuid)
    # the same UUID tagged differently in each store: diverged
    src.db.tag(root, "v5", uuid="ef" * 16)
    dst.db.tag(dst.node_by_uuid(root.uuid), "v6", uuid="ef" * 16)
    with pytest.raises(ConflictError, match="ef" * 16):
        push(src, dst)
    # a repo name that is a tag in the destination is refused as well
    with Dvid.init(dst.path + "-2") as d2:
        r = d2.new_repo("other")
        n = d2.node(r.root)
        d2.commit(n)
        d2.tag(n, "sample-v")
        with Dvid.init(src.path + "-2") as s2:
            s2.new_repo("sample-v")
            s2.commit(s2.node("sample-v"))
            with pytest.raises(ConflictError, match="sample-v"):
                push(s2, d2)
            assert len(d2.repos()) == 1


def test_tag_node_already_in_the_destination_is_present(src, dst):
    root = src.node(src.repos()[0].root)
    child = _edit(src, root)
    tag = src.tag(child, "v1")
    rep = push(src, dst)
    assert rep.sent == [root.uuid, child.uuid, tag.uuid]
    got = dst.tags()["v1"]
    assert got.uuid == tag.uuid and got.locked and got.branch == "tag-v1" and got.parents == [child.uuid]
    assert dst.node("v1").uuid == tag.uuid
    _equal_at(src, dst, tag.uuid)
    again = push(src, dst)
    assert again.sent == [] and again.present == [root.uuid, child.uuid, tag.uuid] and again.keys == 0
    assert push(src, dst, nodes=[src.node("v1")]).sent == []
    # a later tag of a present node: only the tag node goes
    tag2 = src.tag(root, "v0")
    assert push(src, dst).sent == [tag2.uuid] and dst.tags()["v0"].uuid == tag2.uuid


def test_interrupted_push_completes_when_run_again(src, dst, monkeypatch):
    import dvidfs.push as mod
    monkeypatch.setattr(mod, "BATCH_KEYS", 50)
    root = src.node(src.repos()[0].root)
    child = _edit(src, root)
    calls = []

    def boom(done, total):
        calls.append(done)
        if len(calls) == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        push(src, dst, progress=boom)
    assert root.uuid not in dst.db.nodes      # the node record comes last
    before = dst.db.last_id("version")
    path = dst.path
    dst.close()
    with Dvid(path) as d:                     # as after a kill: a new process
        assert d.repos() == []
        rep = push(src, d)
        assert rep.sent == [root.uuid, child.uuid]
        assert d.db.last_id("version") == before + 1   # the root's reserved id was reused
        _equal_at(src, d, root.uuid)
        _equal_at(src, d, child.uuid)
        # nothing duplicated: the same number of raw keys as a clean push
        with Dvid.init(path + "-clean") as clean:
            push(src, clean)
            n = lambda e: sum(1 for _ in e.scan(b"\x01", b"\x05", include_value=False))
            assert n(d.engine) == n(clean.engine)
            assert not list(d.engine.scan(b"\x00push:", b"\x00push;"))


def test_diff_names_changed_blocks_bodies_and_keys(src):
    root = src.node(src.repos()[0].root)
    child = src.branch(root)
    src.data(child, "grayscale").write(child, (16, 32, 0), np.full((16, 16, 16), 3, np.uint8))
    src.new_instance(child, "kv", "keyvalue")
    src.data(child, "kv").put(child, "a", b"1")
    seg = src.data(child, "segmentation")
    bodies = sorted(int(b) for b in seg.bodies(src.view(child)))
    seg.merge(child, bodies[0], [bodies[1]])
    src.commit(child)
    d = diff(src, root, child)
    bs = src.data(root, "grayscale").grid.size
    assert d["grayscale"].blocks == [(16 // bs[0], 32 // bs[1], 0)]
    assert d["kv"].keys == ["a"]
    assert bodies[1] in d["segmentation"].bodies and bodies[0] in d["segmentation"].bodies
    assert d["segmentation"].blocks == []      # a merge changes the mapping, not blocks
    assert diff(src, child, root, "kv")["kv"].keys == ["a"]
    assert diff(src, root, root) == {}
    # a sibling branch: changes on both sides since the common ancestor
    side = src.branch(root, "side")
    src.data(side, "grayscale").write(side, (0, 0, 32), np.full((16, 16, 16), 5, np.uint8))
    d2 = diff(src, child, side, "grayscale")
    assert sorted(d2["grayscale"].blocks) == sorted([(16 // bs[0], 32 // bs[1], 0), (0, 0, 32 // bs[2])])


def test_cli_push_pull_diff(tmp_path, capsys):
    from dvidfs.cli import main
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    for p in (b, c):
        Dvid.init(p).close()
    with Dvid.init(a) as s:
        build_sample_store(s, (32, 32, 32), block_size=16)
        root = s.node("sample")
        child = s.branch(root, "feature")
        s.data(child, "grayscale").write(child, (16, 0, 0), np.full((16, 16, 16), 1, np.uint8))
        s.commit(child)
        root_u, child_u = root.uuid, child.uuid
    assert main(["push", a, b, "--branch", "feature"]) == 0
    out = capsys.readouterr().out
    assert f"sent {child_u}" in out and "2 node(s) sent" in out
    assert main(["push", a, b]) == 0
    assert "0 node(s) sent" in capsys.readouterr().out
    assert main(["-s", c, "pull", b]) == 0              # the local store pulls from b
    assert "2 node(s) sent" in capsys.readouterr().out
    assert main(["diff", "-s", c, root_u[:8], child_u[:8], "grayscale"]) == 0
    assert capsys.readouterr().out.strip() == "grayscale\tblock\t1,0,0"
    with Dvid(b) as d:
        d.new_repo("stray")
    assert main(["push", b, a, "--branch", "feature"]) == 1     # --branch with two repos in b
    err = capsys.readouterr().err.strip()
    assert err.startswith("dvidfs: error:") and "\n" not in err


def test_push_leveldb_to_s3_and_back(src, tmp_path, seaweedfs, monkeypatch):
    from seaweed import store_prefix
    for k, v in seaweedfs.env.items():
        monkeypatch.setenv(k, v)
    where = (f"s3://{seaweedfs.shared_bucket()}/{store_prefix(str(tmp_path) + '/push')}"
             f"?endpoint={seaweedfs.endpoint}")
    root = src.node(src.repos()[0].root)
    child = _edit(src, root)
    with Dvid.init(where) as remote:
        rep = push(src, remote, nodes=[child])
        assert rep.sent == [root.uuid, child.uuid]
        _equal_at(src, remote, child.uuid)
    with Dvid(where) as remote, Dvid.init(tmp_path / "back") as back:
        _equal_at(src, remote, root.uuid)
        assert pull(remote, back).sent == [root.uuid, child.uuid]
        _equal_at(src, back, root.uuid)
        _equal_at(src, back, child.uuid)


def test_kill_9_mid_push_then_run_again(src, tmp_path):
    import subprocess
    import sys
    import textwrap
    root = src.node(src.repos()[0].root)
    child = _edit(src, root)
    src_path, dst_path = src.path, str(tmp_path / "killed")
    Dvid.init(dst_path).close()
    src.close()
    script = textwrap.dedent(f"""
        import os, signal
        import dvidfs.push as mod
        from dvidfs.core import Dvid
        mod.BATCH_KEYS = 40
        calls = []
        def progress(done, total):
            calls.append(done)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        with Dvid({src_path!r}) as s, Dvid({dst_path!r}) as d:
            mod.push(s, d, progress=progress)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    with Dvid(src_path) as s, Dvid(dst_path) as d:
        rep = push(s, d)
        assert child.uuid in rep.sent
        _equal_at(s, d, root.uuid)
        _equal_at(s, d, child.uuid)
        with Dvid.init(str(tmp_path / "clean")) as clean:
            push(s, clean)
            n = lambda e: sum(1 for _ in e.scan(b"\x01", b"\x05", include_value=False))
            assert n(d.engine) == n(clean.engine)


def test_push_from_s3_fetches_values_ahead_and_together(seaweedfs, tmp_path):
    """An S3 source: the sender announces each page's keys (the engine's
    `prefetch`), so the values come in parallel ranged GETs of neighbours,
    far fewer than one GET per value; the pushed node reads the same."""
    from seaweed import CountingClient, s3_engine, store_prefix

    from dvidfs.store.s3 import S3Engine
    inline = 256
    with Dvid(engine=s3_engine(seaweedfs, tmp_path / "s3src", create=True, inline_max=inline)) as s:
        uuid = build_sample_store(s, SIZE, block_size=8)
        child = _edit(s, s.node_by_uuid(uuid)).uuid        # + a chunked keyvalue value (a planned cursor)
    client = CountingClient(seaweedfs.engine_client())
    eng = S3Engine(seaweedfs.shared_bucket(), store_prefix(tmp_path / "s3src"), client=client, readonly=True)
    with Dvid(engine=eng) as s, Dvid.init(tmp_path / "fromS3") as d:
        client.gets = 0                            # cold: a fresh engine, nothing cached
        rep = push(s, d)
        gets = client.gets
        assert rep.sent == [uuid, child]
        # the values an S3 GET had to fetch (stored in packs: at least `inline` bytes)
        packed = sum(1 for _, v in d.engine.scan(b"\x01", b"\x02") if len(v) >= inline)
        print(f"S3 source: {gets} GETs for {packed} packed values")
        assert packed >= 100 and gets <= packed / 4, (gets, packed)
        a, b = s.node_by_uuid(uuid), d.node_by_uuid(uuid)
        for name in ("grayscale", "segmentation"):
            want = s.data(a, name).read(s.view(a), (0, 0, 0), SIZE)
            got = d.data(b, name).read(d.view(b), (0, 0, 0), SIZE)
            assert want.dtype == got.dtype and np.array_equal(want, got), name
        _equal_at(s, d, uuid)
        _equal_at(s, d, child)
