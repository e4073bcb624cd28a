"""DVID compressed label block (the labelmap block format), bytes <-> numpy.

Layout (all little-endian), for a block of nx*ny*nz voxels (multiples of 8)
split into 8x8x8 sub-blocks, gx = nx/8, gy = ny/8, gz = nz/8:

    uint32 gx, gy, gz
    uint32 N                      number of labels in the block-level list
    N * uint64                    the label list
    --- only if N > 1 (N == 1 is a solid block; nothing follows) ---
    Nsb * uint16                  Ns[i], labels in sub-block i (Nsb = gx*gy*gz)
    sum(Ns) * uint32              for each sub-block, Ns[i] indices into the label list
    per sub-block                 512 values of ceil(log2(Ns[i])) bits, MSB-first,
                                  padded to a whole byte per sub-block
                                  (Ns[i] <= 1 -> no bytes; Ns[i] == 0 -> label 0)

Sub-blocks and the voxels inside a sub-block are both in ZYX order, X fastest.

Because a sub-block has exactly 512 voxels, ``512 * bits`` is always a whole
number of bytes: a sub-block with b-bit values takes exactly ``64 * b`` bytes,
and the "pad to a byte" rule never actually adds bits.

Decoder leniency, matching DVID's own reader (``labels.Block.setExportedVars``):

* bytes after the value section are ignored.  DVID's ``MakeBlock`` on a
  single-label volume writes N == 1 *followed by* the (unused) per-sub-block
  counts and indices, so a strict reader would reject real DVID data;
* the label list may be in any order, may contain unused labels and duplicates;
  sub-block index lists may be in any order.

Strictness beyond DVID (these would make DVID read out of bounds or garbage):
N == 0, zero or > 128 sub-blocks along an axis, Ns[i] > 512 (DVID's bit reader
handles at most 9 bits), an index >= N, a packed value >= Ns[i], and any
truncation all raise :class:`InvalidInputError`.

The encoder is deterministic: the label list is the sorted unique labels, each
sub-block's index list is ascending (so sorted by label value), and a
single-label block is written as the 24-byte solid form.  DVID's encoder
orders labels by first appearance instead; both decode identically.
DVID refuses blocks smaller than 16 along an axis; we accept 8.
"""
from __future__ import annotations

import operator
import struct
from functools import lru_cache

import numpy as np

from dvidfs.geometry import PLANE_OF_AXIS

from dvidfs.errors import InvalidInputError
from dvidfs.formats.buffers import byte_view

try:
    from dvidfs.formats import _labelblock
except ImportError as exc:  # pragma: no cover - a broken install, not a code path
    raise ImportError(
        "dvidfs' native helper dvidfs.formats._labelblock is not built: run scripts/setup "
        "(or `pip install -e .` with gcc installed)") from exc

__all__ = [
    "bits_for",
    "block_labels",
    "decode_label_block",
    "decode_label_plane",
    "decode_label_plane_fast",
    "encode_label_block",
]

SUB = 8                      # sub-block edge
SB_VOX = SUB * SUB * SUB     # 512 voxels per sub-block
MAX_SUBBLOCKS_PER_AXIS = 1024 // SUB   # DVID's MaxBlockSize is 1024 voxels
_HEADER = struct.Struct("<4I")

# _BITS[n] = bits per voxel value for a sub-block with n labels:
# 0 for n <= 1, else ceil(log2(n)) (n=2 -> 1, 3..4 -> 2, 5..8 -> 3, ..., 257..512 -> 9).
_BITS = np.zeros(SB_VOX + 1, dtype=np.int64)
_BITS[2:] = [int(n - 1).bit_length() for n in range(2, SB_VOX + 1)]


def bits_for(n: int) -> int:
    """Bits per packed voxel value for a sub-block with ``n`` labels (DVID's bitsFor)."""
    return 0 if n < 2 else int(n - 1).bit_length()


def _as_buffer(data) -> memoryview:
    return byte_view(data, "label block")


def _parse_header(mv: memoryview) -> tuple[int, int, int, int]:
    if len(mv) < 16:
        raise InvalidInputError(
            f"label block truncated: {len(mv)} bytes, header needs 16")
    gx, gy, gz, n = _HEADER.unpack_from(mv, 0)
    for name, g in (("gx", gx), ("gy", gy), ("gz", gz)):
        if g == 0 or g > MAX_SUBBLOCKS_PER_AXIS:
            raise InvalidInputError(
                f"label block header: {name}={g} sub-blocks, must be 1..{MAX_SUBBLOCKS_PER_AXIS}")
    if n == 0:
        raise InvalidInputError("label block header: 0 labels (N must be >= 1)")
    if 16 + 8 * n > len(mv):
        raise InvalidInputError(
            f"label block truncated: header lists {n} labels ({16 + 8 * n} bytes) "
            f"but only {len(mv)} bytes given")
    return gx, gy, gz, n


