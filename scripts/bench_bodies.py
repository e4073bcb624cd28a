#!/usr/bin/env python
"""Walking label bodies through the mount at segmentation scale (issue 15, item 1).

    .venv/bin/python scripts/bench_bodies.py                 # 10⁶ bodies (~5 min to build on 2 busy cores)
    .venv/bin/python scripts/bench_bodies.py --quick         # 20,000 bodies (smoke run)
    .venv/bin/python scripts/bench_bodies.py --bodies 200000 --keep /tmp/b   # reuse a store

Builds a synthetic store with many small bodies written through the core API
(64³ label blocks, each holding 4096 bodies of 4³ voxels; the label index is
kept by the labels type as for any write), commits it, mounts it with a real
`dvidfs mount` and measures, all in one run:

  * per-body `stat` cost through the mount (`sparsevol` and `size` of N random
    bodies, each stat cold), against two baselines measured here: a stat of a
    plain file on tmpfs, and the old code path (what the old `stat` of a body's
    files did: render them, sparsevol encoded — timed in-process on the same
    bodies before mounting);
  * the new size computation in-process (the mount's `BodyFile.attr`) for the
    same bodies, against the old rendering;
  * `ls labels/ | wc -l`, `find labels -type f | wc -l`, `du -sb labels`,
    `ls -l labels/*/sparsevol` (bounded listing: `fs/bodies.py`), a page
    `ls labels/@more/`, `rsync -a` of labels/ (reads every listed body's files), and `find` /
    `du -s` of the whole node;
  * exactness: for a sample of bodies, every body file's `stat` size equals its
    length read through the mount.

Prints a table and writes bench-out/bodies.json.  Not part of the test suite
(tests/test_mount_bodies.py::test_bench_bodies_smoke runs `--quick` end to end).

`--sample` measures *reading* every body's files instead (bbox.json, sparsevol,
…), on the demo's sample store (`dvidfs sample`, 256x256x128 by default,
`--sample-size`; ~940 bodies of 64³ blocks):

    .venv/bin/python scripts/bench_bodies.py --sample [--baseline-src DIR] [--repeat N]

  * in-process: a walk of labels/ through the fs layer (`Tree`: lookup, stat,
    read of every file of every body, as rsync does), ms per body and per file;
  * through a real mount: `rsync -a labels/` cold (fresh mount), again on the
    same mount (pages and entries cached: the FUSE + rsync floor), and
    `find labels -type f -exec cat {} +` cold, in ms per body;
  * `--baseline-src DIR`: the same mount measurements with the dvidfs of
    another checkout (e.g. `git archive <commit> | tar -x -C DIR`, plus the
    built .so files of dvidfs/formats), interleaved with this one's, N times
    each; the minimum of each is reported (the machine may be shared).

Writes bench-out/bodies-sample.json."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dvidfs.config import Config  # noqa: E402
from dvidfs.core import Dvid  # noqa: E402
from dvidfs.fs import bodies as fsbodies  # noqa: E402
from dvidfs.fs.tree import Tree  # noqa: E402
from mounting import mounted  # noqa: E402

perf = time.perf_counter
EDGE = 4            # a body is a 4³ cube
BLOCK = 64
PER_ROW = 256       # bodies along x and along y (1024 voxels)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build(store: Path, n_bodies: int) -> dict:
    """A committed repo "big" with a labels instance "seg" of >= n_bodies bodies."""
    per_layer = PER_ROW * PER_ROW
    per_row = PER_ROW if n_bodies >= per_layer else max(16, int(np.ceil(np.sqrt(n_bodies) / 16)) * 16)
    per_layer = per_row * per_row
    layers = -(-n_bodies // per_layer)                        # layers of bodies along z
    slab_z = BLOCK // EDGE                                   # body layers per block row
    t0 = perf()
    with Dvid.init(store) as core:
        repo = core.new_repo("big")
        node = core.node(repo.root)
        seg = core.new_instance(node, "seg", "labels", block_size=BLOCK)
        side = per_row * EDGE
        ys = min(side, 128)                                   # write 64 x 128 x side voxels at a time
        for lz0 in range(0, layers, slab_z):
            nz = min(slab_z, layers - lz0)
            for y0 in range(0, side, ys):
                bz, by, bx = np.indices((nz, ys // EDGE, per_row), dtype=np.int64)
                ids = 1 + (lz0 + bz) * per_layer + (y0 // EDGE + by) * per_row + bx
                vol = ids.repeat(EDGE, 0).repeat(EDGE, 1).repeat(EDGE, 2).astype(np.uint64)
                seg.write(node, (0, y0, lz0 * EDGE), vol)
            log(f"bench: wrote body layers {lz0}..{lz0 + nz - 1} of {layers} ({perf() - t0:.0f} s)")
        core.commit(node, "bodies")
        uuid = node.uuid
    return {"bodies": layers * per_layer, "build_s": perf() - t0, "uuid": uuid,
            "shape_xyz": [per_row * EDGE, per_row * EDGE, layers * EDGE]}


def old_render_cost(store: Path, sample: list[int], uuid: str) -> tuple[float, float]:
    """Per body: the old stat path (every body file rendered, sparsevol encoded)
    and the new one (BodyFile.attr: sizes from the index, runs counted), in-process,
    each on a freshly opened store and tree (no cache warm)."""
    results = []
    for mode in ("old", "new"):
        with Dvid(store) as core:
            node = core.node(uuid)
            vol = core.data(node, "seg")
            view = core.view(node)
            tree = Tree(core)
            t = perf()
            for b in sample:
                if mode == "old":
                    for render in fsbodies._RENDER.values():
                        len(render(vol, view, b))
                else:
                    body = fsbodies.BodyDir(repo="big", uuid=node.uuid, data="seg", coord=b, node=node, obj=vol)
                    for name in fsbodies.BODY_FILES:
                        body.child(fsbodies.BodyFile, name=name).attr(tree)
            results.append((perf() - t) / len(sample))
    return results[0], results[1]


def timed(cmd: str, cwd: Path) -> tuple[float, str]:
    t = perf()
    r = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=3600)
    dt = perf() - t
    if r.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed: {r.stderr[-2000:]}")
    return dt, r.stdout.strip()


def stat_times(paths) -> list[float]:
    """Seconds of one os.stat of each path, in order."""
    times = []
    for p in paths:
        t = perf()
        os.stat(p)
        times.append(perf() - t)
    return times


def tmpfs_stat_cost(n: int) -> float:
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    d = Path(tempfile.mkdtemp(prefix="bench-bodies-", dir=base))
    try:
        for i in range(n):
            (d / str(i)).write_bytes(b"x" * 100)
        return statistics.median(stat_times([str(d / str(i)) for i in range(n)]))
    finally:
        shutil.rmtree(d)


# ------------------------------------------------------------ --sample: reading every body's files
def sample_walk_in_process(store: Path) -> dict:
    """Per body and per file name (ms): lookup + stat + read through `Tree`, as
    rsync asks for them (directory, then each file in name order)."""
    from dvidfs.fs.nodes import ROOT
    per: dict[str, float] = {}
    with Dvid(store) as core:
        tree = Tree(core)
        e = ROOT
        for n in ("sample", core.repo("sample").root, "segmentation", "labels"):
            e = tree.lookup(e, n)
        ids = [n for n, _, _ in tree.list(e)]
        t0 = perf()
        for b in ids:
            body = tree.lookup(e, b)
            tree.attr(body)
            for name, _, _ in tree.list(body):
                t = perf()
                f = tree.lookup(body, name)
                tree.attr(f)
                if name != "split":
                    tree.read(f, False)          # as the mount reads a committed node's file
                per[name] = per.get(name, 0.0) + perf() - t
        total = perf() - t0
    out = {"inproc.walk_per_body_ms": 1e3 * total / len(ids)}
    out.update({f"inproc.{k}_per_body_ms": 1e3 * v / len(ids) for k, v in per.items()})
    return out


def sample_mount_times(src: Path, store: Path, work: Path) -> dict:
    """Seconds: cold rsync, warm rsync (same mount), cold find -exec cat, with
    the dvidfs of `src` (python -m dvidfs.cli resolves dvidfs from the cwd)."""
    here = os.getcwd()
    os.chdir(src)
    try:
        res = {}
        with mounted(store, work / "mnt"):
            node = work / "mnt" / "sample" / "master" / "segmentation"
            res["bodies"] = len(os.listdir(node / "labels"))
            for what in ("rsync_cold", "rsync_warm"):
                res[what], _ = timed(f"rsync -a labels/ {work}/copy/", node)
                shutil.rmtree(work / "copy")
        with mounted(store, work / "mnt"):
            node = work / "mnt" / "sample" / "master" / "segmentation"
            res["cat_cold"], out = timed("find labels -type f -exec cat {} + | wc -c", node)
            res["cat_bytes"] = int(out)
        return res
    finally:
        os.chdir(here)


def sample_main(args) -> int:
    from dvidfs.samplestore import build_sample_store
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    size = tuple(int(v) for v in args.sample_size.split(","))
    try:
        store = work / "store"
        with Dvid.init(store) as core:
            build_sample_store(core, size)
        m = sample_walk_in_process(store)
        srcs = {"this": ROOT}
        if args.baseline_src:
            srcs["baseline"] = Path(args.baseline_src).resolve()
        runs: dict[str, list[dict]] = {k: [] for k in srcs}
        for _ in range(args.repeat):
            for k, src in srcs.items():
                runs[k].append(sample_mount_times(src, store, work))
        n = runs["this"][0]["bodies"]
        for k, rs in runs.items():
            if len({r["cat_bytes"] for r in rs}) != 1:
                raise RuntimeError(f"{k}: the bytes read differ between runs")
            for what in ("rsync_cold", "rsync_warm", "cat_cold"):
                best = min(r[what] for r in rs)
                m[f"mount.{k}.{what}_s"] = best
                m[f"mount.{k}.{what}_per_body_ms"] = 1e3 * best / n
        if args.baseline_src and runs["this"][0]["cat_bytes"] != runs["baseline"][0]["cat_bytes"]:
            raise RuntimeError("this checkout and the baseline read different bytes")
        res = {"meta": {"mode": "sample", "size_xyz": size, "bodies": n, "repeat": args.repeat,
                        "baseline_src": args.baseline_src, "nproc": os.cpu_count(),
                        "loadavg": os.getloadavg()}, "measurements": m}
        (out_dir / "bodies-sample.json").write_text(json.dumps(res, indent=2))
        w = max(len(k) for k in m)
        print(f"sample {size}: {n} bodies, {len(fsbodies.BODY_FILES)} files each; min of {args.repeat} run(s)")
        for k, v in m.items():
            print(f"  {k:<{w}}  {v:10.3f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", action="store_true", help="time reading every body's files of the sample store")
    ap.add_argument("--sample-size", default="256,256,128", help="x,y,z of the sample (--sample)")
    ap.add_argument("--baseline-src", help="also mount with the dvidfs of this checkout (--sample)")
    ap.add_argument("--repeat", type=int, default=1, help="mount measurements per checkout (--sample)")
    ap.add_argument("--bodies", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 bodies, small samples (smoke test)")
    ap.add_argument("--stats", type=int, default=2000, help="random bodies stat'ed through the mount")
    ap.add_argument("--old-sample", type=int, default=300, help="bodies timed on the old code path")
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    ap.add_argument("--keep", help="build the store here and keep it (reused when it exists)")
    args = ap.parse_args()
    if args.sample:
        return sample_main(args)
    if args.quick:
        args.bodies = min(args.bodies, 20_000)
        args.stats, args.old_sample = min(args.stats, 200), min(args.old_sample, 50)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    res: dict = {"meta": {"bodies_asked": args.bodies, "quick": args.quick,
                          "listing_limit": Config.load().body_listing, "nproc": os.cpu_count()},
                 "measurements": {}}
    m = res["measurements"]
    try:
        store = Path(args.keep) if args.keep else work / "store"
        info_file = store.parent / (store.name + ".bench.json")
        if args.keep and info_file.exists():
            info = json.loads(info_file.read_text())
            log(f"bench: reusing {store} ({info['bodies']} bodies)")
        else:
            log(f"bench: building {args.bodies} bodies in {store}")
            info = build(store, args.bodies)
            if args.keep:
                info_file.write_text(json.dumps(info))
            m["build_s"] = info["build_s"]
        n = info["bodies"]
        res["meta"].update(bodies=n, shape_xyz=info["shape_xyz"])
        rng = random.Random(0)
        stat_ids = rng.sample(range(1, n + 1), min(args.stats, n))
        old_ids = rng.sample(range(1, n + 1), min(args.old_sample, n))

        m["stat.tmpfs_us"] = 1e6 * tmpfs_stat_cost(min(args.stats, 2000))
        old, new = old_render_cost(store, old_ids, info["uuid"])
        m["inproc.old_render_per_body_ms"] = 1e3 * old
        m["inproc.new_attr_per_body_ms"] = 1e3 * new
        # walk order (ids 1..k, as a listing gives them: bodies share blocks)
        walk_ids = list(range(1, min(n, 4 * len(old_ids)) + 1))
        wold, wnew = old_render_cost(store, walk_ids, info["uuid"])
        m["inproc.walk_old_render_per_body_ms"] = 1e3 * wold
        m["inproc.walk_new_attr_per_body_ms"] = 1e3 * wnew

        mnt = work / "mnt"
        with mounted(store, mnt):
            node = mnt / "big" / info["uuid"]
            labels = node / "seg" / "labels"
            # random bodies by id (mostly not in the listing): lookup + stat, cold
            for name in ("size", "sparsevol"):
                times = stat_times([f"{labels}/{b}/{name}" for b in stat_ids])
                m[f"stat.{name}_us"] = 1e6 * statistics.median(times)
                m[f"stat.{name}_mean_us"] = 1e6 * statistics.mean(times)
            # baseline through the same mount: cold stat of distinct slice files (no body)
            ys = list(range(info["shape_xyz"][1]))[:len(stat_ids)]
            m["stat.mount_slice_us"] = 1e6 * statistics.median(stat_times([f"{node}/seg/xz/{y:05d}.tif" for y in ys]))
            # exactness on a sample: every file's stat size is what a read gives
            bad = []
            for b in stat_ids[:20]:
                for name in fsbodies.BODY_FILES:
                    p = labels / str(b) / name
                    if os.stat(p).st_size != len(p.read_bytes()):
                        bad.append(str(p))
            if bad:
                raise RuntimeError(f"stat size differs from the content: {bad[:5]}")
            dt, out = timed("ls seg/labels/ | wc -l", node)
            m["ls_labels_s"], res["meta"]["ls_labels_entries"] = dt, int(out)
            dt, out = timed("ls seg/labels/@more/ | wc -l", node)
            m["ls_page_s"], res["meta"]["ls_page_entries"] = dt, int(out)
            dt, out = timed("find seg/labels -type f | wc -l", node)
            m["find_labels_s"], res["meta"]["find_labels_files"] = dt, int(out)
            dt, out = timed("ls -l seg/labels/*/sparsevol | wc -l", node)
            m["ls_l_sparsevol_s"], res["meta"]["ls_l_sparsevol_files"] = dt, int(out)
            dt, _ = timed("du -sb seg/labels", node)
            m["du_labels_s"] = dt
            dt, out = timed("find . -name '*.png' | wc -l", node)
            m["find_node_s"] = dt
            dt, _ = timed("du -sb .", node)
            m["du_node_s"] = dt
            dt, _ = timed(f"rsync -a seg/labels/ {work}/copy/", node)   # reads every listed body's files
            m["rsync_labels_s"] = dt
            shutil.rmtree(work / "copy", ignore_errors=True)
        listed = res["meta"]["ls_labels_entries"]
        res["ratios"] = {
            "old render / new attr (in-process, random bodies)": old / new,
            "old render / new attr (in-process, walk order)": wold / wnew,
            "mount stat sparsevol / tmpfs stat": m["stat.sparsevol_us"] / m["stat.tmpfs_us"],
            "mount stat size / tmpfs stat": m["stat.size_us"] / m["stat.tmpfs_us"],
            "mount stat sparsevol / mount stat of a slice file": m["stat.sparsevol_us"] / m["stat.mount_slice_us"],
            "mount stat size / mount stat of a slice file": m["stat.size_us"] / m["stat.mount_slice_us"],
            "old per-body x bodies (projected walk, s)": old * n,
        }
        res["meta"]["walk_bodies"] = listed
        (out_dir / "bodies.json").write_text(json.dumps(res, indent=2))
        w = max(len(k) for k in list(m) + list(res["ratios"]))
        print(f"bodies: {n}  listing limit: {Config.load().body_listing}  "
              f"ls labels/ entries: {listed}  find files: {res['meta']['find_labels_files']}")
        for k, v in m.items():
            print(f"  {k:<{w}}  {v:12.3f}")
        for k, v in res["ratios"].items():
            print(f"  {k:<{w}}  {v:12.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
