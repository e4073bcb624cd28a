"""The native block decoder/copier against numpy placing the same blocks."""
from __future__ import annotations

import errno

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvidfs.formats.blockcopy import CorruptBlockError, copy_blocks
from dvidfs.store import keys
from dvidfs.store.values import GZIP, LZ4, NONE, encode_value

DTYPES = [np.uint8, np.uint16, np.uint64]


def _reference(blocks: dict, bshape, box_lo, box_shape, dtype) -> np.ndarray:
    """Paint every block into a dense volume covering all of them, then cut the box."""
    coords = np.array(list(blocks))  # (x, y, z) block coords
    lo = coords.min(0) * np.array(bshape[::-1])
    hi = (coords.max(0) + 1) * np.array(bshape[::-1])
    lo, hi = np.minimum(lo, box_lo), np.maximum(hi, np.array(box_lo) + box_shape[::-1])
    dense = np.zeros(tuple((hi - lo)[::-1]), dtype)
    for (cx, cy, cz), b in blocks.items():
        o = np.array((cx, cy, cz)) * bshape[::-1] - lo
        dense[o[2]:o[2] + bshape[0], o[1]:o[1] + bshape[1], o[0]:o[0] + bshape[2]] = b
    s = np.array(box_lo) - lo
    return dense[s[2]:s[2] + box_shape[0], s[1]:s[1] + box_shape[1], s[0]:s[0] + box_shape[2]]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_boxes_match_numpy(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    bshape = tuple(data.draw(st.sampled_from([4, 8, 16])) for _ in range(3))  # z, y, x (not always cubic)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    box_lo = tuple(data.draw(st.integers(-20, 20)) for _ in range(3))       # x, y, z
    box_shape = tuple(data.draw(st.integers(1, 30)) for _ in range(3))      # z, y, x
    box_hi = (box_lo[0] + box_shape[2], box_lo[1] + box_shape[1], box_lo[2] + box_shape[0])
    ranges = [range(box_lo[a] // bshape[2 - a], (box_hi[a] - 1) // bshape[2 - a] + 1) for a in range(3)]
    blocks, items, dests = {}, [], []
    for cz in ranges[2]:
        for cy in ranges[1]:
            for cx in ranges[0]:
                if rng.random() < 0.2:
                    continue  # never written: must stay as `out` had it (zeros)
                b = rng.integers(0, np.iinfo(dtype).max, bshape, dtype=dtype, endpoint=True)
                if rng.random() < 0.5:  # runs of one value, so lz4 really compresses
                    b[:, : bshape[1] // 2] = b[0, 0, 0]
                blocks[(cx, cy, cz)] = b
                kind = rng.integers(3)
                izyx = keys.izyx(cx, cy, cz)
                if kind == 0:
                    items.append((b, False, None, izyx))
                else:
                    dest = np.full(bshape, 7, dtype) if rng.random() < 0.5 else None
                    value = encode_value(b.tobytes(), LZ4 if kind == 1 else NONE)
                    items.append((value, True, dest, izyx))
                    if dest is not None:
                        dests.append((dest, b))
    out = np.zeros(box_shape, dtype)
    copy_blocks(out, box_lo, bshape, items)
    want = _reference(blocks, bshape, box_lo, box_shape, dtype) if blocks else np.zeros(box_shape, dtype)
    np.testing.assert_array_equal(out, want)
    for dest, b in dests:
        np.testing.assert_array_equal(dest, b)


def test_yz_plane_of_uint8_blocks():
    """The single-voxel-row path (a yz slice) against numpy's own slicing."""
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 256, (64, 64, 64), dtype=np.uint8)
    items = [(encode_value(vol[z:z + 32, y:y + 32, x:x + 32].tobytes()), True, None,
              keys.izyx(x // 32, y // 32, z // 32))
             for z in (0, 32) for y in (0, 32) for x in (32,)]
    out = np.zeros((64, 64, 1), np.uint8)
    copy_blocks(out, (45, 0, 0), (32, 32, 32), items)
    np.testing.assert_array_equal(out[:, :, 0], vol[:, :, 45])


def _one(value, bshape=(8, 8, 8)):
    out = np.zeros(bshape, np.uint8)
    copy_blocks(out, (0, 0, 0), bshape, [(value, True, None, keys.izyx(0, 0, 0))])
    return out


def test_corrupt_values_raise_eio_errors():
    raw = np.arange(512, dtype=np.uint16).astype(np.uint8).tobytes()
    good = encode_value(raw, LZ4)
    assert _one(good).tobytes() == raw
    bad = [
        good[:-3],                                             # truncated lz4 stream
        good[:1] + (511).to_bytes(4, "little") + good[5:],     # wrong decoded size
        good[:1] + b"\x00\x02",                                # shorter than its size field
        encode_value(raw, GZIP),                               # not decodable natively
        encode_value(raw, LZ4, checksum=True),                 # checksummed
        encode_value(raw[:-1], NONE),                          # plain, one byte short
        b"",
    ]
    for value in bad:
        with pytest.raises(CorruptBlockError) as exc:
            _one(value)
        assert exc.value.errno == errno.EIO and "cannot decode" in str(exc.value)


def test_lz4_garbage_does_not_overrun():
    body = bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8))
    value = bytes((0x80,)) + (512).to_bytes(4, "little") + body
    with pytest.raises(CorruptBlockError):
        _one(value)
    assert lz4.block.compress(b"x" * 512, store_size=True)[:4] == (512).to_bytes(4, "little")


def test_items_are_checked_before_anything_is_written():
    b = np.full((8, 8, 8), 9, np.uint8)
    out = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="does not touch"):
        copy_blocks(out, (0, 0, 0), (8, 8, 8), [(b, False, None, keys.izyx(0, 0, 0)),
                                                (b, False, None, keys.izyx(5, 0, 0))])
    with pytest.raises(ValueError, match="dest has"):
        copy_blocks(out, (0, 0, 0), (8, 8, 8), [(encode_value(b.tobytes()), True, np.zeros(5, np.uint8),
                                                 keys.izyx(0, 0, 0))])
    with pytest.raises(ValueError, match="decoded block"):
        copy_blocks(out, (0, 0, 0), (8, 8, 8), [(b[:4], False, None, keys.izyx(0, 0, 0))])
    assert not out.any()
