"""DVID's `roi` type: a region of interest made of blocks, as runs along x.

Spans
-----
An ROI is a set of blocks given as spans `[z, y, x0, x1]` in *block*
coordinates, x1 inclusive (DVID's format).  The block size is the instance's
`BlockSize` (default 32 in x, y and z; DVID allows a different size per axis,
so does dvidfs).  A voxel (x, y, z) is inside when its block
(x // bx, y // by, z // bz) lies in a span (floor division, also for negative
coordinates).

Spans are read back sorted by (z, y, x0); spans of one row that overlap are
joined into one (DVID would keep both, duplicating blocks).  Adjacent spans are
*not* joined, so spans that were posted without overlaps come back exactly as
posted (DVID's round trip).  A span is four integers in int32 range with
x0 <= x1; anything else is refused with `InvalidInputError` before anything
is written.

Writing is DVID's POST: the given spans *replace* the ROI at that version
(DVID deletes the old spans first).  `delete` removes every span.

Storage (TKey class 90, DVID's `keyROI`)
----------------------------------------
One versioned key per span, DVID's layout: `90 | IZYX(x0, y, z) | length u32`
(length = x1 - x0 + 1), with an empty value.  Keys sort by z, y, x0, so the
spans of a z range are one scan.  A replace writes only the difference with
what the version sees: new spans are put, vanished ones are removed (a
tombstone if an ancestor still holds them, else just this version's entry),
in one atomic batch under `VersionDB.lock`; committed nodes are refused
(`ReadOnlyError`).  Because an unchanged span is not rewritten, two branches
that changed different parts of an ROI merge cleanly (their union is read);
a span removed on one side and added on another is a merge conflict, named by
its span.
"""
from __future__ import annotations

import bisect
import math
import struct
from typing import Iterable

import numpy as np

from dvidfs.data.types import DataType
from dvidfs.errors import InvalidInputError
from dvidfs.geometry import Box
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch
from dvidfs.store.versioned import VersionView
from dvidfs.versions.model import Instance, Node

CLASS = keys.CLASS_ROI
DEFAULT_BLOCK_SIZE = 32
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_SPAN = (1 << 32) - 1          # blocks in one span (its length is a u32)
_U32 = struct.Struct(">I")

Span = tuple[int, int, int, int]


# ---------------------------------------------------------------- keys
def _tkey(z: int, y: int, x0: int, x1: int) -> bytes:
    return bytes((CLASS,)) + keys.izyx(x0, y, z) + _U32.pack(x1 - x0 + 1)


def _span(tk: bytes) -> Span:
    x0, y, z = keys.parse_izyx(tk[1:13])
    return z, y, x0, x0 + _U32.unpack(tk[13:17])[0] - 1


def _z_range(z0: int = INT32_MIN, z1: int = INT32_MAX) -> tuple[bytes, bytes]:
    """TKey bounds of every span with z0 <= z <= z1."""
    return (bytes((CLASS,)) + keys.izyx(INT32_MIN, INT32_MIN, z0) + b"\0" * 4,
            bytes((CLASS,)) + keys.izyx(INT32_MAX, INT32_MAX, z1) + b"\xff" * 4)


def describe_key(tk: bytes, inst: Instance) -> str:
    if len(tk) == 17:
        return f"span {list(_span(tk))} (block z, y, x0, x1)"
    return f"roi key {tk[1:].hex()}"


# ---------------------------------------------------------------- checking and normalizing
def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidInputError(f"{what} must be an integer, got {v!r}")
    v = int(v)
    if not INT32_MIN <= v <= INT32_MAX:
        raise InvalidInputError(f"{what} {v} is outside the int32 range")
    return v


