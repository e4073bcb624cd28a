"""DVID compressed label block: byte vectors from the spec, round trips, DVID-style
reference encoder/decoder (plain Python, first-seen label order), malformed input."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvidfs.errors import InvalidInputError
from dvidfs.formats import _labelblock, labelblock
from dvidfs.formats.labelblock import (
    bits_for,
    block_labels,
    decode_label_block,
    decode_label_plane,
    decode_label_plane_fast,
    encode_label_block,
)

U64_MAX = 2**64 - 1


# ----------------------------------------------------------------------------- reference (slow)

def ref_encode(vol: np.ndarray) -> bytes:
    """Straight port of DVID's encodeBlock logic: per-sub-block labels in first-seen
    order, block label list in first-seen order over sub-blocks.  Always writes the
    full form (even for one label, like DVID's MakeBlock)."""
    nz, ny, nx = vol.shape
    gz, gy, gx = nz // 8, ny // 8, nx // 8
    block_list: list[int] = []
    block_pos: dict[int, int] = {}
    counts, indices, values = [], [], bytearray()
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                sub = vol[sz * 8:sz * 8 + 8, sy * 8:sy * 8 + 8, sx * 8:sx * 8 + 8].ravel().tolist()
                pal: dict[int, int] = {}
                for v in sub:
                    pal.setdefault(v, len(pal))
                for v in pal:
                    if v not in block_pos:
                        block_pos[v] = len(block_list)
                        block_list.append(v)
                counts.append(len(pal))
                indices.extend(block_pos[v] for v in pal)
                bits = bits_for(len(pal))
                if bits:
                    acc = "".join(format(pal[v], f"0{bits}b") for v in sub)
                    acc += "0" * (-len(acc) % 8)
                    values += int(acc, 2).to_bytes(len(acc) // 8, "big")
    return (struct.pack("<4I", gx, gy, gz, len(block_list))
            + struct.pack(f"<{len(block_list)}Q", *block_list)
            + struct.pack(f"<{len(counts)}H", *counts)
            + struct.pack(f"<{len(indices)}I", *indices)
            + bytes(values))


def ref_decode(data: bytes) -> np.ndarray:
    """Port of DVID's MakeLabelVolume + getPackedValue (bit by bit)."""
    gx, gy, gz, n = struct.unpack_from("<4I", data, 0)
    labels = struct.unpack_from(f"<{n}Q", data, 16)
    out = np.zeros((gz * 8, gy * 8, gx * 8), dtype=np.uint64)
    if n == 1:
        out[:] = labels[0]
        return out
    pos = 16 + 8 * n
    nsb = gx * gy * gz
    counts = struct.unpack_from(f"<{nsb}H", data, pos)
    pos += 2 * nsb
    idx = struct.unpack_from(f"<{sum(counts)}I", data, pos)
    pos += 4 * sum(counts)
    bitstr = "".join(format(b, "08b") for b in data[pos:])
    bitpos = 0
    ipos = 0
    sb = 0
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                c = counts[sb]
                sbl = [labels[idx[ipos + i]] for i in range(c)]
                ipos += c
                bits = bits_for(c)
                for z in range(8):
                    for y in range(8):
                        for x in range(8):
                            if c == 0:
                                v = 0
                            elif c == 1:
                                v = sbl[0]
                            else:
                                v = sbl[int(bitstr[bitpos:bitpos + bits], 2)]
                                bitpos += bits
                            out[sz * 8 + z, sy * 8 + y, sx * 8 + x] = v
                bitpos += -bitpos % 8
                sb += 1
    return out


# ----------------------------------------------------------------------------- generators

def voronoi_block(shape, nseeds, rng, labels=None) -> np.ndarray:
    """Each voxel gets the label of its nearest of ``nseeds`` random seed points."""
    seeds = rng.uniform(0, max(shape), size=(nseeds, 3))
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    best = np.full(shape, np.inf)
    nearest = np.zeros(shape, dtype=np.int64)
    for i, (sz, sy, sx) in enumerate(seeds):
        d = (z - sz) ** 2 + (y - sy) ** 2 + (x - sx) ** 2
        closer = d < best
        best[closer] = d[closer]
        nearest[closer] = i
    if labels is None:
        labels = rng.integers(1, 2**63, size=nseeds, dtype=np.uint64)
    return np.asarray(labels, dtype=np.uint64)[nearest]


dims = st.sampled_from([8, 16, 24, 32, 40, 48, 56, 64])
label_values = st.one_of(
    st.integers(0, 20),
    st.integers(0, U64_MAX),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63, U64_MAX - 1, U64_MAX]),
)


