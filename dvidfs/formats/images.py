"""Slice images, bytes <-> numpy: the files users see in ``xy/00012.png``.

Pure functions, no I/O.  Four jobs:

* **Reading a slice file** (``encode_png_stored`` / ``png_size``).  The
  filesystem must report a slice's exact size in ``stat`` without encoding it,
  and encoding must be cheap, so PNGs are written by hand with *stored*
  (uncompressed) deflate blocks.  The file is then an exact function of the
  image shape::

      signature                       8
      IHDR chunk                     25   (4 length + 4 type + 13 data + 4 CRC)
      IDAT chunk   4 + 4 + L + 4          L = 2 (zlib header)
                                            + n (filtered rows, n = H * (1 + W*C))
                                            + 5 * ceil(n / 65535) (block headers)
                                            + 4 (adler32)
      IEND chunk                     12
      -------------------------------------
      total = 63 + n + 5 * ceil(n / 65535)

  Every row gets filter type 0 (None), one IDAT holds the whole zlib stream.
  ``zlib.compress(raw, 0)`` is not a substitute: its stored-block sizes are
  zlib's internal business (zlib 1.2.13 emits 65531/32773-byte blocks), so
  its output length is not this formula and can change with the zlib build.
  A 1024x1024 slice encodes in about 0.5 ms: adler32 + CRC32 dominate.

* **Writing a slice file** (``decode_image``): users ``cp`` a PNG or TIFF in.
  The format is sniffed from magic bytes, never from the file name.  Only
  single-channel images are accepted, and only if every value can be stored
  exactly in the volume's dtype; anything else is an ``InvalidInputError``
  with one readable line.

* **Lossless label / ImageJ slices** (``encode_tiff`` / ``tiff_size``):
  uncompressed single-page TIFF via tifffile.  tifffile writes the IFD and
  tag values first and the pixel strip last, and none of the tags depend on
  pixel values, so the size is ``overhead(dtype, resolution) + H*W*itemsize``;
  the overhead is measured once per (dtype, voxel size) by encoding a 1x1
  image, and ``encode_tiff`` checks every result against ``tiff_size``.
  The voxel size (``voxel_spec``: an instance's VoxelSize/VoxelUnits in the
  slice's axes) goes into XResolution/YResolution/ResolutionUnit and, for
  ImageJ's types, ``unit=``/``spacing=`` (the depth) in the ImageDescription,
  so ImageJ/Fiji and tifffile show it; those tags have fixed-size values.

* **Viewing labels** (``encode_pseudocolor_png``): a stable RGB colour per
  uint64 label id from a fixed integer hash, label 0 black.

* **Label ids for ImageJ/Fiji** (``encode_label_float_tiff``): ImageJ has no
  64-bit (or unsigned 32-bit) integer images, and opening a uint64 TIFF stops
  it at a modal "Unsupported BitsPerSample: 64" dialog.  Its 32-bit float
  images hold every integer up to 2**24 exactly, so label ids are written as
  a float32 TIFF with ImageJ's metadata, each pixel its id up to
  ``FLOAT_EXACT_MAX`` and NaN where the id is larger: never a rounded id.
"""
from __future__ import annotations

import functools
import io
import operator
import struct
import threading
import zlib

import numpy as np

from dvidfs.errors import InvalidInputError

__all__ = [
    "png_size",
    "encode_png_stored",
    "decode_image",
    "encode_tiff",
    "tiff_size",
    "label_colors",
    "encode_pseudocolor_png",
    "FLOAT_EXACT_MAX",
    "label_float_tiff_size",
    "encode_label_float_tiff",
    "voxel_spec",
    "tiff_voxel_kwargs",
]

# --------------------------------------------------------------------------
# PNG writer (stored deflate blocks, size known in advance)
# --------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_STORED = 65535              # largest stored deflate block payload
_STORED_HDR = 5                  # BFINAL/BTYPE byte (byte-aligned) + LEN + NLEN
_PNG_FIXED = 8 + 25 + 12 + 12 + 2 + 4   # sig, IHDR, IDAT framing, IEND, zlib hdr, adler
_PNG_MAX_DIM = 2**31 - 1         # PNG spec limit for width, height, chunk length
_ZLIB_HEADER = b"\x78\x01"       # deflate, 32 KiB window, FLEVEL 0; 0x7801 % 31 == 0
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_FULL_BLOCK_HDR = b"\x00\xff\xff\x00\x00"   # BFINAL=0 BTYPE=00, LEN=65535, NLEN=0
_SCRATCH_MAX = 64 << 20          # slices above this get a fresh buffer, not a kept one
_tls = threading.local()


