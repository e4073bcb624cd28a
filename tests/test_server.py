"""`dvidfs serve`: server, repo and node endpoints, the router's errors, and
the process (`dvidfs serve STORE --mount MNT`) sharing one store with a mount.

Layered like the mount's tests: `DvidApp.handle` called directly (no socket),
then a real hypercorn server on 127.0.0.1 (tests/serving.py), then the real
command in a subprocess with a real FUSE mount, stopped by SIGTERM."""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import full_scan
from dvidfs.core import Dvid
from dvidfs.server.app import DvidApp
from dvidfs.server.http import Request
from mounting import is_mounted
from serving import served


def call(app: DvidApp, method: str, path: str, body=b"", **query):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = Request(method, path, [s for s in path.split("/") if s], {k: str(v) for k, v in query.items()}, body)
    resp = app.handle(req)
    return resp.status, (json.loads(resp.body) if resp.content_type == "application/json" else resp.body.decode())


@pytest.fixture
def app(store):
    return DvidApp(store)


# ---------------------------------------------------------------- repos and nodes, direct calls
def test_new_repo_and_repos_info_in_dvids_shape(store, app):
    status, out = call(app, "POST", "/api/repos", {"alias": "em", "description": "a test"})
    assert status == 200 and set(out) == {"root"}
    root = out["root"]
    assert store.repo("em").root == root
    status, info = call(app, "GET", "/api/repos/info")
    r = info[root]
    assert (r["Root"], r["Alias"], r["Description"]) == (root, "em", "a test")
    assert isinstance(r["DataInstances"], dict) and r["DAG"]["Root"] == root
    node = r["DAG"]["Nodes"][root]
    assert node["UUID"] == root and node["Locked"] is False and node["Parents"] == []
    assert isinstance(node["VersionID"], int)
    # a second repo with the same alias is refused, and nothing was added
    before = full_scan(store.engine)
    status, msg = call(app, "POST", "/api/repos", {"alias": "em"})
    assert status == 400 and "already exists" in msg
    assert full_scan(store.engine) == before


def test_dag_lists_parents_and_children_as_version_ids(store, app):
    repo = store.new_repo("em")
    root = store.node(repo.root)
    store.commit(root)
    _, a = call(app, "POST", f"/api/node/{root.uuid}/newversion", {"note": "next"})
    _, b = call(app, "POST", f"/api/node/{root.uuid}/branch", {"branch": "side", "note": "other"})
    _, info = call(app, "GET", f"/api/repo/{root.uuid[:6]}/info")
    nodes = info["DAG"]["Nodes"]
    vid = {u: n["VersionID"] for u, n in nodes.items()}
    assert sorted(nodes[root.uuid]["Children"]) == sorted([vid[a["child"]], vid[b["child"]]])
    assert nodes[b["child"]]["Parents"] == [vid[root.uuid]]
    assert nodes[b["child"]]["Branch"] == "side" and nodes[a["child"]]["Branch"] == ""


def test_refs_prefix_branch_and_ancestors(store, app):
    repo = store.new_repo("em")
    root = store.node(repo.root)
    store.commit(root)
    child = store.branch(root)
    assert call(app, "GET", "/api/node/:master/status") == (200, {"Locked": False})
    assert call(app, "GET", f"/api/node/{root.uuid[:5]}:master~1/status") == (200, {"Locked": True})
    status, out = call(app, "GET", f"/api/repo/{child.uuid[:5]}/branch-versions/master")
    assert (status, out) == (200, [child.uuid, root.uuid])
    status, msg = call(app, "GET", "/api/node/ffffffffff/status")
    assert status == 400 and "no node" in msg
    status, msg = call(app, "GET", f"/api/repo/{root.uuid}/branch-versions/nope")
    assert status == 400 and "no branch" in msg