@st.composite
def blocks(draw):
    shape = (draw(dims), draw(dims), draw(dims))
    pool = draw(st.lists(label_values, min_size=1, max_size=40, unique=True))
    many = draw(st.booleans())
    if many:   # up to hundreds of distinct labels per sub-block (9-bit values)
        extra = draw(st.integers(0, 700))
        pool = pool + [U64_MAX - i for i in range(extra)]
    pool = np.array(sorted(set(pool)), dtype=np.uint64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["random", "voronoi", "slabs", "solid-ish"]))
    if mode == "random":
        return pool[rng.integers(0, len(pool), size=shape)]
    if mode == "voronoi":
        nseeds = int(rng.integers(1, 30))
        return voronoi_block(shape, nseeds, rng,
                             labels=pool[rng.integers(0, len(pool), size=nseeds)])
    if mode == "slabs":
        return pool[(np.indices(shape)[draw(st.integers(0, 2))] // draw(st.integers(1, 9))) % len(pool)]
    out = np.full(shape, pool[0], dtype=np.uint64)
    out.flat[rng.integers(0, out.size, size=3)] = pool[-1]
    return out


# ----------------------------------------------------------------------------- hand-built vectors

def test_two_label_vector_exact_bytes():
    block = np.full((8, 8, 8), 9, dtype=np.uint64)
    block[:, :, :4] = 7                      # x < 4 -> 7
    expected = bytes.fromhex(
        "01000000" "01000000" "01000000"     # gx gy gz
        "02000000"                           # N = 2
        "0700000000000000"                   # labels[0] = 7
        "0900000000000000"                   # labels[1] = 9
        "0200"                               # Ns[0] = 2
        "00000000" "01000000"                # sub-block 0 indices -> labels 0, 1
    ) + bytes([0b00001111]) * 64             # 1 bit/voxel, MSB first: x0..3 = 0, x4..7 = 1
    assert encode_label_block(block) == expected
    assert len(expected) == 16 + 16 + 2 + 8 + 64
    out = decode_label_block(expected)
    assert out.dtype == np.uint64 and out.shape == (8, 8, 8)
    np.testing.assert_array_equal(out, block)
    np.testing.assert_array_equal(block_labels(expected), [7, 9])


def test_solid_block_is_24_bytes():
    block = np.full((16, 8, 24), 2**64 - 2, dtype=np.uint64)
    data = encode_label_block(block)
    assert data == struct.pack("<4IQ", 3, 1, 2, 1, 2**64 - 2)
    assert len(data) == 16 + 8
    out = decode_label_block(data)
    assert out.shape == (16, 8, 24) and out.dtype == np.uint64
    assert (out == 2**64 - 2).all()
    np.testing.assert_array_equal(block_labels(data), [2**64 - 2])


def test_solid_block_with_trailing_subblock_data_like_dvid_makeblock():
    # DVID's MakeBlock on a one-label volume writes N=1 and then the (unused)
    # counts and indices; its reader ignores them, and so must we.
    vol = np.full((16, 16, 16), 77, dtype=np.uint64)
    data = ref_encode(vol)
    assert struct.unpack_from("<I", data, 12)[0] == 1 and len(data) > 24
    np.testing.assert_array_equal(decode_label_block(data), vol)


def test_hand_built_unsorted_list_unused_label_and_empty_subblock():
    # 8 x 8 x 24 block: gx=3 sub-blocks along x.
    labels = [99, 0, 5, 42]                  # unsorted, label 0 is an unused placeholder
    counts = [1, 3, 0]                       # sb0 solid, sb1 three labels (2 bits), sb2 unset
    indices = [3,                            # sb0 -> 42
               2, 0, 3]                      # sb1 values 0,1,2 -> 5, 99, 42
    # sb1 values: z<2 -> 0 (5), 2<=z<6 -> 1 (99), z>=6 -> 2 (42); except the first byte
    # (z=0,y=0,x=0..3) = 10 01 00 00 -> values 2, 1, 0, 0 (checks MSB-first order)
    vals = bytearray([0x00] * 32 + [0x55] * 64 + [0xAA] * 32)
    vals[0] = 0b10010000
    data = (struct.pack("<4I", 3, 1, 1, len(labels)) + struct.pack("<4Q", *labels)
            + struct.pack("<3H", *counts) + struct.pack("<4I", *indices) + bytes(vals))
    out = decode_label_block(data)
    assert out.shape == (8, 8, 24)
    assert (out[:, :, 0:8] == 42).all()
    sb1 = out[:, :, 8:16]
    expected = np.zeros((8, 8, 8), dtype=np.uint64)
    expected[:2] = 5
    expected[2:6] = 99
    expected[6:] = 42
    expected[0, 0, :4] = [42, 99, 5, 5]
    np.testing.assert_array_equal(sb1, expected)
    assert (out[:, :, 16:24] == 0).all()          # Ns == 0 reads as 0
    np.testing.assert_array_equal(block_labels(data), labels)
    np.testing.assert_array_equal(ref_decode(data), out)
    # re-encoding gives our canonical form of the same voxels
    np.testing.assert_array_equal(decode_label_block(encode_label_block(out)), out)


def test_bits_for():
    assert [bits_for(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 256, 257, 512)] == \
        [0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 8, 9, 9]


# ----------------------------------------------------------------------------- round trips

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_round_trip(block):
    data = encode_label_block(block)
    out = decode_label_block(data)
    assert out.dtype == np.uint64 and out.shape == block.shape
    np.testing.assert_array_equal(out, block)
    np.testing.assert_array_equal(block_labels(data), np.unique(block))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, 5, 9, 17, 200, 512]),
       st.sampled_from([(8, 8, 8), (16, 8, 16), (8, 16, 24)]))