def block_labels(data) -> np.ndarray:
    """The block-level label list (uint64, header order) without decoding voxels.

    May contain labels that no voxel uses (e.g. 0 placeholders after a DVID merge).
    """
    mv = _as_buffer(data)
    _, _, _, n = _parse_header(mv)
    return np.frombuffer(mv, dtype="<u8", count=n, offset=16).astype(np.uint64)


# ----------------------------------------------------------------------------- encode

def _to_uint64_block(block) -> np.ndarray:
    arr = np.asarray(block)
    if arr.ndim != 3:
        raise InvalidInputError(f"label block must be 3-D (z, y, x), got shape {arr.shape}")
    for axis, size in zip("zyx", arr.shape):
        if size == 0 or size % SUB or size > SUB * MAX_SUBBLOCKS_PER_AXIS:
            raise InvalidInputError(
                f"label block {axis} size {size} must be a positive multiple of 8 "
                f"and at most {SUB * MAX_SUBBLOCKS_PER_AXIS}")
    kind = arr.dtype.kind
    if kind == "u" or kind == "b":
        return arr.astype(np.uint64, copy=False)
    if kind == "i":
        if arr.size and arr.min() < 0:
            raise InvalidInputError("label block contains negative labels")
        return arr.astype(np.uint64, copy=False)
    raise InvalidInputError(f"label block must hold unsigned integer labels, not {arr.dtype}")


def _to_subblocks(vol: np.ndarray) -> np.ndarray:
    """(nz, ny, nx) -> (Nsb, 512): sub-blocks in ZYX order, voxels ZYX within."""
    nz, ny, nx = vol.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    v = vol.reshape(gz, SUB, gy, SUB, gx, SUB).transpose(0, 2, 4, 1, 3, 5)
    return v.reshape(gz * gy * gx, SB_VOX)


def _from_subblocks(sb: np.ndarray, gz: int, gy: int, gx: int) -> np.ndarray:
    v = sb.reshape(gz, gy, gx, SUB, SUB, SUB).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(v.reshape(gz * SUB, gy * SUB, gx * SUB))


_LUT_MAX_LABELS = 128         # above this, binary search per voxel costs more than argsort
_LUT_MAX_ENTRIES = 1 << 22


def _palette_positions(sb, labels, sb_indices, counts, nsb, nlab) -> np.ndarray:
    """(nsb, 512) int16: each voxel's position in its sub-block's (sorted) palette."""
    if nlab <= _LUT_MAX_LABELS and nsb * nlab <= _LUT_MAX_ENTRIES:
        # Few labels: global label id per voxel by binary search, then a
        # (sub-block, global id) -> palette position lookup table.
        gidx = np.searchsorted(labels, sb).astype(np.int32)
        gidx += (np.arange(nsb, dtype=np.int32) * nlab)[:, None]
        entry_row = np.repeat(np.arange(nsb, dtype=np.int64), counts)
        start = np.zeros(nsb, dtype=np.int64)
        np.cumsum(counts[:-1], out=start[1:])
        lut = np.zeros(nsb * nlab, dtype=np.int16)
        lut[entry_row * nlab + sb_indices] = np.arange(len(sb_indices)) - start[entry_row]
        return lut[gidx]
    # Many labels: argsort each row; rank of a voxel = number of distinct values
    # before it in sorted order, scattered back to voxel order.
    order = np.argsort(sb, axis=1)
    srt = np.take_along_axis(sb, order, axis=1)
    is_new = np.empty(sb.shape, dtype=bool)
    is_new[:, 0] = False
    np.not_equal(srt[:, 1:], srt[:, :-1], out=is_new[:, 1:])
    rank = np.cumsum(is_new, axis=1, dtype=np.int16)
    values = np.empty(sb.shape, dtype=np.int16)
    np.put_along_axis(values, order, rank, axis=1)
    return values