def check_spans(spans) -> list[Span]:
    """The spans as int tuples, or InvalidInputError naming the first bad one."""
    if isinstance(spans, (str, bytes, dict)) or not isinstance(spans, Iterable):
        raise InvalidInputError("an ROI is a list of [z, y, x0, x1] spans")
    out = []
    for i, s in enumerate(spans):
        if isinstance(s, (str, bytes, dict)) or not isinstance(s, (list, tuple, np.ndarray)) or len(s) != 4:
            raise InvalidInputError(f"span {i} ({s!r}) is not a list of 4 integers [z, y, x0, x1]")
        z, y, x0, x1 = (_int(v, f"span {i} {s!r}: {n}") for v, n in zip(s, ("z", "y", "x0", "x1")))
        if x1 < x0:
            raise InvalidInputError(f"span {i} {list(s)!r}: x1 ({x1}) < x0 ({x0})")
        if x1 - x0 + 1 > MAX_SPAN:
            raise InvalidInputError(f"span {i} {list(s)!r} is longer than {MAX_SPAN} blocks")
        out.append((z, y, x0, x1))
    return out


def normalize(spans: Iterable[Span]) -> list[Span]:
    """Sorted by (z, y, x0); overlapping spans of a row joined (adjacent ones kept)."""
    out: list[list[int]] = []
    for z, y, x0, x1 in sorted(spans):
        last = out[-1] if out else None
        if last is not None and last[0] == z and last[1] == y and x0 <= last[3]:
            last[3] = max(last[3], x1)
        else:
            out.append([z, y, x0, x1])
    return [tuple(s) for s in out]


def block_size_of(value) -> list[int]:
    """[bx, by, bz] from an int or three ints (each >= 1)."""
    if isinstance(value, (list, tuple)):
        vals = list(value)
    else:
        vals = [value] * 3
    if len(vals) != 3:
        raise InvalidInputError(f"BlockSize must have 1 or 3 values, got {value!r}")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= INT32_MAX:
            raise InvalidInputError(f"BlockSize {value!r}: each size must be a positive integer")
        out.append(v)
    return out


