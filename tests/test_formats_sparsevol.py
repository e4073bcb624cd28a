"""DVID sparse volume runs ("rles" / "srles"): exact byte vector from the spec,
slow reference run finder, round trips, merging, clipping, malformed input."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dvidfs.errors import InvalidInputError
from dvidfs.formats.sparsevol import (
    clip_runs, decode_rles, decode_srles, encode_rles, encode_srles, merge_runs,
    runs_bbox, runs_from_mask, runs_to_mask, runs_voxel_count,
)

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


# ----------------------------------------------------------------------------- reference (slow)

def ref_runs(mask: np.ndarray, offset_xyz) -> list[list[int]]:
    """Plain loops over rows, voxel by voxel."""
    ox, oy, oz = offset_xyz
    out = []
    nz, ny, nx = mask.shape
    for z in range(nz):
        for y in range(ny):
            x = 0
            while x < nx:
                if mask[z, y, x]:
                    start = x
                    while x < nx and mask[z, y, x]:
                        x += 1
                    out.append([start + ox, y + oy, z + oz, x - start])
                else:
                    x += 1
    return out


def ref_merge(runs) -> list[list[int]]:
    """Union of runs per row via explicit interval merging."""
    rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for x, y, z, n in np.asarray(runs).tolist():
        rows.setdefault((z, y), []).append((x, x + n))
    out = []
    for (z, y) in sorted(rows):
        cur = None
        for a, b in sorted(rows[(z, y)]):
            if cur is not None and a <= cur[1]:
                cur[1] = max(cur[1], b)
            else:
                if cur is not None:
                    out.append([cur[0], y, z, cur[1] - cur[0]])
                cur = [a, b]
        out.append([cur[0], y, z, cur[1] - cur[0]])
    return out


masks = hnp.arrays(bool, hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=9))
offsets = st.tuples(*[st.integers(-1000, 1000)] * 3)


def as_list(a):
    return np.asarray(a).tolist()


# ----------------------------------------------------------------------------- byte vectors

def test_hand_checked_rles_bytes():
    mask = np.zeros((7, 3, 4), dtype=bool)          # (z, y, x)
    mask[5, 2, 1:4] = True                          # x=1..3, y=2, z=5
    mask[6, 0, 0] = True                            # x=0, y=0, z=6
    runs = runs_from_mask(mask)
    assert runs.dtype == np.int32
    assert as_list(runs) == [[1, 2, 5, 3], [0, 0, 6, 1]]
    expected = bytes.fromhex(
        "00" "03" "00" "00"                 # binary, 3 dims, runs along X, reserved
        "00000000"                          # voxel count (always 0)
        "02000000"                          # 2 spans
        "01000000" "02000000" "05000000" "03000000"   # x=1 y=2 z=5 len=3
        "00000000" "00000000" "06000000" "01000000"   # x=0 y=0 z=6 len=1
    )
    assert encode_rles(runs) == expected
    assert as_list(decode_rles(expected)) == as_list(runs)
    assert encode_srles(runs) == expected[12:]
    assert as_list(decode_srles(expected[12:])) == as_list(runs)
    assert runs_voxel_count(runs) == 4
    assert runs_bbox(runs) == ((0, 0, 5), (3, 2, 6))


def test_negative_coordinates_little_endian():
    runs = np.array([[-1, -2, -3, 5]], dtype=np.int32)
    data = encode_rles(runs)
    assert data[12:] == bytes.fromhex("ffffffff" "feffffff" "fdffffff" "05000000")
    assert as_list(decode_rles(data)) == [[-1, -2, -3, 5]]


def test_empty():
    assert encode_rles(np.zeros((0, 4), np.int32)) == bytes.fromhex("000300000000000000000000")
    assert decode_rles(bytes.fromhex("000300000000000000000000")).shape == (0, 4)
    assert runs_from_mask(np.zeros((3, 4, 5), bool)).shape == (0, 4)
    assert runs_from_mask(np.zeros((0, 4, 5), bool)).shape == (0, 4)
    assert merge_runs(np.zeros((0, 4), np.int32)).shape == (0, 4)
    assert encode_srles([]) == b"" and decode_srles(b"").shape == (0, 4)
    assert runs_voxel_count(np.zeros((0, 4), np.int32)) == 0
    with pytest.raises(InvalidInputError):
        runs_bbox(np.zeros((0, 4), np.int32))


# ----------------------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)
@given(masks, offsets)
def test_mask_round_trip_and_reference(mask, offset):
    runs = runs_from_mask(mask, offset)
    assert runs.dtype == np.int32 and runs.shape[1] == 4
    assert as_list(runs) == ref_runs(mask, offset)
    assert as_list(decode_rles(encode_rles(runs))) == as_list(runs)
    assert as_list(decode_srles(encode_srles(runs))) == as_list(runs)
    assert as_list(merge_runs(runs)) == as_list(runs)            # already canonical
    np.testing.assert_array_equal(runs_to_mask(runs, offset, mask.shape), mask)
    assert runs_voxel_count(runs) == int(mask.sum())
    if mask.any():
        z, y, x = np.nonzero(mask)
        o = np.array(offset)
        assert runs_bbox(runs) == (tuple(int(v) for v in (x.min(), y.min(), z.min()) + o),
                                   tuple(int(v) for v in (x.max(), y.max(), z.max()) + o))


@settings(max_examples=200, deadline=None)
@given(masks, offsets, st.data())
def test_merge_of_split_runs_is_canonical(mask, offset, data):
    runs = runs_from_mask(mask, offset)
    pieces = []
    for x, y, z, n in runs.tolist():
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3))))
        cuts = [c for c in cuts if 0 < c < n]
        bounds = [0] + cuts + [n]
        for a, b in zip(bounds, bounds[1:]):
            pieces.append([x + a, y, z, b - a])
    # duplicates and overlapping extras must not change the union
    if pieces and data.draw(st.booleans()):
        extra = pieces[data.draw(st.integers(0, len(pieces) - 1))]
        pieces.append(list(extra))
    perm = data.draw(st.permutations(range(len(pieces))))
    shuffled = np.array([pieces[i] for i in perm], dtype=np.int32).reshape(-1, 4)
    assert as_list(merge_runs(shuffled)) == as_list(runs)


run_rows = st.lists(
    st.tuples(st.integers(-50, 50), st.integers(-3, 3), st.integers(-3, 3), st.integers(1, 20)),
    max_size=40)


@settings(max_examples=200, deadline=None)
@given(run_rows)
def test_merge_matches_reference_on_arbitrary_runs(rows):
    runs = np.array(rows, dtype=np.int32).reshape(-1, 4)
    assert as_list(merge_runs(runs)) == ref_merge(runs) if rows else merge_runs(runs).shape == (0, 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([I32_MIN, -5, 0, 7, I32_MAX - 40]),
                          st.sampled_from([I32_MIN, -1, 0, I32_MAX]),
                          st.sampled_from([I32_MIN, 3, I32_MAX]),
                          st.integers(1, 40)), min_size=1, max_size=20))
def test_merge_extreme_coordinates_uses_fallback_correctly(rows):
    runs = np.array(rows, dtype=np.int32)
    assert as_list(merge_runs(runs)) == ref_merge(runs)


@settings(max_examples=200, deadline=None)
@given(masks, offsets, st.tuples(*[st.integers(-1010, 1010)] * 3),
       st.tuples(*[st.integers(-1010, 1010)] * 3))
def test_clip_runs_matches_numpy_masking(mask, offset, lo, hi):
    runs = runs_from_mask(mask, offset)
    clipped = clip_runs(runs, lo, hi)
    nz, ny, nx = mask.shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    gx, gy, gz = x + offset[0], y + offset[1], z + offset[2]
    inside = ((gx >= lo[0]) & (gx <= hi[0]) & (gy >= lo[1]) & (gy <= hi[1])
              & (gz >= lo[2]) & (gz <= hi[2]))
    assert as_list(clipped) == as_list(runs_from_mask(mask & inside, offset))


def test_clip_runs_optional_bounds():
    runs = np.array([[0, 0, 0, 10], [5, 1, 0, 3], [-4, 0, 2, 3]], dtype=np.int32)
    assert as_list(clip_runs(runs, (2, None, None), (None, None, None))) == \
        [[2, 0, 0, 8], [5, 1, 0, 3]]
    assert as_list(clip_runs(runs, (None, None, 1), (None, None, None))) == [[-4, 0, 2, 3]]
    assert clip_runs(runs, (5, 5, 5), (4, 4, 4)).shape == (0, 4)


def test_runs_to_mask_clips_and_accepts_overlaps():
    runs = np.array([[-3, 1, 2, 6], [0, 1, 2, 2], [2, 1, 2, 1], [9, 0, 0, 1]], dtype=np.int32)
    m = runs_to_mask(runs, (0, 0, 2), (1, 2, 4))        # box x 0..3, y 0..1, z 2
    expected = np.zeros((1, 2, 4), bool)
    expected[0, 1, 0:3] = True                          # x -3..2 clipped to 0..2
    np.testing.assert_array_equal(m, expected)
    assert runs_to_mask(runs, (0, 0, 0), (0, 3, 3)).shape == (0, 3, 3)


def test_large_mask_vectorised():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50, 300)) < 0.3
    runs = runs_from_mask(mask, (-7, 11, -13))
    np.testing.assert_array_equal(runs_to_mask(runs, (-7, 11, -13), mask.shape), mask)
    # per-"block" runs, concatenated block by block, merge back to the canonical list
    parts = [runs_from_mask(mask[:, :, i:i + 64], (-7 + i, 11, -13)) for i in range(0, 300, 64)]
    assert as_list(merge_runs(np.concatenate(parts))) == as_list(runs)


# ----------------------------------------------------------------------------- malformed

def header(desc=0, dims=3, axis=0, count=1):
    return struct.pack("<BBBBII", desc, dims, axis, 0, 0, count)


SPAN = struct.pack("<4i", 1, 2, 3, 4)


@pytest.mark.parametrize("data", [
    b"",
    header()[:11],                                  # truncated header
    header(count=1),                                # span missing
    header(count=2) + SPAN,                         # span count > spans
    header(count=1) + SPAN + SPAN,                  # trailing span
    header(count=1) + SPAN + b"\x00",               # trailing byte
    header(count=1) + SPAN[:-1],                    # truncated span
    header(desc=1) + SPAN,                          # grayscale payload
    header(dims=2) + SPAN,
    header(axis=1) + SPAN,
    header() + struct.pack("<4i", 1, 2, 3, 0),      # zero length
    header() + struct.pack("<4i", 1, 2, 3, -4),     # negative length
    header() + struct.pack("<4i", I32_MAX, 2, 3, 2),  # runs past int32
])
def test_bad_rles_raise(data):
    with pytest.raises(InvalidInputError):
        decode_rles(data)


@pytest.mark.parametrize("data", [SPAN[:-1], SPAN + b"\x01", struct.pack("<4i", 1, 2, 3, 0)])
def test_bad_srles_raise(data):
    with pytest.raises(InvalidInputError):
        decode_srles(data)


@pytest.mark.parametrize("runs", [
    np.zeros((2, 3), np.int32),
    np.array([[0, 0, 0, 0]]),
    np.array([[0, 0, 0, -1]]),
    np.array([[2**31, 0, 0, 1]], dtype=np.int64),
    np.array([[0.5, 0, 0, 1]]),
    np.zeros((2, 4, 1), np.int32),
])
def test_bad_runs_raise(runs):
    for f in (encode_rles, encode_srles, merge_runs, runs_voxel_count):
        with pytest.raises(InvalidInputError):
            f(runs)


def test_bad_mask_and_offset_raise():
    with pytest.raises(InvalidInputError):
        runs_from_mask(np.zeros((4, 4), bool))
    with pytest.raises(InvalidInputError):
        runs_from_mask(np.ones((1, 1, 4), bool), (I32_MAX - 2, 0, 0))
    with pytest.raises(InvalidInputError):
        runs_from_mask(np.ones((1, 1, 4), bool), ("a", 0, 0))