def encode_label_block(block: np.ndarray) -> bytes:
    """Encode a (nz, ny, nx) label array (each a multiple of 8, <= 1024) as a DVID block.

    Accepts any unsigned (or non-negative signed) integer dtype; values are uint64
    on the wire.  Raises InvalidInputError for a bad shape, dtype or negative label.
    """
    vol = _to_uint64_block(block)
    nz, ny, nx = vol.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    nsb = gz * gy * gx

    first = vol.flat[0]
    if (vol == first).all():                         # solid block: header + 1 label
        return _HEADER.pack(gx, gy, gz, 1) + struct.pack("<Q", int(first))

    sb = _to_subblocks(vol)                          # (nsb, 512) copy
    srt = np.sort(sb, axis=1)                        # per-sub-block sort (small rows)
    is_new = np.empty(sb.shape, dtype=bool)          # first occurrence of each value in row
    is_new[:, 0] = True
    np.not_equal(srt[:, 1:], srt[:, :-1], out=is_new[:, 1:])
    counts = np.count_nonzero(is_new, axis=1).astype(np.int64)   # Ns[i], 1..512
    pal_values = srt[is_new]                         # row-major: grouped by sub-block, sorted
    labels, sb_indices = np.unique(pal_values, return_inverse=True)
    nlab = len(labels)
    values = _palette_positions(sb, labels, sb_indices, counts, nsb, nlab)

    bits = _BITS[counts]
    nbytes = bits * (SB_VOX // 8)                    # 64 bytes per bit of width
    offsets = np.zeros(nsb, dtype=np.int64)
    np.cumsum(nbytes[:-1], out=offsets[1:])
    packed = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for b in np.unique(bits[bits > 0]).tolist():
        rows = np.flatnonzero(bits == b)
        v = values[rows].astype(np.uint16)           # (k, 512)
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint16)
        planes = ((v[:, :, None] >> shifts) & 1).astype(np.uint8)   # (k, 512, b) MSB first
        grp = np.packbits(planes.reshape(len(rows), SB_VOX * b), axis=1)  # (k, 64*b)
        if len(rows) == 1 or np.all(np.diff(rows) == 1):
            # contiguous rows of equal width occupy one contiguous byte range
            start = offsets[rows[0]]
            packed[start:start + grp.size] = grp.ravel()
        else:
            dest = offsets[rows][:, None] + np.arange(grp.shape[1])
            packed[dest] = grp

    return b"".join((
        _HEADER.pack(gx, gy, gz, len(labels)),
        labels.astype("<u8", copy=False).tobytes(),
        counts.astype("<u2").tobytes(),
        sb_indices.astype("<u4").tobytes(),
        packed.tobytes(),
    ))


# ----------------------------------------------------------------------------- decode

def _need(mv: memoryview, pos: int, size: int, what: str) -> None:
    """Raise unless `size` bytes of `what` are there at offset `pos`."""
    if pos + size > len(mv):
        raise InvalidInputError(
            f"label block truncated: {what} need {size} bytes at offset {pos}, "
            f"only {len(mv) - pos} left")


