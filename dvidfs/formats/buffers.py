"""Accept bytes-like input for the binary decoders, with one clear error."""
from __future__ import annotations

import numpy as np

from dvidfs.errors import InvalidInputError


def byte_view(data, what: str) -> memoryview:
    """A flat, contiguous byte memoryview of `data` (bytes, bytearray, memoryview,
    numpy array); InvalidInputError naming `what` for anything else."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    try:
        mv = memoryview(data)
    except TypeError:
        raise InvalidInputError(f"{what} must be bytes, not {type(data).__name__}") from None
    if not mv.c_contiguous:
        mv = memoryview(mv.tobytes())
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
