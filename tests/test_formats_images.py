"""Slice image formats, checked against independent decoders (zlib, Pillow,
tifffile) and an independent pure-Python hash for the label colours."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dvidfs.errors import InvalidInputError
from dvidfs.formats.images import (
    decode_image,
    encode_png_stored,
    encode_pseudocolor_png,
    encode_tiff,
    label_colors,
    png_size,
    tiff_size,
)

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- PNG helpers


def parse_png(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, payload) chunks, verifying every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(ctype + payload), f"bad CRC in {ctype!r}"
        chunks.append((ctype, payload))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def stored_blocks(zstream: bytes) -> list[tuple[int, int]]:
    """Walk a zlib stream that must consist of stored deflate blocks only;
    return (BFINAL, LEN) per block and check adler32 against zlib."""
    cmf, flg = zstream[0], zstream[1]
    assert cmf & 0x0F == 8 and ((cmf << 8) | flg) % 31 == 0 and not flg & 0x20
    pos, blocks, payload = 2, [], bytearray()
    while True:
        hdr = zstream[pos]
        bfinal, btype = hdr & 1, (hdr >> 1) & 3
        assert btype == 0, "not a stored block"
        assert hdr >> 3 == 0, "padding bits must be zero"
        length, nlength = struct.unpack("<HH", zstream[pos + 1:pos + 5])
        assert length ^ 0xFFFF == nlength
        payload += zstream[pos + 5:pos + 5 + length]
        blocks.append((bfinal, length))
        pos += 5 + length
        if bfinal:
            break
    (adler,) = struct.unpack(">I", zstream[pos:pos + 4])
    assert adler == zlib.adler32(bytes(payload))
    assert pos + 4 == len(zstream), "trailing bytes after the zlib stream"
    return blocks


def check_png(img: np.ndarray) -> bytes:
    """Encode and verify against the size formula, zlib, and Pillow."""
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else 3
    data = encode_png_stored(img)
    assert len(data) == png_size(w, h, c)

    chunks = parse_png(data)
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert chunks[0][1] == struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    assert chunks[2][1] == b""
    zstream = chunks[1][1]
    filtered = zlib.decompress(zstream)
    expect = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * c)], axis=1)
    assert filtered == expect.tobytes()
    blocks = stored_blocks(zstream)
    assert all(n == 65535 and not fin for fin, n in blocks[:-1])
    assert blocks[-1][0] == 1 and 1 <= blocks[-1][1] <= 65535
    assert sum(n for _, n in blocks) == h * (1 + w * c)

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.mode == ("L" if c == 1 else "RGB")
        np.testing.assert_array_equal(np.asarray(im), img)
    return data


# ---------------------------------------------------------------- PNG writer


def test_png_size_by_hand():
    # 1x1 gray: 8 sig + 25 IHDR + 12 IDAT framing + (2 + 5 + 2 + 4) zlib + 12 IEND
    assert png_size(1, 1) == 8 + 25 + 12 + 13 + 12 == 70
    assert png_size(1, 1, 3) == 72
    # 1024x1024 gray: 1024*1025 filtered bytes in 17 stored blocks
    assert png_size(1024, 1024) == 63 + 1024 * 1025 + 5 * 17


@pytest.mark.parametrize("h, w, c, n", [
    (1, 1, 1, 2),
    (1, 1, 3, 4),
    (1, 65534, 1, 65535),      # exactly one full block
    (3, 21844, 1, 65535),
    (15, 1456, 3, 65535),
    (1, 65535, 1, 65536),      # one full block + a 1-byte final block
    (1, 21845, 3, 65536),
    (2, 32767, 1, 65536),
    (1, 65533, 1, 65534),
    (2, 65534, 1, 131070),     # exactly two full blocks
    (30, 1456, 3, 131070),
    (1, 131070, 1, 131071),
    (771, 28, 3, 65535),
])
def test_png_block_boundaries(h, w, c, n):
    assert h * (1 + w * c) == n
    shape = (h, w) if c == 1 else (h, w, 3)
    data = check_png(rand_u8(shape, seed=n + c))
    blocks = stored_blocks(parse_png(data)[1][1])
    assert len(blocks) == -(-n // 65535)


@FAST
@given(h=st.integers(1, 300), w=st.integers(1, 300), rgb=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_png_roundtrip_and_size_property(h, w, rgb, seed):
    check_png(rand_u8((h, w, 3) if rgb else (h, w), seed))


def test_png_1024_slice_and_constant_images():
    check_png(rand_u8((1024, 1024)))
    check_png(np.zeros((64, 64), np.uint8))
    check_png(np.full((64, 64, 3), 255, np.uint8))


def test_png_non_contiguous_input():
    base = rand_u8((40, 60, 3), seed=7)
    for view in (base[::2, ::3], base[:, :, 0].T, base[5:30, 10:50], base[::-1]):
        assert encode_png_stored(view) == encode_png_stored(np.ascontiguousarray(view))
        check_png(view)


def test_png_output_is_independent_between_calls():
    # the scanline buffer is reused; earlier results must not change
    a, b = rand_u8((50, 50), 1), rand_u8((50, 50), 2)
    da = encode_png_stored(a)
    copy = bytes(da)
    encode_png_stored(b)
    assert da == copy


@pytest.mark.parametrize("bad", [
    np.zeros((0, 5), np.uint8),
    np.zeros((5, 0), np.uint8),
    np.zeros((5, 5), np.uint16),
    np.zeros((5, 5), np.float32),
    np.zeros((5, 5, 4), np.uint8),
    np.zeros((5, 5, 1), np.uint8),
    np.zeros(5, np.uint8),
])
def test_png_rejects_bad_arrays(bad):
    with pytest.raises(InvalidInputError):
        encode_png_stored(bad)


@pytest.mark.parametrize("args", [(0, 5), (5, 0), (-1, 5), (5, 5, 2), (5, 5, 4), (2**31, 1),
                                  (1.5, 2), (46341, 46341)])
def test_png_size_rejects_bad_arguments(args):
    with pytest.raises(InvalidInputError):
        png_size(*args)


# ---------------------------------------------------------------- decoding


def pil_png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def invalid(data: bytes, dtype, match: str | None = None, **kw) -> str:
    with pytest.raises(InvalidInputError, match=match) as err:
        decode_image(data, dtype, **kw)
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_decode_pillow_8bit_png():
    a = rand_u8((37, 53), 3)
    out = decode_image(pil_png(a, optimize=True), np.uint8)
    assert out.dtype == np.uint8 and out.shape == (37, 53)
    np.testing.assert_array_equal(out, a)
    assert out.flags.c_contiguous and out.flags.writeable


def test_decode_own_png_roundtrip():
    a = rand_u8((100, 80), 4)
    np.testing.assert_array_equal(decode_image(encode_png_stored(a), np.uint8), a)
    np.testing.assert_array_equal(decode_image(encode_png_stored(a), np.uint64), a)


def test_decode_16bit_png():
    a = np.random.default_rng(5).integers(0, 65536, (20, 30), dtype=np.uint16)
    data = pil_png(a)
    assert data[24] == 16 and data[25] == 0     # really a 16-bit gray PNG
    out = decode_image(data, np.uint16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(decode_image(data, np.uint64), a)
    msg = invalid(data, np.uint8, match="does not fit in uint8")
    assert str(int(a.max())) in msg
    small = (a % 256).astype(np.uint16)      # 16-bit file whose values fit in uint8
    np.testing.assert_array_equal(decode_image(pil_png(small), np.uint8), small)


@pytest.mark.parametrize("mode, words", [
    ("RGB", "RGB"), ("RGBA", "RGBA"), ("P", "palette"), ("LA", "alpha"), ("1", "1-bit"),
])
def test_decode_refuses_colour_and_low_bit_png(mode, words):
    msg = invalid(pil_png(rand_u8((8, 8), 6), mode), np.uint8)
    assert words in msg


@pytest.mark.parametrize("maker", ["pillow", "stored"])
def test_decode_truncated_png(maker):
    a = rand_u8((64, 64), 8)
    data = pil_png(a) if maker == "pillow" else encode_png_stored(a)
    for cut in (3, 8, 20, 40, 60, len(data) // 2, len(data) - 40):
        invalid(data[:cut], np.uint8)


def test_decode_corrupt_idat():
    data = bytearray(pil_png(rand_u8((64, 64), 9)))
    idat = data.index(b"IDAT")
    data[idat + 10:idat + 30] = bytes(20)
    invalid(bytes(data), np.uint8)


def test_decode_not_an_image():
    invalid(b"", np.uint8, match="empty")
    invalid(b"GIF89a\x01\x00", np.uint8, match=r"not a PNG or TIFF image \(starts with b'GIF8'\)")
    invalid(np.random.default_rng(1).bytes(1000), np.uint8, match="not a PNG or TIFF")
    invalid(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(200), np.uint8)
    invalid(b"II*\x00" + np.random.default_rng(3).bytes(200), np.uint8)
    invalid(b"MM\x00*" + bytes(100), np.uint8)


def test_decode_png_shape_check():
    data = encode_png_stored(rand_u8((90, 100)))
    np.testing.assert_array_equal(decode_image(data, np.uint8, shape=(90, 100)),
                                  decode_image(data, np.uint8))
    invalid(data, np.uint8, shape=(128, 128),
            match="slice is 100x90 but the plane needs 128x128")


def test_decode_uint64_tiff_exact():
    rng = np.random.default_rng(10)
    a = rng.integers(0, 2**64, (33, 47), dtype=np.uint64, endpoint=False)
    a[0, 0], a[0, 1], a[0, 2] = 2**64 - 1, 2**63, 2**53 + 1   # not representable as float64
    for byteorder in ("<", ">"):
        out = decode_image(tiff_bytes(a, byteorder=byteorder), np.uint64)
        assert out.dtype == np.uint64 and out.dtype.isnative
        np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int16, np.uint32])
def test_decode_tiff_dtypes(dtype):
    a = np.random.default_rng(11).integers(0, 200, (12, 9)).astype(dtype)
    for kw in ({}, {"imagej": True} if np.dtype(dtype) in (np.uint8, np.uint16, np.float32) else {},
               {"compression": "zlib"}):
        data = tiff_bytes(a, **kw)
        np.testing.assert_array_equal(decode_image(data, np.uint8), a)
        np.testing.assert_array_equal(decode_image(data, np.uint64), a)
        np.testing.assert_array_equal(decode_image(data, np.float32), a)


def test_decode_tiff_refusals():
    invalid(tiff_bytes(np.zeros((3, 16, 16), np.uint8), photometric="minisblack"),
            np.uint8, match="3 pages")
    invalid(tiff_bytes(np.zeros((16, 16, 3), np.uint8), photometric="rgb"),
            np.uint8, match="samples per pixel")
    invalid(tiff_bytes(np.array([[5, -3], [0, 1]], np.int32)), np.uint64, match="negative")
    invalid(tiff_bytes(np.array([[5, -3], [0, 1]], np.int64)), np.uint8, match="negative")
    invalid(tiff_bytes(np.array([[0.5, 1.0]], np.float32)), np.uint64, match="fractional")
    invalid(tiff_bytes(np.array([[np.nan, 1.0]], np.float32)), np.uint8, match="NaN")
    invalid(tiff_bytes(np.array([[-1.0, 1.0]], np.float64)), np.uint64, match="negative")
    invalid(tiff_bytes(np.array([[2.0**64, 1.0]], np.float64)), np.uint64, match="does not fit")
    invalid(tiff_bytes(np.array([[300, 1]], np.uint16)), np.uint8, match="300")
    invalid(tiff_bytes(np.array([[2**24 + 1]], np.uint32)), np.float32, match="exactly")
    invalid(tiff_bytes(np.array([[2**64 - 1]], np.uint64)), np.int64, match="does not fit")
    invalid(tiff_bytes(np.zeros((4, 4), np.uint8)), np.uint8, shape=(5, 4), match="needs 4x5")
    data = tiff_bytes(rand_u8((64, 64)))
    invalid(data[:len(data) // 2], np.uint8)


def test_decode_integral_floats_accepted():
    a = np.array([[0.0, 255.0], [17.0, 2.0**53]], np.float64)
    np.testing.assert_array_equal(decode_image(tiff_bytes(a), np.uint64), a.astype(np.uint64))
    np.testing.assert_array_equal(decode_image(tiff_bytes(a[:1]), np.uint8), [[0, 255]])
    # bool (1-bit) TIFF masks are integers 0/1
    m = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(decode_image(tiff_bytes(m), np.uint8), m.astype(np.uint8))


# ---------------------------------------------------------------- TIFF writer


def test_encode_tiff_uint64_roundtrip():
    a = np.random.default_rng(12).integers(0, 2**64, (40, 30), dtype=np.uint64)
    a[0, 0] = 2**64 - 1
    data = encode_tiff(a, (8.0, 4.0))
    assert len(data) == tiff_size(30, 40, np.uint64, (8.0, 4.0))
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        assert len(tf.pages) == 1 and not tf.is_imagej
        page = tf.pages[0]
        assert page.compression == 1
        out = page.asarray()
        assert page.tags["ResolutionUnit"].value == 3          # centimetre
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert xr[0] / xr[1] == pytest.approx(1e7 / 8.0)
        assert yr[0] / yr[1] == pytest.approx(1e7 / 4.0)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(decode_image(data, np.uint64), a)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_encode_tiff_imagej(dtype):
    a = (np.random.default_rng(13).random((25, 35)) * 250).astype(dtype)
    data = encode_tiff(a, (4.0, 8.0))
    assert len(data) == tiff_size(35, 25, dtype, (4.0, 8.0))
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        assert tf.is_imagej and len(tf.pages) == 1
        assert tf.imagej_metadata["unit"] == "nm"
        xr, yr = tf.pages[0].tags["XResolution"].value, tf.pages[0].tags["YResolution"].value
        assert xr[1] / xr[0] == pytest.approx(4.0)     # pixels per nm -> nm per pixel
        assert yr[1] / yr[0] == pytest.approx(8.0)
        np.testing.assert_array_equal(tf.asarray(), a)
    if dtype != np.float32:   # Pillow as a second, independent TIFF reader
        with Image.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(np.asarray(im), a)
    np.testing.assert_array_equal(decode_image(data, dtype), a)
    plain = encode_tiff(a)
    assert len(plain) == tiff_size(35, 25, dtype)
    with tifffile.TiffFile(io.BytesIO(plain)) as tf:
        assert tf.is_imagej
        np.testing.assert_array_equal(tf.asarray(), a)


TIFF_DTYPES = [np.uint8, np.uint16, np.float32, np.uint64, np.uint32, np.int16, np.float64]


@FAST
@given(h=st.integers(1, 200), w=st.integers(1, 200), dtype=st.sampled_from(TIFF_DTYPES),
       res=st.sampled_from([None, (8.0, 8.0), (3.3, 7.1), (0.01, 1e9), (1e9, 0.01)]),
       seed=st.integers(0, 2**32 - 1))
def test_tiff_size_property(h, w, dtype, res, seed):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dt.kind == "f":
        rand = (rng.standard_normal((h, w)) * 1e30).astype(dt)
        extreme = np.full((h, w), np.nan, dt)
    else:
        info = np.iinfo(dt)
        rand = rng.integers(info.min, info.max, (h, w), dtype=dt, endpoint=True)
        extreme = np.full((h, w), info.max, dt)
    expected = tiff_size(w, h, dt, res)
    for img in (np.zeros((h, w), dt), rand, extreme):
        data = encode_tiff(img, res)
        assert len(data) == expected       # size does not depend on pixel values
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(data)), extreme)


def test_tiff_size_wide_and_big_endian():
    a = np.arange(70000, dtype=np.uint16).reshape(1, 70000)   # width beyond SHORT
    assert len(encode_tiff(a)) == tiff_size(70000, 1, np.uint16)
    b = np.arange(12, dtype=">u8").reshape(3, 4)
    data = encode_tiff(b)
    assert len(data) == tiff_size(4, 3, np.uint64) == tiff_size(4, 3, ">u8")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(data)), b)


@pytest.mark.parametrize("bad", [
    np.zeros((3, 4, 5), np.uint8), np.zeros((0, 4), np.uint8), np.zeros((3, 4), bool),
    np.zeros((3, 4), np.complex64), np.zeros(4, np.uint8),
])
def test_encode_tiff_rejects(bad):
    with pytest.raises(InvalidInputError):
        encode_tiff(bad)


def test_tiff_size_rejects():
    for args in [(0, 4, np.uint8), (4, 4, np.complex64), (4, 4, np.uint8, (0, 4)),
                 (4, 4, np.uint8, (float("nan"), 4)), (4, 4, np.uint8, (1, 2, 3)),
                 (4, 4, np.uint64, (1e-3, 4)), (4, 4, np.uint8, (4, 1e10)), (4, 4, np.uint8, "ab"),
                 (70000, 70000, np.uint64)]:
        with pytest.raises(InvalidInputError):
            tiff_size(*args)


# ---------------------------------------------------------------- pseudocolour


def splitmix64_rgb(label: int) -> tuple[int, int, int]:
    """Independent pure-Python reference for the documented colour hash."""
    if label == 0:
        return (0, 0, 0)
    m = 2**64 - 1
    z = (label + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return tuple(64 + (((z >> (8 * i)) & 0xFF) * 3 >> 2) for i in range(3))


def test_label_colors_match_reference_hash():
    ids = [1, 2, 3, 255, 256, 12345, 2**32 + 7, 2**63, 2**64 - 1]
    cols = label_colors(np.array(ids, np.uint64))
    assert [tuple(int(v) for v in c) for c in cols] == [splitmix64_rgb(i) for i in ids]
    # pinned, so a silent change of the colour scheme is caught
    assert tuple(int(v) for v in label_colors(np.array([1], np.uint64))[0]) == splitmix64_rgb(1)


def test_label_colors_stable_and_distinct():
    rng = np.random.default_rng(14)
    ids = rng.integers(1, 2**64, 1000, dtype=np.uint64)
    a = np.zeros((10, 10), np.uint64)
    b = rng.integers(0, 2**64, (20, 30), dtype=np.uint64)
    a[3, 4] = b[17, 2] = 123456789
    assert (label_colors(a)[3, 4] == label_colors(b)[17, 2]).all()
    # the same id in another integer type gets the same colour
    assert (label_colors(np.array([[77]], np.uint16)) == label_colors(np.array([[77]], np.uint64))).all()
    cols = label_colors(ids)
    assert len({tuple(c) for c in cols}) >= 990
    assert (cols >= 64).all()                               # non-zero labels are never dark
    assert (label_colors(np.zeros((4, 4), np.uint64)) == 0).all()


def test_pseudocolor_png():
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 5, (70, 90)).astype(np.uint64) * np.uint64(2**40 + 3)
    data = encode_pseudocolor_png(labels)
    assert len(data) == png_size(90, 70, 3)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.mode == "RGB"
        rgb = np.asarray(im)
    assert (rgb[labels == 0] == 0).all()
    assert (rgb[labels != 0].max(axis=-1) > 0).all()
    for lab in np.unique(labels):
        colours = np.unique(rgb[labels == lab], axis=0)
        assert colours.shape[0] == 1
        assert tuple(int(v) for v in colours[0]) == splitmix64_rgb(int(lab))


def test_pseudocolor_rejects():
    for bad in (np.array([[-1, 2]], np.int64), np.zeros((2, 2), np.float32),
                np.zeros((2, 2, 2), np.uint64), np.zeros((0, 3), np.uint64)):
        with pytest.raises(InvalidInputError):
            encode_pseudocolor_png(bad)
