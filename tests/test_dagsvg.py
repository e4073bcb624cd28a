"""`dvidfs dag --svg`: the version DAG as SVG (dvidfs/dagsvg.py).

The picture is checked as XML: one node element per DAG node, one edge per
parent link (pointing parent -> child), the labels a reader needs (short UUID,
branch, committed/open), and a layout where children sit right of parents."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from dvidfs.core import Dvid
from dvidfs.dagsvg import dag_svg, layout

SVG = "{http://www.w3.org/2000/svg}"


def _session(s: Dvid):
    """README's worked session, version operations only: committed root, open
    branch `edits` committed, branches alice and bob committed, merged."""
    r = s.new_repo("sample", "test")
    root = s.node(r.root)
    s.commit(root, "sample volume")
    edits = s.branch(root, "edits", "demo edits")
    s.commit(edits, "fixed slice 1")
    alice = s.branch(edits, "alice")
    bob = s.branch(edits, "bob")
    s.commit(alice, "done")
    s.commit(bob, "done")
    merged = s.merge([alice, bob], "merge of <alice> & \"bob\"")
    return r, [root, edits, alice, bob, merged]


def _parse(svg: str):
    tree = ET.fromstring(svg)
    nodes = [g for g in tree.iter(f"{SVG}g") if "node" in g.get("class", "").split()]
    edges = [p for p in tree.iter(f"{SVG}path") if p.get("class") == "edge"]
    return tree, nodes, edges


def _texts(g) -> dict[str, str]:
    return {t.get("class"): t.text for t in g.iter(f"{SVG}text")}


def test_one_element_per_node_and_per_parent_link(tmp_path):
    with Dvid(tmp_path / "s", create=True) as s:
        r, made = _session(s)
        nodes = s.repo_nodes(r)
        svg = dag_svg(nodes, title="repo sample")
    tree, gs, edges = _parse(svg)
    assert tree.tag == f"{SVG}svg"
    assert sorted(g.get("data-uuid") for g in gs) == sorted(n.uuid for n in nodes)
    links = sorted((p, n.uuid) for n in nodes for p in n.parents)
    assert len(links) == 5                      # root→edits, edits→alice, edits→bob, alice→m, bob→m
    assert sorted((e.get("data-parent"), e.get("data-child")) for e in edges) == links
    by_uuid = {n.uuid: n for n in nodes}
    for g in gs:
        n = by_uuid[g.get("data-uuid")]
        t = _texts(g)
        assert t["uuid"] == n.uuid[:8]
        state = "committed" if n.locked else "open"
        assert t["branch"].startswith(n.branch_name) and state in t["branch"]
        assert state in g.get("class").split()
        assert n.note in g.find(f"{SVG}title").text      # the note survives escaping
    merged = made[-1]
    assert _texts(next(g for g in gs if g.get("data-uuid") == merged.uuid))["branch"] == "alice · open"
    assert "repo sample" in svg


def test_layout_columns_by_depth_rows_by_branch(tmp_path):
    with Dvid(tmp_path / "s", create=True) as s:
        r, (root, edits, alice, bob, merged) = _session(s)
        where = layout(s.repo_nodes(r))
    assert [where[n.uuid][0] for n in (root, edits, alice, bob, merged)] == [0, 1, 2, 2, 3]
    lanes = {n.branch_name: where[n.uuid][1] for n in (root, edits, alice, bob)}
    assert lanes["master"] == 0 and len(set(lanes.values())) == 4
    assert where[merged.uuid][1] == lanes["alice"]     # the merge node stays on alice's branch


def test_cli_writes_the_svg(tmp_path):
    with Dvid(tmp_path / "s", create=True) as s:
        _session(s)
    out = tmp_path / "dag.svg"
    r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", str(tmp_path / "s"), "dag", "sample",
                        "--svg", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _, gs, edges = _parse(out.read_text())
    assert len(gs) == 5 and len(edges) == 5
    r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", str(tmp_path / "s"), "dag", "sample",
                        "--svg", "-"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == out.read_text()
