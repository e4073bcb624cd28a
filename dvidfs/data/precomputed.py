"""A volume at one node as a neuroglancer "precomputed" volume (read-only).

The same view is shown by the mount (`<inst>/precomputed/…`, fs/precomputed.py)
and by `dvidfs serve` (`/precomputed/<repo>/<uuid>/<inst>/…`,
server/precomputed.py); both ask this module for the `info` JSON, the chunk
names of a scale and each chunk's bytes.  Layout (../shared/docs/precomputed.md):

    info                                        JSON, one scale per pyramid level
    s<n>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>          one chunk, unsharded, plain name

* One scale per level: level 0 and every stored pyramid level
  (data/pyramid.py), key `s<n>`, resolution VoxelSize x 2^n.
* Chunks are our blocks: `chunk_sizes` = the block size and `voxel_offset` is
  the level's extents rounded down to a block, so each chunk is one block of
  that level (clipped at the upper edge of the extents, as the format wants).
* Grayscale: `image`, uint8, `raw` encoding (exact size: the voxel count).
  Labels: `segmentation`, uint64 body ids (the mapping applied),
  `compressed_segmentation` with 8³ blocks, encoded by the PyPI
  `compressed-segmentation` package (bytes identical to CloudVolume's); its
  size is only known by encoding, so the mount caches encoded chunks per
  write generation (its render cache) and a `stat` encodes once.
* Every chunk of the grid exists, background ones included: CloudVolume with
  `fill_missing=False` refuses a missing chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import compressed_segmentation
import numpy as np

from dvidfs.data.downres import scale_box
from dvidfs.data.volume import BlockVolume
from dvidfs.geometry import XYZ, Box
from dvidfs.store.versioned import VersionView

CHUNK_RE = re.compile(r"(-?[0-9]+)-(-?[0-9]+)_(-?[0-9]+)-(-?[0-9]+)_(-?[0-9]+)-(-?[0-9]+)")
SEGMENTATION_BLOCK = (8, 8, 8)


@dataclass(frozen=True)
class Scale:
    level: int
    key: str
    offset: XYZ        # voxel_offset: the level's extents rounded down to a block
    size: XYZ          # voxels from `offset` to the upper edge of the extents
    chunk: XYZ         # the block size
    resolution: tuple[float, float, float]

    def grid(self) -> XYZ:
        return tuple(-(-s // c) for s, c in zip(self.size, self.chunk))

    def chunk_box(self, g: XYZ) -> Box:
        lo = tuple(o + i * c for o, i, c in zip(self.offset, g, self.chunk))
        hi = tuple(min(l + c, o + s) for l, c, o, s in zip(lo, self.chunk, self.offset, self.size))
        return Box(lo, hi)

    def chunk_at(self, i: int) -> Box:
        """Chunk number i, x fastest (the listing order)."""
        gx, gy, _ = self.grid()
        return self.chunk_box((i % gx, i // gx % gy, i // (gx * gy)))

    def count(self) -> int:
        gx, gy, gz = self.grid()
        return gx * gy * gz

    def parse(self, name: str) -> Box | None:
        """The box a chunk file name stands for, if it is exactly a chunk of this scale."""
        m = CHUNK_RE.fullmatch(name)
        if m is None:
            return None
        v = [int(t) for t in m.groups()]
        lo = (v[0], v[2], v[4])
        g = tuple((l - o) // c for l, o, c in zip(lo, self.offset, self.chunk))
        if any(i < 0 or i >= n for i, n in zip(g, self.grid())):
            return None
        box = self.chunk_box(g)
        return box if chunk_name(box) == name else None


def chunk_name(box: Box) -> str:
    return "_".join(f"{l}-{h}" for l, h in zip(box.lo, box.hi))


class Precomputed:
    """The precomputed view of volume `vol` as seen from `view` (cheap to make:
    the extents and the pyramid record, two point reads)."""

    def __init__(self, vol: BlockVolume, view: VersionView):
        self.vol = vol
        self.view = view
        self.labels = vol.dtype == np.uint64
        ext = vol.extents(view)
        self.scales: list[Scale] = []
        if ext is not None:
            b = vol.grid.size
            vs = [float(v) for v in vol.inst.config.get("VoxelSize", (8.0, 8.0, 8.0))]
            for n in range(vol.pyramid_levels(view) + 1):
                e = scale_box(ext, n)
                off = tuple(l // c * c for l, c in zip(e.lo, b))
                self.scales.append(Scale(n, f"s{n}", off, tuple(h - o for h, o in zip(e.hi, off)), b,
                                         tuple(v * (1 << n) for v in vs)))

    def scale(self, key: str) -> Scale | None:
        return next((s for s in self.scales if s.key == key), None)

    def info(self) -> dict:
        enc = {"encoding": "compressed_segmentation",
               "compressed_segmentation_block_size": list(SEGMENTATION_BLOCK)} if self.labels else {"encoding": "raw"}
        return {"@type": "neuroglancer_multiscale_volume",
                "type": "segmentation" if self.labels else "image",
                "data_type": str(self.vol.dtype), "num_channels": 1,
                "scales": [{"key": s.key, "size": list(s.size), "voxel_offset": list(s.offset),
                            "resolution": [int(r) if r == int(r) else r for r in s.resolution],
                            "chunk_sizes": [list(s.chunk)], **enc} for s in self.scales]}

    def raw_size(self, box: Box) -> int | None:
        """A chunk's size in bytes when it is known without reading it (raw encoding)."""
        if self.labels:
            return None
        sx, sy, sz = box.size
        return sx * sy * sz * self.vol.dtype.itemsize

    def chunk(self, scale: Scale, box: Box) -> bytes:
        """The chunk's bytes: raw voxels x fastest, or compressed_segmentation of body ids."""
        arr = self.vol.read(self.view, box.lo, box.size, scale=scale.level)   # [z, y, x]; labels mapped
        if not self.labels:
            return np.ascontiguousarray(arr).tobytes()   # C order of [z, y, x] = Fortran order of (x, y, z)
        return compressed_segmentation.compress(np.ascontiguousarray(arr, dtype="<u8").T,
                                                block_size=SEGMENTATION_BLOCK, order="F")