def test_matches_dvid_reference(seed, nlabels, shape):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**64 - 1, size=nlabels, dtype=np.uint64, endpoint=True)
    block = pool[rng.integers(0, nlabels, size=shape)]
    k = min(4, nlabels)
    block[: shape[0] // 2] = voronoi_block((shape[0] // 2,) + shape[1:], k, rng, labels=pool[:k])
    ours = encode_label_block(block)
    theirs = ref_encode(block)
    # each side decodes the other's bytes (DVID order != ours, same voxels)
    np.testing.assert_array_equal(decode_label_block(theirs), block)
    np.testing.assert_array_equal(ref_decode(ours), block)


def test_lut_and_argsort_paths_give_identical_bytes(monkeypatch):
    rng = np.random.default_rng(3)
    cases = [voronoi_block((32, 24, 40), 20, rng),
             rng.integers(0, 50, size=(16, 16, 16)).astype(np.uint64) * 2**40]
    fast = [encode_label_block(b) for b in cases]
    monkeypatch.setattr(labelblock, "_LUT_MAX_LABELS", 0)
    slow = [encode_label_block(b) for b in cases]
    assert fast == slow


def test_worst_case_nine_bits_and_accepted_dtypes():
    rng = np.random.default_rng(7)
    block = rng.permutation(np.arange(512 * 8, dtype=np.uint64)).reshape(16, 16, 16)
    data = encode_label_block(block)
    assert struct.unpack_from("<8H", data, 16 + 8 * 4096) == (512,) * 8
    np.testing.assert_array_equal(decode_label_block(data), block)
    small = (block % 200).astype(np.uint16)
    np.testing.assert_array_equal(decode_label_block(encode_label_block(small)), small)
    signed = (block % 3).astype(np.int32)
    np.testing.assert_array_equal(decode_label_block(encode_label_block(signed)), signed)
    # bytes-like inputs
    assert np.array_equal(decode_label_block(bytearray(data)), block)
    assert np.array_equal(decode_label_block(memoryview(data)), block)


def test_realistic_block_compresses_better_than_raw_under_lz4():
    lz4_block = pytest.importorskip("lz4.block")
    block = voronoi_block((64, 64, 64), 20, np.random.default_rng(11))
    enc = len(lz4_block.compress(encode_label_block(block)))
    raw = len(lz4_block.compress(block.tobytes()))
    assert enc * 2 < raw


# ----------------------------------------------------------------------------- malformed

def test_every_truncation_is_rejected():
    rng = np.random.default_rng(5)
    block = voronoi_block((16, 16, 16), 6, rng)
    for data in (encode_label_block(block), encode_label_block(np.zeros((8, 8, 8), np.uint64))):
        for k in range(len(data)):
            with pytest.raises(InvalidInputError):
                decode_label_block(data[:k])


def _two_label_bytes(**override):
    f = dict(gx=1, gy=1, gz=1, n=2, labels=[7, 9], counts=[2], idx=[0, 1], vals=b"\x0f" * 64)
    f.update(override)
    return (struct.pack("<4I", f["gx"], f["gy"], f["gz"], f["n"])
            + struct.pack(f"<{len(f['labels'])}Q", *f["labels"])
            + struct.pack(f"<{len(f['counts'])}H", *f["counts"])
            + struct.pack(f"<{len(f['idx'])}I", *f["idx"]) + f["vals"])


@pytest.mark.parametrize("data", [
    b"",
    b"\x01\x00\x00\x00" * 3,                                   # truncated header
    _two_label_bytes(n=0, labels=[]),                           # N == 0
    _two_label_bytes(n=1000),                                   # N too large for data
    _two_label_bytes(gx=0),                                     # no sub-blocks
    _two_label_bytes(gx=129),                                   # > 1024 voxels
    _two_label_bytes(gx=2),                                     # counts/indices/values short
    _two_label_bytes(idx=[0, 2]),                               # index out of range
    _two_label_bytes(counts=[513], idx=[0] * 513, vals=b"\0" * 640),  # Ns > 512
    _two_label_bytes(vals=b"\x0f" * 63),                        # values truncated
    _two_label_bytes(counts=[3], idx=[0, 1, 1], vals=b"\xff" * 128),   # value 3 >= Ns 3
])
def test_malformed_blocks_raise(data):
    with pytest.raises(InvalidInputError):
        decode_label_block(data)
    if len(data) < 16:
        with pytest.raises(InvalidInputError):
            block_labels(data)


def test_block_labels_is_header_only():
    data = _two_label_bytes(labels=[5, 3], vals=b"")   # values missing: decode fails...
    with pytest.raises(InvalidInputError):
        decode_label_block(data)
    np.testing.assert_array_equal(block_labels(data), [5, 3])   # ...but the list is readable
    with pytest.raises(InvalidInputError):
        block_labels(_two_label_bytes(n=3, counts=[], idx=[], vals=b""))


@pytest.mark.parametrize("block", [
    np.zeros((8, 8, 12), np.uint64),          # not a multiple of 8
    np.zeros((0, 8, 8), np.uint64),
    np.zeros((8, 8), np.uint64),              # not 3-D
    np.zeros((8, 8, 1032), np.uint64),        # > 1024
    np.full((8, 8, 8), -1, np.int64),         # negative label
    np.zeros((8, 8, 8), np.float32),          # not integers
])
def test_encoder_rejects_bad_blocks(block):
    with pytest.raises(InvalidInputError):
        encode_label_block(block)


# ----------------------------------------------------------------------------- single plane


def plane_of(vol: np.ndarray, axis: int, k: int) -> np.ndarray:
    """The reference: axis 0 = x -> vol[:, :, k], 1 = y -> vol[:, k, :], 2 = z -> vol[k]."""
    return vol[(slice(None),) * (2 - axis) + (k,)]


def assert_planes_match(data: bytes, ks_per_axis) -> None:
    full = decode_label_block(data)
    for axis, ks in enumerate(ks_per_axis):
        for k in ks:
            got = decode_label_plane(data, axis, k)
            want = plane_of(full, axis, k)
            assert got.dtype == np.uint64 and got.ndim == 2 and got.shape == want.shape
            np.testing.assert_array_equal(got, want, err_msg=f"axis={axis} k={k}")


@st.composite
def plane_blocks(draw):
    """(block, nlabels): 1 label (solid), 2, or many (up to ~600, so 9-bit sub-blocks)."""
    shape = (draw(dims), draw(dims), draw(dims))
    nlabels = draw(st.one_of(st.just(1), st.just(2), st.integers(3, 40), st.integers(41, 600)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pool = np.unique(rng.integers(0, U64_MAX, size=nlabels, dtype=np.uint64, endpoint=True))
    mode = draw(st.sampled_from(["random", "voronoi", "slabs", "mixed"]))
    if mode == "random":
        block = pool[rng.integers(0, len(pool), size=shape)]
    elif mode == "voronoi":
        block = voronoi_block(shape, int(rng.integers(1, 50)), rng,
                              labels=pool[rng.integers(0, len(pool), size=50)][:50])
    elif mode == "slabs":
        step = draw(st.sampled_from([1, 3, 8, 16]))
        block = pool[(np.indices(shape)[draw(st.integers(0, 2))] // step) % len(pool)]
    else:   # voronoi background with a noisy (many-label) corner
        block = voronoi_block(shape, 8, rng, labels=pool[rng.integers(0, len(pool), size=8)])
        block[:8, :8, :8] = pool[rng.integers(0, len(pool), size=(8, 8, 8))]
    return block


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plane_blocks(), st.data())
def test_plane_equals_slice_of_full_decode(block, data):
    enc = encode_label_block(block)
    ks = []
    for axis in range(3):
        n = block.shape[2 - axis]
        ks.append({0, n - 1, data.draw(st.integers(0, n - 1), label=f"k{axis}")})
    assert_planes_match(enc, ks)
    # and against the original volume, not only the full decoder
    for axis in range(3):
        for k in ks[axis]:
            np.testing.assert_array_equal(decode_label_plane(enc, axis, k), plane_of(block, axis, k))


def test_plane_every_k_on_realistic_64_block():
    rng = np.random.default_rng(21)
    block = voronoi_block((64, 64, 64), 35, rng)
    block[40:48, 8:16, 56:64] = rng.integers(0, 600, size=(8, 8, 8)).astype(np.uint64)  # 9-bit sub-block
    data = encode_label_block(block)
    assert_planes_match(data, [range(64)] * 3)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, 9, 200, 512]),
       st.sampled_from([(8, 8, 8), (16, 8, 24), (8, 24, 16)]))
def test_plane_of_dvid_ordered_encoding(seed, nlabels, shape):
    # DVID's first-seen label order, and N == 1 followed by unused counts/indices
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, U64_MAX, size=nlabels, dtype=np.uint64, endpoint=True)
    block = pool[rng.integers(0, nlabels, size=shape)]
    data = ref_encode(block)
    for axis in range(3):
        for k in range(shape[2 - axis]):
            np.testing.assert_array_equal(decode_label_plane(data, axis, k), plane_of(block, axis, k))
            got = native_plane(data, axis, k, _plane_shape(shape, axis))  # the C path accepts it too
            assert got is not None
            np.testing.assert_array_equal(got, plane_of(block, axis, k))