def _png_geometry(width, height, channels) -> tuple[int, int, int, int]:
    """Validate and return (width, height, channels, filtered byte count n)."""
    try:
        w, h, c = operator.index(width), operator.index(height), operator.index(channels)
    except TypeError:
        raise InvalidInputError(
            f"PNG size must be whole numbers, got {width!r}x{height!r}x{channels!r}") from None
    if c not in (1, 3):
        raise InvalidInputError(f"PNG channels must be 1 (gray) or 3 (RGB), got {c}")
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"cannot write an empty {w}x{h} image as PNG")
    if w > _PNG_MAX_DIM or h > _PNG_MAX_DIM:
        raise InvalidInputError(f"{w}x{h} image is too large for PNG")
    n = h * (1 + w * c)
    if 2 + n + _STORED_HDR * -(-n // _MAX_STORED) + 4 > _PNG_MAX_DIM:
        raise InvalidInputError(f"{w}x{h} image is too large for one uncompressed PNG")
    return w, h, c, n


def png_size(width: int, height: int, channels: int = 1) -> int:
    """Exact byte length of ``encode_png_stored`` output for an 8-bit image of
    ``width`` x ``height`` pixels with 1 (gray) or 3 (RGB) channels."""
    _, _, _, n = _png_geometry(width, height, channels)
    return _PNG_FIXED + n + _STORED_HDR * -(-n // _MAX_STORED)


def _scratch(nbytes: int) -> np.ndarray:
    """A per-thread reusable uint8 buffer of at least ``nbytes`` (first ``nbytes``
    returned).  Fresh megabyte-sized buffers cost more in page faults than the
    whole encode, so the filtered-scanline buffer is recycled."""
    if nbytes > _SCRATCH_MAX:
        return np.empty(nbytes, dtype=np.uint8)
    buf = getattr(_tls, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _tls.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buf[:nbytes]


def encode_png_stored(img: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) gray or (H, W, 3) RGB array as an uncompressed PNG.

    The result is always exactly ``png_size(W, H, C)`` bytes long.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise InvalidInputError(f"PNG slices must be uint8, got {img.dtype}")
    if img.ndim == 2:
        c = 1
    elif img.ndim == 3 and img.shape[2] == 3:
        c = 3
    else:
        raise InvalidInputError(
            f"PNG slices must have shape (H, W) or (H, W, 3), got {img.shape}")
    h, w = img.shape[:2]
    w, h, c, n = _png_geometry(w, h, c)
    nblocks = -(-n // _MAX_STORED)
    idat_len = 2 + n + _STORED_HDR * nblocks + 4

    # Filtered scanlines: a 0 (filter None) byte in front of every row, laid
    # out with two slice assignments into a (H, 1 + W*C) view.
    flat = _scratch(n)
    raw = flat.reshape(h, 1 + w * c)
    raw[:, 0] = 0
    raw[:, 1:] = img.reshape(h, w * c)
    mv = memoryview(flat)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    idat_head = b"IDAT" + _ZLIB_HEADER
    pieces = [
        PNG_SIGNATURE,
        struct.pack(">I", 13), b"IHDR", ihdr, struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)),
        struct.pack(">I", idat_len), idat_head,
    ]
    # Stored deflate blocks of 65535 bytes (the last one, BFINAL=1, holds the
    # remaining 1..65535).  The chunk CRC is chained over the pieces, so the
    # output is assembled by one b"".join with no intermediate buffer.
    crc = zlib.crc32(idat_head)
    for k in range(nblocks):
        part = mv[k * _MAX_STORED:(k + 1) * _MAX_STORED]
        if k < nblocks - 1:
            hdr = _FULL_BLOCK_HDR
        else:
            hdr = struct.pack("<BHH", 1, len(part), len(part) ^ 0xFFFF)
        crc = zlib.crc32(part, zlib.crc32(hdr, crc))
        pieces += (hdr, part)
    adler = struct.pack(">I", zlib.adler32(mv))
    crc = zlib.crc32(adler, crc)
    pieces += (adler, struct.pack(">I", crc), _IEND)
    return b"".join(pieces)


# --------------------------------------------------------------------------
# Decoding user-written slice files
# --------------------------------------------------------------------------

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")   # classic and BigTIFF
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette (indexed colour)",
                    4: "grayscale+alpha", 6: "RGBA"}


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc   # no repr quotes
    text = " ".join(str(msg).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Images larger than this are refused from their header, before any pixel is
# decoded (a 164 KB PNG can declare gigapixels): 2**28 pixels is 16384² x 1.
MAX_PIXELS = 1 << 28


def _check_shape(kind: str, h: int, w: int, shape: tuple[int, int] | None) -> None:
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"{kind} image is empty ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise InvalidInputError(f"{kind} image of {w}x{h} is larger than a slice may be "
                                f"({MAX_PIXELS} pixels)")
    if shape is not None and (h, w) != tuple(shape):
        raise InvalidInputError(
            f"slice is {w}x{h} but the plane needs {shape[1]}x{shape[0]}")


def decode_image(data: bytes, dtype, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a PNG or TIFF slice file into a 2-D (H, W) array of ``dtype``.

    The format is detected from the magic bytes.  Only single-channel images
    are accepted (gray PNG of 8 or 16 bits; single-page, single-sample TIFF),
    and only if every value converts exactly to ``dtype``.  If ``shape`` (numpy
    order, (H, W)) is given, the size in the file header is checked before any
    pixel is decoded.  Every failure is an ``InvalidInputError`` with a
    one-line message; the returned array is C-contiguous, native byte order.
    """
    target = np.dtype(dtype)
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise InvalidInputError("empty file: not a PNG or TIFF image")
    if data.startswith(PNG_SIGNATURE) or (len(data) < 8 and PNG_SIGNATURE.startswith(data)):
        arr = _decode_png(data, shape)
    elif data[:4] in _TIFF_MAGICS:
        arr = _decode_tiff(data, shape)
    else:
        raise InvalidInputError(f"not a PNG or TIFF image (starts with {data[:4]!r})")
    out = _convert_exact(arr, target)
    if not (out.flags.c_contiguous and out.flags.writeable):
        out = np.array(out, order="C")
    return out


def _decode_png(data: bytes, shape) -> np.ndarray:
    # Read IHDR ourselves: better messages, and a shape check before decoding.
    if len(data) < 33 or data[12:16] != b"IHDR":   # 8 signature + 25 IHDR chunk
        raise InvalidInputError("cannot decode PNG: file is truncated or has no IHDR chunk")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    if ctype != 0:
        kind = _PNG_COLOR_TYPES.get(ctype, f"colour type {ctype}")
        raise InvalidInputError(
            f"PNG is {depth}-bit {kind}; only grayscale slices are accepted")
    if depth not in (8, 16):
        raise InvalidInputError(
            f"PNG is {depth}-bit grayscale; only 8- or 16-bit grayscale slices are accepted")
    _check_shape("PNG", h, w, shape)

    from PIL import Image  # imported lazily: only writes of PNG slices need it

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.load()   # decode now, inside the try, so truncation is caught here
            mode = im.mode
            if mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
                raise InvalidInputError(f"PNG decodes to unsupported mode {mode!r}")
            arr = np.asarray(im)
    except InvalidInputError:
        raise
    except Image.UnidentifiedImageError:   # its message names the BytesIO object
        raise InvalidInputError("cannot decode PNG: corrupt or truncated header") from None
    except Exception as exc:   # any decoder failure is bad input, not a bug
        raise InvalidInputError(f"cannot decode PNG: {_one_line(exc)}") from None
    if arr.shape != (h, w):
        raise InvalidInputError(f"PNG decoded to shape {arr.shape}, expected {(h, w)}")
    return arr


def _decode_tiff(data: bytes, shape) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            npages = len(tf.pages)
            if npages != 1:
                raise InvalidInputError(
                    f"TIFF has {npages} pages; a slice must be a single 2-D image")
            page = tf.pages[0]
            spp = getattr(page, "samplesperpixel", 1)
            if spp != 1:
                raise InvalidInputError(
                    f"TIFF has {spp} samples per pixel; only single-channel slices are accepted")
            if len(page.shape) != 2:
                raise InvalidInputError(
                    f"TIFF image has shape {tuple(page.shape)}; a slice must be 2-D")
            _check_shape("TIFF", page.shape[0], page.shape[1], shape)
            try:
                arr = page.asarray()
            except Exception as exc:
                comp = getattr(page.compression, "name", page.compression)
                if "imagecodecs" in str(exc):   # codec not available in this install
                    raise InvalidInputError(
                        f"TIFF uses {comp} compression, which cannot be decoded here; "
                        f"save the slice uncompressed or with deflate/zip") from None
                raise
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"cannot decode TIFF: {_one_line(exc)}") from None
    if arr.ndim != 2:
        raise InvalidInputError(f"TIFF decoded to shape {arr.shape}; a slice must be 2-D")
    return arr


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _convert_exact(arr: np.ndarray, target: np.dtype) -> np.ndarray:
    """``arr.astype(target)`` if that loses nothing, else InvalidInputError."""
    src = arr.dtype
    if src.kind == "b":
        arr, src = arr.view(np.uint8), np.dtype(np.uint8)
    if src.kind not in "uif":
        raise InvalidInputError(f"slice has unsupported pixel type {src}")
    if target.kind not in "uif":
        raise InvalidInputError(f"cannot store slices of type {target}")
    if src == target:
        return arr
    tname = target.name

    if target.kind in "ui":
        info = np.iinfo(target)
        if src.kind in "ui":
            if np.can_cast(src, target, casting="safe"):
                return arr.astype(target)
            lo, hi = int(arr.min()), int(arr.max())
        else:
            finite = np.isfinite(arr)
            if not finite.all():
                raise InvalidInputError(
                    f"slice contains NaN or infinite values; {tname} slices need whole numbers")
            frac = arr != np.floor(arr)
            if frac.any():
                example = arr[frac].flat[0]
                raise InvalidInputError(
                    f"slice has fractional values (e.g. {_fmt(float(example))}); "
                    f"{tname} slices need whole numbers")
            lo, hi = float(arr.min()), float(arr.max())
            # info.max + 1 is a power of two, so exact as a float; compare strictly
            if lo >= info.min and hi < float(info.max + 1):
                return arr.astype(target)
        if lo < 0 and info.min == 0:
            raise InvalidInputError(
                f"slice has negative values (min {_fmt(lo)}), but {tname} slices "
                f"must be non-negative")
        if lo < info.min or hi > info.max:
            raise InvalidInputError(
                f"slice values range from {_fmt(lo)} to {_fmt(hi)}, which does not fit "
                f"in {tname} ({info.min}..{info.max})"
                + ("; convert the stack to 8 bits first (Fiji: Image > Type > 8-bit)"
                   if target == np.uint8 else ""))
        return arr.astype(target)

    # Float target: exact iff the values survive a round trip.
    out = arr.astype(target)
    back = out.astype(src)
    same = back == arr
    if src.kind == "f":
        same |= np.isnan(arr) & np.isnan(back)
    if not same.all():
        example = arr[~same].flat[0]
        raise InvalidInputError(
            f"slice value {_fmt(example.item())} cannot be stored exactly as {tname}")
    return out


# --------------------------------------------------------------------------
# TIFF writer
# --------------------------------------------------------------------------

_IMAGEJ_DTYPES = frozenset({np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)})
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25    # above this tifffile would switch to BigTIFF
# Resolutions are stored as uint32 rationals of pixels per nm (ImageJ) or per cm
# (plain TIFF); this range keeps both representable.
_RES_MIN_NM, _RES_MAX_NM = 0.01, 1e9


# Length units (DVID's VoxelUnits spellings and short forms) in nanometres:
# a known unit is converted so every TIFF says nm; any other is kept as named.
_UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nanometres": 1.0, "nanometre": 1.0, "nm": 1.0,
            "micrometers": 1e3, "micrometer": 1e3, "micrometres": 1e3, "micrometre": 1e3,
            "microns": 1e3, "micron": 1e3, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3,
            "millimeters": 1e6, "millimeter": 1e6, "millimetres": 1e6, "millimetre": 1e6, "mm": 1e6,
            "angstroms": 0.1, "angstrom": 0.1, "picometers": 1e-3, "pm": 1e-3}


def voxel_spec(voxel_size, units, width_axis: int = 0, height_axis: int = 1, depth_axis: int = 2,
               scale: int = 0) -> tuple[float, float, float, str] | None:
    """(pixel width, pixel height, depth, unit) of a slice for its TIFF tags,
    from an instance's VoxelSize (x, y, z) and VoxelUnits: the sizes along the
    image's width, height and fixed axes, times 2**scale for a pyramid level.
    Known length units are converted to nm.  None (no voxel tags) when the
    sizes are missing or out of the range a TIFF rational holds."""
    try:
        sizes = [float(v) * 2 ** int(scale) for v in voxel_size]
        w, h, d = sizes[width_axis], sizes[height_axis], sizes[depth_axis]
    except (TypeError, ValueError, IndexError):
        return None
    name = str(units or "").strip()
    factor = _UNIT_NM.get(name.lower())
    if factor is not None:
        w, h, d, name = w * factor, h * factor, d * factor, "nm"
    # ImageJ reads `key=value` lines: a unit is one printable word or phrase
    name = "".join(c for c in name if c.isascii() and c.isprintable() and c not in "=\\")[:32].strip() or "pixel"
    if not all(_RES_MIN_NM <= v <= _RES_MAX_NM for v in (w, h, d)):   # also refuses NaN
        return None
    return (w, h, d, name)


def _norm_resolution(resolution_nm) -> tuple[float, float] | None:
    if resolution_nm is None:
        return None
    try:
        x, y = (float(v) for v in resolution_nm)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"resolution must be two numbers (x_nm, y_nm), got {resolution_nm!r}") from None
    if not all(_RES_MIN_NM <= v <= _RES_MAX_NM for v in (x, y)):   # also refuses NaN
        raise InvalidInputError(
            f"resolution must be between {_RES_MIN_NM:g} and {_RES_MAX_NM:g} nm per pixel, "
            f"got ({x:g}, {y:g})")
    return (x, y)


def _norm_spec(resolution_nm, voxel) -> tuple | None:
    """The one hashable key of a TIFF's voxel tags: (x, y, depth or None, unit)."""
    if voxel is not None:
        try:
            w, h, d, unit = voxel
            spec = (float(w), float(h), None if d is None else float(d), str(unit))
        except (TypeError, ValueError):
            raise InvalidInputError(f"voxel must be (x, y, depth, unit), got {voxel!r}") from None
        if not all(_RES_MIN_NM <= v <= _RES_MAX_NM for v in spec[:3] if v is not None):
            raise InvalidInputError(f"voxel sizes must be between {_RES_MIN_NM:g} and {_RES_MAX_NM:g}, "
                                    f"got {spec[:3]}")
        return spec
    res = _norm_resolution(resolution_nm)
    return None if res is None else (res[0], res[1], None, "nm")


def _tiff_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "uif" or dt.itemsize > 8:
        raise InvalidInputError(f"cannot write {dt} slices as TIFF")
    return dt.newbyteorder("=")


def tiff_voxel_kwargs(dtype, spec, imagej: bool | None = None) -> dict:
    """tifffile.imwrite keyword arguments that carry the voxel size `spec`
    ((x, y, depth or None, unit) as from ``voxel_spec``): ImageJ's resolution in
    pixels per unit with ``unit``/``spacing`` in its description (uint8, uint16,
    float32), else baseline XResolution/YResolution in pixels per centimetre
    (ResolutionUnit NONE where the unit is not a length)."""
    imagej = np.dtype(dtype) in _IMAGEJ_DTYPES if imagej is None else imagej
    kwargs: dict = {"imagej": True, "metadata": {}} if imagej else {"metadata": None}
    if spec is None:
        return kwargs
    x, y, z, unit = spec
    if imagej:
        # ImageJ: resolution in pixels per unit, unit (and z spacing) named in the description
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        kwargs["metadata"] = {"unit": unit} if z is None else {"unit": unit, "spacing": z}
    elif unit == "nm":
        # Plain TIFF (ImageJ has no 64-bit integers): the baseline TIFF resolution
        # unit closest to nm is the centimetre.
        kwargs["resolution"] = (1e7 / x, 1e7 / y)
        kwargs["resolutionunit"] = "CENTIMETER"
    else:
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        kwargs["resolutionunit"] = "NONE"
    return kwargs


def _write_tiff(img: np.ndarray, spec: tuple | None) -> bytes:
    import tifffile

    kwargs: dict = dict(byteorder="<", bigtiff=False, photometric="minisblack",
                        compression=None)
    kwargs.update(tiff_voxel_kwargs(img.dtype, spec))
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, **kwargs)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _tiff_overhead(dtype: np.dtype, spec: tuple | None) -> int:
    """Bytes of a TIFF that are not pixel data; independent of the shape (all
    tags have fixed-size values and the single strip comes last)."""
    return len(_write_tiff(np.zeros((1, 1), dtype=dtype), spec)) - dtype.itemsize


def tiff_size(width: int, height: int, dtype, resolution_nm: tuple[float, float] | None = None,
              *, voxel: tuple | None = None) -> int:
    """Exact byte length of ``encode_tiff`` output for a ``height`` x ``width``
    image of ``dtype`` (with the same ``resolution_nm`` / ``voxel``)."""
    try:
        w, h = operator.index(width), operator.index(height)
    except TypeError:
        raise InvalidInputError(f"TIFF size must be whole numbers, got {width!r}x{height!r}") from None
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"cannot write an empty {w}x{h} image as TIFF")
    dt = _tiff_dtype(dtype)
    nbytes = w * h * dt.itemsize
    if nbytes > _CLASSIC_TIFF_LIMIT:
        raise InvalidInputError(f"{w}x{h} {dt} image is too large for a TIFF slice")
    return _tiff_overhead(dt, _norm_spec(resolution_nm, voxel)) + nbytes


