"""push / pull over HTTP to and from a `dvidfs serve` (dvidfs/push.py's
`transfer` with dvidfs/server/transfer.py's `HttpReceiver`/`HttpSender`).

Real LevelDB stores; the served side is a real hypercorn server on 127.0.0.1
(in a thread of the test process, tests/serving.py, so a test can look at the
served `Dvid` directly), or the real `dvidfs serve --mount` process."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import requests

from conftest import full_scan
from dvidfs.core import Dvid
from dvidfs.errors import ConflictError, DvidfsError
from dvidfs.push import LocalReceiver, LocalSender, push, transfer
from dvidfs.samplestore import build_sample_store
from dvidfs.server.transfer import HttpReceiver, HttpSender, encode_records
from dvidfs.store import keys
from serving import served
from test_push import SIZE, _edit, _equal_at, dst, src  # noqa: F401  (src, dst: the same fixtures)

raw_count = lambda e: sum(1 for _ in e.scan(b"\x01", b"\x05", include_value=False))


def _http_voxels(url: str, uuid: str, name: str, dtype) -> np.ndarray:
    sx, sy, sz = SIZE
    r = requests.get(f"{url}/api/node/{uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/0_0_0", timeout=60)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, dtype).reshape(sz, sy, sx)


def test_push_into_a_served_store_then_read_it_over_http(src, dst):
    root = src.node(src.repos()[0].root)
    changes = []
    dst.subscribe(changes.append)
    with served(dst) as url:
        rep = transfer(LocalSender(src), HttpReceiver(url))
        assert rep.sent == [root.uuid] and rep.keys > 0 and rep.repos_created == [root.uuid]
        # the server's own DAG in memory has the node at once: its HTTP API answers from it
        info = requests.get(f"{url}/api/repos/info", timeout=30).json()
        assert info[root.uuid]["Alias"] == "sample"
        for name, dtype in (("grayscale", np.uint8), ("segmentation", np.uint64)):
            got = _http_voxels(url, root.uuid, name, dtype)
            want = src.data(root, name).read(src.view(root), (0, 0, 0), SIZE)
            assert np.array_equal(got, want.reshape(got.shape)), name
        _equal_at(src, dst, root.uuid)
        # the mount (any subscriber) was told: the new repo and the new node
        assert any(c.repo == root.uuid and c.node is None for c in changes)
        assert any(c.node == root.uuid for c in changes)

        # again: nothing to send
        again = transfer(LocalSender(src), HttpReceiver(url))
        assert again.sent == [] and again.present == [root.uuid] and again.keys == 0

        # a child: exactly the keys it wrote, as a local push sends them
        child = _edit(src, root)
        rep2 = transfer(LocalSender(src), HttpReceiver(url))
        assert rep2.sent == [child.uuid]
        _equal_at(src, dst, child.uuid)
        got = _http_voxels(url, child.uuid, "grayscale", np.uint8)
        assert (got[:16, :16, :16] == 7).all()
        assert requests.get(f"{url}/api/node/{child.uuid}/kv/key/small-7", timeout=30).content == b"hello 7"
        assert raw_count(dst.engine) == raw_count(src.engine)
        assert not list(dst.engine.scan(b"\x00push:", b"\x00push;"))
    with Dvid.init(dst.path + "-local") as local:
        push(src, local, nodes=[root])
        assert push(src, local).keys == rep2.keys


def test_diverged_history_is_refused_over_http(src, dst):
    root = src.node(src.repos()[0].root)
    push(src, dst)
    a = src.branch(root, "x", uuid="ab" * 16)
    src.commit(a)
    other = dst.branch(dst.node_by_uuid(root.uuid), "x")
    dst.commit(other)
    b = dst.branch(other, uuid="ab" * 16)
    dst.commit(b)
    with served(dst) as url:
        before = full_scan(dst.engine)
        with pytest.raises(ConflictError, match="ab" * 16):
            transfer(LocalSender(src), HttpReceiver(url))
        assert full_scan(dst.engine) == before
    # and pulling the diverged node out of a served store into the other one
    with served(src) as url, Dvid.init(dst.path + "-2") as d2:
        transfer(HttpSender(url), LocalReceiver(d2), [root.uuid])
        mid = d2.branch(d2.node_by_uuid(root.uuid), "y")
        d2.commit(mid)
        c = d2.branch(mid, uuid="ab" * 16)      # the same UUID with another parent
        d2.commit(c)
        with pytest.raises(ConflictError, match="ab" * 16):
            transfer(HttpSender(url), LocalReceiver(d2))


def test_tags_over_http_same_node_present_another_node_refused(src, dst, monkeypatch):
    root = src.node(src.repos()[0].root)
    tag = src.tag(root, "v1")
    with served(dst) as url:
        assert transfer(LocalSender(src), HttpReceiver(url)).sent == [root.uuid, tag.uuid]
        assert dst.tags()["v1"].uuid == tag.uuid          # the served DAG in memory has it
        again = transfer(LocalSender(src), HttpReceiver(url))
        assert again.sent == [] and again.present == [root.uuid, tag.uuid]
    # another node tagged "v2" in the served store than in the source
    theirs = dst.tag(dst.node_by_uuid(root.uuid), "v2")
    mine = src.tag(root, "v2")
    with served(dst) as url:
        before = full_scan(dst.engine)
        with pytest.raises(ConflictError, match="'v2'") as err:
            transfer(LocalSender(src), HttpReceiver(url))
        assert mine.uuid in str(err.value) and theirs.uuid in str(err.value)
        assert full_scan(dst.engine) == before
        # the served store refuses it too (a client that skips the check): at `finish`
        import dvidfs.push as mod
        monkeypatch.setattr(mod, "_check_tags", lambda *a: None)
        with pytest.raises(DvidfsError, match="'v2'"):
            transfer(LocalSender(src), HttpReceiver(url))
        assert mine.uuid not in dst.db.nodes and dst.tags()["v2"].uuid == theirs.uuid
    monkeypatch.undo()
    # pulling out of a served store: refused the same way
    with served(src) as url:
        with pytest.raises(ConflictError, match="'v2'"):
            transfer(HttpSender(url), LocalReceiver(dst))


def test_pull_from_a_served_store(src, dst):
    root = src.node(src.repos()[0].root)
    child = _edit(src, root, "feature")
    grand = _edit(src, child, "side", fill=9, z=16)
    # the destination's ids differ from the source's
    r = dst.new_repo("unrelated")
    dst.new_instance(dst.node(r.root), "k", "keyvalue")
    dst.commit(dst.node(r.root))
    with served(src) as url:
        rep = transfer(HttpSender(url), LocalReceiver(dst), branch="feature", repo="sample")
        assert rep.sent == [root.uuid, child.uuid]
        rep2 = transfer(HttpSender(url), LocalReceiver(dst))
        assert rep2.sent == [grand.uuid] and rep2.present == [root.uuid, child.uuid]
        assert transfer(HttpSender(url), LocalReceiver(dst)).sent == []
    assert dst.node_by_uuid(root.uuid).version_id != root.version_id
    for u in (root.uuid, child.uuid, grand.uuid):
        _equal_at(src, dst, u)


def test_kill_9_mid_http_push_then_run_again(src, dst, tmp_path):
    root = src.node(src.repos()[0].root)
    child = _edit(src, root)
    src_path = src.path
    src.close()
    with served(dst) as url:
        script = textwrap.dedent(f"""
            import os, signal
            import dvidfs.push as mod
            from dvidfs.core import Dvid
            from dvidfs.server.transfer import HttpReceiver
            mod.BATCH_KEYS = 40
            calls = []
            def progress(done, total):
                calls.append(done)
                if len(calls) == 5:
                    os.kill(os.getpid(), signal.SIGKILL)
            with Dvid({src_path!r}) as s:
                mod.transfer(mod.LocalSender(s), HttpReceiver({url!r}), progress=progress)
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == -9, r.stderr
        assert root.uuid not in dst.db.nodes                     # the node record comes last
        assert list(dst.engine.scan(b"\x00push:", b"\x00push;"))  # its reservation is kept
        before = dst.db.last_id("version")
        with Dvid(src_path) as s:
            rep = transfer(LocalSender(s), HttpReceiver(url))
            assert rep.sent == [root.uuid, child.uuid]
            assert dst.db.last_id("version") == before + 1      # the root's reserved id was reused
            _equal_at(s, dst, root.uuid)
            _equal_at(s, dst, child.uuid)
            with Dvid.init(str(tmp_path / "clean")) as clean:
                push(s, clean)
                assert raw_count(dst.engine) == raw_count(clean.engine)   # nothing duplicated
        assert not list(dst.engine.scan(b"\x00push:", b"\x00push;"))


