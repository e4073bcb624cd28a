"""Deterministic synthetic EM volumes: grayscale image + matching segmentation.

Why this exists: demos, tests and benchmarks need image/label pairs of any
size that *behave* like connectomics data (compression ratios, label counts,
block statistics, what you see when you open a slice), without shipping
data files.  Everything here is a pure function of (global voxel coordinate,
``seed``, ``cell_size``): any z-slab can be produced on its own, in any
order or in parallel, and agrees bit for bit with the whole volume.

The model, cheapest-first:

* **Cells** (neurite cross-sections).  One jittered seed point per grid cell
  of ``cell_size`` voxels (cellular / Worley noise); a voxel belongs to the
  nearest seed among the 27 grid cells around its own.  Each seed has its own
  per-axis distance weights, so cell walls are curved quadrics instead of
  flat Voronoi planes and cells are somewhat elongated, like neurites cut at
  different angles.  Seed positions and weights come from a hash of the
  integer grid coordinates, never from a RNG state.
* **Labels**: a bijective 40-bit scramble of the grid coordinates (and seed),
  so ids are unique, nonzero, large (up to 2**40) and not contiguous: they
  exercise uint64 paths the way real agglomeration ids do.  Every voxel is
  labelled (dense ground truth, no 0).
* **Gray**: per-cell brightness; a dark membrane band where the nearest and
  second-nearest seed distances are almost equal; small dark "vesicles" (only
  dense in some cells, like boutons); larger, z-elongated dark
  "mitochondria"; and Gaussian-like per-voxel noise.

Speed: the nearest/second-nearest search is the cost (27 candidates per
voxel, ~6 numpy passes each).  Work is done per small chunk (one grid layer
and row, a few grid columns: L2-sized) in which the per-seed z, y and x
distance terms live at grid resolution, so each candidate needs a single
full-size float32 add.  The candidate number is packed into the 5 low
mantissa bits of the distance, so the running best/second-best is just int32
min/max.  Threads split a slab into chunks (numpy releases the GIL).  Only
correctly rounded elementwise ops touch voxels (+ - * sqrt min max, integer
ops, table lookups), so the chunking cannot change a single byte.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from .errors import InvalidInputError

__all__ = ["sample_slab", "make_sample", "iter_sample"]

# --- look ------------------------------------------------------------------
_JITTER = 0.15  # seeds lie in [0.15, 0.85] of their grid cell: no near-duplicates
_LOG_WEIGHT = 0.5  # per-axis metric weight in exp(+-0.5) ~ [0.61, 1.65]
_BRIGHT = (145.0, 195.0)  # cytoplasm gray range (per cell)
_MEMBRANE = 45.0  # gray at the centre of a membrane
_MEMBRANE_WIDTH = 2.6  # in units of sqrt(d2) - sqrt(d1) ~ 2x distance to the wall
_VESICLE_DARK = 80.0  # max darkening by vesicles in the richest cells
_NOISE_SIGMA = 11.0

# Blob kinds (see _Blobs): (stream, grid_yx, grid_z, r_min, r_max, z_elongation,
# prob, amp, cap).  Profile min(amp * (1 - q), cap): a plateau with soft edges.
_VESICLES = (100, 6, 6, 1.0, 1.8, 1.0, 0.9, 3.0, 1.2)  # scaled per cell by rich
_MITO = (200, 16, 24, 3.0, 6.0, 1.8, 0.3, 150.0, 60.0)

# --- machinery -------------------------------------------------------------
_M64 = (1 << 64) - 1
_ID_BITS = 40
_ID_MASK = (1 << _ID_BITS) - 1
_AXIS_BITS = 13  # grid cells per axis (incl. halo) must fit: 8190 * cell_size voxels
_CHUNK_VOXELS = 64 * 1024  # per-chunk working set ~4 int32 arrays -> fits L2
_NOISE_TABLE_BITS = 16

# 27 neighbour offsets (dz, dy, dx), own cell first (ties go to it).
_OFFSETS = np.array(
    [(dz, dy, dx) for dz in (0, -1, 1) for dy in (0, -1, 1) for dx in (0, -1, 1)],
    dtype=np.int64,
)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wraps silently, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """uint64 hash of broadcast integer coordinate arrays, a seed and a stream id.

    This replaces a RNG: the value for a grid cell (or voxel) is the same no
    matter which slab asks for it, which is what makes slabs independent.
    """
    start = (seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03 + 1) & _M64
    h = np.full((1,) * max([1, *(np.ndim(c) for c in coords)]), start, dtype=np.uint64)
    for c in coords:
        h = _mix64(h + np.asarray(c, dtype=np.int64).astype(np.uint64))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float64 uniform in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _units16(h: np.ndarray) -> list[np.ndarray]:
    """Four uniforms in [0, 1) (16-bit resolution) from one uint64 hash: cheap
    when a table needs several random parameters per entry."""
    return [((h >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.float64) / 65536.0 for i in range(4)]


def _cell_ids(seed: int, cz: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Unique nonzero uint64 id per grid cell, in [1, 2**40], not contiguous.

    Pack the (halo-shifted) coordinates into 39 bits, then apply a chain of
    bijections on 40 bits (xor, odd multiply, xorshift).  A bijection never
    collides; the one input that maps to 0 is given 2**40 instead.
    """
    m = np.uint64(_ID_MASK)
    key = (
        (np.asarray(cz + 1, np.int64).astype(np.uint64) << np.uint64(2 * _AXIS_BITS))
        | (np.asarray(cy + 1, np.int64).astype(np.uint64) << np.uint64(_AXIS_BITS))
        | np.asarray(cx + 1, np.int64).astype(np.uint64)
    )
    x = key ^ (_hash(seed, 99) & m)
    for mul, shift in ((0x9E3779B97F, 19), (0xC2B2AE3D27, 21), (0x165667B19F, 17)):
        x = (x * np.uint64(mul | 1)) & m
        x ^= x >> np.uint64(shift)
    return np.where(x == 0, np.uint64(1 << _ID_BITS), x)


