"""Smoke test of the benchmark: `scripts/bench.py --quick` runs end to end
(real mounts included), writes a JSON with every measurement as a positive
number and a valid PNG chart, and leaves nothing mounted.  No timing
assertions: the numbers themselves are for docs/performance.md."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.mount

ROOT = Path(__file__).resolve().parent.parent
PLANES = ("xy", "xz", "yz")

REQUIRED = (
    [f"slice.{p}.{m}" for p in PLANES for m in ("mount_cold", "mount_warm", "api_raw", "api_encoded")]
    + ["scroll.consecutive", "scroll.spread", "parallel.one_reader", "parallel.two_readers",
       "import.api", "import.plyvel", "import.api_rate", "import.plyvel_rate",
       "depth.d1", "depth.tip", "mount.peak_rss", "mount.rss_end"]
    + [f"version.{op}.{size}" for op in ("commit", "branch", "merge", "commit_first")
       for size in ("small", "large")]
    + [f"blocksize.b{b}.{p}" for b in (32, 64) for p in PLANES]
)


def _mounted_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(real)]


def test_bench_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert not _mounted_under(tmp_path), "the benchmark left a mount behind"
    assert not list(tmp_path.glob("run-*")), "the benchmark left its scratch dir behind"
    assert "target" in r.stdout and "mount cold / in-process encoded" in r.stdout

    res = json.loads((tmp_path / "bench.json").read_text())
    assert {"meta", "measurements", "targets", "notes"} <= res.keys()
    meta = res["meta"]
    assert meta["config"]["quick"] is True
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu"]

    m = res["measurements"]
    required = list(REQUIRED)
    if importlib.util.find_spec("tensorstore"):
        required += [f"slice.{p}.tensorstore_{k}" for p in PLANES for k in ("raw", "encoded")]
    if importlib.util.find_spec("zarr"):
        required += [f"slice.{p}.zarr_{k}" for p in PLANES for k in ("raw", "encoded")]
    if "labels" in res["notes"]:
        assert res["notes"]["labels"].startswith("skipped")
    else:
        required += [f"labels.{p}.{k}" for p in PLANES for k in ("api_raw", "mount_cold")]
    missing = [k for k in required if k not in m]
    assert not missing, f"missing measurements: {missing}"
    for key, e in m.items():
        assert isinstance(e["value"], (int, float)) and e["value"] > 0, (key, e)
        assert e["n"] == len(e["samples"]) >= 1 and all(s > 0 for s in e["samples"]), key

    rows = res["targets"]
    assert len(rows) >= 17
    measured = [row for row in rows if row["ratio"] is not None]
    for row in measured:
        assert row["ratio"] > 0 and isinstance(row["ok"], bool) and row["op"] in ("<=", ">="), row
    names = {row["name"] for row in measured}
    for must in ("xy mount cold / in-process encoded", "scroll 64 consecutive / 64 spread",
                 "throughput 2 readers / 1 reader", "import rate api / bare plyvel"):
        assert must in names, must

    chart = tmp_path / "bench.png"
    with Image.open(chart) as im:
        im.verify()
    with Image.open(chart) as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
