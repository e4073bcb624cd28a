"""Grayscale uint8 volumes (DVID's uint8blk): raw blocks, lz4 at rest.

Default block 32³ (DVID's uint8blk default): xy slices read within 5% of 64³,
while writes and new versions copy half the bytes; 64³ reads xz/yz 25-38%
faster (numbers in docs/performance.md, "Block size").
"""
from __future__ import annotations

import numpy as np

from dvidfs.data.volume import BlockVolume, describe_block
from dvidfs.errors import InvalidInputError
from dvidfs.store import keys
from dvidfs.store.values import LZ4, decode_value, encode_value


class Grayscale(BlockVolume):
    typename = "grayscale"
    dtype = np.dtype(np.uint8)
    block_class = keys.CLASS_GRAY_BLOCK
    default_block = 32
    native_values = True  # slices and reads decode + copy in dvidfs.formats.blockcopy
    key_descriptions = {keys.CLASS_GRAY_BLOCK: describe_block}

    def encode_block(self, block: np.ndarray) -> bytes:
        return encode_value(np.ascontiguousarray(block).tobytes(), LZ4)

    def decode_block(self, value: bytes) -> np.ndarray:
        raw = decode_value(value)
        shape = self.grid.shape_zyx
        if len(raw) != shape[0] * shape[1] * shape[2]:
            raise InvalidInputError(f"stored block of {self.inst.name!r} has {len(raw)} bytes, "
                                    f"expected {shape}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
