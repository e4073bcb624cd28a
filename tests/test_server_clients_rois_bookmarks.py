"""dvidtools' ROI and bookmark calls against `dvidfs serve` (issue 12's client list).

What dvidtools 1.x sends (dvid/fetch.py), and what answers it here:

* `get_available_rois`: GET `rois/keys` — a keyvalue instance named `rois`;
* `get_roi(name, form='MESH')`: GET `rois/key/<name>` (JSON `{"->": {"key": K}}`),
  then GET `roi_data/key/K` (an OBJ mesh) — two keyvalue instances;
* `get_roi(name, form='BLOCKS'|'VOXELS')`: GET `<name>/roi` — an roi instance;
* `add_bookmarks` / `get_user_bookmarks`: POST `bookmark_annotations/elements`,
  GET `bookmark_annotations/tag/user:<user>` — an annotation instance.

Each answer is compared with what was put in (spans, the mesh's vertices, the
bookmark dicts), and the bookmarks also with the core's own view of them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dvidfs.core import Dvid
from serving import served

dvid = pytest.importorskip("dvid", reason="dvidtools is in the test extras")

SPANS = [[0, 0, 0, 2], [0, 1, 1, 1], [1, 0, 0, 0], [2, 3, 4, 6]]      # [z, y, x0, x1] in 32³ blocks
OBJ = "v 0 0 0\nv 32 0 0\nv 0 32 0\nv 0 0 32\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    core = Dvid.init(tmp_path_factory.mktemp("dvidtools") / "store")
    try:
        root = core.node(core.new_repo("em").root)
        roi = core.new_instance(root, "alpha_lobe", "roi", block_size=32)
        roi.put_spans(root, SPANS)
        rois = core.new_instance(root, "rois", "keyvalue")
        rois.put(root, "alpha_lobe", json.dumps({"->": {"type": "obj", "key": "alpha_lobe.obj"}}).encode())
        rois.put(root, "beta_lobe", json.dumps({"->": {"type": "obj", "key": "beta_lobe.obj"}}).encode())
        core.new_instance(root, "roi_data", "keyvalue").put(root, "alpha_lobe.obj", OBJ.encode())
        core.new_instance(root, "bookmark_annotations", "annotation")
        with served(core) as url:
            yield core, root, url
    finally:
        core.close()


def test_rois_listed_as_blocks_voxels_and_mesh(srv):
    core, root, url = srv
    kw = {"server": url, "node": root.uuid}
    assert sorted(dvid.get_available_rois(**kw)) == ["alpha_lobe", "beta_lobe"]
    blocks = dvid.get_roi("alpha_lobe", form="BLOCKS", **kw)
    assert blocks.tolist() == sorted(SPANS)
    # VOXELS: dvidtools expands the spans itself; every block named must be there
    voxels = np.asarray(dvid.get_roi("alpha_lobe", form="VOXELS", **kw))
    want = {(x, y, z) for z, y, x0, x1 in SPANS for x in range(x0, x1 + 1)}
    assert {tuple(v) for v in voxels.tolist()} == want
    mesh = dvid.get_roi("alpha_lobe", form="MESH", **kw)
    assert mesh.vertices.tolist() == [[0, 0, 0], [32, 0, 0], [0, 32, 0], [0, 0, 32]]
    assert len(mesh.faces) == 4


def test_bookmarks_added_then_read_back_per_user(srv):
    core, root, url = srv
    kw = {"server": url, "node": root.uuid}
    marks = []
    for i, user in enumerate(("alice", "alice", "bob")):
        marks.append({"Pos": [100 + i, 200, 300 - i], "Kind": "Note", "Tags": [f"user:{user}"],
                      "Prop": {"body ID": str(1000 + i), "comment": f"mark {i}", "custom": "1", "status": "",
                               "time": "", "type": "Other", "user": user}})
    dvid.add_bookmarks(marks, **kw)
    got = dvid.get_user_bookmarks(user="alice", return_dataframe=False, **kw)
    assert sorted((g["Pos"], g["Prop"]["comment"]) for g in got) == [([100, 200, 300], "mark 0"),
                                                                     ([101, 200, 299], "mark 1")]
    frame = dvid.get_user_bookmarks(user="bob", **kw)
    assert frame["comment"].tolist() == ["mark 2"] and frame["body ID"].tolist() == ["1002"]
    stored = core.data(root, "bookmark_annotations").all_elements(root)
    assert sorted(e["Pos"] for e in stored) == sorted(m["Pos"] for m in marks)
    assert all(e["Prop"] == m["Prop"] for e in stored for m in marks if m["Pos"] == e["Pos"])
