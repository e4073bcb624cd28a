"""DVID sparse volumes as runs along X ("rles" / "srles"), bytes <-> numpy.

A run is one row ``[x, y, z, length]`` of an ``(n, 4)`` int32 array: voxels
``x .. x+length-1`` at ``(y, z)``, in global voxel coordinates.

Wire format ("rles", DVID's sparsevol default), all little-endian::

    uint8  descriptor   0 = binary (no per-voxel payload; the only kind we accept)
    uint8  dims         3
    uint8  run axis     0 (= X)
    uint8  reserved     (ignored on read, 0 on write)
    uint32 voxel count  (DVID always writes 0; ignored on read, 0 on write)
    uint32 span count
    span count * (int32 x, int32 y, int32 z, int32 length)

"srles" is the spans alone, without the 12-byte header.

DVID's canonical output has spans sorted by z, then y, then x, with touching
runs on a row coalesced; :func:`merge_runs` produces exactly that from any
collection of runs (e.g. per-block runs concatenated), and
:func:`runs_from_mask` produces it directly from a mask.

The decoders accept runs in any order and do not merge them (a split POST may
be unsorted); they reject truncation, trailing bytes, a non-binary descriptor,
dims != 3, run axis != 0, lengths <= 0, and runs whose last voxel overflows int32.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

import numpy as np

from dvidfs.errors import InvalidInputError
from dvidfs.formats.buffers import byte_view

__all__ = [
    "runs_from_mask", "encode_rles", "decode_rles", "encode_srles", "decode_srles",
    "merge_runs", "runs_voxel_count", "runs_to_mask", "runs_bbox", "mask_bbox", "clip_runs",
    "empty_runs",
]

_HEADER = struct.Struct("<BBBBII")
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_SPAN_BYTES = 16


def empty_runs() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.int32)


def _as_buffer(data) -> memoryview:
    return byte_view(data, "sparse volume")


def _check_runs(runs) -> np.ndarray:
    """Validate an (n, 4) [x, y, z, length] array and return it as native int32."""
    arr = np.asarray(runs)
    if arr.size == 0:
        if arr.ndim == 2 and arr.shape[1] != 4 or arr.ndim > 2:
            raise InvalidInputError(f"runs must have shape (n, 4), got {arr.shape}")
        return empty_runs()
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidInputError(f"runs must have shape (n, 4) [x, y, z, length], got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"runs must be integers, not {arr.dtype}")
    if arr.dtype != np.int32:
        if arr.min() < _I32_MIN or arr.max() > _I32_MAX:
            raise InvalidInputError("run coordinates and lengths must fit in int32")
        arr = arr.astype(np.int32)
    _check_lengths(arr)
    return arr


def _check_lengths(arr: np.ndarray) -> None:
    if len(arr) == 0:
        return
    lengths = arr[:, 3]
    if lengths.min() <= 0:
        i = int(np.argmin(lengths))
        raise InvalidInputError(
            f"run {i} at (x={int(arr[i, 0])}, y={int(arr[i, 1])}, z={int(arr[i, 2])}) "
            f"has length {int(lengths[i])}; lengths must be positive")
    last = arr[:, 0].astype(np.int64) + lengths - 1
    if last.max() > _I32_MAX:
        i = int(np.argmax(last))
        raise InvalidInputError(
            f"run {i} at x={int(arr[i, 0])} with length {int(lengths[i])} runs past the "
            f"int32 coordinate range")


# ----------------------------------------------------------------------------- bytes

def encode_srles(runs) -> bytes:
    """Spans only: n * (int32 x, y, z, length), little-endian, in the given order."""
    arr = _check_runs(runs)
    return arr.astype("<i4", copy=False).tobytes()


def encode_rles(runs) -> bytes:
    """12-byte binary sparsevol header + spans, in the given order (see merge_runs)."""
    arr = _check_runs(runs)
    return _HEADER.pack(0, 3, 0, 0, 0, len(arr)) + arr.astype("<i4", copy=False).tobytes()


def _decode_spans(mv: memoryview, offset: int, count: int) -> np.ndarray:
    arr = np.frombuffer(mv, dtype="<i4", count=4 * count, offset=offset)
    arr = arr.reshape(count, 4).astype(np.int32)   # native-endian copy
    _check_lengths(arr)
    return arr


def decode_srles(data) -> np.ndarray:
    """Spans only (no header) -> (n, 4) int32 [x, y, z, length]."""
    mv = _as_buffer(data)
    if len(mv) % _SPAN_BYTES:
        raise InvalidInputError(
            f"srles data is {len(mv)} bytes, not a multiple of {_SPAN_BYTES} (x, y, z, length)")
    return _decode_spans(mv, 0, len(mv) // _SPAN_BYTES)


def decode_rles(data) -> np.ndarray:
    """DVID "rles" sparse volume (header + spans) -> (n, 4) int32 [x, y, z, length]."""
    mv = _as_buffer(data)
    if len(mv) < _HEADER.size:
        raise InvalidInputError(
            f"sparse volume truncated: {len(mv)} bytes, the header needs {_HEADER.size}")
    descriptor, dims, axis, _reserved, _voxels, count = _HEADER.unpack_from(mv, 0)
    if descriptor != 0:
        raise InvalidInputError(
            f"sparse volume descriptor {descriptor} has a per-voxel payload; "
            f"only binary (0) sparse volumes are supported")
    if dims != 3:
        raise InvalidInputError(f"sparse volume has {dims} dimensions; only 3 are supported")
    if axis != 0:
        raise InvalidInputError(f"sparse volume runs along axis {axis}; only X (0) is supported")
    body = len(mv) - _HEADER.size
    if body != count * _SPAN_BYTES:
        what = "truncated" if body < count * _SPAN_BYTES else "has trailing bytes"
        raise InvalidInputError(
            f"sparse volume {what}: header says {count} spans ({count * _SPAN_BYTES} bytes) "
            f"but {body} bytes follow it")
    return _decode_spans(mv, _HEADER.size, count)


# ----------------------------------------------------------------------------- masks

def _offset3(offset_xyz) -> tuple[int, int, int]:
    try:
        ox, oy, oz = (int(v) for v in offset_xyz)
    except (TypeError, ValueError):
        raise InvalidInputError(f"offset must be three integers (x, y, z), got {offset_xyz!r}") from None
    return ox, oy, oz


def _bool_mask(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InvalidInputError(f"mask must be 3-D (z, y, x), got shape {m.shape}")
    return m if m.dtype == bool else m != 0


def runs_from_mask(mask: np.ndarray, offset_xyz=(0, 0, 0)) -> np.ndarray:
    """Maximal X runs of a (Z, Y, X) mask, global coords = index + offset, sorted z, y, x."""
    m = _bool_mask(mask)
    ox, oy, oz = _offset3(offset_xyz)
    nz, ny, nx = m.shape
    if m.size == 0:
        return empty_runs()
    if (min(ox, oy, oz) < _I32_MIN or ox + nx - 1 > _I32_MAX or oy + ny - 1 > _I32_MAX
            or oz + nz - 1 > _I32_MAX):
        raise InvalidInputError("mask extent with this offset does not fit int32 coordinates")

    rows = m.reshape(nz * ny, nx)
    live = np.flatnonzero(rows.any(axis=1))        # only rows that hold voxels
    if len(live) == 0:
        return empty_runs()
    if len(live) < len(rows):
        rows = rows[live]
    # Pad each row with a False column on both sides and look at changes along X:
    # +1 = run start (index of first voxel), -1 = run end (index one past the last).
    padded = np.zeros((len(rows), nx + 2), dtype=np.int8)
    padded[:, 1:-1] = rows
    d = np.diff(padded.ravel())                    # row-major, so results come out sorted
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    w = nx + 2
    row = starts // w
    x0 = starts - row * w                          # == x index of first voxel
    length = ends - starts
    rid = live[row]
    out = np.empty((len(starts), 4), dtype=np.int32)
    out[:, 0] = x0 + ox
    out[:, 1] = rid % ny + oy
    out[:, 2] = rid // ny + oz
    out[:, 3] = length
    return out


def runs_to_mask(runs, offset_xyz, shape_zyx) -> np.ndarray:
    """Bool (Z, Y, X) mask of the runs inside the box at offset_xyz; parts outside are dropped.

    Overlapping or touching runs are fine.
    """
    ox, oy, oz = _offset3(offset_xyz)
    try:
        nz, ny, nx = (int(v) for v in shape_zyx)
    except (TypeError, ValueError):
        raise InvalidInputError(f"shape must be three integers (z, y, x), got {shape_zyx!r}") from None
    if min(nz, ny, nx) < 0:
        raise InvalidInputError(f"shape must be non-negative, got {shape_zyx!r}")
    mask = np.zeros((nz, ny, nx), dtype=bool)
    if mask.size == 0:
        return mask
    r = clip_runs(runs, (ox, oy, oz), (ox + nx - 1, oy + ny - 1, oz + nz - 1))
    if len(r) == 0:
        return mask
    r = merge_runs(r)   # disjoint, non-touching: every start/end toggles a distinct cell
    x = r[:, 0].astype(np.int64) - ox
    y = r[:, 1].astype(np.int64) - oy
    z = r[:, 2].astype(np.int64) - oz
    base = (z * ny + y) * (nx + 1)
    toggle = np.zeros((nz, ny, nx + 1), dtype=np.uint8)
    flat = toggle.reshape(-1)
    flat[base + x] = 1
    flat[base + x + r[:, 3]] = 1
    # inside a run <=> an odd number of toggles at or before x
    np.bitwise_xor.accumulate(toggle, axis=2, out=toggle)
    return toggle[:, :, :nx].view(bool).copy()


# ----------------------------------------------------------------------------- run algebra

def merge_runs(runs) -> np.ndarray:
    """Sort by (z, y, x) and coalesce overlapping or touching runs on the same row.

    The result is DVID's canonical span list for the union of the runs.
    """
    arr = _check_runs(runs)
    if len(arr) == 0:
        return empty_runs()
    x = arr[:, 0].astype(np.int64)
    y = arr[:, 1].astype(np.int64)
    z = arr[:, 2].astype(np.int64)
    end = x + arr[:, 3]                              # exclusive
    xmin, ymin, zmin = x.min(), y.min(), z.min()
    xspan = int(end.max() - xmin) + 1
    yspan = int(y.max() - ymin) + 1
    zspan = int(z.max() - zmin) + 1
    if zspan * yspan * xspan >= 1 << 62:             # keys would overflow int64
        return _merge_runs_sweep(x, y, z, end)
    # One int64 key orders runs by (z, y, x); the same row offset plus the run's end
    # gives an "end key" that never reaches into the next row's key range.
    row = (z - zmin) * yspan + (y - ymin)
    base = row * xspan - xmin
    skey = base + x
    order = np.argsort(skey)
    skey = skey[order]
    ekey = (base + end)[order]
    reach = np.maximum.accumulate(ekey)              # furthest end so far (row-local)
    first = np.empty(len(skey), dtype=bool)          # run starts a new merged run
    first[0] = True
    np.greater(skey[1:], reach[:-1], out=first[1:])  # gap (not touching/overlapping)
    starts = np.flatnonzero(first)
    lasts = np.empty_like(starts)
    lasts[:-1] = starts[1:] - 1
    lasts[-1] = len(skey) - 1
    length = reach[lasts] - skey[starts]
    if length.max() > _I32_MAX:
        raise InvalidInputError("merged run longer than the int32 length field allows")
    src = order[starts]
    out = np.empty((len(starts), 4), dtype=np.int32)
    out[:, 0] = arr[src, 0]
    out[:, 1] = arr[src, 1]
    out[:, 2] = arr[src, 2]
    out[:, 3] = length
    return out


def _merge_runs_sweep(x, y, z, end) -> np.ndarray:
    """merge_runs for coordinates too spread out for packed int64 keys (slower)."""
    # Sweep: +1 at each start, -1 at each (exclusive) end; at equal x starts sort first
    # so touching runs join.  Coverage returns to 0 at the end of every row, so one
    # cumsum over all rows works: merged runs start where coverage goes 0 -> 1 and
    # end where it returns to 0.
    n = len(x)
    pos = np.concatenate((x, end))
    delta = np.concatenate((np.ones(n, np.int8), -np.ones(n, np.int8)))
    ey = np.concatenate((y, y))
    ez = np.concatenate((z, z))
    order = np.lexsort((-delta, pos, ey, ez))
    pos, delta, ey, ez = pos[order], delta[order], ey[order], ez[order]
    cover = np.cumsum(delta, dtype=np.int64)
    start_ev = np.flatnonzero((delta == 1) & (cover == 1))
    end_ev = np.flatnonzero(cover == 0)             # only ends can bring it back to 0
    length = pos[end_ev] - pos[start_ev]
    if length.max() > _I32_MAX:
        raise InvalidInputError("merged run longer than the int32 length field allows")
    out = np.empty((len(start_ev), 4), dtype=np.int32)
    out[:, 0] = pos[start_ev]
    out[:, 1] = ey[start_ev]
    out[:, 2] = ez[start_ev]
    out[:, 3] = length
    return out


def runs_voxel_count(runs) -> int:
    """Sum of run lengths (equals the voxel count when runs don't overlap, e.g. after merge_runs)."""
    arr = _check_runs(runs)
    return int(arr[:, 3].sum(dtype=np.int64))


def runs_bbox(runs) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Inclusive bounding box ((minx, miny, minz), (maxx, maxy, maxz)) of non-empty runs."""
    arr = _check_runs(runs)
    if len(arr) == 0:
        raise InvalidInputError("empty sparse volume has no bounding box")
    last = arr[:, 0].astype(np.int64) + arr[:, 3] - 1
    lo = (int(arr[:, 0].min()), int(arr[:, 1].min()), int(arr[:, 2].min()))
    hi = (int(last.max()), int(arr[:, 1].max()), int(arr[:, 2].max()))
    return lo, hi


def mask_bbox(mask: np.ndarray, offset_xyz=(0, 0, 0)):
    """Inclusive bounding box ((minx, miny, minz), (maxx, maxy, maxz)) of the set
    voxels of a (Z, Y, X) mask, global coords = index + offset; None when none is
    set.  The same box as runs_bbox(runs_from_mask(mask, offset)), without runs:
    one pass over the mask (its z-y projection), then only the rows inside."""
    m = _bool_mask(mask)
    ox, oy, oz = _offset3(offset_xyz)
    zy = m.any(axis=2)
    zs = np.flatnonzero(zy.any(axis=1))
    if not len(zs):
        return None
    ys = np.flatnonzero(zy.any(axis=0))
    z0, z1, y0, y1 = int(zs[0]), int(zs[-1]), int(ys[0]), int(ys[-1])
    xs = np.flatnonzero(m[z0:z1 + 1, y0:y1 + 1].any(axis=(0, 1)))
    return ((int(xs[0]) + ox, y0 + oy, z0 + oz), (int(xs[-1]) + ox, y1 + oy, z1 + oz))


def union_bbox(boxes):
    """The inclusive box around inclusive ((lo), (hi)) boxes (None entries skipped); None if none."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    lo = tuple(min(b[0][i] for b in boxes) for i in range(3))
    hi = tuple(max(b[1][i] for b in boxes) for i in range(3))
    return lo, hi


def clip_runs(runs, min_xyz: Sequence[Optional[int]], max_xyz: Sequence[Optional[int]]) -> np.ndarray:
    """Keep the parts of runs inside the inclusive box min_xyz..max_xyz (DVID's minx..maxz).

    Any bound may be None (unbounded), as DVID's query bounds are optional.
    Order is preserved; an empty box gives no runs.
    """
    arr = _check_runs(runs)
    try:
        lo = [(_I32_MIN if v is None else int(v)) for v in min_xyz]
        hi = [(_I32_MAX if v is None else int(v)) for v in max_xyz]
    except (TypeError, ValueError):
        raise InvalidInputError("clip bounds must be integers or None") from None
    if len(lo) != 3 or len(hi) != 3:
        raise InvalidInputError("clip bounds must have three components (x, y, z)")
    if len(arr) == 0:
        return empty_runs()
    x0 = arr[:, 0].astype(np.int64)
    x1 = x0 + arr[:, 3] - 1
    nx0 = np.maximum(x0, lo[0])
    nx1 = np.minimum(x1, hi[0])
    keep = ((nx0 <= nx1) & (arr[:, 1] >= lo[1]) & (arr[:, 1] <= hi[1])
            & (arr[:, 2] >= lo[2]) & (arr[:, 2] <= hi[2]))
    out = arr[keep].copy()
    out[:, 0] = nx0[keep]
    out[:, 3] = nx1[keep] - nx0[keep] + 1
    return out