def _hand_built_block() -> bytes:
    # same block as test_hand_built_unsorted_list_unused_label_and_empty_subblock
    labels = [99, 0, 5, 42]
    counts = [1, 3, 0]
    indices = [3, 2, 0, 3]
    vals = bytearray([0x00] * 32 + [0x55] * 64 + [0xAA] * 32)
    vals[0] = 0b10010000
    return (struct.pack("<4I", 3, 1, 1, len(labels)) + struct.pack("<4Q", *labels)
            + struct.pack("<3H", *counts) + struct.pack("<4I", *indices) + bytes(vals))


def test_plane_hand_built_unsorted_list_and_empty_subblock():
    data = _hand_built_block()
    assert_planes_match(data, [range(24), range(8), range(8)])
    z0 = decode_label_plane(data, 2, 0)                 # xy plane z = 0, shape (ny, nx)
    assert z0.shape == (8, 24)
    assert (z0[:, :8] == 42).all() and (z0[:, 16:] == 0).all()
    np.testing.assert_array_equal(z0[0, 8:16], [42, 99, 5, 5, 5, 5, 5, 5])   # MSB-first
    assert (z0[1:, 8:16] == 5).all()
    xz = decode_label_plane(data, 1, 3)                 # (nz, nx)
    assert xz.shape == (8, 24)
    np.testing.assert_array_equal(xz[:, 12], [5, 5, 99, 99, 99, 99, 42, 42])
    yz = decode_label_plane(data, 0, 17)                # (nz, ny), inside the Ns == 0 sub-block
    assert yz.shape == (8, 8) and (yz == 0).all()