def encode_tiff(img: np.ndarray, resolution_nm: tuple[float, float] | None = None,
                *, voxel: tuple | None = None) -> bytes:
    """Encode a 2-D array as an uncompressed single-page little-endian TIFF.

    uint8, uint16 and float32 get ImageJ metadata (so Fiji shows the pixel size
    when ``resolution_nm`` = (x_nm, y_nm) per pixel is given, and also the
    depth with ``voxel`` = (x, y, depth, unit) from ``voxel_spec``, which takes
    precedence); other integer and float types, notably uint64 labels, are
    written as a plain TIFF with the resolution in pixels per centimetre.  The
    result is exactly ``tiff_size(W, H, img.dtype, resolution_nm, voxel=voxel)``
    bytes long.
    """
    img = np.asarray(img)
    if img.ndim != 2:
        raise InvalidInputError(f"TIFF slices must be 2-D, got shape {img.shape}")
    h, w = img.shape
    expected = tiff_size(w, h, img.dtype, resolution_nm, voxel=voxel)   # validates dtype/size/res
    img = img.astype(img.dtype.newbyteorder("="), copy=False)
    data = _write_tiff(img, _norm_spec(resolution_nm, voxel))
    if len(data) != expected:   # the stat size contract; a tifffile change would break it
        raise RuntimeError(f"encode_tiff wrote {len(data)} bytes but tiff_size promised {expected}")
    return data