def test_malformed_or_unreserved_bodies_are_refused_and_change_nothing(src, dst):
    push(src, dst)
    root = dst.node(dst.repos()[0].root)
    inst = dst.db.repos[root.repo].instances["grayscale"].id
    good_key = keys.data_key(inst, keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(0, 0, 0)), root.version_id)
    with served(dst) as url:
        before = full_scan(dst.engine)
        put = lambda body: requests.post(f"{url}/api/dvidfs/push/put", data=body, timeout=30)
        bodies = {
            "cut short": encode_records([(good_key, b"x" * 10)])[:-3],
            "length only": b"\x00\x00",
            "zero-length key": struct.pack(">I", 0) + struct.pack(">I", 0),
            # well formed, but a committed version (no push reserved it): never overwritten
            "existing version": encode_records([(good_key, b"evil")]),
            "metadata key": encode_records([(keys.meta_key("counter:version"), b"\0\0\0\0")]),
            "unknown version": encode_records([(keys.change_key(999, inst, b"\x17"), b"")]),
        }
        for what, body in bodies.items():
            r = put(body)
            assert r.status_code == 400, (what, r.status_code, r.text)
            assert "\n" not in r.text.strip()
        # a malformed or forged finish, a bad reservation
        post = lambda path, obj: requests.post(f"{url}/api/dvidfs/push/{path}", json=obj, timeout=30)
        assert post("finish", {"node": {"uuid": "cd" * 16}}).status_code == 400
        spec = {"node": {**root.to_json(), "uuid": "cd" * 16, "parents": [root.uuid]}, "version": 1,
                "repo": {k: v for k, v in dst.db.repos[root.repo].to_json().items() if k != "instances"},
                "created": [], "counters": {}, "maxlabel": {}}
        r = post("finish", spec)
        assert r.status_code == 400 and "not the one reserved" in r.text
        assert post("reserve", {"names": [["counter:version", "version"]]}).status_code == 400
        assert post("reserve", {"names": "x"}).status_code == 400
        assert full_scan(dst.engine) == before
        # a well-formed put of a reserved version is taken (the endpoint works)
        ids = post("reserve", {"names": [["version:" + "ef" * 16, "version"]]}).json()["ids"]
        k = keys.data_key(inst, keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(9, 9, 9)), ids[0])
        assert put(encode_records([(k, b"v")])).json() == {"keys": 1}


