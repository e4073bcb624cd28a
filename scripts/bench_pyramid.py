#!/usr/bin/env python
"""Stored pyramids and the precomputed view: what they cost and what they buy.

    .venv/bin/python scripts/bench_pyramid.py            # 1024³ sample (gray + labels), cached
    .venv/bin/python scripts/bench_pyramid.py --quick    # 256³ (smoke run)

Measured (medians; prints a table, writes bench-out/pyramid.json):
  * import vs pyramid build, MiB/s of level-0 voxels: the sample written slab by
    slab through `write` (what `dvidfs import` does), then `build_pyramid` (what
    `dvidfs downres` does), for grayscale (32³ blocks, mean) and labels (64³, mode);
  * incremental upkeep: one 64³ write into an open node with and without a pyramid;
  * a level-3 xy slice vs a level-0 xy slice, as files of a real `dvidfs mount`
    (`s3/xy/<z>.png` vs `xy/<z>.png`, cold: each slice read once), and the same
    level-3 labels slice computed on demand (no stored pyramid) through the core;
  * CloudVolume reading a 256³ cutout of the grayscale at scale 0 through the mount
    (`file://…/grayscale/precomputed`) vs from a precomputed copy of the same chunks on
    local disk (plain files, page cache warm), cold and warm for the mount.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dvidfs.core import Dvid  # noqa: E402
from dvidfs.data.pyramid import default_levels  # noqa: E402
from dvidfs.sample import iter_sample  # noqa: E402

perf = time.perf_counter
MiB = 1 << 20


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build(path: Path, edge: int, labels: bool) -> dict:
    """The sample written through the core (timed), its pyramids built (timed), committed."""
    out: dict = {}
    with Dvid.init(path) as core:
        repo = core.new_repo("sample")
        node = core.node(repo.root)
        gray = core.new_instance(node, "grayscale", "grayscale")
        seg = core.new_instance(node, "segmentation", "labels") if labels else None
        t_gray = t_seg = 0.0
        for z0, g, lab in iter_sample((edge, edge, edge), seed=0, slab=64):
            t = perf()
            gray.write(node, (0, 0, z0), g)
            t_gray += perf() - t
            if seg is not None:
                t = perf()
                seg.write(node, (0, 0, z0), lab)
                t_seg += perf() - t
        vox = edge ** 3
        out["import.gray_mib_s"] = vox / MiB / t_gray
        if seg is not None:
            out["import.labels_mib_s"] = vox * 8 / MiB / t_seg
            # a level-3 labels xy slice computed on demand, before the pyramid exists
            w = edge >> 3
            zs = [edge // 2 + 8 * i for i in range(3)]
            times = []
            for z in zs:
                t = perf()
                seg.read(node, (0, 0, z >> 3), (w, w, 1), scale=3)
                times.append(perf() - t)
            out["slice.labels.s3_ondemand_ms"] = 1e3 * statistics.median(times)
        def levels(vol) -> int:   # the default, but at least 3 (the slice measured)
            return max(3, default_levels(vol.extents(node), vol.grid))
        t = perf()
        out["levels.gray"] = gray.build_pyramid(node, levels(gray))
        out["build.gray_mib_s"] = vox / MiB / (perf() - t)
        if seg is not None:
            t = perf()
            out["levels.labels"] = seg.build_pyramid(node, levels(seg))
            out["build.labels_mib_s"] = vox * 8 / MiB / (perf() - t)
        # incremental upkeep: one 64³ write with the pyramid, the same without (a fresh instance)
        plain = core.new_instance(node, "plain", "grayscale")
        plain.write(node, (0, 0, 0), np.zeros((64, 64, 64), np.uint8) + 1)
        rng = np.random.default_rng(0)
        for name, vol in (("with", gray), ("without", plain)):
            times = []
            for i in range(5):
                a = rng.integers(0, 256, (64, 64, 64)).astype(np.uint8)
                t = perf()
                vol.write(node, (64 * i, 0, 0), a)
                times.append(perf() - t)
            out[f"write64.gray_{name}_pyramid_ms"] = 1e3 * statistics.median(times)
        if seg is not None:
            plainseg = core.new_instance(node, "plainseg", "labels")
            plainseg.write(node, (0, 0, 0), np.ones((64, 64, 64), np.uint64))
            # EM-like labels (another seed of the sample), and noise (40 ids at random: the worst case)
            _, _, em = next(iter_sample((64, 64, 64), seed=1, slab=64))
            for kind, make in (("em", lambda: em + np.uint64(10**6)),
                               ("noise", lambda: rng.integers(1, 40, (64, 64, 64)).astype(np.uint64))):
                for name, vol in (("with", seg), ("without", plainseg)):
                    times = []
                    for i in range(3):
                        a = make()
                        t = perf()
                        vol.write(node, (64 * i, 64 if kind == "em" else 128, 0), a)
                        times.append(perf() - t)
                    out[f"write64.labels_{kind}_{name}_pyramid_ms"] = 1e3 * statistics.median(times)
        core.commit(node, "bench")
        out["uuid"] = node.uuid
    return out


def read_file(p: Path) -> float:
    t = perf()
    with open(p, "rb") as f:
        while f.read(1 << 20):
            pass
    return perf() - t


def slices(mnt: Path, uuid: str, edge: int, labels: bool) -> dict:
    out = {}
    node = mnt / "sample" / uuid
    rng = np.random.default_rng(1)
    for name, ext in (("grayscale", "png"), *((("segmentation", "tif"),) if labels else ())):
        for level in (0, 3):
            d = node / name / (f"s{level}/xy" if level else "xy")
            n = edge >> level
            zs = rng.choice(n, size=min(5, n), replace=False)
            out[f"slice.{name}.s{level}_ms"] = 1e3 * statistics.median(
                read_file(d / f"{int(z):05d}.{ext}") for z in zs)
    return out


def cutout(mnt: Path, uuid: str, edge: int, scratch: Path) -> dict:
    from cloudvolume import CloudVolume
    out = {}
    src = mnt / "sample" / uuid / "grayscale" / "precomputed"
    n = min(256, edge)
    lo = (edge - n) // 2 // 32 * 32
    cv = CloudVolume(f"file://{src}", mip=0, fill_missing=False, progress=False)
    t = perf()
    a = cv[lo:lo + n, lo:lo + n, lo:lo + n]
    out["cutout.mount_cold_ms"] = 1e3 * (perf() - t)
    t = perf()
    b = cv[lo:lo + n, lo:lo + n, lo:lo + n]
    out["cutout.mount_warm_ms"] = 1e3 * (perf() - t)
    # a precomputed copy on local disk: info and the chunks of the cutout, plain names
    copy = scratch / "copy"
    (copy / "s0").mkdir(parents=True)
    shutil.copy(src / "info", copy / "info")
    for g in range(lo // 32, (lo + n) // 32):
        for h in range(lo // 32, (lo + n) // 32):
            for k in range(lo // 32, (lo + n) // 32):
                name = f"{g * 32}-{g * 32 + 32}_{h * 32}-{h * 32 + 32}_{k * 32}-{k * 32 + 32}"
                shutil.copy(src / "s0" / name, copy / "s0" / name)
    local = CloudVolume(f"file://{copy}", mip=0, fill_missing=False, progress=False)
    local[lo:lo + n, lo:lo + n, lo:lo + n]    # CloudVolume's own warm-up
    times = []
    for _ in range(3):
        t = perf()
        c = local[lo:lo + n, lo:lo + n, lo:lo + n]
        times.append(perf() - t)
    out["cutout.local_disk_ms"] = 1e3 * statistics.median(times)
    assert np.array_equal(np.asarray(a), np.asarray(c)) and np.array_equal(np.asarray(b), np.asarray(c))
    out["cutout.mount_cold_over_local"] = out["cutout.mount_cold_ms"] / out["cutout.local_disk_ms"]
    out["cutout.mount_warm_over_local"] = out["cutout.mount_warm_ms"] / out["cutout.local_disk_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 256³ sample")
    ap.add_argument("--edge", type=int, default=None, help="sample edge (default 1024, --quick 256)")
    ap.add_argument("--no-labels", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    args = ap.parse_args(argv)
    edge = args.edge or (256 if args.quick else 1024)
    labels = not args.no_labels
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from mounting import mounted
    res: dict = {"edge": edge}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="pyramid-") as tmp:
        tmp = Path(tmp)
        log(f"bench_pyramid: {edge}³ sample, writing and building its pyramids")
        res.update(build(tmp / "store", edge, labels))
        with mounted(tmp / "store", tmp / "mnt"):
            log("bench_pyramid: slices and cutouts through the mount")
            res.update(slices(tmp / "mnt", res["uuid"], edge, labels))
            res.update(cutout(tmp / "mnt", res["uuid"], edge, tmp))
    (out_dir / "pyramid.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:40s} {v:10.2f}" if isinstance(v, float) else f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
