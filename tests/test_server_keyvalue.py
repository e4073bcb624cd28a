"""`dvidfs serve` keyvalue endpoints (server/keyvalue.py) over real HTTP.

Every answer is compared with the Python bytes that were put: ranges with
slicing, JSON with `json`, tar with `tarfile`, protobuf with Google's own
protobuf library (message classes built from DVID's .proto definitions here),
so none of our encoders checks itself.  Also: DVID's status codes (404 for an
absent key, 206/416 for ranges, 400 for the rest), writes refused on committed
nodes with nothing changed, and dvidtools' keyvalue calls (annotations,
meshes, skeletons) against the server.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import warnings

import pytest
import requests
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dvidfs.core import Dvid
from serving import served

MIB = 1 << 20


# ---------------------------------------------------------------- DVID's protobuf messages
def _messages():
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="dvid_kv_test.proto", package="dvidkvtest", syntax="proto3")
    for name, fields in (("KeyValue", [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                                       ("value", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None)]),
                         ("KeyValues", [("kvs", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".dvidkvtest.KeyValue")]),
                         ("KeyRange", [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                                       ("byte_start", 2, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
                                       ("byte_end", 3, F.TYPE_UINT64, F.LABEL_OPTIONAL, None)]),
                         ("Keys", [("keys", 1, F.TYPE_STRING, F.LABEL_REPEATED, None),
                                   ("key_ranges", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".dvidkvtest.KeyRange")])):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, tname in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if tname:
                f.type_name = tname
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"dvidkvtest.{n}"))
            for n in ("KeyValues", "Keys")}


PB = _messages()


def _kvs(content: bytes) -> list[tuple[str, bytes]]:
    msg = PB["KeyValues"]()
    msg.ParseFromString(content)
    return [(kv.key, kv.value) for kv in msg.kvs]


# ---------------------------------------------------------------- fixture
VALUES = {
    "a": b'{"name": "alpha"}',
    "ab": b"[1, 2, 3]",
    "b": b'"text"',
    "big": os.urandom(3 * MIB + 11),
    "empty": b"",
    "n": b"42",
    "zz \u00e9": b'{"x": null}',
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    core = Dvid.init(tmp_path_factory.mktemp("kvserve") / "store")
    try:
        root = core.node(core.new_repo("kvrepo").root)
        with served(core) as url:
            r = requests.post(f"{url}/api/repo/{root.uuid}/instance", json={"typename": "keyvalue",
                                                                            "dataname": "kv"})
            assert r.status_code == 200 and "Added kv [keyvalue]" in r.json()["result"], r.text
            base = f"{url}/api/node/{root.uuid}/kv"
            for k, v in VALUES.items():
                assert requests.post(f"{base}/key/{k}", data=v).status_code == 200
            yield core, root, url, base
    finally:
        core.close()


def _kv_url(url, node, inst="kv"):
    return f"{url}/api/node/{node}/{inst}"


# ---------------------------------------------------------------- instance
def test_instance_info_and_creation(srv):
    core, root, url, base = srv
    info = requests.get(f"{base}/info").json()
    assert info["Base"]["TypeName"] == "keyvalue" and info["Base"]["Name"] == "kv"
    assert info["Extended"] == {}
    assert "kv" in requests.get(f"{url}/api/repos/info").json()[root.uuid]["DataInstances"]
    assert requests.get(f"{base}/help").status_code == 200
    assert requests.get(f"{base}/tags").json() == {"Tags": {}}
    r = requests.post(f"{url}/api/repo/{root.uuid}/instance",
                      json={"typename": "keyvalue", "dataname": "kvbad", "BlockSize": "64"})
    assert r.status_code == 400 and "kvbad" not in core.instances(root)
    assert requests.get(f"{base}/nosuchendpoint").status_code == 400


# ---------------------------------------------------------------- key
def test_key_get_head_post_delete_and_404(srv):
    core, root, url, base = srv
    for k, v in VALUES.items():
        r = requests.get(f"{base}/key/{k}")
        assert r.status_code == 200 and r.content == v, k
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert requests.head(f"{base}/key/{k}").status_code == 200
    assert requests.get(f"{base}/key/absent").status_code == 404
    assert requests.head(f"{base}/key/absent").status_code == 404
    assert requests.post(f"{base}/key/tmp", data=b"1").status_code == 200
    assert requests.delete(f"{base}/key/tmp").status_code == 200
    assert requests.get(f"{base}/key/tmp").status_code == 404
    assert requests.delete(f"{base}/key/never-there").status_code == 200     # as DVID
    # keys with "/" (in any spelling) or too long are 400 and store nothing
    for bad in ("x%2Fy", "x/y", "k" * 1025):
        assert requests.post(f"{base}/key/{bad}", data=b"v").status_code == 400, bad
    assert requests.get(f"{base}/key").status_code == 400
    assert requests.get(f"{base}/keys").json() == sorted(VALUES, key=str.encode)


@pytest.mark.parametrize("header, status, lo, hi", [
    ("bytes=0-9", 206, 0, 9),
    ("bytes=1048570-1048585", 206, 1048570, 1048585),     # across a chunk border
    ("bytes=5-", 206, 5, None),
    ("bytes=-5", 206, -5, None),
    ("bytes=100-99999999999", 206, 100, None),             # end clamped
    ("bytes=-99999999999", 206, 0, None),
    ("bytes=5-3", 200, None, None),                         # ignored, as DVID
    ("bytes=0-1,4-5", 200, None, None),
    ("bytes=a-b", 200, None, None),
    ("items=0-5", 200, None, None),
    (f"bytes={3 * MIB + 11}-", 416, None, None),
    ("bytes=-0", 416, None, None),
])
def test_range_header(srv, header, status, lo, hi):
    _, _, _, base = srv
    big = VALUES["big"]
    r = requests.get(f"{base}/key/big", headers={"Range": header})
    assert r.status_code == status, r.text
    assert r.headers.get("Accept-Ranges", "bytes") == "bytes"
    if status == 416:
        assert r.headers["Content-Range"] == f"bytes */{len(big)}"
        return
    want = big if lo is None else big[lo:] if hi is None else big[lo:hi + 1]
    assert r.content == want
    if status == 206:
        start = lo % len(big) if lo is not None else 0
        assert r.headers["Content-Range"] == f"bytes {start}-{start + len(want) - 1}/{len(big)}"


def test_range_of_empty_value_and_byte_start_end(srv):
    _, _, _, base = srv
    r = requests.get(f"{base}/key/empty", headers={"Range": "bytes=0-0"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */0"
    big = VALUES["big"]
    r = requests.get(f"{base}/key/big?byte_start=1048575&byte_end=1048580")
    assert r.status_code == 200 and r.content == big[1048575:1048581]
    for q in ("byte_start=3", "byte_end=3", "byte_start=5&byte_end=4", f"byte_start=0&byte_end={len(big)}",
              "byte_start=x&byte_end=3"):
        assert requests.get(f"{base}/key/big?{q}").status_code == 400, q
    r = requests.get(f"{base}/key/big?byte_start=0&byte_end=1", headers={"Range": "bytes=0-1"})
    assert r.status_code == 400


# ---------------------------------------------------------------- listings and batches
def test_keys_and_keyrange(srv):
    _, _, _, base = srv
    order = sorted(VALUES, key=str.encode)
    assert requests.get(f"{base}/keys").json() == order
    assert requests.get(f"{base}/keyrange/a/b").json() == ["a", "ab", "b"]
    assert requests.get(f"{base}/keyrange/aa/bz").json() == ["ab", "b", "big"]     # bounds need not exist
    assert requests.get(f"{base}/keyrange/z/a").json() == []
    assert requests.get(f"{base}/keyrange/a").status_code == 400


def test_keyrangevalues_json_tar_protobuf(srv):
    _, _, _, base = srv
    r = requests.get(f"{base}/keyrangevalues/a/b?json=true")
    assert r.status_code == 200
    assert r.json() == {k: json.loads(VALUES[k]) for k in ("a", "ab", "b")}
    # a value that is not JSON: 400 naming the key; check=false sends it as it is (DVID's default)
    r = requests.get(f"{base}/keyrangevalues/a/big?json=true")
    assert r.status_code == 400 and "big" in r.text
    assert requests.get(f"{base}/keyrangevalues/empty/n?json=true").json() == {"empty": {}, "n": 42}
    r = requests.get(f"{base}/keyrangevalues/b/big?tar=true")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        assert [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()] == \
            [("b", VALUES["b"]), ("big", VALUES["big"])]
    r = requests.get(f"{base}/keyrangevalues/a/zzz")
    assert r.status_code == 200 and _kvs(r.content) == [(k, VALUES[k]) for k in sorted(VALUES, key=str.encode)]
    assert requests.get(f"{base}/keyrangevalues/a/b?json=true&tar=true").status_code == 400


def test_get_keyvalues_json_tar_protobuf(srv):
    _, _, _, base = srv
    r = requests.get(f"{base}/keyvalues?json=true", data=json.dumps(["n", "missing", "a"]))
    assert r.status_code == 200 and r.json() == {"n": 42, "missing": {}, "a": {"name": "alpha"}}
    # per-key byte ranges; ranged JSON values must still be JSON
    r = requests.get(f"{base}/keyvalues?json=true", data=json.dumps([{"key": "ab", "byte_start": 0, "byte_end": 8},
                                                                     {"key": "n"}]))
    assert r.status_code == 200 and r.json() == {"ab": [1, 2, 3], "n": 42}
    r = requests.get(f"{base}/keyvalues?json=true", data=json.dumps([{"key": "ab", "byte_start": 0, "byte_end": 1}]))
    assert r.status_code == 400
    assert requests.get(f"{base}/keyvalues?json=true",
                        data=json.dumps([{"key": "ab", "byte_start": 0}])).status_code == 400
    assert requests.get(f"{base}/keyvalues?json=true", data=b"[1, 2").status_code == 400
    for flag in ("tar=true", "jsontar=true"):
        r = requests.get(f"{base}/keyvalues?{flag}", data=json.dumps(["big", "missing", "b"]))
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
            assert [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()] == \
                [("big", VALUES["big"]), ("missing", b""), ("b", VALUES["b"])]
    keys = PB["Keys"]()
    keys.keys.extend(["b", "missing"])
    rng = keys.key_ranges.add()
    rng.key, rng.byte_start, rng.byte_end = "big", MIB - 2, MIB + 2
    r = requests.get(f"{base}/keyvalues", data=keys.SerializeToString())
    assert r.status_code == 200
    assert _kvs(r.content) == [("b", VALUES["b"]), ("missing", b""), ("big", VALUES["big"][MIB - 2:MIB + 3])]
    assert requests.get(f"{base}/keyvalues", data=b"\xff\xff\xff").status_code == 400


def test_post_keyvalues_is_atomic(srv):
    core, root, url, base = srv
    msg = PB["KeyValues"]()
    for k, v in (("p1", b"one"), ("p2", os.urandom(2 * MIB)), ("p3", b"")):
        kv = msg.kvs.add()
        kv.key, kv.value = k, v
    assert requests.post(f"{base}/keyvalues", data=msg.SerializeToString()).status_code == 200
    for kv in msg.kvs:
        assert requests.get(f"{base}/key/{kv.key}").content == kv.value
    bad = PB["KeyValues"]()
    for k in ("q1", "q/2"):
        kv = bad.kvs.add()
        kv.key, kv.value = k, b"x"
    assert requests.post(f"{base}/keyvalues", data=bad.SerializeToString()).status_code == 400
    assert requests.get(f"{base}/key/q1").status_code == 404      # nothing of the batch was written
    r = requests.post(f"{base}/keyvalues?json=true", json={"j1": {"a": [1, 2]}, "j2": "s"})
    assert r.status_code == 200
    assert requests.get(f"{base}/key/j1").json() == {"a": [1, 2]} and requests.get(f"{base}/key/j2").json() == "s"
    for k in ("p1", "p2", "p3", "j1", "j2"):
        assert requests.delete(f"{base}/key/{k}").status_code == 200


# ---------------------------------------------------------------- versions
def test_branches_and_locked_nodes(srv):
    core, root, url, base = srv
    scratch = core.node(core.new_repo("kvscratch").root)
    core.new_instance(scratch, "kv", "keyvalue")
    b0 = _kv_url(url, scratch.uuid)
    assert requests.post(f"{b0}/key/k", data=b"root").status_code == 200
    assert requests.post(f"{url}/api/node/{scratch.uuid}/commit", json={"note": "x"}).status_code == 200
    before = list(core.engine.scan(b"", b"\xff" * 8))
    for r in (requests.post(f"{b0}/key/k", data=b"no"), requests.delete(f"{b0}/key/k"),
              requests.post(f"{b0}/keyvalues", data=b"")):
        assert r.status_code == 400 and "locked" in r.text
    assert list(core.engine.scan(b"", b"\xff" * 8)) == before
    child = requests.post(f"{url}/api/node/{scratch.uuid}/branch", json={"branch": "side"}).json()["child"]
    b1 = _kv_url(url, child)
    assert requests.get(f"{b1}/key/k").content == b"root"
    assert requests.delete(f"{b1}/key/k").status_code == 200
    assert requests.post(f"{b1}/key/new", data=b"side").status_code == 200
    assert requests.get(f"{b1}/keys").json() == ["new"] and requests.get(f"{b0}/keys").json() == ["k"]
    assert requests.get(f"{b1}/key/k").status_code == 404 and requests.get(f"{b0}/key/k").content == b"root"
    assert requests.get(f"{url}/api/node/{scratch.uuid}:side/kv/key/new").content == b"side"


# ---------------------------------------------------------------- dvidtools
dvid = pytest.importorskip("dvid", reason="dvidtools is in the test extras")


def test_dvidtools_annotations_meshes_and_skeletons(srv):
    core, root, url, _ = srv
    for name in ("segmentation_annotations", "segmentation_meshes", "segmentation_meshes_mutid",
                 "segmentation_skeletons"):
        core.new_instance(root, name, "keyvalue")
    node = root.uuid
    assert dvid.get_annotation(1234, server=url, node=node, verbose=False) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Adding new annotation(s)": what a first edit says
        dvid.edit_annotation(1234, {"status": "Traced", "name": "LC4"}, server=url, node=node)
    assert dvid.get_annotation(1234, server=url, node=node) == {"status": "Traced", "name": "LC4"}
    dvid.edit_annotation(1234, {"status": "Roughly traced"}, server=url, node=node)
    want = {"status": "Roughly traced", "name": "LC4"}
    assert dvid.get_annotation("1234", server=url, node=node) == want
    assert json.loads(core.data(root, "segmentation_annotations").get(root, "1234")) == want

    # a mesh in neuroglancer's legacy format, and a skeleton as SWC
    verts = [(0.0, 0.0, 0.0), (8.0, 0.0, 0.0), (0.0, 8.0, 0.0), (0.0, 0.0, 8.0)]
    faces = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
    ngmesh = struct.pack("<I", 4) + b"".join(struct.pack("<3f", *v) for v in verts) + \
        b"".join(struct.pack("<3I", *f) for f in faces)
    meshes = core.data(root, "segmentation_meshes")
    meshes.put(root, "1234.ngmesh", ngmesh)
    core.data(root, "segmentation_meshes_mutid").put(root, "1234", b"1000000077")
    assert list(dvid.has_mesh([1234, 99], server=url, node=node, progress=False)) == [True, False]
    (m,) = dvid.get_meshes(1234, output="trimesh", progress=False, server=url, node=node)
    assert m.vertices.tolist() == [list(v) for v in verts] and m.faces.tolist() == [list(f) for f in faces]
    assert m.mutation_id == 1000000077
    swc = "# {\"mutation id\": 5}\n1 0 10 20 30 2 -1\n2 0 11 21 31 2 1\n3 0 12 22 32 1 2\n"
    core.data(root, "segmentation_skeletons").put(root, "1234_swc", swc.encode())
    assert list(dvid.has_skeleton([1234, 99], server=url, node=node, progress=False)) == [True, False]
    (sk,) = dvid.get_skeletons(1234, output="pandas", progress=False, server=url, node=node)
    assert sk[["x", "y", "z"]].values.tolist() == [[10, 20, 30], [11, 21, 31], [12, 22, 32]]
    assert sk.mutation_id == 5