def test_cli_push_and_pull_with_a_url(tmp_path, capsys):
    from dvidfs.cli import main
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    Dvid.init(c).close()
    with Dvid.init(a) as s:
        build_sample_store(s, (32, 32, 32), block_size=16)
        root = s.node("sample")
        child = s.branch(root, "feature")
        s.data(child, "grayscale").write(child, (16, 0, 0), np.full((16, 16, 16), 1, np.uint8))
        s.commit(child)
    with Dvid.init(b) as served_store, served(served_store) as url:
        assert main(["push", a, url, "--branch", "feature"]) == 0
        out = capsys.readouterr().out
        assert f"sent {child.uuid}" in out and "2 node(s) sent" in out
        assert main(["-s", a, "push", url]) == 0
        assert "0 node(s) sent" in capsys.readouterr().out
        assert main(["-s", c, "pull", url]) == 0
        assert "2 node(s) sent" in capsys.readouterr().out
        assert main(["pull", url, c]) == 0
        assert "0 node(s) sent" in capsys.readouterr().out
        assert served_store.node_by_uuid(child.uuid).locked
    assert main(["push", a, "http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dvidfs: error:") and "127.0.0.1:1" in err and "\n" not in err
    with Dvid(c) as d:
        assert d.node_by_uuid(child.uuid).parents == [root.uuid]


@pytest.mark.mount
def test_push_into_serve_with_mount_shows_the_node_in_the_mount(src, tmp_path):
    from test_server import serving
    from mounting import is_mounted
    from PIL import Image
    import io
    root = src.node(src.repos()[0].root)
    store_path, mnt = tmp_path / "served", tmp_path / "mnt"
    mnt.mkdir()
    with Dvid.init(store_path) as d:
        push(src, d)
    child = _edit(src, root)
    with serving(store_path, mnt) as (proc, url):
        assert is_mounted(mnt)
        listed = set(os.listdir(mnt / "sample"))            # the kernel now holds this listing
        assert root.uuid in listed and child.uuid not in listed
        assert transfer(LocalSender(src), HttpReceiver(url)).sent == [child.uuid]
        assert child.uuid in os.listdir(mnt / "sample")
        png = Image.open(io.BytesIO((mnt / "sample" / child.uuid / "grayscale" / "xy" / "00000.png").read_bytes()))
        want = src.data(child, "grayscale").read(src.view(child), (0, 0, 0), (SIZE[0], SIZE[1], 1))
        assert np.array_equal(np.asarray(png), want.reshape(SIZE[1], SIZE[0]))
