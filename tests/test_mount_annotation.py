"""annotation instances through a real mount (fs/annotation.py): elements.jsonl read with
cat and appended to with the shell, tags/ and labels/ listed and read, all seen by
`dvidfs serve` at the same time; bad lines and committed nodes refused."""
from __future__ import annotations

import errno
import json
import subprocess

import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from mounting import mounted_in_process
from serving import served

pytestmark = pytest.mark.mount


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)


def test_elements_tags_and_labels_through_a_real_mount(tmp_path):
    with Dvid.init(tmp_path / "store") as core:
        root = core.node(core.new_repo("em").root)
        vol = np.ones((16, 16, 16), np.uint64)
        vol[:, :, 8:] = 2                                   # body 1: x < 8, body 2: x >= 8
        core.new_instance(root, "seg", "labels", block_size=8).write(root, (0, 0, 0), vol)
        core.new_instance(root, "syn", "annotation", block_size=8)
        with served(core) as url, mounted_in_process(core, tmp_path / "mnt"):
            d = tmp_path / "mnt" / "em" / root.uuid / "syn"
            base = f"{url}/api/node/{root.uuid}/syn"
            assert sorted(p.name for p in d.iterdir()) == ["elements.jsonl", "info.json", "tags"]
            assert (d / "elements.jsonl").read_bytes() == b""
            # appended with the shell: the server has them
            lines = [{"Pos": [1, 2, 3], "Kind": "PreSyn", "Tags": ["syn"]},
                     {"Pos": [12, 2, 3], "Kind": "PostSyn", "Tags": ["syn", "checked"],
                      "Rels": [{"Rel": "PostSynTo", "To": [1, 2, 3]}]}]
            for line in lines:
                r = sh(f"printf '%s\\n' '{json.dumps(line)}' >> {d / 'elements.jsonl'}")
                assert r.returncode == 0, r.stderr
            got = requests.get(f"{base}/all-elements").json()
            assert sorted(e["Pos"] for es in got.values() for e in es) == [[1, 2, 3], [12, 2, 3]]
            # written over HTTP: cat shows it, with an exact size
            assert requests.post(f"{base}/elements", json=[{"Pos": [5, 5, 5], "Kind": "Note"}]).status_code == 200
            text = (d / "elements.jsonl").read_bytes()
            assert (d / "elements.jsonl").stat().st_size == len(text)
            elems = [json.loads(x) for x in text.splitlines()]
            assert sorted(e["Pos"] for e in elems) == [[1, 2, 3], [5, 5, 5], [12, 2, 3]]
            assert next(e for e in elems if e["Pos"] == [12, 2, 3])["Rels"] == lines[1]["Rels"]
            # a bad line fails the write (EINVAL) and stores nothing, the good line before it neither
            with pytest.raises(OSError) as ei:
                with open(d / "elements.jsonl", "a") as fh:
                    fh.write(json.dumps({"Pos": [7, 7, 7]}) + "\n" + '{"Pos": [1, 2], "Kind": "PreSyn"}\n')
            assert ei.value.errno == errno.EINVAL
            assert (d / "elements.jsonl").read_bytes() == text
            assert "elements.jsonl: line 5: Pos [1, 2] is not" in (d.parent / ".dvid" / "last-error").read_text()
            # tags
            assert sorted(p.name for p in (d / "tags").iterdir()) == ["checked.json", "syn.json"]
            assert [e["Pos"] for e in json.loads((d / "tags" / "syn.json").read_text())] == [[1, 2, 3], [12, 2, 3]]
            # labels/ appears with the sync; bodies from the voxels
            assert requests.post(f"{base}/sync", json={"sync": "seg"}).status_code == 200
            assert sorted(p.name for p in d.iterdir()) == ["elements.jsonl", "info.json", "labels", "tags"]
            assert sorted(p.name for p in (d / "labels").iterdir()) == ["1.json", "2.json"]
            one = (d / "labels" / "1.json").read_text()
            assert sorted(e["Pos"] for e in json.loads(one)) == [[1, 2, 3], [5, 5, 5]]
            assert (d / "labels" / "1.json").stat().st_size == len(one.encode())
            assert not (d / "labels" / "3.json").exists()
            core.data(root, "seg").merge(root, 1, [2])
            assert sorted(e["Pos"] for e in json.loads((d / "labels" / "1.json").read_text())) == \
                [[1, 2, 3], [5, 5, 5], [12, 2, 3]]
            # .dvid/newdata makes annotation instances too
            with open(tmp_path / "mnt" / "em" / root.uuid / ".dvid" / "newdata", "w") as fh:
                fh.write("annotation bookmarks 16\n")
            assert core.data(root, "bookmarks").block_size == 16
            assert (tmp_path / "mnt" / "em" / root.uuid / "bookmarks" / "elements.jsonl").read_bytes() == b""
            # committed: read-only
            core.commit(root)
            with pytest.raises(OSError) as ei:
                open(d / "elements.jsonl", "a").close()
            assert ei.value.errno == errno.EROFS
            assert (d / "elements.jsonl").read_bytes() == text
