"""formats/labelpng.encode_png: gray and RGB PNGs decoded by Pillow equal the input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dvidfs.errors import InvalidInputError
from dvidfs.formats.labelpng import encode_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 3), (5, 9, 3), (1, 300, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_round_trip_through_pillow(shape, level):
    img = np.random.default_rng(sum(shape) + level).integers(0, 256, shape, dtype=np.uint8)
    out = np.asarray(Image.open(io.BytesIO(encode_png(img, level))))
    assert out.shape == img.shape and np.array_equal(out, img)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros(5, np.uint8), np.zeros((0, 4), np.uint8)])
def test_refuses_what_it_cannot_write(bad):
    with pytest.raises(InvalidInputError):
        encode_png(bad)
