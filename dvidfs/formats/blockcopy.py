"""Decode stored blocks and copy parts of them into an array, many per call.

Slices and box reads are assembled from hundreds of blocks (1,024 for a 1024²
slice of 32³ blocks).  Done block by block in Python, the interpreter work
holds the GIL for ~5 µs per block: it dominated a slice's time and kept two
readers from running in parallel.  `copy_blocks` hands a whole batch to the
native helper `_blockcopy`, which checks every item with the GIL held, then
decodes (lz4 or plain DVID values) and copies with the GIL released.

Items are built by `BlockVolume` (dvidfs/data/volume.py); the byte format of a
stored value is in dvidfs/store/values.py.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dvidfs.errors import DvidfsError

try:
    from dvidfs.formats import _blockcopy
except ImportError as exc:  # pragma: no cover - a broken install, not a code path
    raise ImportError(
        "dvidfs' native helper dvidfs.formats._blockcopy is not built: run scripts/setup "
        "(or `pip install -e .` with gcc and liblz4-dev installed)") from exc

# Stored-value header bytes the native path decodes (no checksum): others are
# decoded in Python and passed as voxels.
NATIVE_HEADERS = frozenset((0x00, 0x80))


class CorruptBlockError(DvidfsError):
    """A stored block that cannot be decoded (damaged store): EIO."""


Item = tuple  # (src, encoded, dest, izyx)


def copy_blocks(out: np.ndarray, box_lo: tuple[int, int, int], block_shape: tuple[int, int, int],
                items: Sequence[Item], what: str = "block") -> None:
    """Run one batch of items into `out`, the C-contiguous [z, y, x] array of
    the box starting at voxel `box_lo` (x, y, z).

    Each item is (src, encoded, dest, izyx): izyx is the block's 12-byte
    coordinate (the last 12 bytes of its TKey); src holds a stored value
    (encoded=True) or decoded voxels; an encoded block is also decoded into
    `dest` when that is an array of the block's shape (to be cached).  The
    part of each block inside the box is copied to its place in `out`."""
    if not items:
        return
    (x0, y0, z0), (nz, ny, nx) = box_lo, out.shape
    try:
        _blockcopy.copy_blocks(out, (z0, y0, x0, z0 + nz, y0 + ny, x0 + nx), block_shape,
                               out.dtype.itemsize, items)
    except _blockcopy.CorruptBlock as exc:
        raise CorruptBlockError(f"cannot decode a stored {what}: {exc}") from None
