"""Peer readers for scripts/bench.py: tensorstore and zarr-python on a zarr v3 copy.

The copy holds exactly the benchmark's voxels in 64³ chunks with the blosc
codec (lz4, clevel 5, no shuffle: uint8 has nothing to shuffle), the layout a
connectomics lab would publish today.  Both peers read it "cold" the same way
dvidfs is read cold: no chunk cache of their own (tensorstore's cache pool is
0 bytes; zarr-python has none), the OS page cache warm.

Peers are installed only for the benchmark: `ensure_peers(install=True)`
pip-installs them into the running venv when missing (the full run does);
`--quick` never installs and skips what is not importable.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from typing import Callable

import numpy as np

CHUNK = 64
PIP_SPECS = {"tensorstore": "tensorstore", "zarr": "zarr>=3"}


def _importable(name: str):
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 -- a broken install counts as missing
        return None
    if name == "zarr" and int(mod.__version__.split(".")[0]) < 3:
        return None  # zarr v2 cannot read zarr v3 arrays
    return mod


def ensure_peers(install: bool, log=print) -> dict[str, object]:
    """{'tensorstore': module, 'zarr': module} for the peers that are usable."""
    found = {n: _importable(n) for n in PIP_SPECS}
    missing = [n for n, m in found.items() if m is None]
    if missing and install:
        specs = [PIP_SPECS[n] for n in missing]
        log(f"bench: installing peers for the benchmark: {' '.join(specs)}")
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *specs], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"bench: pip install failed, peers skipped:\n{r.stderr.strip()[-2000:]}")
        importlib.invalidate_caches()
        for n in missing:
            found[n] = _importable(n)
    return {n: m for n, m in found.items() if m is not None}


def _ts_spec(path: str, shape=None) -> dict:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK] * 3}},
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": [{"name": "bytes"},
                       {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5,
                                                           "shuffle": "noshuffle", "typesize": 1,
                                                           "blocksize": 0}}],
        }
    return spec


def build_zarr(path: str, shape_zyx: tuple[int, int, int], slabs, peers: dict, log=print) -> None:
    """Write a zarr v3 array at `path` from `slabs` (an iterable of (z0, uint8 [z, y, x]))."""
    if os.path.exists(path):
        shutil.rmtree(path)
    if "tensorstore" in peers:
        ts = peers["tensorstore"]
        arr = ts.open(_ts_spec(path, shape_zyx), create=True, delete_existing=True).result()
        for z0, slab in slabs:
            arr[z0:z0 + slab.shape[0]].write(slab).result()
    else:
        zarr = peers["zarr"]
        from zarr.codecs import BloscCodec
        arr = zarr.create_array(store=path, shape=shape_zyx, chunks=(CHUNK,) * 3, dtype="uint8",
                                compressors=BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
                                fill_value=0, zarr_format=3, overwrite=True)
        for z0, slab in slabs:
            arr[z0:z0 + slab.shape[0]] = slab
    with open(os.path.join(path, "zarr.json")) as f:
        meta = json.load(f)
    log(f"bench: zarr v3 copy at {path}: chunks {meta['chunk_grid']['configuration']['chunk_shape']}, "
        f"codecs {[c['name'] for c in meta['codecs']]}")


def _index(plane: str, coord: int):
    """numpy [z, y, x] index of a slice, giving the same (height, width) image as
    dvidfs' volume_to_image (xy: (y, x); xz: (z, x); yz: (z, y))."""
    if plane == "xy":
        return np.s_[coord, :, :]
    if plane == "xz":
        return np.s_[:, coord, :]
    return np.s_[:, :, coord]


def slice_readers(path: str, peers: dict) -> dict[str, Callable[[str, int], np.ndarray]]:
    """name -> fn(plane, coord) -> 2-D uint8 image, for each available peer."""
    out: dict[str, Callable[[str, int], np.ndarray]] = {}
    if "tensorstore" in peers:
        ts = peers["tensorstore"]
        ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        tarr = ts.open(_ts_spec(path), context=ctx, open=True, read=True).result()

        def ts_read(plane: str, coord: int) -> np.ndarray:
            return np.asarray(tarr[_index(plane, coord)].read().result())
        out["tensorstore"] = ts_read
    if "zarr" in peers:
        zarr = peers["zarr"]
        zarr_arr = zarr.open_array(path, mode="r")

        def zarr_read(plane: str, coord: int) -> np.ndarray:
            return np.asarray(zarr_arr[_index(plane, coord)])
        out["zarr"] = zarr_read
    return out
