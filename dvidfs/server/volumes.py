"""Voxel endpoints of uint8blk (our `grayscale`) and labelmap (our `labels`).

Endpoints (DVID's paths, queries and status codes):

    GET|HEAD raw/<dims>/<size>/<offset>[/<fmt>]      both types
    GET|HEAD isotropic/<dims>/<size>/<offset>[/<fmt>] both; slices rescaled to square pixels
    POST     raw/0_1_2/<size>/<offset>                both; uint8 or uint64 LE body, ZYX
    GET      subvolblocks/<size>/<offset>             uint8blk; block-aligned record stream
    GET      specificblocks?blocks=x,y,z,...          both; record stream of the listed blocks
    GET      blocks/<size>/<offset>                   labelmap; block-aligned record stream
    POST     extents                                  both; {"MinPoint": [..], "MaxPoint": [..]}
    GET      label/<x_y_z>, labels (JSON body)        labelmap; {"Label": n} / [n, ...]
    GET      pseudocolor/<dims>/<size>/<offset>[/<fmt>]  labelmap; RGB image of hashed labels

<dims> is xy, xz, yz (or 0_1, 0_2, 1_2) for a 2-D image and 0_1_2 for a 3-D
box; <size> is w_h (2-D) or w_h_d, <offset> always x_y_z (may be negative).
labelmap reads take `scale=N` (the stored pyramid where built, data/pyramid.py;
levels above it computed on demand, data/downres.py) and `supervoxels=true`.  Replies larger than
`Config.http_max_reply` are refused with 400 before any voxel is read.

Where dvidfs differs from DVID, on purpose:

* POST raw accepts any box, not only block-aligned ones (partial blocks are
  read-modify-written); `mutate=` is accepted and ignored (index upkeep is
  always exact).  uint8blk POST also accepts `compression=lz4|gzip`.
* A labelmap 3-D GET of one absent block with `compression=` answers zeros
  (DVID: 400), so neuroglancer shows empty space instead of an error.
* `compression=google|googlegzip` accepts boxes that are not multiples of 8
  (the format pads partial blocks; DVID refuses them).
* labelmap `blocks`/`specificblocks` with `compression=lz4` always send lz4 of
  the uint64 block (DVID sends lz4 of its label-block serialization when no
  merge mapping is in use, which contradicts its own help text).  With
  `scale>0` a block of all background counts as absent (as DVID, which
  stores no such block).
* uint8blk block streams send, by default, DVID's lz4 framing of the stored
  block (uint32 length + lz4 block), which is what DVID sends for lz4-stored
  instances; `compression=jpeg` is 400 (nothing is stored as JPEG).
* A labelmap 2-D PNG always has an alpha channel (Go drops it when every label
  has its top 16 bits set); labelmap 2-D images are PNG only, and a format on
  a labelmap 3-D request is 400 (DVID ignores it).
* Pseudocolor colours come from dvidfs' own hash (formats/images.py).
* `roi=`, `attenuation=` and `throttle=` are not supported (`roi` is 400).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
import zlib
from typing import Iterable, Iterator

import compressed_segmentation
import lz4.block
import numpy as np
from PIL import Image

from dvidfs.data.labels import Labels
from dvidfs.data.volume import BlockVolume
from dvidfs.errors import InvalidInputError
from dvidfs.formats.images import encode_png_stored, label_colors
from dvidfs.formats.labelblock import block_labels, decode_label_block, encode_label_block
from dvidfs.formats.labelpng import encode_label_png, encode_png
from dvidfs.geometry import INT32_MAX, INT32_MIN, PLANE, XYZ, Box, Plane
from dvidfs.server.http import Response, binary_response, json_response, text_response
from dvidfs.server.routes import Call, Routes

OCTETS = "application/octet-stream"
SHAPES = {"xy": "xy", "xz": "xz", "yz": "yz", "0_1": "xy", "0_2": "xz", "1_2": "yz",
          "0,1": "xy", "0,2": "xz", "1,2": "yz", "0_1_2": "3d", "0,1,2": "3d", "vol": "3d"}
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "tif": "image/tiff",
               "tiff": "image/tiff", "bmp": "image/bmp"}
DEFAULT_JPEG_QUALITY = 80        # DVID's DefaultJPEGQuality
JPEG_MAX_SIDE = 65500            # libjpeg's limit
LABEL_COMPRESSIONS = ("", "lz4", "gzip", "google", "googlegzip")
BLOCK_COMPRESSIONS = ("lz4", "gzip", "uncompressed", "blocks")
_INT = re.compile(r"[+-]?\d+")
_RECORD = struct.Struct("<4i")


# ---------------------------------------------------------------- parsing
def _ints(text: str, n: int, what: str) -> tuple[int, ...]:
    """`n` integers separated by "_" (DVID's path syntax), else a 400 naming the part."""
    parts = text.split("_")
    if len(parts) != n or not all(_INT.fullmatch(p) for p in parts):
        raise InvalidInputError(f"{what} {text!r} must be {n} integers separated by '_'")
    return tuple(int(p) for p in parts)


def _shape(dims: str) -> str:
    shape = SHAPES.get(dims.lower())
    if shape is None:
        raise InvalidInputError(f"unknown data shape {dims!r}: use xy, xz, yz (0_1, 0_2, 1_2) for "
                                "2-D images or 0_1_2 for 3-D volumes")
    return shape


def _geometry_args(c: Call, what: str) -> tuple[str, str, str, str]:
    """(dims, size, offset, format) from the path after the endpoint."""
    if len(c.args) < 3:
        raise InvalidInputError(f"{what!r} must be followed by <dims>/<size>/<offset>[/<format>]")
    return c.args[0], c.args[1], c.args[2], c.args[3] if len(c.args) > 3 else ""


def _box3(size_text: str, offset_text: str) -> Box:
    size = _ints(size_text, 3, "size")
    offset = _ints(offset_text, 3, "offset")
    return Box.from_offset_size(offset, size)


def _slice_box(p: Plane, w: int, h: int, offset: XYZ) -> Box:
    size = [1, 1, 1]
    size[p.width], size[p.height] = w, h
    return Box.from_offset_size(offset, tuple(size))


def _image_format(fmt: str) -> tuple[str, int]:
    """DVID's `<fmt>[:<quality>]`: (kind, JPEG quality clamped to 1..100 as Go does)."""
    kind, _, q = fmt.lower().partition(":")
    kind = kind or "png"
    if kind not in IMAGE_TYPES:
        raise InvalidInputError(f"illegal image format {fmt!r}: use png, jpg[:quality], tif or bmp")
    if not q:
        return kind, DEFAULT_JPEG_QUALITY
    if not _INT.fullmatch(q):
        raise InvalidInputError(f"image quality {q!r} in format {fmt!r} is not an integer")
    return kind, min(100, max(1, int(q)))


def _scale(c: Call) -> int:
    """`scale=N` of labelmap reads; uint8blk has no levels (DVID's multiscale
    grayscale is separate instances), so there it is ignored as DVID does."""
    return c.req.int_arg("scale", 0) if isinstance(c.data, Labels) else 0


def _check_query(c: Call) -> None:
    if c.req.query.get("roi"):
        raise InvalidInputError("roi= masking is not supported by dvidfs")


def _check_reply(c: Call, nbytes: int, what: str) -> None:
    """Refuse a reply above the server's limit before allocating it."""
    limit = c.dvid.config.http_max_reply
    if nbytes > limit:
        raise InvalidInputError(f"{what} would be {nbytes} bytes, more than this server's limit of "
                                f"{limit} bytes (DVIDFS_HTTP_MAX_REPLY): ask for a smaller box")


def _bool(c: Call, name: str) -> bool:
    return c.req.flag(name)


# ---------------------------------------------------------------- reading
def _read(c: Call, box: Box, scale: int = 0) -> np.ndarray:
    """[z, y, x] voxels of `box` (labels mapped unless supervoxels=true)."""
    if isinstance(c.data, Labels):
        return c.data.read(c.view, box.lo, box.size, supervoxels=_bool(c, "supervoxels"), scale=scale)
    return c.data.read(c.view, box.lo, box.size)


def _nearest(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D image to (h, w): labels stay labels."""
    rows = np.arange(h) * img.shape[0] // h
    cols = np.arange(w) * img.shape[1] // w
    return img[np.ix_(rows, cols)]


def _isotropic_read_size(data: BlockVolume, p: Plane, w: int, h: int) -> tuple[int, int]:
    """The slice to read so that, stretched to w x h, its pixels are square:
    the coarser axis gets fewer voxels (DVID's Isotropy2D)."""
    vs = [float(v) for v in data.inst.config.get("VoxelSize", (8.0, 8.0, 8.0))]
    rw, rh = vs[p.width], vs[p.height]
    if rw < rh:
        return w, max(1, int(h * rw / rh + 0.5))
    if rw > rh:
        return max(1, int(w * rh / rw + 0.5)), h
    return w, h


# ---------------------------------------------------------------- encoding
def _encode_image(img: np.ndarray, kind: str, quality: int) -> bytes:
    """uint8 gray (h, w) or RGB (h, w, 3) image in one of DVID's formats."""
    if kind in ("jpg", "jpeg") and max(img.shape[:2]) > JPEG_MAX_SIDE:
        raise InvalidInputError(f"a JPEG can be at most {JPEG_MAX_SIDE} pixels a side; this image "
                                f"is {img.shape[1]}x{img.shape[0]}")
    if kind == "png":
        # Gray EM deflates by ~10% at 25x the CPU (1024²: 54 ms at zlib level 1, 2 ms
        # stored; Pillow 82 ms): gray PNGs go out stored, exactly as the mount's slices.
        # RGB (pseudocolor) is flat colour, which deflates well and fast.
        return encode_png_stored(img) if img.ndim == 2 else encode_png(img, 1)
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(img))
    if kind in ("jpg", "jpeg"):
        pil.save(buf, "JPEG", quality=quality)
    elif kind in ("tif", "tiff"):
        pil.save(buf, "TIFF", compression="tiff_adobe_deflate")  # as Go's encoder: Deflate
    else:
        pil.save(buf, "BMP")
    return buf.getvalue()


def _image_reply(img: np.ndarray, fmt: str) -> Response:
    kind, quality = _image_format(fmt)
    return binary_response(_encode_image(img, kind, quality), IMAGE_TYPES[kind])


def _label_octets(vol: np.ndarray, compression: str) -> Response:
    """uint64 LE ZYX labels with DVID's 3-D `compression=` choices."""
    raw = np.ascontiguousarray(vol, dtype="<u8")
    if compression == "":
        return binary_response(raw.tobytes(), OCTETS)
    if compression == "lz4":  # DVID: a raw lz4 block, no size prefix
        return binary_response(lz4.block.compress(raw.tobytes(), store_size=False), OCTETS)
    if compression == "gzip":
        return binary_response(gzip.compress(raw.tobytes(), compresslevel=1), OCTETS)
    # neuroglancer compressed_segmentation, one channel, 8³ blocks; the
    # package indexes arrays (x, y, z): the transpose of ours, no copy
    google = compressed_segmentation.compress(raw.T, block_size=(8, 8, 8), order="F")
    if compression == "google":
        return binary_response(google, OCTETS)
    return binary_response(gzip.compress(google, compresslevel=1), OCTETS, {"Content-Encoding": "gzip"})


# ---------------------------------------------------------------- GET raw / isotropic
def _raw(c: Call) -> Response:
    return _voxels(c, "raw")


def _isotropic(c: Call) -> Response:
    return _voxels(c, "isotropic")


def _voxels(c: Call, endpoint: str) -> Response:
    _check_query(c)
    dims, size, offset, fmt = _geometry_args(c, endpoint)
    shape = _shape(dims)
    if shape == "3d":
        return _volume(c, _box3(size, offset), fmt)
    return _slice(c, PLANE[shape], size, offset, fmt, endpoint == "isotropic")


def _volume(c: Call, box: Box, fmt: str) -> Response:
    """3-D GET: octets (both types), one tall JPEG (uint8blk `/jpeg`), or
    compressed labels (labelmap `compression=`)."""
    sx, sy, sz = box.size
    nbytes = sx * sy * sz * c.data.dtype.itemsize
    _check_reply(c, nbytes, f"a {sx}x{sy}x{sz} volume")
    if isinstance(c.data, Labels):
        if fmt:
            raise InvalidInputError(f"labelmap 3-D replies are uint64 octets, not {fmt!r}: use "
                                    "compression=lz4|gzip|google|googlegzip")
        compression = c.req.query.get("compression", "")
        if compression not in LABEL_COMPRESSIONS:
            raise InvalidInputError(f"unknown compression {compression!r}: use lz4, gzip, google or "
                                    "googlegzip")
        return _label_octets(_read(c, box, _scale(c)), compression)
    if fmt:
        kind, quality = _image_format(fmt)
        if kind not in ("jpg", "jpeg"):
            raise InvalidInputError(f"a 3-D uint8blk volume comes as octets or /jpeg, not {fmt!r}")
        # neuroglancer's chunk request: one JPEG sx wide, sy*sz tall (z-major rows)
        img = _read(c, box).reshape(sz * sy, sx)
        return binary_response(_encode_image(img, kind, quality), IMAGE_TYPES[kind])
    return binary_response(_read(c, box).tobytes(), OCTETS)


def _slice(c: Call, p: Plane, size: str, offset: str, fmt: str, isotropic: bool) -> Response:
    w, h = _ints(size, 2, "2-D size")
    origin = _ints(offset, 3, "offset")
    _slice_box(p, w, h, origin)  # validates the requested geometry
    labels = isinstance(c.data, Labels)
    if labels and _image_format(fmt)[0] != "png":
        raise InvalidInputError(f"labelmap 2-D images are 64-bit PNGs, not {fmt!r} (use pseudocolor "
                                "for a viewable image)")
    _check_reply(c, w * h * c.data.dtype.itemsize, f"a {w}x{h} image")
    img = _read_slice(c, p, w, h, origin, isotropic)
    if labels:
        return binary_response(encode_label_png(img), "image/png")
    return _image_reply(img, fmt)


def _read_slice(c: Call, p: Plane, w: int, h: int, origin: XYZ, isotropic: bool) -> np.ndarray:
    rw, rh = _isotropic_read_size(c.data, p, w, h) if isotropic else (w, h)
    img = p.to_image(_read(c, _slice_box(p, rw, rh, origin), _scale(c)))
    return img if (rw, rh) == (w, h) else _nearest(img, w, h)


def _pseudocolor(c: Call) -> Response:
    _check_query(c)
    dims, size, offset, fmt = _geometry_args(c, "pseudocolor")
    shape = _shape(dims)
    if shape == "3d":
        raise InvalidInputError("pseudocolor serves 2-D images only (xy, xz or yz)")
    p = PLANE[shape]
    w, h = _ints(size, 2, "2-D size")
    origin = _ints(offset, 3, "offset")
    _slice_box(p, w, h, origin)
    _image_format(fmt)
    _check_reply(c, w * h * 8, f"a {w}x{h} image")
    return _image_reply(label_colors(_read_slice(c, p, w, h, origin, False)), fmt)


# ---------------------------------------------------------------- POST raw
def _post_raw(c: Call) -> Response:
    """Store a ZYX box (uint8 or uint64 LE); the body length must match the box."""
    _check_query(c)
    dims, size, offset, _ = _geometry_args(c, "raw")
    if _shape(dims) != "3d":
        raise InvalidInputError("only 3-D (0_1_2) boxes can be POSTed; DVID permits no 2-D mutations")
    box = _box3(size, offset)
    sx, sy, sz = box.size
    itemsize = c.data.dtype.itemsize
    nbytes = sx * sy * sz * itemsize
    if nbytes > c.dvid.config.http_max_body:
        raise InvalidInputError(f"a {sx}x{sy}x{sz} box is {nbytes} bytes, more than this server accepts "
                                f"in one request ({c.dvid.config.http_max_body}, DVIDFS_HTTP_MAX_BODY)")
    data = _decompress_body(c.req.body, c.req.query.get("compression", ""), nbytes)
    if len(data) != nbytes:
        raise InvalidInputError(f"body has {len(data)} bytes (uncompressed) but a {sx}x{sy}x{sz} box of "
                                f"{c.data.dtype} needs {nbytes} ({itemsize} byte(s) per voxel, ZYX order); "
                                "nothing was written")
    arr = np.frombuffer(data, dtype=c.data.dtype.newbyteorder("<")).reshape(sz, sy, sx)
    c.data.write(c.node, box.lo, arr)
    return text_response("")


def _decompress_body(body: bytes, compression: str, expected: int) -> bytes:
    """The POSTed voxels, never more than `expected` + 1 bytes decompressed
    (so a small compressed body cannot make the server allocate gigabytes)."""
    if compression == "":
        return body
    if compression == "lz4":  # DVID: a raw lz4 block, size known from the box
        try:
            return lz4.block.decompress(body, uncompressed_size=expected)
        except Exception as exc:  # lz4 raises LZ4BlockError; any failure is bad input
            raise InvalidInputError(f"body is not an lz4 block of {expected} bytes: {exc}") from None
    if compression == "gzip":
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(body, expected + 1)
        except zlib.error as exc:
            raise InvalidInputError(f"body is not valid gzip: {exc}") from None
        return out
    raise InvalidInputError(f"unknown compression {compression!r} for a POST: use lz4 or gzip")


# ---------------------------------------------------------------- block streams
def _record(bcoord: XYZ, payload: bytes) -> bytes:
    """DVID's block record: int32 bx, by, bz, int32 n, then n bytes (little-endian)."""
    return _RECORD.pack(*bcoord, len(payload)) + payload


def _aligned_box(c: Call, what: str) -> Box:
    if len(c.args) < 2:
        raise InvalidInputError(f"{what!r} must be followed by <size>/<offset>")
    box = _box3(c.args[0], c.args[1])
    bs = c.data.grid.size
    if any(v % b for v, b in zip(box.lo + box.size, bs + bs)):
        raise InvalidInputError(f"{what}: size {list(box.size)} and offset {list(box.lo)} must be "
                                f"multiples of the block size {list(bs)}")
    return box


def _block_coords_query(c: Call) -> list[XYZ]:
    """`blocks=x,y,z,x,y,z...` (empty: no blocks)."""
    text = c.req.query.get("blocks", "")
    if not text:
        return []
    parts = text.split(",")
    if len(parts) % 3 or not all(_INT.fullmatch(p.strip()) for p in parts):
        raise InvalidInputError("blocks= must be integers, three (x,y,z) per block")
    vals = [int(p) for p in parts]
    if any(not INT32_MIN <= v <= INT32_MAX for v in vals):
        raise InvalidInputError("a block coordinate in blocks= is outside the int32 range")
    return [tuple(vals[i:i + 3]) for i in range(0, len(vals), 3)]


def _blocks_in(c: Call, box: Box) -> int:
    """Blocks in a block-aligned box, counted without listing them."""
    sx, sy, sz = (s // b for s, b in zip(box.size, c.data.grid.size))
    return sx * sy * sz


INLINE_BLOCKS = 8  # a 64³ chunk of 32³ blocks: stored bytes forwarded, ~0.5 ms


def _few_blocks(c: Call) -> bool:
    """Answer on the event loop (routes.Route.inline): a block stream of at most
    INLINE_BLOCKS stored blocks, forwarded without decoding.  Anything this
    cannot tell cheaply (or that is malformed) goes to a worker thread."""
    try:
        if c.req.query.get("compression", "") not in ("", "lz4"):
            return False
        if "blocks" in c.req.query:
            return c.req.query["blocks"].count(",") < 3 * INLINE_BLOCKS
        return _blocks_in(c, _aligned_box(c, "subvolblocks")) <= INLINE_BLOCKS
    except Exception:
        return False


def _check_blocks_reply(c: Call, nblocks: int) -> None:
    bx, by, bz = c.data.grid.size
    _check_reply(c, nblocks * (bx * by * bz * c.data.dtype.itemsize + _RECORD.size), f"{nblocks} blocks")


def _stream(records: Iterable[bytes]) -> Response:
    return binary_response(b"".join(records), OCTETS)


# uint8blk
def _gray_compression(c: Call) -> str:
    compression = c.req.query.get("compression", "")
    if compression == "jpeg":
        raise InvalidInputError(f"can't send JPEG: the blocks of {c.data.inst.name!r} are stored as lz4, "
                                "not JPEG")
    if compression not in ("", "uncompressed"):
        raise InvalidInputError(f"don't understand compression={compression!r}: use uncompressed or "
                                "leave it out")
    return compression


def _gray_records(blocks: Iterator[tuple[XYZ, bytes]], compression: str) -> Iterator[bytes]:
    """Raw voxels, or by default DVID's lz4 framing (uint32 length + lz4 block)."""
    for bcoord, payload in blocks:
        yield _record(bcoord, payload if compression else lz4.block.compress(payload, store_size=True))


def _subvolblocks(c: Call) -> Response:
    box = _aligned_box(c, "subvolblocks")
    compression = _gray_compression(c)
    _check_blocks_reply(c, _blocks_in(c, box))
    return _stream(_gray_records(c.data.stored_blocks(c.view, box=box), compression))


def _gray_specificblocks(c: Call) -> Response:
    compression = _gray_compression(c)
    coords = _block_coords_query(c)
    _check_blocks_reply(c, len(coords))
    if _bool(c, "prefetch"):  # DVID: read ahead, send nothing
        return binary_response(b"", OCTETS)
    return _stream(_gray_records(c.data.stored_blocks(c.view, coords=coords), compression))


# labelmap
def _label_block_compression(c: Call, default: str) -> str:
    compression = c.req.query.get("compression", "") or default
    if compression not in BLOCK_COMPRESSIONS:
        raise InvalidInputError(f'compression must be "lz4", "gzip", "blocks" or "uncompressed", '
                                f"not {compression!r}")
    return compression


def _encode_label_array(block: np.ndarray, compression: str) -> bytes:
    if compression == "blocks":  # DVID's compressed label block, gzip'd
        return gzip.compress(encode_label_block(block), compresslevel=1)
    raw = np.ascontiguousarray(block, dtype="<u8").tobytes()
    if compression == "uncompressed":
        return raw
    if compression == "lz4":
        return lz4.block.compress(raw, store_size=False)
    return gzip.compress(raw, compresslevel=1)


def _label_records(c: Call, coords: list[XYZ] | None, box: Box | None, compression: str) -> Iterator[bytes]:
    """Records of label blocks: stored ones at scale 0 (a stored label block is
    forwarded as is for `blocks` when the mapping does not touch it), blocks
    computed from level 0 above it (all-background ones left out)."""
    data: Labels = c.data
    view, scale = c.view, _scale(c)
    mapping = None if _bool(c, "supervoxels") else data.mapping(view)
    if scale == 0:
        for bcoord, payload in data.stored_blocks(view, box=box, coords=coords):
            yield _record(bcoord, _transcode_label_block(data, payload, compression, mapping))
        return
    bs = data.grid.size
    for bcoord in (coords if coords is not None else data.grid.blocks(box)):
        lo = tuple(b * s for b, s in zip(bcoord, bs))
        block = data.read(view, lo, bs, supervoxels=mapping is None, scale=scale)
        if block.any():
            yield _record(bcoord, _encode_label_array(block, compression))


def _transcode_label_block(data: Labels, payload: bytes, compression: str, mapping) -> bytes:
    if compression == "blocks" and (mapping is None or not len(mapping.svs)
                                    or not np.isin(block_labels(payload), mapping.svs).any()):
        return gzip.compress(payload, compresslevel=1)
    block = decode_label_block(payload)
    if block.shape != data.grid.shape_zyx:
        raise InvalidInputError(f"stored label block has shape {block.shape}, expected {data.grid.shape_zyx}")
    if mapping is not None:
        block = mapping.apply(block)
    return _encode_label_array(block, compression)


def _label_blocks(c: Call) -> Response:
    box = _aligned_box(c, "blocks")
    compression = _label_block_compression(c, "lz4")
    _scale_checked(c)
    _check_blocks_reply(c, _blocks_in(c, box))
    return _stream(_label_records(c, None, box, compression))


def _label_specificblocks(c: Call) -> Response:
    compression = _label_block_compression(c, "blocks")
    _scale_checked(c)
    coords = _block_coords_query(c)
    _check_blocks_reply(c, len(coords))
    return _stream(_label_records(c, coords, None, compression))


def _scale_checked(c: Call) -> int:
    """The scale, refused with 400 when out of range, before any block is read."""
    scale = _scale(c)
    c.data.check_scale(scale, c.view)
    return scale


# ---------------------------------------------------------------- extents, points
def _post_downres(c: Call) -> Response:
    """dvidfs addition: store the pyramid (`dvidfs downres`; `?levels=N`, default
    until one block), so a served or mounted store need not be stopped for it.
    Answers {"Levels": n} once every level is stored."""
    text = c.req.query.get("levels", "")
    if text and not text.isdigit():
        raise InvalidInputError(f"levels={text!r} is not a number")
    n = c.data.build_pyramid(c.node, int(text) if text else None)
    return json_response({"Levels": n})


def _post_extents(c: Call) -> Response:
    d = c.req.json_object()
    pts = []
    for key in ("MinPoint", "MaxPoint"):
        v = d.get(key)
        if (not isinstance(v, list) or len(v) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
            raise InvalidInputError(f'extents need "{key}": [x, y, z] (integers), got {v!r}')
        if not all(INT32_MIN <= x <= INT32_MAX for x in v):
            raise InvalidInputError(f"{key} {v} leaves the int32 coordinate range")
        pts.append(tuple(v))
    if any(a > b for a, b in zip(*pts)):
        raise InvalidInputError(f"MinPoint {list(pts[0])} must not exceed MaxPoint {list(pts[1])}")
    c.data.set_extents(c.node, Box.from_extents(pts[0], pts[1]))
    return text_response("")


def _point(p) -> list[int]:
    """One [x, y, z] of integers inside DVID's int32 coordinates, else a 400."""
    if (not isinstance(p, (list, tuple)) or len(p) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in p)):
        raise InvalidInputError(f"each point must be [x, y, z] with integers, got {p!r}")
    if not all(INT32_MIN <= x <= INT32_MAX for x in p):
        raise InvalidInputError(f"point {list(p)} lies outside the int32 coordinate range")
    return list(p)


def _points(value) -> np.ndarray:
    """[[x, y, z], ...] as an (n, 3) int64 array: numpy checks the usual body
    of 10^4 points at once; anything unusual gets the per-point message."""
    if not isinstance(value, list):
        raise InvalidInputError("labels needs a JSON body [[x, y, z], ...]")
    try:
        arr = np.asarray(value) if value else np.zeros((0, 3), np.int64)
    except (ValueError, OverflowError):  # ragged lists
        arr = None
    if (arr is not None and arr.dtype.kind == "i" and arr.ndim == 2 and arr.shape[1] == 3
            and (not arr.size or (arr.min() >= INT32_MIN and arr.max() <= INT32_MAX))
            and not any(type(x) is bool for p in value for x in p)):  # numpy would make true a 1
        return arr.astype(np.int64, copy=False)
    return np.array([_point(p) for p in value], np.int64).reshape(-1, 3)


def _label(c: Call) -> Response:
    if not c.args:
        raise InvalidInputError("label must be followed by a coordinate x_y_z")
    pt = _point(_ints(c.args[0], 3, "coordinate"))
    n = c.data.labels_at(c.view, [pt], supervoxels=_bool(c, "supervoxels"), scale=_scale(c))
    return json_response({"Label": int(n[0])})


def _labels(c: Call) -> Response:
    want = c.req.query.get("hash", "")
    if want and hashlib.md5(c.req.body).hexdigest() != want.lower():
        raise InvalidInputError(f"content hash incorrect: expected {want}, got "
                                f"{hashlib.md5(c.req.body).hexdigest()}")
    pts = _points(c.req.json())
    out = c.data.labels_at(c.view, pts, supervoxels=_bool(c, "supervoxels"), scale=_scale(c))
    return json_response(out.tolist())


# ---------------------------------------------------------------- registration
def register(routes: Routes) -> None:
    both = "grayscale labels"
    routes.endpoint(both, "raw", "GET", _raw)
    routes.endpoint(both, "raw", "POST", _post_raw)
    routes.endpoint(both, "isotropic", "GET", _isotropic)
    routes.endpoint(both, "extents", "POST", _post_extents)
    routes.endpoint(both, "downres", "POST", _post_downres)
    routes.endpoint("grayscale", "subvolblocks", "GET", _subvolblocks, inline=_few_blocks)
    routes.endpoint("grayscale", "specificblocks", "GET", _gray_specificblocks, inline=_few_blocks)
    routes.endpoint("labels", "specificblocks", "GET", _label_specificblocks)
    routes.endpoint("labels", "blocks", "GET", _label_blocks)
    routes.endpoint("labels", "label", "GET", _label)
    routes.endpoint("labels", "labels", "GET", _labels)
    routes.endpoint("labels", "pseudocolor", "GET", _pseudocolor)