def test_commit_note_log_and_their_refusals(store, app):
    repo = store.new_repo("em")
    u = repo.root
    assert call(app, "POST", f"/api/node/{u}/note", {"note": "hello"})[0] == 200
    assert call(app, "GET", f"/api/node/{u}/note") == (200, {"note": "hello"})
    assert call(app, "POST", f"/api/node/{u}/log", {"log": ["a", "b"]})[0] == 200
    status, out = call(app, "POST", f"/api/node/{u}/commit", {"note": "done", "log": ["c"]})
    assert (status, out) == (200, {"committed": u})
    assert call(app, "GET", f"/api/node/{u}/log") == (200, {"log": ["a", "b", "c"]})
    assert call(app, "GET", f"/api/node/{u}/commit") == (200, {"Locked": True})
    status, msg = call(app, "POST", f"/api/node/{u}/commit", {})
    assert status == 400 and "already committed" in msg
    # branch names DVID refuses, and a second newversion on the same branch
    for bad in ({"branch": "master"}, {"branch": ""}, {}, {"branch": "has space"}):
        assert call(app, "POST", f"/api/node/{u}/branch", bad)[0] == 400
    assert call(app, "POST", f"/api/node/{u}/newversion")[0] == 200
    status, msg = call(app, "POST", f"/api/node/{u}/newversion")
    assert status == 400 and "already has a child" in msg


def test_merge_of_two_committed_branches(store, app):
    repo = store.new_repo("em")
    root = store.node(repo.root)
    store.commit(root)
    a = store.branch(root, "a")
    b = store.branch(root, "b")
    status, msg = call(app, "POST", f"/api/repo/{root.uuid}/merge", {"parents": [a.uuid, b.uuid]})
    assert status == 400 and "open" in msg  # parents must be committed
    store.commit(a), store.commit(b)
    status, out = call(app, "POST", f"/api/repo/{root.uuid}/merge",
                       {"mergeType": "conflict-free", "parents": [a.uuid[:8], "em:b"], "note": "m"})
    assert status == 200
    assert store.node(out["child"]).parents == [a.uuid, b.uuid]
    assert call(app, "POST", f"/api/repo/{root.uuid}/merge", {"mergeType": "tiebreak",
                                                             "parents": [a.uuid, b.uuid]})[0] == 400


def test_instance_creation_takes_dvids_string_values_only(store, app):
    repo = store.new_repo("em")
    u = repo.root
    status, out = call(app, "POST", f"/api/repo/{u}/instance",
                       {"typename": "labelmap", "dataname": "seg", "BlockSize": "32,32,32",
                        "VoxelSize": "4,4,40", "MaxDownresLevel": "2"})
    assert status == 200 and out["result"] == f"Added seg [labelmap] to node {u}"
    _, info = call(app, "GET", f"/api/node/{u}/seg/info")
    assert info["Base"]["TypeName"] == "labelmap"
    assert info["Extended"]["BlockSize"] == [32, 32, 32] and info["Extended"]["VoxelSize"] == [4, 4, 40]
    assert info["Extended"]["MaxDownresLevel"] >= 1
    before = full_scan(store.engine)
    for bad in ({"typename": "uint8blk", "dataname": "g", "BlockSize": 32},        # a number
                {"typename": "uint8blk"},                                         # no name
                {"typename": "float32blk", "dataname": "f"},                      # not served
                {"typename": "uint8blk", "dataname": "g", "BlockSize": "30"},     # not a multiple of 8
                {"typename": "uint8blk", "dataname": "seg"}):                     # name taken
        status, msg = call(app, "POST", f"/api/repo/{u}/instance", bad)
        assert status == 400 and msg.strip(), bad
    assert call(app, "POST", f"/api/repo/{u}/instance", b"{not json")[0] == 400
    assert full_scan(store.engine) == before
    store.commit(store.node(u))
    status, msg = call(app, "POST", f"/api/repo/{u}/instance", {"typename": "uint8blk", "dataname": "g"})
    assert status == 400 and "committed" in msg


