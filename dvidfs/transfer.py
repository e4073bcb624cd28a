"""Import and export of whole volumes: folders of slices, multi-page TIFFs, .npy.

Sources are read slab by slab (one block-row of z planes at a time) so a 1 GiB
stack never needs to fit in memory twice, and each slab is one atomic write.
Everything is validated before the first write (every slice of a folder is
decoded once in advance, a volume's values are range-checked), so a bad stack
changes nothing: an import is all or nothing, short of a crash or a full disk.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterator

import numpy as np

from dvidfs.data.volume import BlockVolume
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats.images import decode_image, encode_png_stored
from dvidfs.versions.model import Node

IMAGE_EXT = (".png", ".tif", ".tiff")


def natural_key(name: str):
    """Sort 'z2.png' before 'z10.png' (what Fiji's Image Sequence does)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class VolumeSource:
    """A [z, y, x] volume readable by z-ranges, whatever the file layout."""

    def __init__(self, path: str, dtype: np.dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        if os.path.isdir(path):
            names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXT)
                            and not n.startswith(".")), key=natural_key)
            if not names:
                raise InvalidInputError(f"{path}: no .png/.tif slices in this folder")
            self._files = [os.path.join(path, n) for n in names]
            first = self._slice(0)
            self.shape = (len(names),) + first.shape
            self._get = self._slices
        elif path.lower().endswith(".npy"):
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{path}: not a readable .npy file ({exc})") from None
            self._use_array(arr)
        elif path.lower().endswith((".tif", ".tiff")):
            import tifffile
            try:
                arr = tifffile.imread(path)
            except Exception as exc:  # tifffile raises many types for corrupt files
                raise InvalidInputError(f"{path}: not a readable TIFF ({exc})") from None
            self._use_array(arr)
        elif not os.path.exists(path):
            raise NotFoundError(f"{path}: no such file or folder")
        else:
            raise InvalidInputError(f"{path}: import takes a folder of PNG/TIFF slices, a TIFF stack or a .npy")

    def _use_array(self, arr: np.ndarray) -> None:
        """A whole-volume source (.npy memory map, TIFF stack): 2-D is one plane."""
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InvalidInputError(f"{self.path}: expected a 2-D or 3-D [z, y, x] volume, got shape {arr.shape}")
        self.shape, self._arr = arr.shape, arr
        self._get = lambda z0, z1: np.asarray(self._arr[z0:z1])

    def _slice(self, i: int) -> np.ndarray:
        with open(self._files[i], "rb") as f:
            data = f.read()
        try:
            return decode_image(data, self.dtype)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self._files[i]}: {exc}") from None

    def _slices(self, z0: int, z1: int) -> np.ndarray:
        planes = [self._slice(i) for i in range(z0, z1)]
        for i, p in zip(range(z0, z1), planes):
            if p.shape != self.shape[1:]:
                raise InvalidInputError(f"{self._files[i]}: slice is {p.shape[1]}x{p.shape[0]}, the stack "
                                        f"is {self.shape[2]}x{self.shape[1]} (all slices must match)")
        return np.stack(planes)

    def validate(self, progress: Callable[[int], None] | None = None) -> None:
        """Every check that can fail, before anything is written, so an import is
        all or nothing: every slice of a folder is decoded (its size and every
        value must fit), and a whole-volume array's values are range-checked.
        Costs one extra decode per slice; a refused import changes nothing."""
        if hasattr(self, "_files"):
            for i in range(len(self._files)):
                p = self._slice(i)
                if p.shape != self.shape[1:]:
                    raise InvalidInputError(f"{self._files[i]}: slice is {p.shape[1]}x{p.shape[0]}, the stack "
                                            f"is {self.shape[2]}x{self.shape[1]} (all slices must match)")
                if progress:
                    progress(1)
            return
        arr, target = self._arr, self.dtype
        if arr.dtype == target or arr.dtype.kind == "b":
            return
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(f"{self.path}: holds {arr.dtype} values; {target} is stored "
                                    "(convert to integers first)")
        info = np.iinfo(target)
        for z in range(0, arr.shape[0], 64):  # bounded memory for memory-mapped .npy files
            part = np.asarray(arr[z:z + 64])
            lo, hi = int(part.min()), int(part.max())
            if lo < info.min or hi > info.max:
                raise InvalidInputError(f"{self.path}: values {lo}..{hi} in planes {z}..{z + len(part) - 1} "
                                        f"do not fit {target} ({info.min}..{info.max}); nothing was imported")

    def slabs(self, z_origin: int, thickness: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first z index, slab) aligned so that z_origin + index falls on block boundaries."""
        nz = self.shape[0]
        z = 0
        while z < nz:
            end = min(nz, z + thickness - ((z_origin + z) % thickness))
            yield z, self._get(z, end)
            z = end


def import_volume(vol: BlockVolume, node: Node, source: "str | VolumeSource", offset=(0, 0, 0),
                  progress: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """Write a whole source into `vol` at `offset`; returns the (x, y, z) size written.
    All or nothing for bad input: every slice is checked before the first write
    (`VolumeSource.validate`).  Each slab is atomic; only a crash or a full disk
    part-way leaves the earlier slabs written."""
    src = source if isinstance(source, VolumeSource) else VolumeSource(source, vol.dtype)
    vol.check_writable(node)
    src.validate()
    for z, slab in src.slabs(offset[2], vol.grid.size[2]):
        vol.write(node, (offset[0], offset[1], offset[2] + z), slab)
        if progress:
            progress(slab.shape[0])
    return (src.shape[2], src.shape[1], src.shape[0])


def export_volume(vol: BlockVolume, view, out: str, offset=None, size=None,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """Write a box (default: the extents) to a .npy, a .tif stack, or a folder of xy PNGs."""
    ext = vol.require_extents(view)
    offset = tuple(offset) if offset else ext.lo
    size = tuple(size) if size else tuple(h - o for h, o in zip(ext.hi, offset))
    sx, sy, sz = size
    low = out.lower()
    if low.endswith(".npy"):
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=vol.dtype, shape=(sz, sy, sx))
        step = vol.grid.size[2]
        for z in range(0, sz, step):
            n = min(step, sz - z)
            arr[z:z + n] = vol.read(view, (offset[0], offset[1], offset[2] + z), (sx, sy, n))
            if progress:
                progress(n)
        arr.flush()
    elif low.endswith((".tif", ".tiff")):
        import tifffile
        with tifffile.TiffWriter(out, bigtiff=sx * sy * sz * vol.dtype.itemsize > 2**31) as tw:
            for z in range(sz):
                tw.write(vol.read(view, (offset[0], offset[1], offset[2] + z), (sx, sy, 1))[0],
                         contiguous=True)
                if progress:
                    progress(1)
    else:
        if os.path.splitext(out.rstrip("/"))[1]:
            raise InvalidInputError(f"{out}: export writes .npy, .tif/.tiff, or a folder of PNG slices "
                                    f"(a name without an extension); {os.path.splitext(out.rstrip('/'))[1]} "
                                    f"is not one of them")
        if vol.dtype != np.uint8:
            raise InvalidInputError("a folder of PNGs holds 8-bit slices; export labels to .npy or .tif")
        os.makedirs(out, exist_ok=True)
        width = max(5, len(str(offset[2] + sz)))
        for z in range(sz):
            img = vol.read(view, (offset[0], offset[1], offset[2] + z), (sx, sy, 1))[0]
            with open(os.path.join(out, f"{offset[2] + z:0{width}d}.png"), "wb") as f:
                f.write(encode_png_stored(img))
            if progress:
                progress(1)
    return size