# --------------------------------------------------------------------------
# Label pseudocolour
# --------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """uint8 RGB colour (shape ``labels.shape + (3,)``) for each label id.

    The colour is a fixed function of the id alone (splitmix64 finaliser, each
    channel mapped to 64..255 so every non-zero label is clearly visible);
    label 0 is black.  Labels may be any non-negative integer type.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InvalidInputError(f"labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidInputError(f"labels must be non-negative, got {int(labels.min())}")
    z = np.array(labels, dtype=np.uint64, order="C")   # a fresh C-ordered array to mix in place
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    b = z.astype("<u8", copy=False).view(np.uint8).reshape(labels.shape + (8,))[..., :3]
    # 64 + b*3/4 in uint16 to avoid overflow: every channel 64..255
    rgb = (64 + ((b.astype(np.uint16) * 3) >> 2)).astype(np.uint8)
    rgb[labels == 0] = 0
    return rgb


def encode_pseudocolor_png(labels: np.ndarray) -> bytes:
    """RGB PNG of a 2-D label slice, a stable colour per id, 0 black.

    Exactly ``png_size(W, H, 3)`` bytes long.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidInputError(f"label slices must be 2-D, got shape {labels.shape}")
    return encode_png_stored(label_colors(labels))


# --------------------------------------------------------------------------
# Label ids ImageJ can read
# --------------------------------------------------------------------------

FLOAT_EXACT_MAX = 1 << 24    # float32 holds every integer 0..2**24 exactly


def label_float_tiff_size(width: int, height: int, voxel: tuple | None = None) -> int:
    """Exact byte length of ``encode_label_float_tiff`` output."""
    return tiff_size(width, height, np.float32, voxel=voxel)


def encode_label_float_tiff(labels: np.ndarray, voxel: tuple | None = None) -> bytes:
    """32-bit float TIFF (ImageJ's metadata) of a 2-D label slice: each pixel
    its label id, exactly, where the id is at most ``FLOAT_EXACT_MAX``, and NaN
    where it is larger (a float32 would round it to a neighbouring id).
    Exactly ``label_float_tiff_size(W, H, voxel)`` bytes long."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidInputError(f"label slices must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise InvalidInputError(f"labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidInputError(f"labels must be non-negative, got {int(labels.min())}")
    out = labels.astype(np.float32)
    out[labels > FLOAT_EXACT_MAX] = np.nan
    return encode_tiff(out, voxel=voxel)
