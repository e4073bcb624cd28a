"""DVID's "blocks" sparse-volume format (GET sparsevol?format=blocks): one
body as a stream of binary block masks.

Layout (little-endian), for blocks of nx*ny*nz voxels (multiples of 8) split
into 8x8x8 sub-blocks, gx = nx/8, gy = ny/8, gz = nz/8:

    uint32 gx, gy, gz
    uint64 label                 the label asked for
    per block, in z, y, x order of the blocks:
        int32 x, y, z            the block's first voxel
        uint8 flag               0 = no voxel of the label, 1 = every voxel, 2 = mixed
        --- only if flag == 2: gx*gy*gz sub-blocks, ZYX order, X fastest ---
        uint8 flag               0 / 1 / 2 as above, for the sub-block
        64 bytes                 only if 2: 512 bits, voxel i (ZYX, X fastest) is
                                 bit i % 8 (least significant first) of byte i // 8

As DVID's `labels.WriteBinaryBlocks` writes it (datatype/common/labels/
compressed.go): the header comes with the first block, so no block means no
bytes at all, and blocks without any voxel of the label are not sent.
"""
from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from dvidfs.errors import InvalidInputError

SUB = 8
_HEADER = struct.Struct("<IIIQ")
_ORIGIN = struct.Struct("<iiiB")


def encode_binary_blocks(label: int, blocks: Iterable[tuple[tuple[int, int, int], np.ndarray]]) -> bytes:
    """`blocks`: (first voxel (x, y, z), bool [z, y, x] mask) per block, in the
    order to send; every mask has the same shape, each side a multiple of 8."""
    out: list[bytes] = []
    for origin, mask in blocks:
        mask = np.asarray(mask, bool)
        if not out:
            if mask.ndim != 3 or any(n % SUB or n <= 0 for n in mask.shape):
                raise InvalidInputError(f"binary blocks need sides that are multiples of {SUB}, "
                                        f"got {mask.shape}")
            gz, gy, gx = (n // SUB for n in mask.shape)
            out.append(_HEADER.pack(gx, gy, gz, int(label)))
        out.append(_block(origin, mask))
    return b"".join(out)


def _block(origin, mask: np.ndarray) -> bytes:
    n = mask.sum()
    if n == mask.size:
        return _ORIGIN.pack(*origin, 1)
    if n == 0:
        return _ORIGIN.pack(*origin, 0)
    gz, gy, gx = (s // SUB for s in mask.shape)
    subs = (mask.reshape(gz, SUB, gy, SUB, gx, SUB).transpose(0, 2, 4, 1, 3, 5)
            .reshape(gz * gy * gx, SUB ** 3))
    counts = subs.sum(axis=1)
    bits = np.packbits(subs, axis=1, bitorder="little")
    parts = [_ORIGIN.pack(*origin, 2)]
    for i, c in enumerate(counts.tolist()):
        if c == 0:
            parts.append(b"\x00")
        elif c == SUB ** 3:
            parts.append(b"\x01")
        else:
            parts.append(b"\x02" + bits[i].tobytes())
    return b"".join(parts)
