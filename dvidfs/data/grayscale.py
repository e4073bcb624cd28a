"""Grayscale uint8 volumes (DVID's uint8blk): raw blocks, lz4 at rest.

Pyramid levels (data/pyramid.py) take the mean of each 2x2x2 group, rounded
half up, and are kept current in the same batch as every write.

Default block 32³ (DVID's uint8blk default): xy slices read within 5% of 64³,
while writes and new versions copy half the bytes; 64³ reads xz/yz 25-38%
faster (numbers in docs/performance.md, "Block size").
"""
from __future__ import annotations

import numpy as np

from dvidfs.data import pyramid
from dvidfs.data.downres import mean2x
from dvidfs.data.volume import BlockVolume, describe_block, summarize_blocks
from dvidfs.errors import InvalidInputError
from dvidfs.store import keys
from dvidfs.store.values import LZ4, decode_value, encode_value


def _decode_cube(value: bytes) -> np.ndarray:
    raw = decode_value(value)
    n = round(len(raw) ** (1 / 3))
    if n ** 3 != len(raw):
        raise InvalidInputError(f"stored grayscale block has {len(raw)} bytes: not a cube")
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, n, n)


def _merge_level_block(ctx) -> bytes | None:
    return pyramid.merge_level_block(ctx, _decode_cube, lambda a: encode_value(a.tobytes(), LZ4), mean2x)


class Grayscale(BlockVolume):
    typename = "grayscale"
    dtype = np.dtype(np.uint8)
    block_class = keys.CLASS_GRAY_BLOCK
    level_class = keys.CLASS_GRAY_LEVEL
    halve = staticmethod(mean2x)
    default_block = 32
    native_values = True  # slices and reads decode + copy in dvidfs.formats.blockcopy
    merge_rules = {**BlockVolume.merge_rules, keys.CLASS_GRAY_LEVEL: _merge_level_block}
    key_descriptions = {keys.CLASS_GRAY_BLOCK: describe_block, keys.CLASS_GRAY_LEVEL: describe_block}
    key_summaries = {keys.CLASS_GRAY_BLOCK: summarize_blocks(_decode_cube),
                     keys.CLASS_GRAY_LEVEL: summarize_blocks(_decode_cube)}

    def encode_block(self, block: np.ndarray) -> bytes:
        return encode_value(np.ascontiguousarray(block).tobytes(), LZ4)

    def decode_block(self, value: bytes) -> np.ndarray:
        raw = decode_value(value)
        shape = self.grid.shape_zyx
        if len(raw) != shape[0] * shape[1] * shape[2]:
            raise InvalidInputError(f"stored block of {self.inst.name!r} has {len(raw)} bytes, "
                                    f"expected {shape}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
