"""DVID's value encoding: one header byte, then the (compressed) payload.

Header: compression in the top 3 bits (0 none, 2 gzip, 4 lz4), checksum kind
in bits 3-4 (0 none, 1 CRC32, followed by a uint32 CRC of the payload).  An
lz4 payload starts with the uncompressed length as uint32 LE, which is exactly
what `lz4.block.compress(store_size=True)` produces.
"""
from __future__ import annotations

import gzip
import struct
import zlib

import lz4.block

from dvidfs.errors import InvalidInputError

NONE, GZIP, LZ4 = 0, 2, 4
_CRC = 1


def encode_value(payload: bytes, compression: int = LZ4, checksum: bool = False) -> bytes:
    if compression == LZ4:
        body = lz4.block.compress(payload, store_size=True)
    elif compression == GZIP:
        body = gzip.compress(payload, compresslevel=1)
    elif compression == NONE:
        body = bytes(payload)
    else:
        raise ValueError(f"unknown compression {compression}")
    header = compression << 5 | ((_CRC << 3) if checksum else 0)
    crc = struct.pack("<I", zlib.crc32(body)) if checksum else b""
    return bytes((header,)) + crc + body


def decode_value(value: bytes) -> bytes:
    header = value[0]
    compression, checksum = header >> 5, (header >> 3) & 3
    start = 1
    if checksum == _CRC:
        (crc,) = struct.unpack_from("<I", value, 1)
        start = 5
        if zlib.crc32(memoryview(value)[start:]) != crc:
            raise InvalidInputError("stored value failed its CRC32 check")
    body = memoryview(value)[start:]
    if compression == LZ4:
        return lz4.block.decompress(body)
    if compression == GZIP:
        return gzip.decompress(body)
    if compression == NONE:
        return bytes(body)
    raise InvalidInputError(f"stored value has unknown compression {compression}")