def test_plane_blocks_without_value_bytes():
    # every sub-block has Ns 0 or 1, so the value section is empty
    labels = [7, 0, 3]
    data = (struct.pack("<4I", 2, 1, 2, 3) + struct.pack("<3Q", *labels)
            + struct.pack("<4H", 1, 0, 1, 1) + struct.pack("<3I", 2, 0, 1))
    full = decode_label_block(data)
    assert (full[:8, :, :8] == 3).all() and (full[:8, :, 8:] == 0).all()
    assert (full[8:, :, :8] == 7).all() and (full[8:, :, 8:] == 0).all()
    assert_planes_match(data, [range(16), range(8), range(16)])
    # all sub-blocks unset (N > 1, no indices at all): all zeros
    unset = struct.pack("<4I", 1, 2, 1, 2) + struct.pack("<2Q", 5, 6) + struct.pack("<2H", 0, 0)
    assert_planes_match(unset, [range(8), range(16), range(8)])
    assert not decode_label_plane(unset, 1, 9).any()


def test_plane_solid_and_input_types():
    solid = encode_label_block(np.full((16, 8, 24), U64_MAX, dtype=np.uint64))
    for axis, shape in ((0, (16, 8)), (1, (16, 24)), (2, (8, 24))):
        p = decode_label_plane(solid, axis, 7)
        assert p.shape == shape and p.dtype == np.uint64 and (p == U64_MAX).all()
    block = voronoi_block((16, 24, 32), 9, np.random.default_rng(2))
    data = encode_label_block(block)
    want = block[:, 5, :]
    for src in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(decode_label_plane(src, 1, 5), want)
    p = decode_label_plane(data, np.int64(1), np.uint8(5))     # numpy integers accepted
    np.testing.assert_array_equal(p, want)
    p[:] = 0                                                     # a fresh, writable array
    np.testing.assert_array_equal(decode_label_plane(data, 1, 5), want)


