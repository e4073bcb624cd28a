"""`dvidfs serve` annotation and labelsz endpoints (server/annotation.py) over real HTTP,
and dvidtools' synapse calls against them.

The labels are a numpy volume of a few bodies written through the core; every
label answer is compared with the bodies read off that array at the element
positions (never with our own label query), before and after a body merge.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from serving import served

dvid = pytest.importorskip("dvid", reason="dvidtools is in the test extras")

SIZE = 64                       # volume edge; label blocks 32³


def make_volume() -> np.ndarray:
    """Bodies 1..8: the octants of the volume ([z, y, x])."""
    z, y, x = np.meshgrid(*(np.arange(SIZE) // (SIZE // 2),) * 3, indexing="ij")
    return (1 + x + 2 * y + 4 * z).astype(np.uint64)


def synapses() -> list[dict]:
    rng = np.random.default_rng(3)
    pts = np.unique(rng.integers(0, SIZE, (120, 3)), axis=0)
    out = []
    for i in range(0, len(pts) - 1, 2):
        pre, post = pts[i].tolist(), pts[i + 1].tolist()
        out.append({"Pos": pre, "Kind": "PreSyn", "Tags": ["syn"], "Prop": {"conf": "0.9"},
                    "Rels": [{"Rel": "PreSynTo", "To": post}]})
        out.append({"Pos": post, "Kind": "PostSyn", "Tags": [], "Prop": {},
                    "Rels": [{"Rel": "PostSynTo", "To": pre}]})
    return out


def truth(vol: np.ndarray, elems: list[dict], body: int, kind: str | None = None) -> list[list[int]]:
    return sorted(e["Pos"] for e in elems
                  if int(vol[e["Pos"][2], e["Pos"][1], e["Pos"][0]]) == body and (kind is None or e["Kind"] == kind))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    core = Dvid.init(tmp_path_factory.mktemp("annserve") / "store")
    try:
        root = core.node(core.new_repo("annrepo").root)
        core.new_instance(root, "segmentation", "labels", block_size=32).write(root, (0, 0, 0), make_volume())
        with served(core) as url:
            for typename, name in (("annotation", "synapses"), ("labelsz", "synapses_labelsz")):
                r = requests.post(f"{url}/api/repo/{root.uuid}/instance", json={"typename": typename, "dataname": name})
                assert r.status_code == 200 and f"Added {name} [{typename}]" in r.json()["result"], r.text
            yield core, root, url
    finally:
        core.close()


def test_elements_roundtrip_boxes_blocks_move_delete(srv):
    core, root, url = srv
    core.new_instance(root, "notes", "annotation", block_size=16)
    base = f"{url}/api/node/{root.uuid}/notes"
    info = requests.get(f"{base}/info").json()
    assert info["Base"]["TypeName"] == "annotation" and info["Extended"]["BlockSize"] == [16, 16, 16]
    elems = [{"Pos": [1, 2, 3], "Kind": "Note", "Tags": ["todo"], "Prop": {"user": "a"}, "Rels": []},
             {"Pos": [20, 2, 3], "Kind": "Note", "Tags": [], "Prop": {}, "Rels": []},
             {"Pos": [-5, 40, 3], "Kind": "Note", "Tags": ["todo"], "Prop": {}, "Rels": []}]
    assert requests.post(f"{base}/elements", json=elems).status_code == 200
    r = requests.get(f"{base}/elements/30_10_10/0_0_0")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert sorted(e["Pos"] for e in r.json()) == [[1, 2, 3], [20, 2, 3]]
    assert requests.get(f"{base}/elements/10_10_10/0_0_0").json() == [elems[0]]
    assert requests.get(f"{base}/blocks/10_10_10/0_0_0").json() == {"0,0,0": [elems[0]]}
    assert set(requests.get(f"{base}/all-elements").json()) == {"0,0,0", "1,0,0", "-1,2,0"}
    assert requests.get(f"{base}/element/1_2_3").json() == elems[0]
    assert requests.get(f"{base}/element/9_9_9").status_code == 404
    tagged = requests.get(f"{base}/tag/todo").json()
    assert sorted(e["Pos"] for e in tagged) == [[-5, 40, 3], [1, 2, 3]] and "Rels" not in tagged[0]
    assert "Rels" in requests.get(f"{base}/tag/todo?relationships=true").json()[0]
    assert requests.post(f"{base}/move/1_2_3/33_2_3").status_code == 200
    assert requests.get(f"{base}/element/33_2_3").json()["Tags"] == ["todo"]
    assert requests.post(f"{base}/move/1_2_3/5_5_5").status_code == 400          # nothing there any more
    assert requests.delete(f"{base}/element/33_2_3").status_code == 200
    assert requests.delete(f"{base}/element/33_2_3").status_code == 400          # DVID: 400
    assert sorted(e["Pos"] for e in requests.get(f"{base}/tag/todo").json()) == [[-5, 40, 3]]
    # POST blocks: elements listed under their blocks (a wrong block is refused)
    ok = {"2,2,2": [{"Pos": [40, 40, 40], "Kind": "Note"}]}
    assert requests.post(f"{base}/blocks", json=ok).status_code == 200
    assert requests.post(f"{base}/blocks", json={"0,0,0": [{"Pos": [40, 40, 40]}]}).status_code == 400
    assert requests.get(f"{base}/element/40_40_40").json()["Kind"] == "Note"


@pytest.mark.parametrize("body", ['not json', '{"Pos": [1, 2, 3]}', '[{"Pos": [1, 2, 3], "Kind": "Gland"}]',
                                  '[{"Pos": [1, 2]}]', '[{"Pos": [1, 2, 3]}, {"Pos": "x"}]',
                                  '[{"Pos": [1, 2, 3], "Rels": [{"Rel": "PreSynTo", "To": [1, 2]}]}]'])
def test_bad_elements_are_400_with_nothing_changed(srv, body):
    core, root, url = srv
    if "bad" not in core.instances(root):
        core.new_instance(root, "bad", "annotation")
    base = f"{url}/api/node/{root.uuid}/bad"
    before = requests.get(f"{base}/all-elements").json()
    r = requests.post(f"{base}/elements", data=body)
    assert r.status_code == 400, r.text
    assert requests.get(f"{base}/all-elements").json() == before
    for bad in ("element/1_2", "element/a_b_c", "elements/0_1_1/0_0_0", "move/1_2_3"):
        method = requests.get if bad.startswith("elements") else requests.post if bad.startswith("move") \
            else requests.delete
        assert method(f"{base}/{bad}").status_code == 400, bad


def test_label_queries_labelsz_and_dvidtools(srv):
    core, root, url = srv
    base = f"{url}/api/node/{root.uuid}/synapses"
    elems = synapses()
    assert requests.post(f"{base}/elements", json=elems).status_code == 200
    assert requests.get(f"{base}/label/1").status_code == 400                  # not synced yet
    assert requests.post(f"{base}/sync", json={"sync": "nothere"}).status_code == 400
    assert requests.post(f"{base}/sync", json={"sync": "segmentation"}).status_code == 200
    lsz = f"{url}/api/node/{root.uuid}/synapses_labelsz"
    assert requests.post(f"{lsz}/sync", json={"sync": "segmentation"}).status_code == 400  # not an annotation
    assert requests.post(f"{lsz}/sync", json={"sync": "synapses"}).status_code == 200
    vol = make_volume()
    for body in range(1, 9):
        got = requests.get(f"{base}/label/{body}").json()
        assert sorted(e["Pos"] for e in got) == truth(vol, elems, body)
        assert all("Rels" not in e for e in got)
        pre = requests.get(f"{lsz}/count/{body}/PreSyn").json()
        assert pre == {"Label": body, "PreSyn": len(truth(vol, elems, body, "PreSyn"))}
        # dvidtools, exactly as its users call it
        n = dvid.get_n_synapses(body, server=url, node=root.uuid)
        assert n == {"pre": len(truth(vol, elems, body, "PreSyn")), "post": len(truth(vol, elems, body, "PostSyn"))}
        df = dvid.get_synapses(body, server=url, node=root.uuid)
        assert sorted(map(list, df["Pos"])) == truth(vol, elems, body)
    assert requests.get(f"{base}/label/0").status_code == 400
    assert requests.get(f"{base}/label/99999").json() == []
    rels = requests.get(f"{base}/label/1?relationships=true").json()
    assert rels and all("Rels" in e and len(e["Rels"]) == 1 for e in rels)
    verbose = requests.get(f"{base}/label/1?relationships=verbose").json()
    assert all(r["Kind"] in ("PreSyn", "PostSyn") for e in verbose for r in e["Rels"])
    # dvidtools' connectivity: partners' bodies looked up through the labelmap
    cn = dvid.get_connectivity(1, server=url, node=root.uuid)
    want_down: dict[int, int] = {}
    for e in elems:
        p = e["Pos"]
        if e["Kind"] == "PreSyn" and int(vol[p[2], p[1], p[0]]) == 1:
            t = e["Rels"][0]["To"]
            b = int(vol[t[2], t[1], t[0]])
            if b != 1:                                 # dvidtools leaves out autapses by default
                want_down[b] = want_down.get(b, 0) + 1
    down = cn[cn.relation == "downstream"]
    assert dict(zip(down.bodyid.astype(int), down.n_synapses.astype(int))) == want_down
    # labelsz rankings, from the numpy truth
    counts = {b: len(truth(vol, elems, b)) for b in range(1, 9)}
    top = requests.get(f"{lsz}/top/3/AllSyn").json()
    assert [t["AllSyn"] for t in top] == sorted(counts.values(), reverse=True)[:3]
    assert all(counts[t["Label"]] == t["AllSyn"] for t in top)
    thr = requests.get(f"{lsz}/threshold/1/PostSyn?offset=1&n=2").json()
    assert len(thr) == 2 and thr[0]["PostSyn"] >= thr[1]["PostSyn"]
    r = requests.get(f"{lsz}/counts/PreSyn", json=[1, 2])
    assert r.json() == [{"Label": b, "PreSyn": len(truth(vol, elems, b, "PreSyn"))} for b in (1, 2)]
    assert requests.get(f"{lsz}/count/1/Voxels").json() == {"Label": 1, "Voxels": (SIZE // 2) ** 3}
    assert requests.get(f"{lsz}/count/1/Bogus").status_code == 400
    # a body merge: the label answer follows with no annotation write
    core.data(root, "segmentation").merge(root, 1, [2])
    merged = np.where(vol == 2, np.uint64(1), vol)
    assert sorted(e["Pos"] for e in requests.get(f"{base}/label/1").json()) == truth(merged, elems, 1)
    assert requests.get(f"{base}/label/2").json() == []
    assert dvid.get_n_synapses(1, server=url, node=root.uuid)["pre"] == len(truth(merged, elems, 1, "PreSyn"))


def test_committed_node_refuses_writes_and_still_answers(srv):
    core, root, url = srv
    repo_root = core.node(core.new_repo("locked").root)
    core.new_instance(repo_root, "a", "annotation")
    base = f"{url}/api/node/{repo_root.uuid}/a"
    assert requests.post(f"{base}/elements", json=[{"Pos": [1, 1, 1], "Kind": "Note"}]).status_code == 200
    core.commit(repo_root)
    for method, path, body in (("POST", "elements", [{"Pos": [2, 2, 2]}]), ("DELETE", "element/1_1_1", None),
                               ("POST", "move/1_1_1/2_2_2", None)):
        r = requests.request(method, f"{base}/{path}", json=body)
        assert r.status_code == 400 and "locked" in r.text, (path, r.text)
    assert requests.get(f"{base}/element/1_1_1").json()["Pos"] == [1, 1, 1]
