#!/usr/bin/env python3
"""Regenerate the pictures in docs/img/ (run from the checkout: `.venv/bin/python
scripts/make_doc_images.py`).  Every run writes the same bytes.

- docs/img/sample-slice.png: slice z=64 of the demo's sample (`dvidfs sample`,
  256x256x128, seed 0) as the mount shows it: the grayscale slice
  (`<gray>/xy/00064.png`) and, beside it, the label slice coloured per body
  as in `<labels>/xy-rgb/00064.png` (`formats.images.label_colors`).
- docs/img/dag.svg: the version DAG after README's worked session (`dvidfs dag
  sample --svg`): the session's version operations replayed on that store
  (branch `edits` as `scripts/demo` makes it, commit, branches alice and bob,
  commits, merge), with the UUIDs fixed to the ones README's `dvidfs log` shows.
- docs/img/bench.png: the chart `scripts/bench` draws (its own `draw_chart`),
  fed with the medians and ratios of the full run documented in
  docs/performance.md ("Results"), so the picture and the tables agree.  A new
  full run writes its own chart to bench-out/bench.png.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from dvidfs.core import Dvid  # noqa: E402
from dvidfs.dagsvg import dag_svg  # noqa: E402
from dvidfs.formats.images import label_colors  # noqa: E402
from dvidfs.formats.labelpng import encode_png  # noqa: E402
from dvidfs.samplestore import build_sample_store  # noqa: E402
from dvidfs.versions import dag as dag_module  # noqa: E402

IMG = ROOT / "docs" / "img"
SIZE, Z = (256, 256, 128), 64          # scripts/demo's sample, its middle slice


def fixed_uuid(prefix: str) -> str:
    """A 32-hex UUID starting with README's 8-digit `prefix`, the same every run."""
    return prefix + hashlib.sha256(prefix.encode()).hexdigest()[:24]


# README's `dvidfs -s demo-store log sample:alice`, oldest first
UUIDS = {name: fixed_uuid(p) for name, p in
         [("master", "27f79b9f"), ("edits", "0d0b0b8d"), ("alice", "dd8690e0"),
          ("bob", "49a17ddc"), ("merge", "41954a05")]}


@contextmanager
def root_uuid(uuid: str):
    """`build_sample_store` (`dvidfs sample`) lets the DAG pick the root's UUID:
    hand it a fixed one."""
    saved = dag_module.new_uuid
    dag_module.new_uuid = lambda: uuid
    try:
        yield
    finally:
        dag_module.new_uuid = saved


def sample_slice_png(s: Dvid, node) -> bytes:
    gray = s.read_slice(node, s.data(node, "grayscale"), "xy", Z)
    labels = s.read_slice(node, s.data(node, "segmentation"), "xy", Z)
    h, w = gray.shape
    gap = 8
    out = np.full((h, 2 * w + gap, 3), 255, np.uint8)
    out[:, :w] = gray[..., None]
    out[:, w + gap:] = label_colors(labels)
    return encode_png(out, level=9)


def replay_session(s: Dvid):
    """README's worked session, version operations only (the slice, rsync and
    body edits change data, not the DAG)."""
    repo = s.repo("sample")
    root = s.node(repo.root)
    edits = s.branch(root, "edits", "demo edits", uuid=UUIDS["edits"])     # scripts/demo
    s.commit(edits, "fixed slice 1")
    alice = s.branch(edits, "alice", uuid=UUIDS["alice"])
    bob = s.branch(edits, "bob", uuid=UUIDS["bob"])
    s.commit(alice, "done")
    s.commit(bob, "done")
    s.merge([alice, bob], f"merge of {alice.uuid[:8]} and {bob.uuid[:8]}", uuid=UUIDS["merge"])
    return repo


def bench_chart(path: Path) -> None:
    """scripts/bench's chart of the documented full run (docs/performance.md, Results)."""
    import bench
    ms = 1e-3
    table = {  # plane: mount cold, mount warm, read_slice, read_slice + encode, tensorstore, zarr + encode
        "xy": (5.05, 0.16, 3.54, 4.02, 8.81, 61.3),
        "xz": (5.27, 0.12, 3.67, 4.13, 8.16, 60.9),
        "yz": (7.96, 0.14, 5.92, 6.39, 8.24, 62.1),
    }
    keys = ("mount_cold", "mount_warm", "api_raw", "api_encoded", "tensorstore_raw", "zarr_encoded")
    R = {f"slice.{p}.{k}": v * ms for p, vals in table.items() for k, v in zip(keys, vals)}
    rows = [dict(name=n, ratio=r, target=t, op=op, ok=(r <= t if op == "<=" else r >= t))
            for n, r, op, t in [
                ("xy mount cold / in-process encoded", 1.26, "<=", 1.3),
                ("xz mount cold / in-process encoded", 1.28, "<=", 1.3),
                ("yz mount cold / in-process encoded", 1.25, "<=", 1.3),
                ("xy mount cold / tensorstore raw", 0.57, "<=", 1.0),
                ("xz mount cold / tensorstore raw", 0.65, "<=", 1.0),
                ("yz mount cold / tensorstore raw", 0.97, "<=", 1.0),
                ("xy zarr-python read+encode / mount cold", 12.1, ">=", 8),
                ("xz zarr-python read+encode / mount cold", 11.6, ">=", 8),
                ("yz zarr-python read+encode / mount cold", 7.8, ">=", 8),
                ("scroll 64 consecutive / 64 spread", 0.14, "<=", 0.3),
                ("throughput 2 readers / 1 reader", 0.94, ">=", 1.7),
                ("import rate api / bare plyvel", 0.83, ">=", 0.7),
                ("commit at 1 GiB / at 1 MiB", 0.90, "<=", 1.2),
                ("branch at 1 GiB / at 1 MiB", 1.06, "<=", 1.2),
                ("merge at 1 GiB / at 1 MiB", 1.01, "<=", 1.2),
                ("slice at depth 100 / depth 1", 1.07, "<=", 1.2),
                ("mount peak RSS (VmHWM) / caches + 200 MB", 1.46, "<=", 1.0),
                ("mount peak anon RSS / caches + 200 MB", 0.28, "<=", 1.0),
                ("labels sparsevol of largest body / numpy", 0.05, "<=", 0.5),
                ("labels merge of 2 largest / 2 median bodies", 0.39, "<=", 2),
            ]]
    ctx = SimpleNamespace(R=R, cfg=SimpleNamespace(quick=False, gray=1024))
    meta = {"machine": {"date": "2026-11-25T06:07Z", "cpu": "AMD EPYC", "nproc": 2}}
    bench.draw_chart(ctx, rows, meta, path)


def main() -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dvidfs-doc-images-") as tmp:
        with Dvid(Path(tmp) / "store", create=True) as s:
            with root_uuid(UUIDS["master"]):
                build_sample_store(s, SIZE, repo="sample", seed=0, extras=True)   # as `dvidfs sample`
            root = s.node("sample")
            (IMG / "sample-slice.png").write_bytes(sample_slice_png(s, root))
            repo = replay_session(s)
            svg = dag_svg(s.repo_nodes(repo), title="repo sample after README's worked session")
            (IMG / "dag.svg").write_text(svg, encoding="utf-8")
    bench_chart(IMG / "bench.png")
    for name in ("sample-slice.png", "dag.svg", "bench.png"):
        print(f"{(IMG / name).relative_to(ROOT)}: {(IMG / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