# ---------------------------------------------------------------- the type
class Roi(DataType):
    typename = "roi"
    offers = frozenset({"roi"})
    key_descriptions = {CLASS: describe_key}

    @classmethod
    def make_config(cls, block_size=None, voxel_size=None, voxel_units=None, **options) -> dict:
        # voxel_size / voxel_units: accepted from DVID clients' creation JSON, and ignored as DVID does
        if options:
            raise InvalidInputError(f"roi instances take only a block size (got {', '.join(sorted(options))})")
        return {"BlockSize": block_size_of(DEFAULT_BLOCK_SIZE if block_size is None else block_size)}

    @property
    def block_size(self) -> tuple[int, int, int]:
        """(bx, by, bz) in voxels."""
        bs = self.inst.config.get("BlockSize", DEFAULT_BLOCK_SIZE)
        return tuple(block_size_of(bs))

    def info(self, view: VersionView) -> dict:
        info = super().info(view)
        view = self.as_view(view)
        lo, hi = _z_range()
        zs = [_span(tk)[0] for tk, _ in versioned.scan(self.engine, self.inst.id, lo, hi, view,
                                                        include_value=False)]
        info["Extended"] = {"BlockSize": list(self.block_size),
                            "MinZ": min(zs) if zs else INT32_MAX, "MaxZ": max(zs) if zs else INT32_MIN}
        return info

    # ------------------------------------------------------------ reading
    def _stored(self, reader, view: VersionView, z0: int = INT32_MIN, z1: int = INT32_MAX) -> list[Span]:
        lo, hi = _z_range(z0, z1)
        return [_span(tk) for tk, _ in versioned.scan(reader, self.inst.id, lo, hi, view, include_value=False)]

    def spans(self, view: VersionView | Node) -> list[Span]:
        """Every span [z, y, x0, x1] at this version, sorted and normalized."""
        return normalize(self._stored(self.engine, self.as_view(view)))

    def extents(self, view: VersionView | Node) -> Box | None:
        """The voxel box of the blocks the ROI covers (None: no spans)."""
        spans = self._stored(self.engine, self.as_view(view))
        if not spans:
            return None
        bx, by, bz = self.block_size
        lo = (min(s[2] for s in spans) * bx, min(s[1] for s in spans) * by, spans[0][0] * bz)
        hi = ((max(s[3] for s in spans) + 1) * bx, (max(s[1] for s in spans) + 1) * by, (spans[-1][0] + 1) * bz)
        return Box(lo, hi)

    def mask(self, view: VersionView | Node, offset, size) -> np.ndarray:
        """uint8 [z, y, x] of shape size[::-1] (size and offset are x, y, z in
        voxels): 1 inside the ROI, 0 outside."""
        ox, oy, oz = (_int(v, "offset") for v in _xyz(offset, "offset"))
        nx, ny, nz = (_int(v, "size") for v in _xyz(size, "size"))
        if min(nx, ny, nz) < 1:
            raise InvalidInputError(f"mask size {[nx, ny, nz]} must be positive in x, y and z")
        bx, by, bz = self.block_size
        out = np.zeros((nz, ny, nx), np.uint8)
        bx0, bx1 = ox // bx, (ox + nx - 1) // bx
        by0, by1 = oy // by, (oy + ny - 1) // by
        bz0, bz1 = oz // bz, (oz + nz - 1) // bz
        if bz0 > INT32_MAX or bz1 < INT32_MIN:
            return out
        for z, y, x0, x1 in self._stored(self.engine, self.as_view(view),
                                         max(bz0, INT32_MIN), min(bz1, INT32_MAX)):
            if not by0 <= y <= by1 or x1 < bx0 or x0 > bx1:
                continue
            zs, ys = max(z * bz - oz, 0), max(y * by - oy, 0)
            xs = max(x0 * bx - ox, 0)
            out[zs:(z + 1) * bz - oz, ys:(y + 1) * by - oy, xs:(x1 + 1) * bx - ox] = 1
        return out

    def ptquery(self, view: VersionView | Node, points) -> list[bool]:
        """For each voxel point [x, y, z]: whether it lies in the ROI."""
        bx, by, bz = self.block_size
        blocks = []
        if isinstance(points, (str, bytes, dict)) or not isinstance(points, Iterable):
            raise InvalidInputError("ptquery expects a list of [x, y, z] points")
        for i, p in enumerate(points):
            if isinstance(p, (str, bytes, dict)) or not isinstance(p, (list, tuple)) or len(p) != 3:
                raise InvalidInputError(f"point {i} ({p!r}) is not [x, y, z]")
            vals = []
            for v in p:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise InvalidInputError(f"point {i} ({p!r}) must hold 3 numbers")
                vals.append(math.floor(v))
            blocks.append((vals[0] // bx, vals[1] // by, vals[2] // bz))
        if not blocks:
            return []
        zs = [b[2] for b in blocks]
        z0, z1 = max(min(zs), INT32_MIN), min(max(zs), INT32_MAX)
        rows: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        if z0 <= z1:
            for z, y, x0, x1 in normalize(self._stored(self.engine, self.as_view(view), z0, z1)):
                starts, ends = rows.setdefault((z, y), ([], []))
                starts.append(x0)
                ends.append(x1)
        out = []
        for x, y, z in blocks:
            row = rows.get((z, y))
            if row is None:
                out.append(False)
                continue
            i = bisect.bisect_right(row[0], x) - 1
            out.append(i >= 0 and x <= row[1][i])
        return out

    def partition(self, view: VersionView | Node, batchsize: int = 8) -> dict:
        """DVID's simple partition (GET partition?batchsize=N): subvolumes of
        batchsize³ blocks laid over the ROI as a grid, layer by layer in z
        (layers of `batchsize` blocks from the ROI's min z less half the
        remainder of its z range over batchsize), rows in y likewise over each
        layer's y range, cells in x likewise over each row's x range; cells with
        no block of the ROI are left out (their blocks still count in
        NumTotalBlocks, as DVID's).  Points are voxels, MaxPoint inclusive;
        chunks are block coordinates.  Differs from DVID where DVID errs: ROI
        MinChunk/MaxChunk are the ROI's true block extents (DVID's start from
        0), and a z gap wider than a layer does not shift later layers."""
        if isinstance(batchsize, bool) or not isinstance(batchsize, int) or batchsize < 1:
            raise InvalidInputError(f"batchsize must be a positive integer, got {batchsize!r}")
        spans = normalize(self._stored(self.engine, self.as_view(view)))
        bs = self.block_size
        out = {"NumTotalBlocks": 0, "NumActiveBlocks": 0, "NumSubvolumes": 0,
               "ROI": {"MinChunk": [0, 0, 0], "MaxChunk": [0, 0, 0]}, "Subvolumes": []}
        if not spans:
            return out
        n = batchsize

        def centred(lo: int, hi: int) -> tuple[int, int]:
            """DVID's grid over [lo, hi]: first cell start, last allowed start
            (the remainder of the range over n, split around it)."""
            left = (hi - lo + 1) % n
            return lo - left // 2, hi + left - left // 2

        min_z, max_z = spans[0][0], spans[-1][0]
        out["ROI"] = {"MinChunk": [min(s[2] for s in spans), min(s[1] for s in spans), min_z],
                      "MaxChunk": [max(s[3] for s in spans), max(s[1] for s in spans), max_z]}
        z_beg = centred(min_z, max_z)[0]
        layers: dict[int, list[Span]] = {}
        for s in spans:
            layers.setdefault((s[0] - z_beg) // n, []).append(s)
        subvolumes = out["Subvolumes"]
        for li in sorted(layers):
            layer = layers[li]
            z0 = z_beg + li * n
            ys = [s[1] for s in layer]
            y_beg = centred(min(ys), max(ys))[0]
            rows: dict[int, list[Span]] = {}
            for s in layer:
                rows.setdefault((s[1] - y_beg) // n, []).append(s)
            for ri in sorted(rows):
                row = rows[ri]
                y0 = y_beg + ri * n
                x_lo, x_hi = min(s[2] for s in row), max(s[3] for s in row)
                x_beg, x_end = centred(x_lo, x_hi)
                for x0 in range(x_beg, x_end + 1, n):
                    x1 = x0 + n - 1
                    active = sum(max(0, min(x1, s[3]) - max(x0, s[2]) + 1) for s in row)
                    out["NumTotalBlocks"] += n ** 3
                    out["NumActiveBlocks"] += active
                    if active:
                        lo, hi = (x0, y0, z0), (x1, y0 + n - 1, z0 + n - 1)
                        subvolumes.append({"MinPoint": [c * b for c, b in zip(lo, bs)],
                                           "MaxPoint": [(c + 1) * b - 1 for c, b in zip(hi, bs)],
                                           "MinChunk": list(lo), "MaxChunk": list(hi),
                                           "TotalBlocks": n ** 3, "ActiveBlocks": active})
        out["NumSubvolumes"] = len(subvolumes)
        return out

    # ------------------------------------------------------------ writing
    def put_spans(self, node: Node, spans) -> None:
        """Replace the ROI at open `node` by `spans` (DVID's POST roi), atomically."""
        self._replace(node, normalize(check_spans(spans)))

    def delete(self, node: Node) -> bool:
        """Remove every span at open `node`; returns whether there were any."""
        return self._replace(node, [])

    def _replace(self, node: Node, spans: list[Span]) -> bool:
        want = {_tkey(*s) for s in spans}
        with self.db.lock:
            self.check_writable(node)
            view = self.db.view(node)
            version, visible = node.version_id, view.visible
            lo, hi = _z_range()
            have = {tk for tk, _ in versioned.scan(self.engine, self.inst.id, lo, hi, view, include_value=False)}
            gone, new = have - want, want - have
            if not gone and not new:
                return False
            below = set()  # TKeys an ancestor (not this version) holds a value for
            if gone:
                prefix = keys.instance_prefix(self.inst.id)
                start, stop = prefix + lo, prefix + hi + b"\xff" * (keys.SUFFIX_LEN + 1)
                for k in self.engine.scan(start, stop, include_value=False):
                    _, tk, v, tomb = keys.split_data_key(k)
                    if v != version and v in visible and not tomb and tk in gone:
                        below.add(tk)
            batch = Batch()
            for tk in sorted(gone):
                if tk in below:
                    versioned.delete(batch, self.inst.id, tk, version)
                else:
                    batch.delete(keys.data_key(self.inst.id, tk, version))
            for tk in sorted(new):
                versioned.put(batch, self.inst.id, tk, version, b"")
            self.engine.apply(batch)
            self._applied(node)
        self.ctx.changed(node, self.inst.name)
        return True


def _xyz(v, what: str) -> list:
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple, np.ndarray)) or len(v) != 3:
        raise InvalidInputError(f"{what} must be 3 integers x, y, z, got {v!r}")
    return list(v)