def test_repo_info_post_and_repo_log_persist(store_path):
    with Dvid.init(store_path) as store:
        app = DvidApp(store)
        u = store.new_repo("em").root
        assert call(app, "POST", f"/api/repo/{u}/info", {"alias": "em2", "description": "d"})[0] == 200
        assert call(app, "POST", f"/api/repo/{u}/log", {"log": ["first"]})[0] == 200
        assert call(app, "POST", f"/api/repo/{u}/log", {"log": "not a list"})[0] == 400
    with Dvid(store_path) as store:
        app = DvidApp(store)
        _, info = call(app, "GET", f"/api/repo/{u}/info")
        assert (info["Alias"], info["Description"]) == ("em2", "d")
        assert call(app, "GET", f"/api/repo/{u}/log") == (200, {"log": ["first"]})


def test_router_errors(store, app):
    u = store.new_repo("em").root
    store.new_instance(store.node(u), "gray", "grayscale")
    assert call(app, "GET", "/nothere")[0] == 404
    assert call(app, "GET", "/api/nothere")[0] == 404
    status, msg = call(app, "GET", f"/api/node/{u}/gray/nosuch")
    assert status == 400 and "no endpoint 'nosuch'" in msg and "info" in msg
    status, msg = call(app, "GET", f"/api/node/{u}/nodata/info")
    assert status == 400 and "no data instance" in msg
    assert call(app, "DELETE", f"/api/node/{u}/status")[0] == 400   # wrong verb
    assert call(app, "GET", f"/api/repo/{u}/frobnicate")[0] == 400
    assert call(app, "HEAD", f"/api/repo/{u}")[0] == 200
    assert call(app, "HEAD", "/api/repo/ffffff")[0] == 400


def test_a_handler_bug_is_a_500_with_a_message_and_the_server_goes_on(store, app, monkeypatch):
    u = store.new_repo("em").root
    monkeypatch.setattr(type(store), "repo_info", lambda *a, **k: 1 / 0)
    status, msg = call(app, "GET", f"/api/repo/{u}/info")
    assert status == 500 and "ZeroDivisionError" in msg
    assert call(app, "GET", f"/api/node/{u}/status")[0] == 200


# ---------------------------------------------------------------- over a real socket
def test_real_server_cors_body_limit_and_json_on_get(store):
    u = store.new_repo("em").root
    with served(store, max_body=1000) as url:
        r = requests.get(f"{url}/api/node/{u}/status")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert requests.options(f"{url}/api/node/{u}/status").status_code == 204
        before = full_scan(store.engine)
        r = requests.post(f"{url}/api/node/{u}/note", data=json.dumps({"note": "x" * 5000}))
        assert r.status_code == 413 and "limit" in r.text
        assert full_scan(store.engine) == before
        r = requests.post(f"{url}/api/node/{u}/note?u=someone&app=test", json={"note": "ok"})
        assert r.status_code == 200
        assert requests.get(f"{url}/api/node/{u}/note").json() == {"note": "ok"}
        assert requests.get(f"{url}/api/heartbeat").status_code == 200
        assert "/api/repos/info" in requests.get(f"{url}/api/help").text


def test_a_write_through_the_core_is_seen_by_the_next_request(store):
    u = store.new_repo("em").root
    with served(store) as url:
        assert requests.get(f"{url}/api/node/{u}/note").json() == {"note": "root"}
        store.set_note(store.node(u), "changed elsewhere")
        assert requests.get(f"{url}/api/node/{u}/note").json() == {"note": "changed elsewhere"}


