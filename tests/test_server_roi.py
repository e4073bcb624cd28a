"""`dvidfs serve` roi endpoints (server/roi.py) over real HTTP.

Masks are compared with a numpy rasterisation of the spans posted, ptquery
with the mask; POST replaces (DVID's), DELETE empties, bad spans are 400 with
nothing changed, writes on committed nodes are 400 while ptquery still answers.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from serving import served
from test_roi import rasterize

SPANS = [[0, 0, 0, 2], [0, 1, 1, 1], [1, 0, 3, 4], [-1, -1, -2, -1]]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    core = Dvid.init(tmp_path_factory.mktemp("roiserve") / "store")
    try:
        root = core.node(core.new_repo("roirepo").root)
        with served(core) as url:
            for name, extra in (("roi", {}), ("small", {"BlockSize": "4,2,3"})):
                r = requests.post(f"{url}/api/repo/{root.uuid}/instance",
                                  json={"typename": "roi", "dataname": name, **extra})
                assert r.status_code == 200 and f"Added {name} [roi]" in r.json()["result"], r.text
            yield core, root, url
    finally:
        core.close()


def test_info_roi_roundtrip_replace_and_delete(srv):
    core, root, url = srv
    base = f"{url}/api/node/{root.uuid}/roi"
    info = requests.get(f"{base}/info").json()
    assert info["Base"]["TypeName"] == "roi" and info["Extended"]["BlockSize"] == [32, 32, 32]
    assert requests.get(f"{url}/api/node/{root.uuid}/small/info").json()["Extended"]["BlockSize"] == [4, 2, 3]
    assert requests.get(f"{base}/roi").json() == []
    assert requests.post(f"{base}/roi", json=SPANS).status_code == 200
    r = requests.get(f"{base}/roi")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == sorted(SPANS)
    assert requests.get(f"{base}/info").json()["Extended"]["MinZ"] == -1
    # POST replaces the ROI (DVID deletes the old spans first)
    assert requests.post(f"{base}/roi", json=[[5, 5, 5, 6]]).status_code == 200
    assert requests.get(f"{base}/roi").json() == [[5, 5, 5, 6]]
    assert requests.delete(f"{base}/roi").status_code == 200
    assert requests.get(f"{base}/roi").json() == []


@pytest.mark.parametrize("body", ['[[0, 0, 3, 2]]', '[[0, 0, 1]]', '[[0, 0, 0, "1"]]', '{"a": 1}', 'not json',
                                  '[[0, 0, 0, 2147483648]]'])
def test_bad_spans_are_400_with_nothing_changed(srv, body):
    core, root, url = srv
    base = f"{url}/api/node/{root.uuid}/small"
    assert requests.post(f"{base}/roi", json=[[1, 1, 1, 1]]).status_code == 200
    r = requests.post(f"{base}/roi", data=body)
    assert r.status_code == 400, r.text
    assert requests.get(f"{base}/roi").json() == [[1, 1, 1, 1]]


def test_mask_and_ptquery(srv):
    core, root, url = srv
    base = f"{url}/api/node/{root.uuid}/small"
    spans = [[0, 0, 0, 2], [0, 1, 1, 1], [1, 0, 3, 4], [-1, -1, -2, -1], [2, 3, -1, 0]]
    assert requests.post(f"{base}/roi", json=spans).status_code == 200
    offset, size = (-9, -3, -4), (30, 12, 14)
    r = requests.get(f"{base}/mask/0_1_2/{size[0]}_{size[1]}_{size[2]}/{offset[0]}_{offset[1]}_{offset[2]}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    got = np.frombuffer(r.content, np.uint8).reshape(size[::-1])
    want = rasterize(spans, (4, 2, 3), offset, size)
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    pts = [[x, y, z] for z in range(-4, 10, 2) for y in range(-3, 9) for x in range(-9, 21, 3)]
    r = requests.post(f"{base}/ptquery", json=pts)
    assert r.status_code == 200
    assert r.json() == [bool(got[z + 4, y + 3, x + 9]) for x, y, z in pts]
    for bad in ("mask/0_1/4_4/0_0", "mask/0_1_2/4_4/0_0_0", "mask/0_1_2/0_4_4/0_0_0", "mask/0_1_2/4_4_4"):
        assert requests.get(f"{base}/{bad}").status_code == 400, bad
    assert requests.post(f"{base}/ptquery", data="[[1, 2]]").status_code == 400
    assert requests.get(f"{base}/ptquery").status_code == 400


def test_committed_node_refuses_writes_but_answers_ptquery(srv):
    core, root, url = srv
    repo = core.new_repo("locked")
    node = core.node(repo.root)
    core.new_instance(node, "r", "roi")
    base = f"{url}/api/node/{node.uuid}/r"
    assert requests.post(f"{base}/roi", json=[[0, 0, 0, 0]]).status_code == 200
    core.commit(node)
    assert requests.post(f"{base}/roi", json=[[1, 1, 1, 1]]).status_code == 400
    assert requests.delete(f"{base}/roi").status_code == 400
    assert requests.get(f"{base}/roi").json() == [[0, 0, 0, 0]]
    r = requests.post(f"{base}/ptquery", json=[[1, 1, 1], [40, 1, 1]])
    assert r.status_code == 200 and r.json() == [True, False]


def test_partition(srv):
    core, root, url = srv
    repo = core.new_repo("part")
    node = core.node(repo.root)
    core.new_instance(node, "p", "roi")
    base = f"{url}/api/node/{node.uuid}/p"
    assert requests.post(f"{base}/roi", json=[[0, 0, 0, 9], [1, 2, 3, 3]]).status_code == 200
    p = requests.get(f"{base}/partition", params={"batchsize": 4}).json()
    assert p["NumSubvolumes"] == 3 and p["NumActiveBlocks"] == 11 and p["NumTotalBlocks"] == 3 * 64
    # z 0..1 and y 0..2 leave remainders 2 and 3: the grid starts one block before the ROI in x, y, z
    assert p["Subvolumes"][0] == {"MinPoint": [-32, -32, -32], "MaxPoint": [95, 95, 95],
                                  "MinChunk": [-1, -1, -1], "MaxChunk": [2, 2, 2], "TotalBlocks": 64,
                                  "ActiveBlocks": 3}
    assert [s["ActiveBlocks"] for s in p["Subvolumes"]] == [3, 5, 3]
    assert p["ROI"] == {"MinChunk": [0, 0, 0], "MaxChunk": [9, 2, 1]}
    assert requests.get(f"{base}/partition").json()["NumActiveBlocks"] == 11        # batchsize 8
    for q in ({"batchsize": 0}, {"batchsize": "x"}, {"batchsize": 4, "optimized": "true"}):
        assert requests.get(f"{base}/partition", params=q).status_code == 400, q
