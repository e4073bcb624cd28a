"""Frictions a new user met (issue 15, item 8), each checked where it bit:
`-s STORE` after the subcommand, 16-bit stacks (--rescale/--clip), export to an
unknown format, voxel sizes in exported and mounted TIFFs, a missing mount
point, the bench's --quick marks, scripts/setup without python3-venv, and
`downres` of a store that is mounted or served."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dvidfs.core import Dvid
from mounting import mounted

ROOT = Path(__file__).resolve().parents[1]


def dv(*args, check=True, env=None):
    r = subprocess.run([sys.executable, "-m", "dvidfs.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=120, env=env)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def one_line_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dvidfs: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def st(tmp_path):
    p = tmp_path / "store"
    dv("init", p)
    dv("repo", "new", "em", "-s", p)                  # -s after the subcommand
    dv("data", "new", "em", "gray", "--block-size", "16", "--voxel-size", "4,6,30", "-s", p)
    dv("data", "new", "em", "seg", "--type", "labels", "--block-size", "16", "--voxel-size", "4,6,30", "-s", p)
    return p


def _folder(path: Path, vol: np.ndarray) -> Path:
    path.mkdir()
    for i, plane in enumerate(vol):
        Image.fromarray(plane).save(path / f"z{i:03d}.png")
    return path


def _read(p, data, size):
    with Dvid(p) as s:
        return s.data(s.node("em"), data).read(s.node("em"), (0, 0, 0), size)


# ---------------------------------------------------------------- b. -s after the subcommand
def test_store_option_before_or_after_any_subcommand(st, tmp_path):
    p = st
    assert "em" in dv("repo", "-s", p, "list").stdout                  # an intermediate parser too
    assert "em" in dv("repo", "list", f"--store={p}").stdout
    assert "master" in dv("log", f"-s{p}", "em").stdout                 # -sSTORE
    assert "master" in dv("-s", p, "log", "em").stdout                  # before, as ever
    assert "master" in dv("log", "em", env={**os.environ, "DVIDFS_STORE": str(p)}).stdout
    # after the subcommand wins over before it (the nearer one)
    assert "master" in dv("-s", tmp_path / "nowhere", "log", "em", "-s", p).stdout
    for cmd in (["import"], ["export"], ["log"], ["labels", "list"], ["repo", "new"], ["mount"]):
        out = dv(*cmd, "--help").stdout
        assert "-s STORE, --store STORE" in out, cmd
    assert "after the subcommand" in dv("--help").stdout
    # mount takes the store from -s as well as from its first argument
    one_line_error(dv("mount", "-s", p, tmp_path / "missing", check=False), "does not exist")
    one_line_error(dv("mount", tmp_path / "missing", check=False), "no store given")


# ---------------------------------------------------------------- c. 16-bit stacks
def test_16_bit_stack_says_rescale_or_clip_and_both_work(st, tmp_path):
    p = st
    vol = np.random.default_rng(5).integers(100, 4000, (5, 8, 12), dtype=np.uint16)
    vol[0, 0, 0], vol[4, 7, 11] = 100, 3999
    src = _folder(tmp_path / "deep", vol)
    line = one_line_error(dv("import", "em", "gray", src, "-s", p, check=False), "--rescale", "--clip", "uint8")
    assert "values 100.." in line and "Fiji" in line
    with Dvid(p) as s:
        assert s.data(s.node("em"), "gray").extents(s.node("em")) is None   # nothing imported

    dv("import", "em", "gray", src, "--rescale", "-s", p)
    want = np.rint((vol.astype(np.float64) - 100) * 255 / 3899).astype(np.uint8)
    got = _read(p, "gray", (12, 8, 5))
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == 255

    dv("import", "em", "gray", src, "--clip", "-s", p)
    np.testing.assert_array_equal(_read(p, "gray", (12, 8, 5)), np.clip(vol, 0, 255).astype(np.uint8))

    # whole-volume sources: a .npy and a float TIFF stack
    np.save(tmp_path / "v.npy", vol)
    one_line_error(dv("import", "em", "gray", tmp_path / "v.npy", "-s", p, check=False), "--rescale")
    dv("import", "em", "gray", tmp_path / "v.npy", "--rescale", "-s", p)
    np.testing.assert_array_equal(_read(p, "gray", (12, 8, 5)), want)
    f = (vol.astype(np.float32) / 4000)                                  # 0.025 .. 0.99975
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="minisblack")
    one_line_error(dv("import", "em", "gray", tmp_path / "f.tif", "-s", p, check=False), "--rescale")
    dv("import", "em", "gray", tmp_path / "f.tif", "--rescale", "-s", p)
    fw = np.rint((f.astype(np.float64) - f.min()) * 255 / (f.max() - f.min())).astype(np.uint8)
    np.testing.assert_array_equal(_read(p, "gray", (12, 8, 5)), fw)

    # labels store ids exactly: no conversion; one choice at a time
    one_line_error(dv("import", "em", "seg", src, "--rescale", "-s", p, check=False), "labels")
    r = dv("import", "em", "gray", src, "--rescale", "--clip", "-s", p, check=False)
    assert r.returncode == 2 and "not allowed with" in r.stderr
    assert "--rescale" in dv("import", "--help").stdout and "--clip" in dv("import", "--help").stdout


# ---------------------------------------------------------------- d. unknown export formats
@pytest.mark.parametrize("name", ["x.zarr", "x.h5", "x.png", "x.zarr/"])
def test_export_refuses_unknown_suffixes(st, tmp_path, name):
    p = st
    dv("import", "em", "gray", _folder(tmp_path / "s", np.zeros((2, 4, 4), np.uint8)), "-s", p)
    for data in ("gray", "seg"):
        line = one_line_error(dv("export", "em", data, tmp_path / name, "-s", p, check=False),
                              ".npy", ".tif", "PNG")
        assert os.path.splitext(name.rstrip("/"))[1] in line
    assert not (tmp_path / name.rstrip("/")).exists()
    assert ".zarr" in dv("export", "--help").stdout      # the help says which suffixes are refused


# ---------------------------------------------------------------- e. voxel size in TIFFs
def _res(page) -> tuple[float, float]:
    (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
    return xn / xd, yn / yd


def test_exported_tiffs_carry_the_voxel_size(st, tmp_path):
    p = st
    vol = np.random.default_rng(1).integers(0, 256, (6, 9, 11), dtype=np.uint8)
    dv("import", "em", "gray", _folder(tmp_path / "s", vol), "-s", p)
    np.save(tmp_path / "lab.npy", vol.astype(np.uint64) * 1000)
    dv("import", "em", "seg", tmp_path / "lab.npy", "-s", p)

    dv("export", "em", "gray", tmp_path / "g.tif", "-s", p)
    with tifffile.TiffFile(tmp_path / "g.tif") as t:
        np.testing.assert_array_equal(t.asarray(), vol)
        assert t.is_imagej and t.series[0].axes == "ZYX"
        md, page = t.imagej_metadata, t.pages[0]
        assert md["unit"] == "nm" and md["spacing"] == pytest.approx(30)
        assert md["images"] == md["slices"] == 6
        assert _res(page) == pytest.approx((1 / 4, 1 / 6))              # pixels per nm, as ImageJ writes
        assert "ResolutionUnit" in page.tags

    dv("export", "em", "seg", tmp_path / "l.tif", "-s", p)
    with tifffile.TiffFile(tmp_path / "l.tif") as t:
        np.testing.assert_array_equal(t.asarray(), vol.astype(np.uint64) * 1000)
        page = t.pages[0]
        assert page.tags["ResolutionUnit"].value == 3                     # centimetre
        assert _res(page) == pytest.approx((1e7 / 4, 1e7 / 6))
        assert t.shaped_metadata[0]["spacing"] == pytest.approx(30) and t.shaped_metadata[0]["unit"] == "nm"


@pytest.mark.mount
def test_mounted_tiff_slices_carry_the_voxel_size_and_exact_sizes(tmp_path):
    lab = (np.arange(7 * 9 * 13, dtype=np.uint64).reshape(7, 9, 13) % 5) * (2**40) + 3
    with Dvid.init(tmp_path / "store") as s:
        root = s.node(s.new_repo("em").root)
        seg = s.new_instance(root, "seg", "labels", block_size=8, voxel_size=(4, 6, 30),
                             voxel_units="micrometers")
        seg.write(root, (0, 0, 0), lab)
        seg.build_pyramid(root, 1)
        s.commit(root, "labels")
    um = 1000.0
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        d = tmp_path / "mnt/em/master/seg"
        # plane: (pixel width, pixel height, depth) in voxels of x, y, z = 4, 6, 30 µm
        for plane, coord, axes in (("xy", 2, (4, 6, 30)), ("xz", 5, (4, 30, 6)), ("yz", 8, (6, 30, 4))):
            for view in ("", "-fiji"):
                f = d / f"{plane}{view}/{coord:05d}.tif"
                data = f.read_bytes()
                assert os.stat(f).st_size == len(data)                    # sizes stay exact
                with tifffile.TiffFile(f) as t:
                    page = t.pages[0]
                    if view:   # ImageJ: pixels per unit, unit and depth in its description
                        assert t.imagej_metadata["unit"] == "nm"
                        assert t.imagej_metadata["spacing"] == pytest.approx(axes[2] * um)
                        assert _res(page) == pytest.approx((1 / (axes[0] * um), 1 / (axes[1] * um)))
                    else:      # plain uint64 TIFF: pixels per centimetre
                        assert page.tags["ResolutionUnit"].value == 3
                        assert _res(page) == pytest.approx((1e7 / (axes[0] * um), 1e7 / (axes[1] * um)))
                        assert page.asarray().dtype == np.uint64
        f = d / "s1/xy-fiji/00001.tif"                                     # level 1: twice the voxel size
        assert os.stat(f).st_size == len(f.read_bytes())
        with tifffile.TiffFile(f) as t:
            assert _res(t.pages[0]) == pytest.approx((1 / 8000, 1 / 12000))
            assert t.imagej_metadata["spacing"] == pytest.approx(60000)


# ---------------------------------------------------------------- f. missing mount point
def test_missing_mount_point_is_one_line_and_documented(st, tmp_path):
    one_line_error(dv("mount", st, tmp_path / "nope", check=False), "does not exist", "mkdir -p")
    assert not (tmp_path / "nope").exists()
    assert "not created" in dv("mount", "--help").stdout


# ---------------------------------------------------------------- g. bench --quick marks
def _bench_module():
    spec = importlib.util.spec_from_file_location("dvidfs_bench_for_test", ROOT / "scripts" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return mod


@pytest.mark.parametrize("quick", [True, False])
def test_bench_quick_judges_no_target(tmp_path, quick):
    bench = _bench_module()
    R = bench.Results()
    R.add("slice.xy.mount_cold", [0.01, 0.02, 0.03])
    ctx = types.SimpleNamespace(cfg=bench.QUICK if quick else bench.FULL, R=R)
    rows = [{"name": "missed target", "ratio": 3.0, "target": 1.2, "op": "<=", "ok": False},
            {"name": "met target", "ratio": 0.5, "target": 1.2, "op": "<=", "ok": True},
            {"name": "unmeasured", "ratio": None, "target": 2.0, "op": ">=", "ok": None}]
    meta = {"machine": {"date": "2026-01-01T00:00:00", "cpu": "cpu", "nproc": 2, "ram_gib": 1.0},
            "dvidfs_code": {}}
    text = bench.report(ctx, rows, meta)
    if quick:
        assert "✗" not in text and "✓" not in text and "\x1b[" not in text
        assert text.count("n/a in --quick") == 2
    else:
        assert "✗" in text and "✓" in text
    bench.draw_chart(ctx, rows, meta, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    red = ((px[:, 0] == 214) & (px[:, 1] == 39) & (px[:, 2] == 40)).any()
    assert red != quick                                                  # red only where it judges


# ---------------------------------------------------------------- h. scripts/setup and python3-venv
STUB_PY = r'''#!/bin/bash
echo "python $*" >> "$LOG"
case "$*" in
  *"import ensurepip"*) [[ -f "$STATE/ensurepip" ]] ;;
  *version_info*) echo 3.11 ;;
  "-m venv"*) mkdir -p .venv/bin
              printf '#!/bin/bash\necho "venv-python $*" >> "$LOG"\n' > .venv/bin/python
              chmod +x .venv/bin/python
              if [[ -f "$STATE/ensurepip" ]]; then
                printf '#!/bin/bash\necho "pip $*" >> "$LOG"\n' > .venv/bin/pip; chmod +x .venv/bin/pip
              fi ;;
esac
'''
STUB_APT = r'''#!/bin/bash
echo "apt-get $*" >> "$LOG"
[[ " $* " == *" python3.11-venv "* ]] && touch "$STATE/ensurepip"
exit 0
'''
STUB_DPKG = '#!/bin/bash\nprintf "install ok installed"\n'
STUB_SUDO = '#!/bin/bash\nexec "$@"\n'


def test_setup_installs_venv_support_when_python_lacks_it(tmp_path):
    """A bare Debian: `python3 -m venv` fails for want of ensurepip (python3-venv).
    setup installs it with apt, then makes the venv; a second run does nothing;
    a venv left without pip (made before) is made again."""
    tree, stubs, state = tmp_path / "checkout", tmp_path / "bin", tmp_path / "state"
    for d in (tree / "scripts", tree / "dvidfs" / "formats", stubs, state):
        d.mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", tree / "scripts" / "setup")
    for name in ("_blockcopy.so", "_labelblock.so"):
        (tree / "dvidfs" / "formats" / name).touch()
    for name, text in (("python3", STUB_PY), ("apt-get", STUB_APT), ("dpkg-query", STUB_DPKG), ("sudo", STUB_SUDO)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "LOG": str(log), "STATE": str(state),
           "PYTHON": str(stubs / "python3")}
    env.pop("DVIDFS_TEST_TOOLS", None)

    def run() -> list[str]:
        log.write_text("")
        r = subprocess.run(["bash", str(tree / "scripts" / "setup")], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return log.read_text().splitlines()

    first = run()
    installs = [line for line in first if line.startswith("apt-get install")]
    assert len(installs) == 1 and "python3-venv" in installs[0] and "python3.11-venv" in installs[0]
    assert first.index(installs[0]) < first.index("python -m venv --clear .venv")   # venv after apt
    assert any(line.startswith("pip install") for line in first)

    assert run() == ["python -c import ensurepip, venv"]                 # idempotent: nothing new

    (tree / ".venv" / "bin" / "pip").unlink()                             # a venv without pip
    again = run()
    assert "python -m venv --clear .venv" in again and not any(x.startswith("apt-get") for x in again)


@pytest.mark.mount
def test_downres_while_mounted_goes_through_the_mount_or_http(tmp_path):
    """`dvidfs downres` of a mounted store says how to do it meanwhile, and both
    ways work: `.dvid/downres` in the mount and POST …/downres over HTTP; the
    levels equal a numpy 2x2x2 mean of level 0, rounded half up."""
    import requests

    from serving import served
    p = tmp_path / "store"
    vol = (np.arange(48 * 40 * 32, dtype=np.int64).reshape(48, 40, 32) * 7919 % 251).astype(np.uint8)
    with Dvid.init(p) as s:
        root = s.node(s.new_repo("em").root)
        for name in ("gray", "other"):
            s.new_instance(root, name, "grayscale", block_size=8).write(root, (0, 0, 0), vol)
    mnt = tmp_path / "mnt"
    with mounted(p, mnt):
        r = dv("-s", p, "downres", "em", "gray", "--levels", "2", check=False)
        one_line_error(r, f"mounted at {mnt}", "write 'gray 2' to MOUNT/<repo>/<uuid>/.dvid/downres",
                       "/api/node/<uuid>/gray/downres?levels=2")
        node = mnt / "em" / root.uuid
        assert not (node / "gray" / "s1").exists()
        (node / ".dvid" / "downres").write_text("gray 2\n")
        s1 = np.asarray(Image.open(node / "gray" / "s1" / "xy" / "00003.png"))
        assert sorted(os.listdir(node / "gray" / "s2" / "xy"))[-1] == "00011.png"
        with pytest.raises(OSError):                       # an unknown instance: refused, named
            (node / ".dvid" / "downres").write_text("nosuch\n")
        assert "nosuch" in (node / ".dvid" / "last-error").read_text()
    mean = vol.reshape(24, 2, 20, 2, 16, 2).astype(np.float64).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(s1, np.floor(mean[3] + 0.5).astype(np.uint8))
    with Dvid(p) as s, served(s) as url:
        r = requests.post(f"{url}/api/node/{root.uuid}/other/downres?levels=x")
        assert r.status_code == 400 and "levels" in r.text
        r = requests.post(f"{url}/api/node/{root.uuid}/other/downres")
        assert r.status_code == 200 and r.json() == {"Levels": 3}
        n = s.node(root.uuid)
        assert s.data(n, "other").pyramid_levels(n) == 3
