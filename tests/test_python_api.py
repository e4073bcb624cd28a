"""The README's Python API example (issue 15), run exactly as written.

EXAMPLE is the code of the README's "Python API" section.  It runs in a fresh
interpreter from an empty directory, as a user pasting it would.  Once the
README has that section, its ```python block must be this code character for
character, so the README cannot drift from what is tested here."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = '''\
import numpy as np
from dvidfs.core import Dvid

with Dvid("em-store", create=True) as store:         # a new store directory; Dvid("em-store") opens it again
    store.new_repo("em")
    node = store.node("em")                          # any node reference the CLI takes: UUID prefix, em:master, …
    gray = store.new_instance(node, "gray", "grayscale", voxel_size=(8, 8, 30))
    seg = store.new_instance(node, "seg", "labels")  # store.data(node, "gray") gets an existing instance
    vol = np.random.default_rng(0).integers(0, 256, (16, 64, 64), dtype=np.uint8)   # numpy order: [z, y, x]
    gray.write(node, (0, 0, 0), vol)                 # offsets and sizes are x, y, z
    seg.write(node, (0, 0, 0), (vol // 64 + 1).astype(np.uint64))
    box = gray.read(node, (8, 8, 4), (32, 16, 8))    # a [z, y, x] array of 8 x 16 x 32 voxels
    assert (box == vol[4:12, 8:24, 8:40]).all()
    print(seg.read(node, (0, 0, 0), (64, 64, 16)).max(), seg.size(node, 4))   # body ids, a body's voxel count
    store.commit(node, "first voxels")               # node is read-only from now on
    edits = store.branch(node, "edits")              # a new open node on branch "edits"
    gray.write(edits, (0, 0, 0), np.zeros((1, 1, 4), np.uint8))
    print(gray.read(node, (0, 0, 0), (4, 1, 1)).ravel(), gray.read(edits, (0, 0, 0), (4, 1, 1)).ravel())
'''


def _readme_example() -> str | None:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Python API\b.*?^```python\n(.*?)^```", text, re.S | re.M)
    return m.group(1) if m else None


def test_readme_python_api_example_runs(tmp_path):
    readme = _readme_example()
    if readme is not None:   # the section is in the README: it is this code
        assert readme == EXAMPLE
    r = subprocess.run([sys.executable, "-c", EXAMPLE], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.split()[0] == "4" and int(first.split()[1]) > 0
    committed, edited = second.split("] [")
    assert edited.rstrip("]") == "0 0 0 0" and committed.lstrip("[") != "0 0 0 0"
    assert (tmp_path / "em-store").is_dir()


def test_public_reads_take_a_node(store, root):
    """Every public read of grayscale and labels takes the Node people have in
    hand as well as a VersionView (`vol.read(node, …)` first failed)."""
    import numpy as np
    gray = store.new_instance(root, "g", "grayscale", block_size=8)
    seg = store.new_instance(root, "s", "labels", block_size=8)
    src = (np.arange(8 * 8 * 16).reshape(8, 8, 16) % 3 + 1).astype(np.uint64)
    gray.write(root, (0, 0, 0), src.astype(np.uint8))
    seg.write(root, (0, 0, 0), src)
    view = store.view(root)
    for obj in (gray, seg):
        assert obj.info(root) == obj.info(view)
        assert obj.extents(root) == obj.extents(view)
        np.testing.assert_array_equal(obj.read(root, (0, 0, 0), (16, 8, 8)), obj.read(view, (0, 0, 0), (16, 8, 8)))
        np.testing.assert_array_equal(obj.read_slice(root, "yz", 2), obj.read_slice(view, "yz", 2))
        assert obj.pyramid_levels(root) == obj.pyramid_levels(view)
    assert seg.max_label(root) == seg.max_label(view) == 3
    assert seg.mapping(root) is seg.mapping(view)
    assert seg.info(root)["Extended"]["MaxLabel"] == 3
    assert seg.sizes(root, [1, 2]) == seg.sizes(view, [1, 2])
    assert seg.labels_at(root, [(0, 0, 0)]) == seg.labels_at(view, [(0, 0, 0)])
