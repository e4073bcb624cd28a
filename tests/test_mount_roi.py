"""roi instances through a real mount (fs/roi.py): spans.json read and written
with real tools and seen by `dvidfs serve` at the same time, mask slices read
by Pillow, read-only once committed."""
from __future__ import annotations

import errno
import io
import json
import subprocess

import numpy as np
import pytest
import requests
from PIL import Image

from dvidfs.core import Dvid
from mounting import mounted_in_process
from serving import served
from test_roi import rasterize

pytestmark = pytest.mark.mount


def test_spans_and_mask_through_a_real_mount(tmp_path):
    with Dvid.init(tmp_path / "store") as core:
        root = core.node(core.new_repo("em").root)
        core.new_instance(root, "r", "roi", block_size=[4, 4, 4])
        with served(core) as url, mounted_in_process(core, tmp_path / "mnt"):
            d = tmp_path / "mnt" / "em" / root.uuid / "r"
            base = f"{url}/api/node/{root.uuid}/r"
            assert sorted(p.name for p in d.iterdir()) == ["info.json", "mask", "spans.json"]
            assert json.loads((d / "spans.json").read_text()) == []
            # written with the shell: the server answers the new spans
            spans = [[0, 0, 0, 1], [1, 1, 1, 1]]
            r = subprocess.run(["sh", "-c", f"printf '%s' '{json.dumps(spans)}' > {d / 'spans.json'}"],
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert requests.get(f"{base}/roi").json() == spans
            # written over HTTP: the mount shows it (sizes exact)
            spans = [[0, 0, 0, 2], [1, 1, 1, 1], [2, 0, 0, 0]]
            assert requests.post(f"{base}/roi", json=spans).status_code == 200
            text = (d / "spans.json").read_bytes()
            assert json.loads(text) == spans and (d / "spans.json").stat().st_size == len(text)
            names = sorted(p.name for p in (d / "mask" / "xy").iterdir())
            assert names == [f"{z:05d}.png" for z in range(0, 12)]
            for z in (0, 5, 11):
                f = d / "mask" / "xy" / f"{z:05d}.png"
                data = f.read_bytes()
                assert f.stat().st_size == len(data)
                got = np.asarray(Image.open(io.BytesIO(data)))
                want = rasterize(spans, (4, 4, 4), (0, 0, z), (12, 8, 1))[0] * 255
                np.testing.assert_array_equal(got, want)
            # a bad write fails at close and changes nothing
            with pytest.raises(OSError):
                with open(d / "spans.json", "w") as fh:
                    fh.write("[[0, 0, 3, 2]]")
            assert requests.get(f"{base}/roi").json() == spans
            core.commit(root)
            with pytest.raises(OSError) as ei:
                open(d / "spans.json", "w").close()
            assert ei.value.errno == errno.EROFS
            assert json.loads((d / "spans.json").read_text()) == spans
