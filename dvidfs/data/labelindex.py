"""The label index: for one body, which blocks hold which supervoxels, how many voxels each.

Stored per body (versioned key `187 | body u64 BE`) as three parallel arrays
sorted by (block, supervoxel): block keys (DVID's packing: z, y, x as 21-bit
fields, z highest, bit 20 of each the sign), supervoxel ids, voxel counts;
lz4-compressed.  Size, block list, supervoxels and sparsevol are answered from
this record and the blocks it names, never from a scan of the volume.
"""
from __future__ import annotations

import struct

import lz4.block
import numpy as np

from dvidfs.errors import InvalidInputError

_HDR = struct.Struct("<I")
_MASK21 = (1 << 21) - 1


def pack_block(x: int, y: int, z: int) -> int:
    """DVID's blockKey: z | y | x, 21 bits each; bit 20 is the sign, low 20 bits the magnitude."""
    def f(v: int) -> int:
        return (1 << 20 | -v) if v < 0 else v
    return f(z) << 42 | f(y) << 21 | f(x)


def unpack_block(key: int) -> tuple[int, int, int]:
    def g(v: int) -> int:
        return -(v & 0xFFFFF) if v & (1 << 20) else v
    return g(key & _MASK21), g(key >> 21 & _MASK21), g(key >> 42 & _MASK21)


def _summed(b: np.ndarray, s: np.ndarray, c: np.ndarray) -> "LabelIndex":
    """Rows sorted by (block, supervoxel), duplicates summed, zero rows dropped."""
    if not len(b):
        return LabelIndex()
    order = np.lexsort((s, b))
    b, s, c = b[order], s[order], c[order]
    first = np.ones(len(b), bool)
    first[1:] = (b[1:] != b[:-1]) | (s[1:] != s[:-1])
    starts = np.flatnonzero(first)
    sums = np.add.reduceat(c, starts)
    keep = sums != 0
    return LabelIndex(b[starts][keep], s[starts][keep], sums[keep])


class LabelIndex:
    """Rows (block, supervoxel, count), sorted, no zero counts."""

    __slots__ = ("blocks", "svs", "counts")

    def __init__(self, blocks=None, svs=None, counts=None):
        self.blocks = np.asarray(blocks if blocks is not None else [], np.uint64)
        self.svs = np.asarray(svs if svs is not None else [], np.uint64)
        self.counts = np.asarray(counts if counts is not None else [], np.int64)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def size(self) -> int:
        return int(self.counts.sum())

    def block_keys(self) -> np.ndarray:
        return np.unique(self.blocks)

    def supervoxels(self) -> np.ndarray:
        return np.unique(self.svs)

    def svs_in_blocks(self) -> dict[int, np.ndarray]:
        """block key -> the supervoxels of this body in it."""
        out: dict[int, np.ndarray] = {}
        if not len(self):
            return out
        cuts = np.flatnonzero(np.diff(self.blocks)) + 1
        for b, s in zip(np.split(self.blocks, cuts), np.split(self.svs, cuts)):
            out[int(b[0])] = s
        return out

    # ------------------------------------------------------------ changes
    def add(self, blocks: np.ndarray, svs: np.ndarray, deltas: np.ndarray) -> "LabelIndex":
        """A new index with count deltas added (rows reaching 0 disappear)."""
        out = _summed(np.concatenate([self.blocks, np.asarray(blocks, np.uint64)]),
                      np.concatenate([self.svs, np.asarray(svs, np.uint64)]),
                      np.concatenate([self.counts, np.asarray(deltas, np.int64)]))
        if (out.counts < 0).any():
            raise InvalidInputError("label index would get a negative count (index out of sync)")
        return out

    def difference(self, other: "LabelIndex") -> "LabelIndex":
        """Signed rows other - self (counts may be negative): what a branch changed."""
        return _summed(np.concatenate([other.blocks, self.blocks]),
                       np.concatenate([other.svs, self.svs]),
                       np.concatenate([other.counts, -self.counts]))

    def union(self, other: "LabelIndex") -> "LabelIndex":
        return self.add(other.blocks, other.svs, other.counts)

    # ------------------------------------------------------------ bytes
    def encode(self) -> bytes:
        n = len(self)
        raw = (_HDR.pack(n) + self.blocks.astype("<u8").tobytes() + self.svs.astype("<u8").tobytes()
               + self.counts.astype("<u4").tobytes())
        return lz4.block.compress(raw, store_size=True)

    @classmethod
    def decode(cls, data: bytes) -> "LabelIndex":
        raw = lz4.block.decompress(data)
        (n,) = _HDR.unpack_from(raw)
        if len(raw) != 4 + n * 20:
            raise InvalidInputError("stored label index is corrupt")
        b = np.frombuffer(raw, "<u8", n, 4).astype(np.uint64)
        s = np.frombuffer(raw, "<u8", n, 4 + 8 * n).astype(np.uint64)
        c = np.frombuffer(raw, "<u4", n, 4 + 16 * n).astype(np.int64)
        return cls(b, s, c)