# ---------------------------------------------------------------- the command, with a mount
@contextmanager
def serving(store_path, mnt=None):
    """The real `dvidfs serve` process (with `--mount mnt`): yields (proc, url);
    whatever the test did, the process is killed if still running and the mount
    removed."""
    extra = ["--mount", str(mnt)] if mnt else []
    proc = subprocess.Popen([sys.executable, "-m", "dvidfs.cli", "serve", str(store_path),
                             "--http", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("dvidfs serve: http://"):
            raise AssertionError(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        yield proc, re.match(r"dvidfs serve: (http://[^/]+)/api/help", line).group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mnt and is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


@pytest.mark.mount
def test_serve_with_mount_shares_one_store_both_ways_and_stops_on_sigterm(tmp_path):
    store_path, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    with Dvid.init(store_path) as s:
        u = s.new_repo("em").root
        s.new_instance(s.node(u), "gray", "grayscale", block_size=8).write(
            s.node(u), (0, 0, 0), np.zeros((4, 16, 16), np.uint8))
    with serving(store_path, mnt) as (proc, url):
        assert is_mounted(mnt)
        # voxels written over HTTP are what the mount's slice shows next (no stale page)
        slice2 = mnt / "em" / u / "gray" / "xy" / "00002.png"
        assert not np.asarray(Image.open(io.BytesIO(slice2.read_bytes()))).any()
        cube = np.arange(4 * 16 * 16, dtype=np.uint32).reshape(4, 16, 16).astype(np.uint8)
        r = requests.post(f"{url}/api/node/{u}/gray/raw/0_1_2/16_16_4/0_0_0", data=cube.tobytes())
        assert r.status_code == 200, r.text
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(slice2.read_bytes()))), cube[2])
        note = mnt / "em" / u / ".dvid" / "note"
        # HTTP -> mount: the kernel must not serve a stale note
        assert note.read_text().strip() == "root"
        assert requests.post(f"{url}/api/node/{u}/note", json={"note": "from http"}).status_code == 200
        assert note.read_text().strip() == "from http"
        # mount -> HTTP
        note.write_text("from the mount\n")
        assert requests.get(f"{url}/api/node/{u}/note").json()["note"].strip() == "from the mount"
        (mnt / "em" / u / ".dvid" / "commit").write_text("done\n")
        assert requests.get(f"{url}/api/node/{u}/status").json() == {"Locked": True}
        # another dvidfs command cannot open the store meanwhile, and says why
        r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", str(store_path), "log", u],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and str(mnt) in r.stderr and url in r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(mnt)
    with Dvid(store_path) as s:  # everything both faces wrote is in the store
        n = s.node(u)
        assert n.locked and n.note.strip() in ("from the mount", "done")


@pytest.mark.mount
def test_an_external_unmount_stops_serve_too(tmp_path):
    """The process never outlives half its job: `fusermount3 -u` of its mount
    ends the server as well, cleanly (exit 0, marker gone)."""
    store_path, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    Dvid.init(store_path).close()
    with serving(store_path, mnt) as (proc, url):
        assert requests.get(f"{url}/api/heartbeat").status_code == 200
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert proc.wait(timeout=30) == 0
        assert not (store_path / "mounted-at.json").exists()


def test_serve_without_mount_stops_on_sigint_and_bad_addresses_are_one_line(tmp_path):
    store_path = tmp_path / "store"
    Dvid.init(store_path).close()
    with serving(store_path) as (proc, url):
        assert requests.get(f"{url}/api/repos/info").json() == {}
        r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", str(store_path), "repo", "list"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"serves it at {url}" in r.stderr and "kill -TERM" in r.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert not (store_path / "mounted-at.json").exists()  # the marker goes with the server
    for bad in ("nohost:80", "127.0.0.1:99999", "example.com:80"):
        r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "serve", str(store_path), "--http", bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.startswith("dvidfs: error:") and len(r.stderr.splitlines()) == 1


def test_a_body_cut_off_by_a_disconnect_is_never_acted_on(store):
    """A client that announces 1000 bytes and hangs up after 10 must not get a
    10-byte value stored (any prefix of a value is a valid value): the request
    is dropped and the store is unchanged."""
    import socket
    u = store.new_repo("em").root
    store.new_instance(store.node(u), "kv", "keyvalue")
    with served(store) as url:
        host, port = url.removeprefix("http://").split(":")
        before = full_scan(store.engine)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(f"POST /api/node/{u}/kv/key/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                      .encode() + b"0123456789")
            time.sleep(0.3)
        time.sleep(0.5)
        assert requests.get(f"{url}/api/node/{u}/kv/key/k").status_code == 404
        assert full_scan(store.engine) == before
