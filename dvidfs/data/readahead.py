"""Sequential slice read-ahead: what scrolling through a stack needs.

Fiji's virtual stack (and `for f in xy/*.png`) reads slice z, z+1, z+2 …
Assembling one slice decodes every block it crosses but uses one plane of each.
Once two neighbouring slices of a plane have been read, or two slices of the
same layer of blocks (stepping through a stack a few slices at a time), the
next read fetches the whole layer of blocks around it (one block thick along
the plane's axis) as a 3-D array, keeps it in a bounded LRU, and serves the
following slices as plain copies out of it.  Spread-out reads (slices in
different layers) never trigger it, so it costs nothing there.  For grayscale
these layers are the only reuse of decoded data across slices (the slice path
skips the decoded-block cache, see BlockVolume._paste_native).

Layers are keyed by (instance, node version, write generation of the node,
plane, thickness, layer index): a write makes them unreachable.  A layer is a
whole block thick when a quarter of the budget holds it, thinner (a power-of-two
part of a block) for big slices.  Safe from several worker
threads: the LRU locks, and the sequence tracker only ever holds a hint.
"""
from __future__ import annotations

import numpy as np

from dvidfs.geometry import PLANE
from dvidfs.data.volume import BlockVolume
from dvidfs.store.cache import LRUCache
from dvidfs.store.versioned import VersionView


class ReadAhead:
    def __init__(self, budget: int = 192 << 20):
        self.layers = LRUCache(budget)
        self._last: dict[tuple, int] = {}  # (instance, version, plane) -> last coord read
        self._geom: dict[tuple, tuple] = {}  # (instance, version, plane) -> (generation, extents, thickness)

    def read_slice(self, vol: BlockVolume, view: VersionView, plane: str, coord: int) -> np.ndarray:
        track = (vol.inst.id, vol.scale, view.version, plane)   # level views have their own layers
        fixed = PLANE[plane].fixed
        b = vol.grid.size[fixed]
        last = self._last.get(track)
        # scrolling (the neighbour of the last slice) or browsing inside one
        # layer (a second slice of the same layer of blocks)
        sequential = last is not None and (abs(last - coord) == 1 or last // b == coord // b)
        self._last[track] = coord
        layer = None
        if sequential:
            gen = vol.generation(view)
            ext, t = self._geometry(vol, view, plane, gen)
            if t:
                key = (vol.inst.id, vol.scale, view.version, gen, plane, t, coord // t)
                layer = self.layers.get(key)
                if layer is None:
                    layer = self._load(vol, view, ext, plane, coord // t * t, t)
                    if layer is not None:
                        self.layers.put(key, layer)
        if layer is None:
            return vol.read_slice(view, plane, coord)
        start, arr = layer
        return np.ascontiguousarray(PLANE[plane].take(arr, coord - start))

    def _geometry(self, vol: BlockVolume, view: VersionView, plane: str, gen: int):
        """(extents, planes per layer) of the instance at `view`: remembered per
        write generation, so a scroll served from cached layers reads nothing.

        Planes per layer: a whole block layer when a quarter of the budget holds
        it, else the largest power-of-two part of one (a 2048² slice of 32³
        blocks: 8 planes), so big slices still decode each block once per few
        slices instead of once per slice.  0: no extents, or not even 2 planes fit."""
        track = (vol.inst.id, vol.scale, view.version, plane)
        known = self._geom.get(track)
        if known is not None and known[0] == gen:
            return known[1], known[2]
        ext, t = vol.extents(view), 0
        if ext is not None:
            p = PLANE[plane]
            w, h = p.dims(ext)
            plane_bytes = w * h * vol.dtype.itemsize
            t = vol.grid.size[p.fixed]
            while t >= 2 and t * plane_bytes > self.layers.budget // 4:
                t //= 2
            t = t if t >= 2 else 0
        self._geom[track] = (gen, ext, t)
        return ext, t

    def _load(self, vol: BlockVolume, view: VersionView, ext, plane: str, layer_lo: int,
              thickness: int):
        """The layer [layer_lo, layer_lo + thickness) clipped to the extents `ext`,
        or None if it is empty."""
        fixed = PLANE[plane].fixed
        lo, hi = max(layer_lo, ext.lo[fixed]), min(layer_lo + thickness, ext.hi[fixed])
        if hi <= lo:
            return None
        box = PLANE[plane].box(ext, lo)
        size = list(box.size)
        size[fixed] = hi - lo
        arr = vol.read(view, box.lo, tuple(size))
        arr.flags.writeable = False
        return _Layer(lo, arr)


class _Layer(tuple):
    """(first coordinate along the fixed axis, [z, y, x] array); sized by the array."""

    def __new__(cls, start: int, arr: np.ndarray):
        return super().__new__(cls, (start, arr))

    @property
    def nbytes(self) -> int:
        return self[1].nbytes