def _parse_body(mv: memoryview, gx: int, gy: int, gz: int, n: int):
    """Validate and view the sections after the label list of a block with N > 1.

    Returns (counts, sb_indices, bits, offsets, idx_start, raw): per-sub-block
    label counts Ns (int64), the concatenated index lists (int64, all < N), bits
    per packed value, byte offset of each sub-block's values within ``raw``, start
    of each sub-block's index list within ``sb_indices``, and the value bytes
    (uint8, exactly sum(64 * bits) long).  Packed values themselves are not checked.
    """
    nsb = gx * gy * gz
    pos = 16 + 8 * n
    _need(mv, pos, 2 * nsb, f"{nsb} sub-block label counts")
    counts = np.frombuffer(mv, dtype="<u2", count=nsb, offset=pos).astype(np.int64)
    pos += 2 * nsb
    if counts.max() > SB_VOX:
        i = int(np.argmax(counts))
        raise InvalidInputError(
            f"label block sub-block {i} lists {int(counts[i])} labels, at most {SB_VOX} allowed")
    nidx = int(counts.sum())
    _need(mv, pos, 4 * nidx, f"{nidx} sub-block label indices")
    sb_indices = np.frombuffer(mv, dtype="<u4", count=nidx, offset=pos).astype(np.int64)
    pos += 4 * nidx
    if nidx and sb_indices.max() >= n:
        raise InvalidInputError(
            f"label block sub-block index {int(sb_indices.max())} out of range for {n} labels")

    bits = _BITS[counts]
    nbytes = bits * (SB_VOX // 8)
    total = int(nbytes.sum())
    _need(mv, pos, total, "voxel values")
    raw = np.frombuffer(mv, dtype=np.uint8, count=total, offset=pos)
    offsets = np.zeros(nsb, dtype=np.int64)
    np.cumsum(nbytes[:-1], out=offsets[1:])
    idx_start = np.zeros(nsb, dtype=np.int64)
    np.cumsum(counts[:-1], out=idx_start[1:])
    return counts, sb_indices, bits, offsets, idx_start, raw


def decode_label_block(data) -> np.ndarray:
    """Decode a DVID compressed label block to a uint64 (nz, ny, nx) array.

    Raises InvalidInputError for malformed or truncated input (see module doc).
    """
    mv = _as_buffer(data)
    gx, gy, gz, n = _parse_header(mv)
    labels = np.frombuffer(mv, dtype="<u8", count=n, offset=16)
    shape = (gz * SUB, gy * SUB, gx * SUB)
    if n == 1:
        return np.full(shape, labels[0], dtype=np.uint64)

    nsb = gx * gy * gz
    counts, sb_indices, bits, offsets, idx_start, raw = _parse_body(mv, gx, gy, gz, n)

    # per-sub-block label table lookups: voxel label = labels[sb_indices[idx_start + value]]
    voxel_labels = labels[sb_indices].astype(np.uint64)  # label of each index-list entry
    out = np.zeros((nsb, SB_VOX), dtype=np.uint64)

    one = counts == 1
    if one.any():
        out[one] = voxel_labels[idx_start[one]][:, None]
    for b in np.unique(bits[bits > 0]).tolist():
        rows = np.flatnonzero(bits == b)
        width = SB_VOX // 8 * b
        if len(rows) == 1 or np.all(np.diff(rows) == 1):
            start = offsets[rows[0]]
            grp = raw[start:start + len(rows) * width].reshape(len(rows), width)
        else:
            grp = raw[offsets[rows][:, None] + np.arange(width)]
        planes = np.unpackbits(grp, axis=1).reshape(len(rows), SB_VOX, b)
        v = planes[:, :, 0].astype(np.int64)
        for j in range(1, b):
            v <<= 1
            v |= planes[:, :, j]
        cnt = counts[rows][:, None]
        bad = v >= cnt
        if bad.any():
            r, _ = np.nonzero(bad)
            i = int(rows[r[0]])
            raise InvalidInputError(
                f"label block sub-block {i}: packed value {int(v[bad][0])} out of range "
                f"for {int(counts[i])} labels")
        v += idx_start[rows][:, None]
        out[rows] = voxel_labels[v]
    # counts == 0 sub-blocks stay 0 ("unset, reads as 0")
    return _from_subblocks(out, gz, gy, gx)


# ----------------------------------------------------------------------------- single plane

# Output (row, col) axes of the plane along each axis (0 = x, 1 = y, 2 = z) come from
# the geometry table: an xy plane (axis 2) is (y, x), xz (axis 1) is (z, x), yz (axis 0) is (z, y).
_VOXEL_STRIDE = (1, SUB, SUB * SUB)            # x, y, z step of a voxel index within a sub-block


@lru_cache(maxsize=256)
def _plane_geometry(axis: int, gx: int, gy: int, gz: int):
    """Per-shape tables for a plane along `axis` (read-only, cached).

    Returns (sb_rel, v_rel, gr, gc, sb_step, v_step): the m = gr*gc sub-blocks the
    plane crosses, relative to the plane's first one, in (row, col) order; the 64
    voxel indices of the plane within one sub-block, relative to its first, in
    (row, col) order; sub-blocks along rows / cols; and the sub-block and voxel
    index step per unit of sub-block / local coordinate along `axis`.
    """
    g = (gx, gy, gz)
    sb_stride = (1, gx, gx * gy)
    plane = PLANE_OF_AXIS[axis]
    row, col = plane.height, plane.width
    gr, gc = g[row], g[col]
    sb_rel = (np.arange(gr, dtype=np.int64)[:, None] * sb_stride[row]
              + np.arange(gc, dtype=np.int64)[None, :] * sb_stride[col]).ravel()
    v_rel = (np.arange(SUB, dtype=np.int64)[:, None] * _VOXEL_STRIDE[row]
             + np.arange(SUB, dtype=np.int64)[None, :] * _VOXEL_STRIDE[col]).ravel()
    sb_rel.flags.writeable = False
    v_rel.flags.writeable = False
    return sb_rel, v_rel, gr, gc, sb_stride[axis], _VOXEL_STRIDE[axis]


def _plane_index(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"label plane {what} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidInputError(
            f"label plane {what} must be an integer, not {type(value).__name__}") from None


def decode_label_plane(data, axis: int, k: int) -> np.ndarray:
    """Only plane k of the block along `axis` (0 = x, 1 = y, 2 = z), as a 2-D uint64 array:
    axis 2 (xy plane) -> shape (ny, nx); axis 1 (xz) -> (nz, nx); axis 0 (yz) -> (nz, ny).
    Equal to decode_label_block(data)[k], [:, k, :], [:, :, k] respectively.

    Reads only the sub-blocks the plane crosses and, in each, only the 64 packed
    values lying in the plane: every value is at most 9 bits wide, so it sits in
    the big-endian 16-bit window starting at its first byte, whatever its width.

    Validation matches decode_label_block for the header, counts, index lists and
    truncation (InvalidInputError), plus axis not 0/1/2 or k outside 0..n-1 along
    it.  Packed values are range-checked only where read: a block whose bad value
    lies outside the plane decodes here although decode_label_block rejects it.
    """
    axis = _plane_index(axis, "axis")
    k = _plane_index(k, "k")
    if axis not in PLANE_OF_AXIS:
        raise InvalidInputError(f"label plane axis must be 0 (x), 1 (y) or 2 (z), got {axis}")
    mv = _as_buffer(data)
    gx, gy, gz, n = _parse_header(mv)
    extent = SUB * (gx, gy, gz)[axis]
    if not 0 <= k < extent:
        raise InvalidInputError(
            f"label plane k={k} out of range for {'xyz'[axis]} size {extent}")
    sb_rel, v_rel, gr, gc, sb_step, v_step = _plane_geometry(axis, gx, gy, gz)
    shape = (gr * SUB, gc * SUB)
    labels = np.frombuffer(mv, dtype="<u8", count=n, offset=16)
    if n == 1:
        return np.full(shape, labels[0], dtype=np.uint64)

    counts, sb_indices, bits, offsets, idx_start, raw = _parse_body(mv, gx, gy, gz, n)
    if len(sb_indices) == 0:                       # every sub-block unset: all 0
        return np.zeros(shape, dtype=np.uint64)

    q, r = divmod(k, SUB)
    sb = sb_rel + q * sb_step                      # (m,) sub-blocks crossed, (row, col) order
    vox = v_rel + r * v_step                       # (64,) voxel indices within each
    b = bits[sb]
    cnt = counts[sb]

    if len(raw):
        bitpos = vox * b[:, None]                  # (m, 64) bit offset within the sub-block
        byte = bitpos >> 3
        byte += offsets[sb][:, None]
        # A value starting in the last byte of `raw` ends in it (each sub-block's
        # values end on a byte boundary), so clipping the second byte is harmless;
        # it also keeps 0-bit sub-blocks (offset possibly == len(raw)) in range.
        w = raw.take(byte, mode="clip").astype(np.int64)
        w <<= 8
        byte += 1
        w |= raw.take(byte, mode="clip")
        bitpos &= 7
        bitpos += b[:, None]
        np.subtract(16, bitpos, out=bitpos)        # right shift bringing the value to bit 0
        w >>= bitpos
        w &= ((1 << b) - 1)[:, None]               # 0-bit sub-blocks -> value 0
        bad = w >= np.maximum(cnt, 1)[:, None]
        if bad.any():
            j, c = np.argwhere(bad)[0]
            i = int(sb[j])
            raise InvalidInputError(
                f"label block sub-block {i}: packed value {int(w[j, c])} out of range "
                f"for {int(counts[i])} labels")
        w += idx_start[sb][:, None]
    else:                                          # every sub-block has 0 or 1 labels
        w = np.broadcast_to(idx_start[sb][:, None], (len(sb), SUB * SUB))
    vals = labels.take(sb_indices.take(w, mode="clip"))
    empty = cnt == 0                               # Ns == 0: unset, reads as 0
    if empty.any():
        vals[empty] = 0
    out = vals.reshape(gr, gc, SUB, SUB).transpose(0, 2, 1, 3).reshape(shape)
    return out.astype(np.uint64, copy=False)


def decode_label_plane_fast(data, axis: int, k: int, shape: tuple[int, int]) -> np.ndarray:
    """`decode_label_plane` for a plane expected to have `shape`: the C fast
    path (`_labelblock.plane`, a few µs per 64³ block instead of ~50), or, for
    any block it does not fully accept, the numpy decoder above, which decodes
    what it leniently accepts and raises the precise error otherwise.  So the
    result (or the error) is always the numpy decoder's."""
    if type(axis) is int and type(k) is int:
        out = np.empty(shape, dtype=np.uint64)
        if _labelblock.plane(data, axis, k, out, *shape):
            return out
    return decode_label_plane(data, axis, k)
