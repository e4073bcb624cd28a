"""Key layout, following DVID (see shared/docs/dvid.md §7).

    metadata  0x00 | name bytes
    data      0x01 | instance u32 BE | TKey | version u32 BE | client u32 BE | marker
    changes   0x03 | version u32 BE | instance u32 BE | TKey          (dvidfs addition)
    deleted   0x04 | instance u32 BE | version u32 BE                 (dvidfs: "has tombstones")

A TKey is `class byte | payload`.  The version is a key *suffix*, so every
version of one logical key sits together and one range scan over a span of
TKeys returns each key's versions side by side.  The last byte marks data
(0x03) or a tombstone (0x4F).  The `changes` index lists which keys each
version wrote, so a merge can find conflicts by reading only what changed
since the common ancestor, never the whole volume.

Block coordinates ("IZYX") are z, y, x as big-endian uint32 of the int32 value
with its sign bit flipped: byte order equals numeric (z, y, x) order, negative
coordinates included, so one scan along x covers a row of blocks.
"""
from __future__ import annotations

import struct

META = b"\x00"
DATA = b"\x01"
CHANGES = b"\x03"
TOMBSTONED = b"\x04"   # | instance u32 | version u32: that version has deleted something

MARK_DATA = 0x03
MARK_TOMBSTONE = 0x4F
CLIENT_ID = 0
SUFFIX_LEN = 9  # version u32 + client u32 + marker

# TKey classes (DVID numbers where DVID has them).
CLASS_PROPERTIES = 1
CLASS_EXTENTS = 2          # per-version extents of a volume instance
CLASS_GRAY_BLOCK = 23      # imageblk block
CLASS_GRAY_LEVEL = 24      # dvidfs: grayscale pyramid block, | scale u8 | IZYX (level 0 stays class 23)
CLASS_ANNOTATION_TAG = 70  # annotation tag index: tag | 0x00 | IZYX(x, y, z) of the element, empty value
CLASS_ANNOTATION_BLOCK = 72  # annotation block: IZYX(block) (DVID's keyBlock), JSON list of elements
CLASS_ROI = 90             # roi span: IZYX(x0, y, z) | length u32 (DVID's keyROI), empty value
CLASS_KEYVALUE = 177       # keyvalue: key | 0x00 (DVID's keyStandard); 0x00 | blob | chunk: large values
CLASS_LABEL_BLOCK = 186    # labelmap block
CLASS_LABEL_INDEX = 187    # labelmap label index
CLASS_MAX_LABEL = 237      # labelmap max label per version
CLASS_MAPPING = 242        # dvidfs: supervoxel -> body mapping entries
CLASS_MUTATION_LOG = 243   # dvidfs: mutation log records
CLASS_PYRAMID = 244        # dvidfs: pyramid levels built and kept current (JSON {"Levels": n})
CLASS_SYNC = 245           # dvidfs: annotation/labelsz sync, the synced instance's name (versioned)

_U32 = struct.Struct(">I")
_IZYX = struct.Struct(">III")
_SUFFIX = struct.Struct(">IIB")


def u32(v: int) -> bytes:
    return _U32.pack(v)


def izyx(x: int, y: int, z: int) -> bytes:
    """12-byte block coordinate whose byte order is (z, y, x) numeric order."""
    return _IZYX.pack((z & 0xFFFFFFFF) ^ 0x80000000, (y & 0xFFFFFFFF) ^ 0x80000000,
                      (x & 0xFFFFFFFF) ^ 0x80000000)


def parse_izyx(b: bytes) -> tuple[int, int, int]:
    """Inverse of `izyx`: returns (x, y, z)."""
    z, y, x = _IZYX.unpack(b)
    return (_signed(x ^ 0x80000000), _signed(y ^ 0x80000000), _signed(z ^ 0x80000000))


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def tkey(cls: int, payload: bytes = b"") -> bytes:
    return bytes((cls,)) + payload


def instance_prefix(instance_id: int) -> bytes:
    return DATA + _U32.pack(instance_id)


def data_key(instance_id: int, tk: bytes, version: int, tombstone: bool = False) -> bytes:
    return DATA + _U32.pack(instance_id) + tk + data_suffix(version, tombstone)


def data_suffix(version: int, tombstone: bool = False) -> bytes:
    """The version | client | marker end of a data key."""
    return _SUFFIX.pack(version, CLIENT_ID, MARK_TOMBSTONE if tombstone else MARK_DATA)


def block_keys(head: bytes, tail: bytes, x: int, ys, zs) -> list[bytes]:
    """head | IZYX(x, y, z) | tail for every z in zs, y in ys (z-major): the
    full keys of a column of blocks, one struct pack each (hot: a yz slice)."""
    fmt = struct.Struct(f">{len(head)}sIII{len(tail)}s")
    pack, xs = fmt.pack, (x & 0xFFFFFFFF) ^ 0x80000000
    return [pack(head, (z & 0xFFFFFFFF) ^ 0x80000000, (y & 0xFFFFFFFF) ^ 0x80000000, xs, tail)
            for z in zs for y in ys]


def split_data_key(key: bytes) -> tuple[int, bytes, int, bool]:
    """(instance id, TKey, version, is_tombstone) of a data key."""
    version, _client, marker = _SUFFIX.unpack_from(key, len(key) - SUFFIX_LEN)
    return (_U32.unpack_from(key, 1)[0], key[5:-SUFFIX_LEN], version, marker == MARK_TOMBSTONE)


def change_key(version: int, instance_id: int, tk: bytes) -> bytes:
    return CHANGES + _U32.pack(version) + _U32.pack(instance_id) + tk


def change_prefix(version: int) -> bytes:
    return CHANGES + _U32.pack(version)


def split_change_key(key: bytes) -> tuple[int, int, bytes]:
    """(version, instance id, TKey) of a change-index key."""
    return _U32.unpack_from(key, 1)[0], _U32.unpack_from(key, 5)[0], key[9:]


def tombstoned_key(instance_id: int, version: int) -> bytes:
    return TOMBSTONED + _U32.pack(instance_id) + _U32.pack(version)


def meta_key(name: str) -> bytes:
    return META + name.encode()


def prefix_end(prefix: bytes) -> bytes:
    """Smallest key greater than every key starting with `prefix`."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * (len(prefix) + 1)
    p[-1] += 1
    return bytes(p)