class _Slab:
    """Per-slab tables at grid resolution (one halo cell on every side)."""

    def __init__(self, shape: tuple[int, int, int], z0: int, z1: int, seed: int, cs: int):
        Z, Y, X = shape
        self.shape, self.seed, self.cs = shape, seed, cs
        self.ncy, self.ncx = -(-Y // cs), -(-X // cs)
        self.cz_org = z0 // cs - 1  # grid z of table row 0
        cz = np.arange(self.cz_org, (z1 - 1) // cs + 2)[:, None, None]
        cy = np.arange(-1, self.ncy + 1)[None, :, None]
        cx = np.arange(-1, self.ncx + 1)[None, None, :]

        def u(stream: int) -> np.ndarray:
            return _unit(_hash(seed, stream, cz, cy, cx))

        lo, span = _JITTER * cs, (1 - 2 * _JITTER) * cs
        # params[..., :] = seed z, y, x, weight z, y, x
        self.params = np.stack(
            [c * cs + lo + span * u(1 + i) for i, c in enumerate((cz, cy, cx))]
            + [np.exp(_LOG_WEIGHT * (2 * u(4 + i) - 1)) for i in range(3)],
            axis=-1,
        )
        self.ids = _cell_ids(seed, cz, cy, cx)
        # +0.5 so the final float->uint8 truncation rounds to nearest
        self.bright = (_BRIGHT[0] + (_BRIGHT[1] - _BRIGHT[0]) * u(7) + 0.5).astype(np.float32)
        # most cells have few vesicles, a few are packed (boutons)
        self.rich = (_VESICLE_DARK * u(8) ** 2).astype(np.float32)

        # Noise: value = table[(hz[z] ^ hy[y] ^ hx[x]) * K >> 16].  Table entries
        # are Irwin-Hall(4 bytes) ~ N(0, 1); the xor+multiply gives a per-voxel
        # index without a full per-voxel hash (3 cheap uint32 ops).
        t = _hash(seed, 20, np.arange(1 << _NOISE_TABLE_BITS))
        b = [((t >> np.uint64(8 * i)) & np.uint64(0xFF)).astype(np.float64) for i in range(4)]
        irwin = (sum(b) - 4 * 127.5) / np.sqrt(4 * (256**2 - 1) / 12)
        self.noise = (_NOISE_SIGMA * irwin).astype(np.float32)
        self.hz = (_hash(seed, 21, np.arange(z0, z1)) >> np.uint64(32)).astype(np.uint32)
        self.hy = (_hash(seed, 22, np.arange(self.ncy * cs)) >> np.uint64(32)).astype(np.uint32)
        self.hx = (_hash(seed, 23, np.arange(self.ncx * cs)) >> np.uint64(32)).astype(np.uint32)
        self.z0 = z0
        self.vesicles = _Blobs(_VESICLES, seed, z0, z1, self.ncy * cs, self.ncx * cs)
        self.mito = _Blobs(_MITO, seed, z0, z1, self.ncy * cs, self.ncx * cs)


class _Blobs:
    """One blob kind (vesicles or mitochondria) for a slab.

    One candidate blob per blob-grid cell, kept strictly inside it, so a
    voxel only ever looks at its own blob-grid cell.  Blob parameters are
    hashed once per slab; `field` then costs three full-size ops per chunk.
    """

    def __init__(self, kind: tuple, seed: int, z0: int, z1: int, Y: int, X: int):
        stream, g, gz, rmin, rmax, elong, prob, amp, self.cap = kind
        self.g, self.gz = g, gz
        self.fz0 = z0 // gz
        FZ = np.arange(self.fz0, (z1 - 1) // gz + 1)[:, None, None]
        FY = np.arange(-(-Y // g))[None, :, None]
        FX = np.arange(-(-X // g))[None, None, :]
        u = _units16(_hash(seed, stream, FZ, FY, FX)) + _units16(_hash(seed, stream + 1, FZ, FY, FX))
        r = rmin + (rmax - rmin) * u[0]
        rz = r * elong
        a = np.where(u[1] < prob, amp * (0.6 + 0.4 * u[2]), 0.0)
        # per blob cell: centre z, y, x; a; a / r^2 (y, x); a / rz^2 (z)
        self.table = np.stack(
            [
                FZ * gz + rz + (gz - 2 * rz) * u[3],
                FY * g + r + (g - 2 * r) * u[4],
                FX * g + r + (g - 2 * r) * u[5],
                a,
                a / r**2,
                a / rz**2,
            ],
            axis=-1,
        )

    def field(self, zs: np.ndarray, ya: int, yb: int, xa: int, xb: int) -> np.ndarray:
        """Darkening (0..cap, float32, shape (len(zs), yb-ya, xb-xa)), a view.

        Computed on the enclosing blob-grid-aligned box: a * (1 - q), q the
        ellipsoid radius^2, splits into a (z, y) and a (z, x) term that live
        at blob-grid resolution; only repeat, subtract and clip are full size.
        """
        g = self.g
        fy0, fy1 = ya // g, -(-yb // g)
        fx0, fx1 = xa // g, -(-xb // g)
        T = self.table[zs // self.gz - self.fz0, fy0:fy1, fx0:fx1]  # (nz, nfy, nfx, 6)
        pz, py, px, a, c, cz = np.moveaxis(T, -1, 0)
        nz, nfy, nfx = T.shape[:3]
        z = zs.astype(np.float64)[:, None, None]
        y = (fy0 * g + np.arange(nfy * g)).reshape(1, nfy, g, 1).astype(np.float64)
        x = (fx0 * g + np.arange(nfx * g)).reshape(1, 1, nfx, g).astype(np.float64)
        zy = (a - cz * (z - pz) ** 2)[:, :, None, :] - c[:, :, None, :] * (y - py[:, :, None, :]) ** 2
        xx = c[..., None] * (x - px[..., None]) ** 2
        # repeat + row-long subtract beats a broadcast with g-long inner loops
        f = np.repeat(zy.astype(np.float32), g, axis=-1)  # (nz, nfy, g, nfx * g)
        f -= xx.astype(np.float32).reshape(nz, nfy, 1, nfx * g)
        np.clip(f, 0, self.cap, out=f)
        f = f.reshape(nz, nfy * g, nfx * g)
        return f[:, ya - fy0 * g : yb - fy0 * g, xa - fx0 * g : xb - fx0 * g]


def _render_chunk(sl: _Slab, za: int, zb: int, cy: int, cxa: int, cxb: int,
                  gray: np.ndarray, labels: np.ndarray) -> None:
    """Fill gray/labels (slab arrays) for planes za..zb of one grid layer,
    grid row cy, grid columns cxa..cxb."""
    cs = sl.cs
    Z, Y, X = sl.shape
    nz, ncx = zb - za, cxb - cxa
    zs = np.arange(za, zb)

    # The 27 candidate seeds of every grid column: (27, ncx) parameters.
    tz = za // cs - sl.cz_org + _OFFSETS[:, 0, None]
    ty = cy + 1 + _OFFSETS[:, 1, None]
    tx = np.arange(cxa + 1, cxb + 1)[None, :] + _OFFSETS[:, 2, None]
    sz, sy, sx, wz, wy, wx = np.moveaxis(sl.params[tz, ty, tx], -1, 0)

    # Weighted squared distance = z term + y term + x term, each at grid
    # resolution.  The search runs in layout (x_cell, x_in, z, y) so each
    # candidate costs one full-size add with long contiguous inner loops.
    z = zs.astype(np.float64)[None, None, :]
    y = (cy * cs + np.arange(cs)).astype(np.float64)[None, None, :]
    x = (cxa * cs + np.arange(ncx * cs)).reshape(1, ncx, cs).astype(np.float64)
    dz = (wz[..., None] * (z - sz[..., None]) ** 2).astype(np.float32)  # (27, ncx, nz)
    dy = (wy[..., None] * (y - sy[..., None]) ** 2).astype(np.float32)  # (27, ncx, cs)
    dx = (wx[..., None] * (x - sx[..., None]) ** 2).astype(np.float32)  # (27, ncx, cs)
    dzy = (dz[..., None] + dy[:, :, None, :])[:, :, None]  # (27, ncx, 1, nz, cs)
    dx = dx[..., None, None]  # (27, ncx, cs, 1, 1)

    # Running best / second best over the 27 candidates.  Distances are >= 0,
    # so their float32 bit patterns order like int32; the candidate number
    # rides in the 5 low mantissa bits (relative error 2**-18, harmless), so
    # the update is three int32 min/max with no masks.
    search = (ncx, cs, nz, cs)
    d = np.empty(search, np.float32)
    di = d.view(np.int32)
    b1 = np.empty(search, np.int32)
    b2 = np.full(search, np.iinfo(np.int32).max, np.int32)
    t = np.empty(search, np.int32)
    for j in range(len(_OFFSETS)):
        np.add(dzy[j], dx[j], out=d)
        np.bitwise_and(di, ~31, out=di)
        np.bitwise_or(di, j, out=di)
        if j == 0:
            b1, di = di, b1  # b1 takes the buffer; reuse the old one for d
            d = di.view(np.float32)
        else:
            np.maximum(b1, di, out=t)
            np.minimum(b2, t, out=b2)
            np.minimum(b1, di, out=b1)
    # Back to (z, y, x_cell, x_in) for everything else; old buffers are scratch.
    full = (nz, cs, ncx, cs)
    b1t, b2t = t.reshape(full), di.reshape(full)
    np.copyto(b1t, b1.transpose(2, 3, 0, 1))
    np.copyto(b2t, b2.transpose(2, 3, 0, 1))
    b1, b2, t = b1t, b2t, b1.reshape(full)

    # Per-cell values of the winner: tables laid out (column, candidate[32]).
    idx = np.bitwise_and(b1, 31, out=t)
    idx |= (np.arange(ncx, dtype=np.int32) << 5)[:, None]

    def table(a: np.ndarray) -> np.ndarray:
        out = np.zeros((ncx, 32), a.dtype)
        out[:, : len(_OFFSETS)] = a[tz, ty, tx].T
        return out.ravel()

    shape = (nz, cs, ncx * cs)
    idx = idx.reshape(shape)
    ya, xa, xb = cy * cs, cxa * cs, cxb * cs
    ny, nx = min(cs, Y - ya), min(xb, X) - xa
    out = np.s_[za - sl.z0 : zb - sl.z0, ya : ya + ny, xa : xa + nx]
    # (fancy indexing: several times faster than ndarray.take here)
    labels[out] = table(sl.ids)[idx[:, :ny, :nx]]
    g = table(sl.bright)[idx]
    rich = table(sl.rich)[idx]

    # Membrane: dark where sqrt(d2) - sqrt(d1) is small (near the wall).
    d1 = np.bitwise_and(b1, ~31, out=b1).view(np.float32).reshape(shape)
    d2 = np.bitwise_and(b2, ~31, out=b2).view(np.float32).reshape(shape)
    np.sqrt(d1, out=d1)
    np.sqrt(d2, out=d2)
    p = np.subtract(d2, d1, out=d2)
    p *= np.float32(1 / _MEMBRANE_WIDTH)
    p *= p
    np.subtract(np.float32(1), p, out=p)
    np.maximum(p, 0, out=p)

    # Texture, then the membrane drawn over it, then noise.
    rich *= sl.vesicles.field(zs, ya, ya + cs, xa, xb)
    g -= rich
    g -= sl.mito.field(zs, ya, ya + cs, xa, xb)
    m = np.subtract(np.float32(_MEMBRANE + 0.5), g, out=d1)
    m *= p
    g += m
    h = np.bitwise_xor(
        (sl.hz[za - sl.z0 : zb - sl.z0, None] ^ sl.hy[None, ya : ya + cs])[..., None],
        sl.hx[None, None, xa:xb],
        out=idx.view(np.uint32),
    )
    h *= np.uint32(0x9E3779B1)
    h >>= np.uint32(32 - _NOISE_TABLE_BITS)
    g += sl.noise[h]
    np.clip(g, 0, 255, out=g)
    np.copyto(gray[out], g[:, :ny, :nx], casting="unsafe")


def _check(shape_zyx: tuple[int, int, int], cell_size: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"sample shape must be 3 positive sizes (z, y, x), got {shape_zyx!r}")
    if not 4 <= int(cell_size) <= 4096:
        raise InvalidInputError(f"cell_size must be in 4..4096, got {cell_size!r}")
    if max(-(-s // int(cell_size)) for s in shape) + 2 >= 1 << _AXIS_BITS:
        raise InvalidInputError(f"sample shape {shape} too large for cell_size {cell_size}")
    return shape  # type: ignore[return-value]


def _fill(shape: tuple[int, int, int], z0: int, z1: int, seed: int, cs: int,
          gray: np.ndarray, labels: np.ndarray, workers: int | None) -> None:
    """Render planes z0..z1 into gray/labels (each [z1-z0, Y, X], C-contiguous)."""
    if z0 == z1:
        return
    sl = _Slab(shape, z0, z1, seed & _M64, cs)
    # Chunks stay inside one grid layer (so seed terms don't vary with z) and
    # hold ~_CHUNK_VOXELS voxels: one grid row, a few grid columns.
    jobs = []
    for za in [z0, *range((z0 // cs + 1) * cs, z1, cs)]:
        zb = min(z1, (za // cs + 1) * cs)
        xcells = max(1, min(sl.ncx, _CHUNK_VOXELS // (cs * cs * (zb - za))))
        jobs += [(za, zb, cy, cxa, min(cxa + xcells, sl.ncx))
                 for cy in range(sl.ncy) for cxa in range(0, sl.ncx, xcells)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers == 1:
        for job in jobs:
            _render_chunk(sl, *job, gray, labels)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda job: _render_chunk(sl, *job, gray, labels), jobs):
                pass  # re-raises worker exceptions


def sample_slab(shape_zyx: tuple[int, int, int], z0: int, z1: int, seed: int = 0,
                cell_size: int = 24, *, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (gray uint8 [z1-z0, Y, X], labels uint64 [z1-z0, Y, X]) for planes z0..z1.

    Identical to ``make_sample(shape_zyx, seed, cell_size)[i][z0:z1]``: every
    voxel depends only on its global coordinate, ``seed`` and ``cell_size``,
    so slabs can be made in any order, in parallel, or in other processes.
    ``workers`` threads split the slab (numpy releases the GIL); default is
    the CPU count -- pass 1 if you parallelise over slabs yourself.  Memory is
    the outputs (9 bytes/voxel) plus a few MB per worker.
    """
    shape = _check(shape_zyx, cell_size)
    z0, z1 = int(z0), int(z1)
    if not 0 <= z0 <= z1 <= shape[0]:
        raise InvalidInputError(f"slab z range {z0}..{z1} outside 0..{shape[0]}")
    gray = np.empty((z1 - z0,) + shape[1:], np.uint8)
    labels = np.empty((z1 - z0,) + shape[1:], np.uint64)
    _fill(shape, z0, z1, int(seed), int(cell_size), gray, labels, workers)
    return gray, labels


def iter_sample(shape_zyx: tuple[int, int, int], seed: int = 0, cell_size: int = 24,
                slab: int = 64, *, workers: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (z0, gray_slab, label_slab) top to bottom.

    Streams a volume too big to hold (1024**3 is 1 GiB gray + 8 GiB labels):
    only the current slab (9 bytes/voxel; 576 MiB for 64 x 1024^2) is alive.
    """
    shape = _check(shape_zyx, cell_size)
    if slab < 1:
        raise InvalidInputError(f"slab must be >= 1, got {slab}")
    for z0 in range(0, shape[0], slab):
        yield (z0, *sample_slab(shape, z0, min(z0 + slab, shape[0]), seed, cell_size, workers=workers))


def make_sample(shape_zyx: tuple[int, int, int], seed: int = 0, cell_size: int = 24,
                slab: int = 64, progress: bool = False, *,
                workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole volume (gray uint8, labels uint64), rendered slab by slab in place.

    ``progress`` shows a tqdm bar over slabs, for big volumes from the CLI.
    The label volume is 8 bytes/voxel: for 1024^3 use `iter_sample` instead.
    """
    shape = _check(shape_zyx, cell_size)
    if slab < 1:
        raise InvalidInputError(f"slab must be >= 1, got {slab}")
    gray = np.empty(shape, np.uint8)
    labels = np.empty(shape, np.uint64)
    starts = range(0, shape[0], slab)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, unit="slab", desc="sample")
    for z0 in starts:
        z1 = min(z0 + slab, shape[0])
        _fill(shape, z0, z1, int(seed), int(cell_size), gray[z0:z1], labels[z0:z1], workers)
    return gray, labels
