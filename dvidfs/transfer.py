"""Import and export of whole volumes: folders of slices, multi-page TIFFs, .npy.

Sources are read slab by slab (one block-row of z planes at a time) so a 1 GiB
stack never needs to fit in memory twice, and each slab is one atomic write.
Everything is validated before the first write (every slice of a folder is
decoded once in advance, a volume's values are range-checked), so a bad stack
changes nothing: an import is all or nothing, short of a crash or a full disk.

Grayscale is stored as uint8.  A 16-bit (or float) stack is refused unless the
import says how to convert it: `rescale` maps the stack's min..max linearly
onto 0..255 (one mapping for the whole stack, found in the validation pass),
`clip` keeps 0..255 and saturates the rest (fractions rounded).

Exported TIFFs carry the instance's voxel size (formats/images.py): ImageJ's
resolution, unit and z spacing for 8-bit stacks, XResolution/YResolution in
pixels per centimetre for labels.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterator

import numpy as np

from dvidfs.data.volume import BlockVolume
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats.images import decode_image, encode_png_stored, tiff_voxel_kwargs, voxel_spec
from dvidfs.versions.model import Node

IMAGE_EXT = (".png", ".tif", ".tiff")
CONVERSIONS = ("rescale", "clip")
EXPORT_FORMATS = ".npy, .tif/.tiff (a stack), or a folder of PNG slices (a name without an extension)"
_TO_8BIT = ("import with --rescale (min..max -> 0..255) or --clip (to 0..255), or convert the stack to 8 bits "
            "first (Fiji: Image > Type > 8-bit)")


def check_export_name(out: str) -> None:
    low = out.lower().rstrip("/")
    suffix = os.path.splitext(low)[1]
    if suffix and suffix not in (".npy", ".tif", ".tiff"):
        raise InvalidInputError(f"{out}: cannot export to {suffix}; export writes {EXPORT_FORMATS}")


def natural_key(name: str):
    """Sort 'z2.png' before 'z10.png' (what Fiji's Image Sequence does)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _value_range(parts) -> tuple[float, float]:
    """min..max over arrays, NaNs ignored; (0, 0) when there is no number at all."""
    lo, hi = np.inf, -np.inf
    for part in parts:
        if part.dtype.kind == "f" and np.isnan(part).all():
            continue
        lo, hi = min(lo, float(np.nanmin(part))), max(hi, float(np.nanmax(part)))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


class VolumeSource:
    """A [z, y, x] volume readable by z-ranges, whatever the file layout."""

    def __init__(self, path: str, dtype: np.dtype, convert: str | None = None):
        self.path, self.dtype = path, np.dtype(dtype)
        if convert is not None and convert not in CONVERSIONS:
            raise InvalidInputError(f"unknown conversion {convert!r}: rescale or clip")
        if convert is not None and self.dtype != np.uint8:
            raise InvalidInputError(f"--{convert} converts to 8-bit grayscale; {self.dtype} volumes "
                                    "(labels) store their values exactly")
        self.convert = convert
        self._range: tuple[float, float] | None = None   # the stack's min..max (rescale)
        if os.path.isdir(path):
            names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXT)
                            and not n.startswith(".")), key=natural_key)
            if not names:
                raise InvalidInputError(f"{path}: no .png/.tif slices in this folder")
            self._files = [os.path.join(path, n) for n in names]
            first = self._slice(0, raw=True)
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
        self._get = lambda z0, z1: self._converted(np.asarray(self._arr[z0:z1]))

    def _slice(self, i: int, raw: bool = False) -> np.ndarray:
        """Slice i as stored (converted), or with `raw` as decoded (float64 when converting)."""
        with open(self._files[i], "rb") as f:
            data = f.read()
        try:
            if self.convert is None:
                return decode_image(data, self.dtype)
            img = decode_image(data, np.float64)
            return img if raw else self._converted(img)
        except InvalidInputError as exc:
            if self.convert is None and self.dtype == np.uint8:
                try:  # a readable image whose values are not 8-bit: say how to import it
                    wide = decode_image(data, np.float64)
                except InvalidInputError:
                    wide = None
                if wide is not None:
                    raise InvalidInputError(f"{self._files[i]}: {self._not_8bit(wide)}") from None
            raise InvalidInputError(f"{self._files[i]}: {exc}") from None

    @staticmethod
    def _not_8bit(arr: np.ndarray) -> str:
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        return f"values {lo:g}..{hi:g} are not uint8 (0..255), which grayscale stores; {_TO_8BIT}"

    def _converted(self, arr: np.ndarray) -> np.ndarray:
        """`arr` as the stored dtype, by the import's conversion (none: as it is).
        Plane by plane, so a slab costs one float64 plane of scratch memory."""
        if self.convert is None:
            return arr
        if self.convert == "rescale" and self._range is None:
            self.validate()   # the stack's min..max, from every slice
        if arr.ndim == 3:
            out = np.empty(arr.shape, dtype=np.uint8)
            for i in range(arr.shape[0]):
                out[i] = self._converted(arr[i])
            return out
        a = np.asarray(arr, dtype=np.float64)
        if self.convert == "rescale":
            lo, hi = self._range
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0, 255)).astype(np.uint8)

    def _slices(self, z0: int, z1: int) -> np.ndarray:
        return np.stack([self._fitting(i, self._slice(i)) for i in range(z0, z1)])

    def _fitting(self, i: int, plane: np.ndarray) -> np.ndarray:
        """Slice i's plane, refused unless it has the stack's width and height."""
        if plane.shape != self.shape[1:]:
            raise InvalidInputError(f"{self._files[i]}: slice is {plane.shape[1]}x{plane.shape[0]}, the stack "
                                    f"is {self.shape[2]}x{self.shape[1]} (all slices must match)")
        return plane

    def validate(self, progress: Callable[[int], None] | None = None) -> None:
        """Every check that can fail, before anything is written, so an import is
        all or nothing: every slice of a folder is decoded (its size and every
        value must fit), and a whole-volume array's values are range-checked.
        Costs one extra decode per slice; a refused import changes nothing."""
        if hasattr(self, "_files"):
            def planes():
                for i in range(len(self._files)):
                    yield self._fitting(i, self._slice(i, raw=True))
                    if progress:
                        progress(1)
            if self.convert == "rescale":
                self._range = _value_range(planes())
            else:
                for _ in planes():
                    pass
            return
        arr, target = self._arr, self.dtype
        if self.convert is not None:
            if arr.dtype.kind not in "uifb":
                raise InvalidInputError(f"{self.path}: holds {arr.dtype} values, not numbers to convert")
            # 64 planes at a time: bounded memory for memory-mapped .npy files
            self._range = _value_range(np.asarray(arr[z:z + 64]) for z in range(0, arr.shape[0], 64))
            return
        if arr.dtype == target or arr.dtype.kind == "b":
            return
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(f"{self.path}: holds {arr.dtype} values; {target} is stored "
                                    + (f"({_TO_8BIT})" if target == np.uint8 else "(convert to integers first)"))
        info = np.iinfo(target)
        for z in range(0, arr.shape[0], 64):  # bounded memory for memory-mapped .npy files
            part = np.asarray(arr[z:z + 64])
            lo, hi = int(part.min()), int(part.max())
            if lo < info.min or hi > info.max:
                raise InvalidInputError(f"{self.path}: values {lo}..{hi} in planes {z}..{z + len(part) - 1} "
                                        f"do not fit {target} ({info.min}..{info.max}); nothing was imported"
                                        + (f"; {_TO_8BIT}" if target == np.uint8 else ""))

    def slabs(self, z_origin: int, thickness: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first z index, slab) aligned so that z_origin + index falls on block boundaries."""
        nz = self.shape[0]
        z = 0
        while z < nz:
            end = min(nz, z + thickness - ((z_origin + z) % thickness))
            yield z, self._get(z, end)
            z = end


def import_volume(vol: BlockVolume, node: Node, source: "str | VolumeSource", offset=(0, 0, 0),
                  progress: Callable[[int], None] | None = None,
                  convert: str | None = None) -> tuple[int, int, int]:
    """Write a whole source into `vol` at `offset`; returns the (x, y, z) size written.
    All or nothing for bad input: every slice is checked before the first write
    (`VolumeSource.validate`).  Each slab is atomic; only a crash or a full disk
    part-way leaves the earlier slabs written.  `convert` ("rescale", "clip"):
    how a grayscale import turns other values into uint8 (a path source only)."""
    src = source if isinstance(source, VolumeSource) else VolumeSource(source, vol.dtype, convert)
    vol.check_writable(node)
    src.validate()
    for z, slab in src.slabs(offset[2], vol.grid.size[2]):
        vol.write(node, (offset[0], offset[1], offset[2] + z), slab)
        if progress:
            progress(slab.shape[0])
    return (src.shape[2], src.shape[1], src.shape[0])


def export_volume(vol: BlockVolume, view, out: str, offset=None, size=None,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """Write a box (default: the extents) to a .npy, a .tif stack, or a folder of xy PNGs.
    Any other suffix is refused before anything is read or written."""
    check_export_name(out)
    view = vol.as_view(view)
    ext = vol.require_extents(view)
    offset = tuple(offset) if offset else ext.lo
    size = tuple(size) if size else tuple(h - o for h, o in zip(ext.hi, offset))
    sx, sy, sz = size
    low = out.lower().rstrip("/")
    step = vol.grid.size[2]

    def slabs():
        for z in range(0, sz, step):
            n = min(step, sz - z)
            yield z, vol.read(view, (offset[0], offset[1], offset[2] + z), (sx, sy, n))

    if low.endswith(".npy"):
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=vol.dtype, shape=(sz, sy, sx))
        for z, slab in slabs():
            arr[z:z + len(slab)] = slab
            if progress:
                progress(len(slab))
        arr.flush()
    elif low.endswith((".tif", ".tiff")):
        import tifffile
        bigtiff = sx * sy * sz * vol.dtype.itemsize > 2**31
        cfg = vol.inst.config
        spec = voxel_spec(cfg.get("VoxelSize"), cfg.get("VoxelUnits"), scale=getattr(vol, "scale", 0))
        tags = tiff_voxel_kwargs(vol.dtype, spec, imagej=False if bigtiff else None)  # ImageJ reads no BigTIFF
        if tags.get("imagej"):   # ImageJ's description: unit=, spacing= (z), images=
            tags["metadata"] = {**tags["metadata"], "axes": "ZYX"}
        else:                    # tifffile's JSON description (shape), with z as ImageJ names it
            tags["metadata"] = {} if spec is None else {"spacing": spec[2], "unit": spec[3]}

        def planes():
            for _, slab in slabs():
                for plane in slab:
                    yield plane
                    if progress:
                        progress(1)
        tifffile.imwrite(out, planes(), shape=(sz, sy, sx), dtype=vol.dtype, bigtiff=bigtiff,
                         photometric="minisblack", **tags)
    else:
        if vol.dtype != np.uint8:
            raise InvalidInputError("a folder of PNGs holds 8-bit slices; export labels to .npy or .tif")
        os.makedirs(out, exist_ok=True)
        width = max(5, len(str(offset[2] + sz)))
        for z, slab in slabs():
            for i, img in enumerate(slab):
                with open(os.path.join(out, f"{offset[2] + z + i:0{width}d}.png"), "wb") as f:
                    f.write(encode_png_stored(img))
                if progress:
                    progress(1)
    return size