@pytest.mark.parametrize("axis,k", [
    (0, -1), (0, 32), (1, 24), (2, 16), (2, -16), (2, 10**9),   # k out of range (shape 16,24,32)
    (3, 0), (-1, 0), ("x", 0), (1.0, 0), (None, 0), (True, 0),  # bad axis
    (0, 1.5), (0, "3"), (0, None), (0, False),                   # bad k
])
def test_plane_bad_axis_or_k(axis, k):
    data = encode_label_block(voronoi_block((16, 24, 32), 5, np.random.default_rng(4)))
    with pytest.raises(InvalidInputError):
        decode_label_plane(data, axis, k)
    solid = encode_label_block(np.zeros((16, 24, 32), np.uint64))
    with pytest.raises(InvalidInputError):
        decode_label_plane(solid, axis, k)


def test_plane_every_truncation_is_rejected():
    rng = np.random.default_rng(5)
    block = voronoi_block((16, 16, 16), 6, rng)
    for data in (encode_label_block(block), encode_label_block(np.zeros((8, 8, 8), np.uint64))):
        for cut in range(len(data)):
            for axis in range(3):
                with pytest.raises(InvalidInputError):
                    decode_label_plane(data[:cut], axis, 0)
                for shape in ((16, 16), (8, 8)):  # and the C path defers to it
                    assert native_plane(data[:cut], axis, 0, shape) is None


