"""Open mounted slices in ImageJ (Debian's package, on a virtual X screen) the way
Fiji users do — File > Import > Image Sequence, sorted, as a virtual stack — and
compare what ImageJ reports with numpy."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from dvidfs.core import Dvid
from mounting import mounted

pytestmark = pytest.mark.mount

IJ_JAR = "/usr/share/java/ij.jar"
MACRO = r"""
dir = getArgument();
run("Image Sequence...", "open=[" + dir + "] sort use");
print("DIMS " + getWidth() + " " + getHeight() + " " + nSlices + " " + bitDepth());
for (s = 1; s <= nSlices; s += 7) {
    setSlice(s);
    print("PIX " + s + " " + getPixel(3, 5) + " " + getPixel(getWidth() - 1, getHeight() - 1));
}
"""


def _have_imagej() -> bool:
    ok = os.path.exists(IJ_JAR) and shutil.which("xvfb-run") and shutil.which("java")
    if not ok and os.environ.get("CI"):
        pytest.fail("ImageJ/xvfb missing in CI: scripts/setup should have installed them")
    return bool(ok)


def _imagej(macro_path, arg) -> list[str]:
    r = subprocess.run(["xvfb-run", "-a", "java", "-jar", IJ_JAR, "-batch", str(macro_path), str(arg)],
                       capture_output=True, text=True, timeout=120)
    return r.stdout.splitlines() + r.stderr.splitlines()


@pytest.mark.skipif(not _have_imagej(), reason="ImageJ (Debian package imagej) or xvfb-run not installed")
def test_imagej_opens_slice_sequence(tmp_path):
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 256, (30, 40, 50), dtype=np.uint8)   # z, y, x
    with Dvid.init(tmp_path / "store") as s:
        root = s.node(s.new_repo("em").root)
        s.new_instance(root, "gray", "grayscale", block_size=16).write(root, (0, 0, 0), vol)
        s.commit(root, "for ImageJ")
    (tmp_path / "seq.ijm").write_text(MACRO)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        for plane, expect in (("xy", vol), ("xz", vol.transpose(1, 0, 2)), ("yz", vol.transpose(2, 0, 1))):
            out = _imagej(tmp_path / "seq.ijm", tmp_path / "mnt" / "em" / "master" / "gray" / plane)
            dims = [l for l in out if l.startswith("DIMS")]
            assert dims, "\n".join(out[-20:])
            w, h, n, bits = map(int, dims[0].split()[1:])
            assert (w, h, n, bits) == (expect.shape[2], expect.shape[1], expect.shape[0], 8)
            pix = [list(map(int, l.split()[1:])) for l in out if l.startswith("PIX")]
            assert len(pix) == len(range(1, n + 1, 7))
            for s_, a, b in pix:
                assert a == expect[s_ - 1, 5, 3] and b == expect[s_ - 1, -1, -1], (plane, s_)
