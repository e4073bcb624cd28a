#!/usr/bin/env python
"""The S3 engine against LevelDB, in one run (issue 14): import, commit, cold slices, reopen.

    .venv/bin/python scripts/bench_s3.py                 # 1024 x 1024 x 128 grayscale sample
    .venv/bin/python scripts/bench_s3.py --size 512,512,64 --json out.json

Starts its own SeaweedFS (tests/seaweed.py: master, two volume servers, filer,
S3 gateway on random 127.0.0.1 ports; stopped by PID at the end) and a LevelDB
store in a temporary directory, builds the same deterministic EM-like sample
in both (grayscale, 32³ blocks), and measures on each:

* import: MiB/s of raw voxels written slab by slab (`Grayscale.write`);
* write latency: one 32³ block written into an open node (one batch);
* commit latency: `Dvid.commit` of an open node;
* open: `Dvid(path)` of the finished store (S3: MANIFEST + checkpoint + log tail);
* cold slices: xy 1024² (or the full xy size), a 256² xy window, xz and yz
  slices, each read once in a freshly opened `Dvid` (S3: empty value cache;
  LevelDB: new process state, but the OS page cache over its files is warm);
  once more on S3 with `localcache=` filled by an earlier process (values read
  from the local disk instead of ranged GETs; the open still reads MANIFEST,
  checkpoint and log from S3).

Numbers are medians over `--repeat` fresh opens; they are loopback numbers
on whatever machine runs this (2 cores in CI), orders of magnitude only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from dvidfs.core import Dvid  # noqa: E402
from dvidfs.sample import iter_sample  # noqa: E402
from seaweed import SeaweedFS  # noqa: E402


def _median(xs):
    return statistics.median(xs)


def build(path: str, size) -> dict:
    sx, sy, sz = size
    out = {}
    with Dvid.init(path) as s:
        repo = s.new_repo("bench")
        root = s.node(repo.root)
        gray = s.new_instance(root, "grayscale", "grayscale", block_size=32)
        slabs = list(iter_sample((sz, sy, sx), seed=3, slab=32))
        t = time.perf_counter()
        for z0, g, _ in slabs:
            gray.write(root, (0, 0, z0), g)
        dt = time.perf_counter() - t
        out["import MiB/s"] = sx * sy * sz / 2**20 / dt
        out["import s"] = dt
        t = time.perf_counter()
        s.commit(root, "sample")
        out["commit (root, after import) ms"] = (time.perf_counter() - t) * 1000
        child = s.branch(root, "edit")
        lat, com = [], []
        rng = np.random.default_rng(1)
        for i in range(7):
            node = child if i == 0 else s.branch(s.node(node_uuid), f"e{i}")
            block = rng.integers(0, 255, (32, 32, 32), dtype=np.uint8)
            t = time.perf_counter()
            gray.write(node, (32 * i, 32, 32), block)
            lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            s.commit(node, f"edit {i}")
            com.append(time.perf_counter() - t)
            node_uuid = node.uuid
        out["write 1 block ms"] = _median(lat) * 1000
        out["commit ms"] = _median(com) * 1000
        out["_root"] = root.uuid
    return out


def cold_reads(path: str, root: str, size, repeat: int) -> dict:
    sx, sy, sz = size
    res: dict[str, list] = {}

    def timed(name, fn):
        with Dvid(path) as s:                      # a fresh open: nothing cached
            node = s.node(root)
            gray = s.data(node, "grayscale")
            t = time.perf_counter()
            fn(s, node, gray)
            res.setdefault(name, []).append((time.perf_counter() - t) * 1000)

    opens = []
    for r in range(repeat):
        t = time.perf_counter()
        Dvid(path).close()
        opens.append((time.perf_counter() - t) * 1000)
        z = sz // 4 + r * 7
        timed(f"cold xy {sx}x{sy} ms", lambda s, n, g: s.read_slice(n, g, "xy", z))
        timed("cold xy 256x256 ms", lambda s, n, g: g.read(s.view(n), (sx // 2 - 128, sy // 2 - 128, z), (256, 256, 1)))
        timed(f"cold xz {sx}x{sz} ms", lambda s, n, g: s.read_slice(n, g, "xz", sy // 3 + r * 5))
        timed(f"cold yz {sy}x{sz} ms", lambda s, n, g: s.read_slice(n, g, "yz", sx // 3 + r * 5))
    out = {k: _median(v) for k, v in res.items()}
    out["open ms"] = _median(opens)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1024,1024,128", help="x,y,z of the sample (default 1024,1024,128)")
    ap.add_argument("--repeat", type=int, default=3, help="fresh opens per cold measurement")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    tmp = tempfile.mkdtemp(prefix="dvidfs-bench-s3-")
    results = {}
    try:
        with SeaweedFS() as server:
            os.environ.update(server.env)
            bucket = server.new_bucket("bench")
            stores = {"leveldb": os.path.join(tmp, "store"),
                      "s3": f"s3://{bucket}/bench?endpoint={server.endpoint}"}
            for name, path in stores.items():
                print(f"{name}: building {size[0]}x{size[1]}x{size[2]} ...", file=sys.stderr)
                r = build(path, size)
                root = r.pop("_root")
                r.update(cold_reads(path, root, size, args.repeat))
                results[name] = r
            # a later process on this machine with the local disk cache filled by an earlier one
            warm = stores["s3"] + "&localcache=" + os.path.join(tmp, "localcache")
            cold_reads(warm, root, size, args.repeat)
            results["s3-local"] = cold_reads(warm, root, size, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = list(results["leveldb"])
    print(f"{'measure':<34}{'LevelDB':>12}{'S3 (SeaweedFS)':>16}{'S3/LevelDB':>12}"
          f"{'S3, local cache':>17}{'/LevelDB':>10}")
    for k in keys:
        a, b = results["leveldb"][k], results["s3"][k]
        c = results["s3-local"].get(k)
        tail = f"{c:>17.1f}{c / a if a else float('nan'):>10.2f}" if c is not None else ""
        print(f"{k:<34}{a:>12.1f}{b:>16.1f}{b / a if a else float('nan'):>12.2f}{tail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