@pytest.mark.parametrize("data", [
    b"",
    b"\x01\x00\x00\x00" * 3,
    _two_label_bytes(n=0, labels=[]),
    _two_label_bytes(n=1000),
    _two_label_bytes(gx=0),
    _two_label_bytes(gx=129),
    _two_label_bytes(gx=2),
    _two_label_bytes(idx=[0, 2]),
    _two_label_bytes(counts=[513], idx=[0] * 513, vals=b"\0" * 640),
    _two_label_bytes(vals=b"\x0f" * 63),
    _two_label_bytes(counts=[3], idx=[0, 1, 1], vals=b"\xff" * 128),
    12345,
])
def test_plane_malformed_blocks_raise(data):
    for axis in range(3):
        with pytest.raises(InvalidInputError):
            decode_label_plane(data, axis, 0)


def test_plane_checks_only_the_values_it_reads():
    # two sub-blocks along z; sub-block 1 holds value 3 with Ns == 3 (invalid)
    vals = bytes([0x55]) * 128 + bytes([0xFF]) * 128
    data = (struct.pack("<4I", 1, 1, 2, 3) + struct.pack("<3Q", 10, 20, 30)
            + struct.pack("<2H", 3, 3) + struct.pack("<6I", 0, 1, 2, 0, 1, 2) + vals)
    with pytest.raises(InvalidInputError):
        decode_label_block(data)
    for k in range(8):                                   # z planes in sub-block 0 are fine
        assert (decode_label_plane(data, 2, k) == 20).all()
    for k in range(8, 16):
        with pytest.raises(InvalidInputError):
            decode_label_plane(data, 2, k)
    for axis in (0, 1):                                  # x/y planes cross sub-block 1
        with pytest.raises(InvalidInputError):
            decode_label_plane(data, axis, 4)


# ---------------------------------------------------------------- C fast path


def _plane_shape(block_shape_zyx, axis):
    nz, ny, nx = block_shape_zyx
    return {2: (ny, nx), 1: (nz, nx), 0: (nz, ny)}[axis]


def native_plane(data: bytes, axis: int, k: int, shape):
    """The C decoder alone: the plane, or None where it defers to numpy."""
    out = np.empty(shape, dtype=np.uint64)
    return out if _labelblock.plane(data, axis, k, out, *shape) else None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plane_blocks(), st.data())
def test_native_plane_equals_the_source_volume(block, data):
    """Well-formed blocks (1 to ~600 labels, 9-bit sub-blocks, non-cubic shapes):
    the C path accepts them and gives the planes of the original array."""
    enc = encode_label_block(block)
    for axis in range(3):
        n = block.shape[2 - axis]
        for k in {0, n - 1, data.draw(st.integers(0, n - 1), label=f"k{axis}")}:
            got = native_plane(enc, axis, k, _plane_shape(block.shape, axis))
            assert got is not None, f"fast path refused a valid block (axis={axis} k={k})"
            np.testing.assert_array_equal(got, plane_of(block, axis, k))


