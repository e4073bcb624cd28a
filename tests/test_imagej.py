"""Open mounted slices in ImageJ (Debian's package, on a virtual X screen) the way
Fiji users do — File > Import > Image Sequence, sorted, as a virtual stack — and
compare what ImageJ reports with numpy."""
from __future__ import annotations

import os
import shutil
import signal
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


def _imagej(macro_path, arg, timeout=120) -> list[str]:
    """ImageJ's output lines.  ImageJ stuck behind a modal dialog (what it does
    with a file it cannot read, e.g. a uint64 TIFF) fails the test, and its
    whole process group (xvfb-run, Xvfb, java) is killed."""
    p = subprocess.Popen(["xvfb-run", "-a", "java", "-jar", IJ_JAR, "-batch", str(macro_path), str(arg)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"ImageJ did not finish opening {arg} in {timeout} s (an error dialog?)")
    return out.splitlines() + err.splitlines()


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


LABEL_MACRO = r"""
dir = getArgument();
run("Image Sequence...", "open=[" + dir + "] sort use");
print("DIMS " + getWidth() + " " + getHeight() + " " + nSlices + " " + bitDepth());
for (s = 1; s <= nSlices; s++) {
    setSlice(s);
    line = "PIX " + s;
    for (y = 0; y < getHeight(); y += 3)
        for (x = 0; x < getWidth(); x += 2)
            line = line + " " + d2s(getPixel(x, y), 0);
    print(line);
}
"""


@pytest.mark.skipif(not _have_imagej(), reason="ImageJ (Debian package imagej) or xvfb-run not installed")
def test_imagej_opens_label_views(tmp_path):
    """Fiji users' label views: `<plane>-fiji/` opens as a 32-bit stack whose every
    pixel is the body id (beyond 16 bits, up to 2**24), `<plane>-rgb/` as an RGB
    stack of the body colours; neither stops ImageJ at a dialog (a uint64 TIFF
    does: ImageJ has no 64-bit integers)."""
    from dvidfs.formats.images import label_colors
    z, y, x = np.indices((6, 11, 13))
    lab = (1 + x + 13 * y + 200 * z).astype(np.uint64) * 997   # up to ~1.3e6: needs 32 bits
    lab[:, :3] = 2**24
    lab[1, 4:8, 2:9] = 0
    with Dvid.init(tmp_path / "store") as s:
        root = s.node(s.new_repo("em").root)
        s.new_instance(root, "seg", "labels", block_size=8).write(root, (0, 0, 0), lab)
        s.commit(root, "for ImageJ")
    (tmp_path / "labels.ijm").write_text(LABEL_MACRO)
    views = (("xy", lab), ("xz", lab.transpose(1, 0, 2)), ("yz", lab.transpose(2, 0, 1)))
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        for plane, expect in views:
            for kind, bits, want in (("fiji", 32, expect.astype(np.int64)),
                                     ("rgb", 24, _packed(label_colors(expect)))):
                out = _imagej(tmp_path / "labels.ijm", tmp_path / "mnt/em/master/seg" / f"{plane}-{kind}")
                dims = [l for l in out if l.startswith("DIMS")]
                assert dims, (plane, kind, "\n".join(out[-20:]))
                assert list(map(int, dims[0].split()[1:])) == [expect.shape[2], expect.shape[1],
                                                               expect.shape[0], bits]
                rows = [list(map(int, l.split()[1:])) for l in out if l.startswith("PIX")]
                assert len(rows) == expect.shape[0]
                for s_, *pix in rows:
                    got = np.array(pix, np.int64)
                    if kind == "rgb":
                        got &= 0xFFFFFF   # ImageJ's getPixel on RGB: the int with its alpha byte
                    np.testing.assert_array_equal(got, want[s_ - 1, ::3, ::2].ravel(), err_msg=f"{plane}-{kind}")


def _packed(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
