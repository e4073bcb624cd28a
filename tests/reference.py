"""Independent reference codecs shared by tests (never dvidfs.formats)."""
from __future__ import annotations

import struct

import numpy as np


def ref_rles(mask: np.ndarray, offset) -> bytes:
    """DVID sparsevol ("rles") of a [z, y, x] boolean mask whose first voxel is at
    `offset` (x, y, z): maximal x runs in z, y, x order, found with plain loops."""
    spans = []
    for zi in range(mask.shape[0]):
        for yi in range(mask.shape[1]):
            row, xi = mask[zi, yi], 0
            while xi < len(row):
                if row[xi]:
                    start = xi
                    while xi < len(row) and row[xi]:
                        xi += 1
                    spans.append((start + offset[0], yi + offset[1], zi + offset[2], xi - start))
                else:
                    xi += 1
    return bytes([0, 3, 0, 0]) + struct.pack("<II", 0, len(spans)) + b"".join(
        struct.pack("<iiii", *s) for s in spans)