def test_native_plane_hand_built_and_value_less_blocks():
    """Unsorted label list, unused label, an Ns == 0 sub-block (reads 0), and a
    block whose sub-blocks all have 0 or 1 labels (no value bytes at all)."""
    value_less = (struct.pack("<4I", 2, 1, 2, 3) + struct.pack("<3Q", 7, 0, 3)
                  + struct.pack("<4H", 1, 0, 1, 1) + struct.pack("<3I", 2, 0, 1))
    for data, shape in ((_hand_built_block(), (8, 8, 24)), (value_less, (16, 8, 16))):
        full = decode_label_block(data)
        assert full.shape == shape
        for axis in range(3):
            for k in range(shape[2 - axis]):
                got = native_plane(data, axis, k, _plane_shape(shape, axis))
                assert got is not None
                np.testing.assert_array_equal(got, plane_of(full, axis, k))


def _same_outcome(data: bytes, axis: int, k: int, shape) -> None:
    """The C path either decodes exactly what the numpy decoder decodes, or
    defers; it never accepts what numpy rejects, and never crashes."""
    try:
        want = decode_label_plane(data, axis, k)
    except InvalidInputError:
        want = None
    got = native_plane(data, axis, k, shape)
    if got is not None:
        assert want is not None, "C path accepted a block the numpy decoder rejects"
        np.testing.assert_array_equal(got, want)
    if want is not None and want.shape == tuple(shape):
        np.testing.assert_array_equal(decode_label_plane_fast(data, axis, k, shape), want)


@settings(max_examples=150, deadline=None)
@given(plane_blocks(), st.data())
def test_native_plane_on_damaged_blocks_matches_numpy_or_defers(block, data):
    """Random byte damage anywhere in a block: same outcome as numpy."""
    enc = bytearray(encode_label_block(block))
    for _ in range(data.draw(st.integers(1, 4), label="damages")):
        i = data.draw(st.integers(0, len(enc) - 1), label="at")
        enc[i] = data.draw(st.integers(0, 255), label="byte")
    for axis in range(3):
        n = block.shape[2 - axis]
        k = data.draw(st.integers(0, n - 1), label=f"k{axis}")
        _same_outcome(bytes(enc), axis, k, _plane_shape(block.shape, axis))


def test_native_plane_defers_on_bad_values_only_where_read():
    vals = bytes([0x55]) * 128 + bytes([0xFF]) * 128
    data = (struct.pack("<4I", 1, 1, 2, 3) + struct.pack("<3Q", 10, 20, 30)
            + struct.pack("<2H", 3, 3) + struct.pack("<6I", 0, 1, 2, 0, 1, 2) + vals)
    for k in range(8):
        assert (native_plane(data, 2, k, (8, 8)) == 20).all()
    for k in range(8, 16):
        assert native_plane(data, 2, k, (8, 8)) is None
        with pytest.raises(InvalidInputError):
            decode_label_plane_fast(data, 2, k, (8, 8))


def test_native_plane_defers_on_bad_arguments_and_wrong_output_size():
    data = encode_label_block(np.arange(512, dtype=np.uint64).reshape(8, 8, 8))
    assert native_plane(data, 2, 0, (8, 8)) is not None
    for axis, k in ((3, 0), (-1, 0), (2, 8), (2, -1)):
        assert native_plane(data, axis, k, (8, 8)) is None
    assert native_plane(data, 2, 0, (8, 16)) is None        # output of the wrong shape
    tall = encode_label_block(np.arange(1024, dtype=np.uint64).reshape(8, 16, 8))
    assert native_plane(tall, 2, 0, (8, 16)) is None         # same byte count, another shape
    # the numpy fallback returns the block's real plane, so Labels' shape check sees it
    assert decode_label_plane_fast(tall, 2, 0, (8, 16)).shape == (16, 8)
    with pytest.raises(InvalidInputError):
        decode_label_plane_fast(data, True, 0, (8, 8))       # bools are not axes (numpy's rule)
