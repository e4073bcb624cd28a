"""DVID's node tags: a committed child on branch "tag-<name>" that node
references resolve by name — through the core, the `dvidfs` command, the
mount's `.dvid/tag` and `POST /api/node/<uuid>/tag`, on a real LevelDB store."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from dvidfs.errors import ExistsError, InvalidInputError, NotFoundError, ReadOnlyError
from mounting import dvidfs, mounted
from serving import served


@pytest.fixture
def core(tmp_path):
    s = Dvid.init(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()


def _repo(s: Dvid, name: str = "em"):
    """A repo with a committed root holding one written block, and its open child."""
    root = s.node(s.new_repo(name).root)
    gray = s.new_instance(root, "gray", "grayscale", block_size=8)
    gray.write(root, (0, 0, 0), np.full((8, 8, 8), 7, np.uint8))
    s.commit(root, "first")
    return root, s.branch(root)


def test_tag_is_a_committed_child_on_its_tag_branch(core):
    root, child = _repo(core)
    t = core.tag(root, "v1.0", note="the first release")
    assert t.locked and t.tag == "v1.0" and t.branch_name == "tag-v1.0"
    assert t.parents == [root.uuid] and t.uuid in root.children
    assert t.note == "the first release" and core.node_info(t)["Tag"] == "v1.0"
    assert core.tag(root, "plain").note == f"Tag of version {root.uuid} with 'plain'"   # DVID's note
    # it reads as the tagged version, and nothing can write it
    gray = core.data(t, "gray")
    assert np.array_equal(gray.read(core.view(t), (0, 0, 0), (8, 8, 8)), np.full((8, 8, 8), 7, np.uint8))
    with pytest.raises(ReadOnlyError):
        gray.write(t, (0, 0, 0), np.zeros((1, 1, 1), np.uint8))
    # the branch tips and master are unchanged
    assert core.node("em").uuid == child.uuid
    assert core.tags() == {"v1.0": t, "plain": core.node("plain")}


def test_tag_resolves_as_a_node_reference(tmp_path):
    with Dvid.init(tmp_path / "store") as core:
        t, root = _resolve_refs(core)
    with Dvid(tmp_path / "store") as again:   # the name is in the node record: it survives a reopen
        assert again.node("v1").uuid == t.uuid and again.node("v1~1").uuid == root.uuid


def _resolve_refs(core):
    root, child = _repo(core)
    t = core.tag(root, "v1")
    assert core.node("v1") is t
    assert core.node("v1~1") is root                 # the tagged version
    assert core.node("em:v1") is t                   # repo:tag, as repo:branch
    assert core.node(":v1") is t                     # one repo: :tag
    assert core.node(":tag-v1") is t                 # the tag's branch, DVID's name for it
    assert core.node(f"{root.uuid[:6]}:v1") is t     # prefix:tag
    # a second repo: tags are unique in the store, and `:name` looks in the named repo only
    other_root, _ = _repo(core, "other")
    with pytest.raises(ExistsError):
        core.tag(other_root, "v1")
    with pytest.raises(NotFoundError):
        core.node("other:v1")
    with pytest.raises(NotFoundError):
        core.node("v1", repo=core.repo("other"))
    return t, root


def test_tag_refusals_change_nothing(core):
    root, child = _repo(core)
    n = len(core.repo_nodes(core.repo("em")))
    for bad, err in ((child, "v2"), (root, "abc123"), (root, ""), (root, "a/b"), (root, "em")):
        with pytest.raises((InvalidInputError, ReadOnlyError, ExistsError)):
            core.tag(bad, err)
    core.tag(root, "v2")
    with pytest.raises(ExistsError):
        core.tag(root, "v2")
    with pytest.raises(ExistsError):
        core.new_repo("v2")                          # a repo name would shadow the tag
    assert len(core.repo_nodes(core.repo("em"))) == n + 1


def test_cli_tag_and_refs(tmp_path):
    p = tmp_path / "store"
    with Dvid.init(p) as s:
        root, _ = _repo(s)
    r = dvidfs("-s", p, "tag", root.uuid[:8], "release-1", "--note", "ok")
    tag_uuid = r.stdout.strip()
    assert len(tag_uuid) == 32
    assert f'"UUID": "{tag_uuid}"' in dvidfs("-s", p, "info", "release-1").stdout
    assert "[tag release-1]" in dvidfs("-s", p, "log", "release-1").stdout
    r = dvidfs("-s", p, "tag", "em", "release-2", check=False)   # em = the open master tip
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "commit it before tagging" in r.stderr


def test_mount_tag_control_file(tmp_path):
    p = tmp_path / "store"
    with Dvid.init(p) as s:
        root, child = _repo(s)
    mnt = tmp_path / "mnt"
    with mounted(p, mnt):
        (mnt / "em" / root.uuid / ".dvid" / "tag").write_text("v9\n")
        assert os.path.islink(mnt / "em" / "tag-v9") and os.path.islink(mnt / "em" / "v9")
        tagged = os.readlink(mnt / "em" / "tag-v9")
        assert os.readlink(mnt / "em" / "v9") == tagged and "v9" in os.listdir(mnt / "em")
        assert (mnt / "em" / "v9" / "gray" / "xy" / "00000.png").stat().st_size > 0
        with open(mnt / "em" / tagged / ".dvid" / "info.json") as f:
            assert '"Tag": "v9"' in f.read()
        with pytest.raises(OSError) as ei:                       # open node: refused
            (mnt / "em" / child.uuid / ".dvid" / "tag").write_text("v10\n")
        assert ei.value.errno == errno.EINVAL
        assert "commit it before tagging" in (mnt / "em" / child.uuid / ".dvid" / "last-error").read_text()
    with Dvid(p) as s:
        assert s.node("v9").uuid == tagged and s.node("v9~1").uuid == root.uuid


def test_http_tag(core):
    root, child = _repo(core)
    with served(core) as url:
        r = requests.post(f"{url}/api/node/{root.uuid[:8]}/tag", json={"tag": "v1", "note": "n"})
        assert r.status_code == 200, r.text
        t = r.json()["child"]
        assert core.node("v1").uuid == t
        # the tag works wherever a UUID does
        info = requests.get(f"{url}/api/node/v1/gray/info").json()
        assert info["Base"]["Name"] == "gray"
        raw = requests.get(f"{url}/api/node/v1/gray/raw/0_1_2/8_8_8/0_0_0").content
        assert raw == bytes([7]) * 512
        assert requests.post(f"{url}/api/node/{child.uuid}/tag", json={"tag": "v2"}).status_code == 400
        assert requests.post(f"{url}/api/node/{root.uuid}/tag", json={}).status_code == 400
        assert requests.post(f"{url}/api/node/{root.uuid}/tag", json={"tag": "v1"}).status_code == 400
